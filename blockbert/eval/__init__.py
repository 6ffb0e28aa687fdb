"""Scorers equivalent to the official SQuAD v1.1, v2.0 and MRQA evaluation scripts."""
