"""errors.SigtermRaises: SIGTERM raises Terminated where a command installs it, does nothing while another handler
that calls it holds SIGTERM's place (Lightning's, during fit), restores what it replaced, and is ignored after the
first stop so that the stopped command can print its line."""

import os
import signal

import pytest

from blockbert.errors import SigtermRaises, Terminated


@pytest.fixture(autouse=True)
def default_sigterm():
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, before)


def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_raises_inside_the_block_and_the_handler_before_is_back_after_it():
    with pytest.raises(Terminated), SigtermRaises():
        sigterm()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # stopped: a second SIGTERM waits for the line
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with SigtermRaises() as handler:
        assert signal.getsignal(signal.SIGTERM) is handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_nested_blocks_restore_each_other():
    with SigtermRaises() as outer:
        with SigtermRaises() as inner:
            assert signal.getsignal(signal.SIGTERM) is inner
        assert signal.getsignal(signal.SIGTERM) is outer
        with pytest.raises(Terminated):
            sigterm()


def test_a_handler_that_took_its_place_and_calls_it_keeps_its_own_way():
    """Lightning's signal connector installs its own handler during fit and calls the one it found as well: that one
    must not raise (Lightning stops training at the next micro-batch, with a checkpoint). When Lightning puts it
    back, SIGTERM raises again."""
    noted = []
    with SigtermRaises() as ours:

        def lightnings(signum, frame):  # its notifier, then the handler it found
            noted.append(signum)
            ours(signum, frame)

        signal.signal(signal.SIGTERM, lightnings)
        sigterm()
        assert noted == [signal.SIGTERM]
        signal.signal(signal.SIGTERM, ours)  # Lightning's teardown
        with pytest.raises(Terminated):
            sigterm()


def test_a_handler_set_during_the_block_is_left_in_place():
    with SigtermRaises():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stopped run's, until its line is printed
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
