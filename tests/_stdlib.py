"""What the running interpreter's asyncio has, asked of asyncio itself.

Tests whose subject a version lacks skip with ``requires(...)``; tests of behaviour that changed
between versions read the expectation from here or from the stdlib half of the test, never
from a hard-coded version table. ``requires`` looks at the stdlib's own classes, so the
stdlib-oracle half of every test agrees with the skip.
"""

import asyncio
import dis
import inspect
import sys

_DGRAM = asyncio.selector_events._SelectorDatagramTransport
_STREAM = asyncio.selector_events._SelectorSocketTransport

import pytest

_LOOP_CLASS = asyncio.SelectorEventLoop


def loop_has(method, param=None):
    """True if the running asyncio's loop has ``method`` (taking ``param``, if given)."""
    found = getattr(_LOOP_CLASS, method, None)
    if found is None:
        return False
    if param is None:
        return True
    params = inspect.signature(found).parameters
    # ``create_task(coro, **kwargs)`` (3.14+) takes every keyword (passing it on).
    return param in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def server_has(method):
    return hasattr(asyncio.Server, method)


def requires(method, param=None, *, server=False):
    """Skip unless the running asyncio's loop (or Server) has ``method`` / ``param``."""
    present = server_has(method) if server else loop_has(method, param)
    what = f"Server.{method}()" if server else f"loop.{method}({param + '=' if param else ''})"
    return pytest.mark.skipif(not present, reason=f"this Python's asyncio has no {what}")


# The socket transport's wording for a write() of the wrong type (3.14 names the accepted types;
# the datagram transport kept the older wording).
WRONG_WRITE_TYPE = ("data argument must be a bytes, bytearray, or memoryview object"
                    if "bytes, bytearray, or memoryview" in inspect.getsource(_STREAM.write)
                    else "data argument must be a bytes-like object")

requires_runner = pytest.mark.skipif(not hasattr(asyncio, "Runner"), reason="this Python's asyncio has no Runner")


# Bugs of particular stdlib releases that tokioloop does not copy. The stdlib half of a test
# that meets one skips, naming it; the tokioloop half still asserts the intended behaviour.
# Each entry is (affected on the running interpreter?, what the bug is).
_RUNNING = sys.version_info[:3]
# CPython gh-153133: a socket is closed when no transport could be made on it (a second
# close() in the body of the loop's _create_connection_transport).
_CLOSES_SOCK_WITHOUT_TRANSPORT = [
    instr.argval
    for instr in dis.get_instructions(asyncio.BaseEventLoop._create_connection_transport)
].count("close") >= 2
STDLIB_BUGS = {
    "pause_in_connection_made": (
        _RUNNING < (3, 11),
        "3.10's socket transport adds its reader after connection_made even when the "
        "protocol paused reading there (fixed in 3.11)",
    ),
    "write_buffers_uncopied": (
        # 3.10/3.11 extend a bytearray buffer (a copy); from 3.12 the caller's object itself
        # is queued (seen on 3.12.1, 3.13.0, 3.14.10 and 3.15.2)
        "self._buffer.append(data)" in inspect.getsource(_STREAM.write),
        "from 3.12 the socket transport queues the caller's buffer itself, not a copy (a "
        "bytearray changed after write() is sent changed), and 3.12.1's writelines() fails "
        "after close (_write_ready is None)",
    ),
    "call_at_none_asserts": (
        _RUNNING < (3, 11),
        "3.10's call_at(None, ...) fails an assert (AssertionError, gone under -O) rather than "
        "raising TypeError",
    ),
    "happy_eyeballs_exception_cycle": (
        _RUNNING < (3, 12, 8) or (3, 13) <= _RUNNING < (3, 13, 1),
        "the staggered race keeps its attempts' exceptions in a reference cycle through their "
        "tracebacks (CPython gh-124858, fixed in 3.12.8 and 3.13.1)",
    ),
    "sock_recv_exception_cycle": (
        True,
        "the selector loop's sock_recv/sock_recv_into keep their future in the frame a "
        "failure after a wait passes through: exception -> frame -> future -> exception",
    ),
    "sock_sendfile_exception_cycle": (
        True,
        "the selector loop's sock_sendfile keeps the future its failed os.sendfile was set "
        "on, in the frame the SendfileNotAvailableError passes through",
    ),
    "connect_protocol_error_leaks_socket": (
        not _CLOSES_SOCK_WITHOUT_TRANSPORT,
        "create_connection whose protocol factory raises leaves the connected socket to the GC "
        "(fixed by CPython gh-153133)",
    ),
    "staggered_race_leaks_cancelled_socket": (
        True,
        "a cancelled happy-eyeballs race may leave the socket of a cancelled attempt to the GC",
    ),
    "cancelled_create_server_leaks": (
        True,
        "create_server cancelled during its last turn loses the server with its sockets open "
        "(how many warnings depends on timing)",
    ),
    "tls_bad_timeout_leaks_socket": (
        not _CLOSES_SOCK_WITHOUT_TRANSPORT,
        "create_connection with a TLS timeout <= 0 raises from the TLS layer's constructor "
        "after connecting and leaves the connected socket to the GC (ResourceWarning; fixed "
        "by CPython gh-153133)",
    ),
    "tls_buffered_bytearray": (
        _RUNNING >= (3, 11),
        "the TLS layer reads into buf[offset:] of a BufferedProtocol's buffer, which copies a "
        "bytearray: the second and later reads of one pass are lost (cpython#156275)",
    ),
    "datagram_addr_asserts": (
        _RUNNING < (3, 11),
        "3.10's create_datagram_endpoint checks for a 2-tuple address with an assert "
        "(AssertionError, gone under -O) rather than raising TypeError (changed in 3.11)",
    ),
    "datagram_buffer_size_drift": (
        "+ 8" in inspect.getsource(_DGRAM.sendto)
        and "8" not in inspect.getsource(_DGRAM._sendto_ready)
        and "_header_size" not in inspect.getsource(_DGRAM._sendto_ready),
        "3.13's datagram transport counts len(data) + 8 per queued datagram but subtracts "
        "len(data) when it is sent, so get_write_buffer_size() stays above 0 after a drain "
        "(gh-135444, fixed by PR #135445 and its backports)",
    ),
    "refused_run_forever_clears_running_loop": (
        _RUNNING == (3, 13, 0),
        "3.13.0's run_forever() cleans up after a refused start, clearing the running loop "
        "of the loop that is running (a nested run then hangs)",
    ),
}


def stdlib_has_bug(loop_kind, name):
    """True for the stdlib half of a test if the running stdlib has bug ``name`` (a test may
    then assert the bug, so that a stdlib that fixed it is noticed)."""
    return loop_kind == "asyncio" and STDLIB_BUGS[name][0]


def skip_stdlib_bug(loop_kind, name):
    """Skip the stdlib half of a test if the running stdlib has bug ``name``."""
    if stdlib_has_bug(loop_kind, name):
        pytest.skip(f"stdlib bug: {STDLIB_BUGS[name][1]}")
