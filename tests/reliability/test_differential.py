"""CI form of the differential fuzzer (``differential.py``): asyncio vs tokioloop, same operations.

Contract: with ``TOKIOLOOP_RELIABILITY=1``, ``test_loops_agree`` runs 200 derandomized sequences
(fixed seed) of up to 40 operations each through ``differential.LoopDifferential`` and fails on
the first divergence, showing Hypothesis's shrunk sequence. It prints the figure line
(``reliability figure: differential ...``) in the terminal either way. Without the variable the
module is skipped (the main ``tests`` session does not run it). ``TOKIOLOOP_FUZZ_EXAMPLES`` /
``TOKIOLOOP_FUZZ_STEPS`` change the size; ``TOKIOLOOP_FUZZ_RANDOM=1`` drops the fixed seed (the
long form, see differential.py).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import differential  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("TOKIOLOOP_RELIABILITY") != "1",
    reason="reliability suite: set TOKIOLOOP_RELIABILITY=1 (nox -s reliability)",
)


@pytest.mark.timeout(1800)
def test_loops_agree(capsys):
    examples = int(os.environ.get("TOKIOLOOP_FUZZ_EXAMPLES", "200"))
    steps = int(os.environ.get("TOKIOLOOP_FUZZ_STEPS", "40"))
    randomize = os.environ.get("TOKIOLOOP_FUZZ_RANDOM") == "1"
    line, error = differential.run(examples, steps, derandomize=not randomize)
    with capsys.disabled():
        print("\n" + line)
    if error is not None:
        pytest.fail(f"asyncio and tokioloop diverged:\n{error.report}", pytrace=False)


def _writelines_after_write_eof(make_loop):
    import asyncio
    import socket

    loop = make_loop()
    sock, peer = socket.socketpair()
    try:
        transport, _ = loop.run_until_complete(
            loop.create_connection(asyncio.Protocol, sock=sock))
        transport.write_eof()
        try:
            transport.writelines([b"x"])
        except RuntimeError as exc:
            message = str(exc)
        else:
            message = None
        transport.abort()
        loop.run_until_complete(asyncio.sleep(0))
        return message
    finally:
        loop.close()
        peer.close()


def test_writelines_after_write_eof_message():
    """Found by the differential fuzzer on 3.14: from 3.12 asyncio's socket writelines() names
    itself in this error; tokioloop's said write()."""
    import asyncio

    import tokioloop

    expected = _writelines_after_write_eof(asyncio.new_event_loop)
    assert expected is not None
    assert _writelines_after_write_eof(tokioloop.new_event_loop) == expected


def _call_later_str_delay(make_loop):
    loop = make_loop()
    try:
        loop.call_later("1", print)
    except TypeError as exc:
        return str(exc)
    finally:
        loop.close()
    return None


def test_call_later_with_a_str_delay_message():
    """Found by the differential fuzzer: asyncio's error comes from ``time() + delay``
    ("unsupported operand type(s) for +: 'float' and 'str'"); tokioloop's was pyo3's."""
    import asyncio

    import tokioloop

    expected = _call_later_str_delay(asyncio.new_event_loop)
    assert expected is not None
    assert _call_later_str_delay(tokioloop.new_event_loop) == expected


def _deadline_after_dict_edits(make_loop):
    """call_later's deadline after ``time`` is put in, then taken out of, the instance dict
    directly (no setattr/delattr): (deadline with the dict entry, deadline after its removal)."""
    loop = make_loop()
    try:
        vars(loop)["time"] = lambda: 5.0
        first = loop.call_later(1, print)
        vars(loop).pop("time")
        loop.time = lambda: 7.0
        vars(loop).pop("time")
        second = loop.call_later(1, print)
        first.cancel()
        second.cancel()
        return first.when(), second.when() > 100
    finally:
        loop.close()


@pytest.mark.xfail(
    strict=True,
    reason="tokioloop defect: a patched loop.time is mirrored natively only through "
    "__setattr__/__delattr__ (src/event_loop/mod.rs time_override), so a time put into or "
    "removed from the instance __dict__ directly is ignored, or keeps governing call_later "
    "after loop.time() is native again (found while writing the differential fuzzer)",
)
def test_patched_time_follows_the_instance_dict():
    import asyncio

    import tokioloop

    expected = _deadline_after_dict_edits(asyncio.new_event_loop)
    assert expected == (6.0, True)
    assert _deadline_after_dict_edits(tokioloop.new_event_loop) == expected
