"""Under blockbuster, the loop itself makes no blocking call that would be flagged.

Test suites (aiohttp's, for one) run their async tests under ``blockbuster``, which patches
blocking functions (os.sendfile, os.stat, os.unlink, file reads, blocking socket calls...) to
raise ``BlockingError`` when called on a thread running an event loop. The stdlib's own calls
are allow-listed by function name; tokioloop makes its syscalls natively, so nothing of ours
is seen. Each test runs on both loops: the stdlib shows the scenario itself is clean.
"""

import asyncio
import os
import socket
import sys
import tempfile

import pytest
from _stdlib import loop_has

blockbuster = pytest.importorskip("blockbuster")

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Collect(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(bytes(self.data))


def run_under_blockbuster(loop, coro):
    # A call blockbuster refuses inside a loop callback goes to the exception handler and
    # leaves its future pending: the time limit turns that hang into a failure.
    with blockbuster.blockbuster_ctx():
        return loop.run_until_complete(asyncio.wait_for(coro, 30))


def removes_socket_file(loop):
    """Whether closing a Unix server removes its socket file: asyncio does since 3.13
    (cleanup_socket), and tokioloop follows the running version."""
    return loop_has("create_unix_server", "cleanup_socket")


@pytest.fixture
def payload_path(tmp_path):
    path = tmp_path / "payload.bin"
    path.write_bytes(PAYLOAD)
    return path


async def _sendfile_roundtrip(loop, file, server_factory, client_factory):
    received = []

    def make_protocol():
        protocol = Collect()
        received.append(protocol)
        return protocol

    server = await server_factory(make_protocol)
    try:
        transport, _ = await client_factory()
        sent = await loop.sendfile(transport, file)
        transport.close()
        while not received:
            await asyncio.sleep(0)
        data = await received[0].done
    finally:
        server.close()
        await server.wait_closed()
    return sent, data


def test_tcp_sendfile(loop, payload_path):
    async def main():
        with open(payload_path, "rb") as file:  # opened outside the loop's sight below
            port = []

            async def serve(factory):
                server = await loop.create_server(factory, "127.0.0.1", 0)
                port.append(server.sockets[0].getsockname()[1])
                return server

            async def connect():
                return await loop.create_connection(asyncio.Protocol, "127.0.0.1", port[0])

            return await _sendfile_roundtrip(loop, file, serve, connect)

    sent, data = run_under_blockbuster(loop, main())
    assert sent == len(PAYLOAD)
    assert data == PAYLOAD


def test_sock_sendfile(loop, payload_path):
    async def main():
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        with listener, client, open(payload_path, "rb") as file:
            await loop.sock_connect(client, listener.getsockname())
            peer, _ = await loop.sock_accept(listener)
            with peer:
                sent = await loop.sock_sendfile(client, file)
                client.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := await loop.sock_recv(peer, 65536):
                    chunks.append(chunk)
        return sent, b"".join(chunks)

    sent, data = run_under_blockbuster(loop, main())
    assert sent == len(PAYLOAD)
    assert data == PAYLOAD


@pytest.fixture
def socket_path():
    """A path for a Unix server's socket file (short: AF_UNIX paths are limited to ~100
    bytes), removed at teardown if the test left it."""
    directory = tempfile.mkdtemp(prefix="tl-bb-")
    path = os.path.join(directory, "s.sock")
    yield path
    if os.path.exists(path):
        os.unlink(path)
    os.rmdir(directory)


def test_unix_server_create_sendfile_close(loop, payload_path, socket_path):
    async def main():
        with open(payload_path, "rb") as file:

            async def serve(factory):
                return await loop.create_unix_server(factory, socket_path)

            async def connect():
                return await loop.create_unix_connection(asyncio.Protocol, socket_path)

            return await _sendfile_roundtrip(loop, file, serve, connect)

    sent, data = run_under_blockbuster(loop, main())
    assert sent == len(PAYLOAD)
    assert data == PAYLOAD
    assert os.path.exists(socket_path) != removes_socket_file(loop)


def test_unix_server_replaces_stale_socket_file(loop, socket_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(socket_path)
    stale.close()  # leaves the socket file behind

    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, socket_path)
        server.close()
        await server.wait_closed()

    if loop.__class__.__module__.startswith("asyncio"):
        # The stdlib's stale-file removal (os.remove) is not on blockbuster's list.
        with pytest.raises(blockbuster.BlockingError):
            run_under_blockbuster(loop, main())
        loop.run_until_complete(main())
    else:
        run_under_blockbuster(loop, main())
    assert os.path.exists(socket_path) != removes_socket_file(loop)


def test_serve_forever_cancelled(loop, socket_path):
    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, socket_path)
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_under_blockbuster(loop, main())
    assert os.path.exists(socket_path) != removes_socket_file(loop)



def test_shutdown_default_executor(loop_factory):
    # asyncio.run ends with it: its thread hand-over (and join) must not be flagged.
    async def main(loop):
        await loop.run_in_executor(None, sum, [1, 2])
        await loop.shutdown_default_executor()

    for _ in range(10):
        loop = loop_factory()
        try:
            run_under_blockbuster(loop, main(loop))
        finally:
            loop.close()


# -- subprocesses ----------------------------------------------------------------------------
# Popen waits for the child's exec with a blocking os.read of an error pipe. blockbuster lets
# that read through when a calling frame is asyncio/base_events.py's subprocess_exec or
# subprocess_shell: the loop must start children beneath those frames, and no other blocking
# call may be let through with them.


async def _run_child(loop, start):
    proc = await start()
    out, _ = await proc.communicate()
    return proc.returncode, out


@pytest.mark.parametrize("how", ["exec", "shell"])
def test_subprocess_start(loop, how):
    async def start():
        if how == "exec":
            return await asyncio.create_subprocess_exec(
                sys.executable, "-c", "print('hi')", stdout=asyncio.subprocess.PIPE)
        return await asyncio.create_subprocess_shell(
            "echo hi", stdout=asyncio.subprocess.PIPE)

    assert run_under_blockbuster(loop, _run_child(loop, start)) == (0, b"hi\n")


def test_subprocess_exec_failure(loop):
    # The exec error comes back through the same pipe read.
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/tokioloop-test-program")

    run_under_blockbuster(loop, main())


def test_blocking_read_beside_subprocess_still_flagged(loop):
    # The allowance covers the child's start only: the same call made by the coroutine that
    # started it is refused.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # a write that cannot block is not flagged

    async def main():
        await _run_child(loop, lambda: asyncio.create_subprocess_exec(sys.executable, "-c", ""))
        os.write(write_end, b"x")
        with pytest.raises(blockbuster.BlockingError):
            os.read(read_end, 1)

    try:
        run_under_blockbuster(loop, main())
    finally:
        os.close(read_end)
        os.close(write_end)
