"""Where a user's text file stops being UTF-8: the one scan the corpus loader and the QA reader name it by."""

from __future__ import annotations

import codecs
from typing import BinaryIO


def first_non_utf8(file: BinaryIO) -> tuple[int, int] | None:
    """(the first byte that is not UTF-8, its offset) of an opened binary file, read in chunks; None if all is UTF-8."""
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    while True:
        chunk = file.read(1 << 20)
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as err:  # the decoder may hold a partial character from the chunk before
            return err.object[err.start], offset - (len(err.object) - len(chunk)) + err.start
        if not chunk:
            return None
        offset += len(chunk)
