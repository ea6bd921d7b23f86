"""A failed network operation leaves no reference cycle through its exception.

An exception's traceback holds the frames it passed through (and, through ``f_back``, their
callers). If one of those frames still holds the future that holds the exception, the
exception, its frames and everything they reference wait for the cyclic GC instead of going
when the caller drops the exception (CPython gh-124858: frameworks that run with the GC
tuned down, or check for leaks, see this). Each test runs the operation with the GC disabled,
then collects with ``DEBUG_SAVEALL`` and fails if an exception or a frame was only
reachable through a cycle.

The stdlib itself still leaks on some paths on the versions we run (named in
``_stdlib.STDLIB_BUGS``: happy eyeballs before gh-124858's fix, ``sock_recv``/``sock_recv_into``
failing after a wait, ``sock_sendfile`` falling back after a failed os.sendfile); those tests
assert the stdlib's behaviour as it is, so a fixed stdlib is noticed, and tokioloop's as it
should be.
"""

import asyncio
import gc
import io
import socket
import struct
import tempfile
import types

import pytest

from _netutil import connect_from_busy_address, free_port, serve_on_busy_address
from _stdlib import requires, stdlib_has_bug


def cycle_garbage(loop, make_coro, repeat=2):
    """Run ``make_coro()`` to completion ``repeat`` times with the GC off; return the
    exceptions and frames that only a cyclic collection could then free."""
    loop.run_until_complete(asyncio.sleep(0))
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            loop.run_until_complete(make_coro())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = [
            obj for obj in gc.garbage
            if isinstance(obj, (BaseException, types.FrameType))
        ]
        return [_describe(obj) for obj in found]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _describe(obj):
    if isinstance(obj, types.FrameType):
        return f"frame {obj.f_code.co_name}"
    return repr(obj)


def expect_no_cycles(loop_kind, garbage, stdlib_bug=None):
    """No cycle garbage; on the stdlib half, the garbage of ``stdlib_bug`` (see _stdlib.py)
    where the running stdlib has that bug."""
    if stdlib_bug is not None and stdlib_has_bug(loop_kind, stdlib_bug):
        # Document the stdlib's own leak; the test exists for tokioloop's behaviour.
        assert garbage, "the stdlib no longer leaks here: drop the exemption"
        return
    assert garbage == []


def reset_pair():
    """A connected TCP client (non-blocking) and a function that resets it from the peer."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    client.setblocking(False)

    def reset():
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()

    return client, reset


# -- connecting ------------------------------------------------------------------------------


def test_sock_connect_refused(loop, loop_kind):
    async def attempt():
        with socket.socket() as sock:
            sock.setblocking(False)
            with pytest.raises(ConnectionRefusedError):
                await loop.sock_connect(sock, ("127.0.0.1", free_port()))

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_sock_connect_fails_at_once(loop, loop_kind, tmp_path):
    async def attempt():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.setblocking(False)
            with pytest.raises(FileNotFoundError):
                await loop.sock_connect(sock, str(tmp_path / "missing.sock"))

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_create_connection_refused(loop, loop_kind):
    async def attempt():
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", free_port())

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_open_connection_refused(loop, loop_kind):
    async def attempt():
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", free_port())

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_create_connection_happy_eyeballs_refused(loop, loop_kind):
    async def attempt():
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", free_port(), happy_eyeballs_delay=0.05
            )

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt), "happy_eyeballs_exception_cycle")


@requires("create_connection", "all_errors")
def test_create_connection_all_errors(loop, loop_kind):
    async def attempt():
        with pytest.raises(ExceptionGroup):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", free_port(), all_errors=True
            )

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_create_connection_local_bind_fails(loop, loop_kind):
    async def attempt():
        await connect_from_busy_address(loop)

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_create_unix_connection_missing_path(loop, loop_kind, tmp_path):
    async def attempt():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(asyncio.Protocol, str(tmp_path / "missing.sock"))

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_sock_connect_cancelled(loop, loop_kind):
    async def attempt():
        with socket.socket() as sock:
            sock.setblocking(False)
            task = loop.create_task(loop.sock_connect(sock, ("127.0.0.1", free_port())))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises((asyncio.CancelledError, ConnectionRefusedError)):
                await task
            task = None  # the task holds its exception, whose traceback holds this frame

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


# -- servers ---------------------------------------------------------------------------------


def test_create_server_address_in_use(loop, loop_kind):
    async def attempt():
        await serve_on_busy_address(loop)

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_create_unix_server_bind_fails(loop, loop_kind, tmp_path):
    async def attempt():
        with pytest.raises(OSError):
            await loop.create_unix_server(asyncio.Protocol, str(tmp_path / "no" / "dir.sock"))

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_sock_accept_cancelled(loop, loop_kind):
    async def attempt():
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.setblocking(False)
            task = loop.create_task(loop.sock_accept(listener))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            task = None

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


# -- receiving and sending -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sock_recv", "sock_recv_into"])
def test_sock_recv_reset_while_waiting(loop, loop_kind, method):
    async def attempt():
        client, reset = reset_pair()
        with client:
            loop.call_later(0.01, reset)
            arg = 10 if method == "sock_recv" else bytearray(10)
            with pytest.raises(ConnectionResetError):
                await getattr(loop, method)(client, arg)

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt), "sock_recv_exception_cycle")


def test_sock_recv_reset_at_once(loop, loop_kind):
    async def attempt():
        client, reset = reset_pair()
        with client:
            reset()
            await asyncio.sleep(0.01)
            with pytest.raises(ConnectionResetError):
                await loop.sock_recv(client, 10)

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_sock_sendall_to_reset_peer(loop, loop_kind):
    async def attempt():
        client, reset = reset_pair()
        with client:
            reset()
            await asyncio.sleep(0.01)
            with pytest.raises(OSError):
                for _ in range(4):
                    await loop.sock_sendall(client, b"x" * 1_000_000)

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_sock_sendfile_not_available(loop, loop_kind):
    async def attempt():
        client, reset = reset_pair()
        with client:
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sock_sendfile(client, io.BytesIO(b"data"), fallback=False)
            reset()

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_sock_sendfile_peer_reset(loop, loop_kind):
    async def attempt():
        client, reset = reset_pair()
        with client, tempfile.TemporaryFile() as file:
            file.write(b"x" * (8 << 20))
            file.seek(0)
            reset()
            await asyncio.sleep(0.01)
            with pytest.raises(OSError):
                await loop.sock_sendfile(client, file)

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt), "sock_sendfile_exception_cycle")


def test_serve_forever_cancelled(loop, loop_kind):
    async def attempt():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        task = None
        await server.wait_closed()

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))


def test_loop_sendfile_peer_reset(loop, loop_kind):
    async def attempt():
        client, reset = reset_pair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, client)
        try:
            with tempfile.TemporaryFile() as file:
                file.write(b"x" * (8 << 20))
                file.seek(0)
                reset()
                await asyncio.sleep(0.01)
                with pytest.raises((OSError, RuntimeError)):
                    await loop.sendfile(transport, file)
        finally:
            transport.close()
            await asyncio.sleep(0)

    expect_no_cycles(loop_kind, cycle_garbage(loop, attempt))
