"""asyncio streams on the loop's transports and servers: open_connection/start_server over
loopback TCP (port 0) and open_unix_connection/start_unix_server in a temporary directory."""

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile

import pytest

TIMEOUT = 10.0
MiB = 1024 * 1024


@pytest.fixture(params=["tcp", "unix"])
def family(request):
    return request.param


@pytest.fixture
def short_tmp():
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="tl-", dir="/tmp") as d:
        yield d


def timed(coro, what="operation"):
    async def run():
        try:
            return await asyncio.wait_for(coro, TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out: {what}") from None

    return run()


class Handlers:
    """Wraps a client_connected_cb and tracks the handler tasks so tests can wait for them."""

    def __init__(self, body):
        self.body = body
        self.started = 0
        self.finished = 0
        self.errors = []
        self._wakeup = None

    async def __call__(self, reader, writer):
        self.started += 1
        try:
            await self.body(reader, writer)
        except Exception as exc:  # surfaced by wait_all
            self.errors.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.finished += 1
            w = self._wakeup
            if w is not None and not w.done():
                w.set_result(None)

    async def wait_all(self, n):
        async def wait():
            while self.finished < n:
                self._wakeup = asyncio.get_running_loop().create_future()
                await self._wakeup

        await timed(wait(), f"{n} server handlers to finish ({self.finished} did)")
        assert self.errors == []


@contextlib.asynccontextmanager
async def serving(body, family, path_dir=None, **kwargs):
    """Start a server running ``body(reader, writer)`` per connection; yields (handlers,
    connect) where ``connect(**kw)`` opens a client (reader, writer) to it."""
    handlers = Handlers(body)
    if family == "tcp":
        server = await timed(asyncio.start_server(handlers, "127.0.0.1", 0, **kwargs),
                             "start_server")
        host, port = server.sockets[0].getsockname()[:2]
        assert host == "127.0.0.1" and port > 0

        def connect(**kw):
            return timed(asyncio.open_connection(host, port, **kw), "open_connection")
    else:
        path = os.path.join(path_dir, "sock")
        server = await timed(asyncio.start_unix_server(handlers, path, **kwargs),
                             "start_unix_server")
        assert server.sockets[0].getsockname() == path
        assert os.path.exists(path)

        def connect(**kw):
            return timed(asyncio.open_unix_connection(path, **kw), "open_unix_connection")
    try:
        assert server.is_serving()
        yield handlers, connect
    finally:
        server.close()
        await timed(server.wait_closed(), "server.wait_closed")
        assert not server.is_serving()


async def close_writer(writer):
    writer.close()
    assert writer.is_closing()
    await timed(writer.wait_closed(), "writer.wait_closed")


async def echo_lines(reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        writer.write(line)
        await writer.drain()


async def echo_chunks(reader, writer):
    while True:
        data = await reader.read(64 * 1024)
        if not data:
            break
        writer.write(data)
        await writer.drain()


def sends_then_closes(payload):
    async def body(reader, writer):
        writer.write(payload)
        await writer.drain()

    return body


def test_echo_lines(loop, family, short_tmp):
    async def main():
        async with serving(echo_lines, family, short_tmp) as (handlers, connect):
            reader, writer = await connect()
            for line in (b"hello\n", b"world\n", b"\n", b"last line\n"):
                writer.write(line)
                await writer.drain()
                assert await timed(reader.readline()) == line
            writer.writelines([b"a", b"b\n", b"c\n"])
            assert await timed(reader.readline()) == b"ab\n"
            assert await timed(reader.readline()) == b"c\n"
            assert writer.can_write_eof()
            writer.write_eof()  # server's readline sees EOF, its handler closes
            assert await timed(reader.read()) == b""
            assert reader.at_eof()
            await close_writer(writer)
            await handlers.wait_all(1)

    loop.run_until_complete(main())


def test_extra_info(loop, family, short_tmp):
    seen = {}

    async def body(reader, writer):
        seen["peername"] = writer.get_extra_info("peername")
        seen["sockname"] = writer.get_extra_info("sockname")
        if family == "tcp":
            sock = writer.get_extra_info("socket")
            seen["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.write(b"!")
        await reader.read()

    async def main():
        async with serving(body, family, short_tmp) as (handlers, connect):
            reader, writer = await connect()
            assert await timed(reader.readexactly(1)) == b"!"
            sock = writer.get_extra_info("socket")
            assert sock is not None
            assert writer.get_extra_info("sockname") == sock.getsockname()
            assert writer.get_extra_info("peername") == sock.getpeername()
            if family == "tcp":
                # asyncio disables Nagle on both ends (sockets made with proto=IPPROTO_TCP).
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert seen["nodelay"]
                assert seen["peername"] == writer.get_extra_info("sockname")
                assert seen["sockname"] == writer.get_extra_info("peername")
            else:
                assert writer.get_extra_info("peername") == os.path.join(short_tmp, "sock")
                assert seen["sockname"] == os.path.join(short_tmp, "sock")
            await close_writer(writer)
            await handlers.wait_all(1)

    loop.run_until_complete(main())


def test_readexactly_and_incomplete_read(loop, family, short_tmp):
    async def main():
        async with serving(sends_then_closes(b"0123456789abc"), family,
                           short_tmp) as (handlers, connect):
            reader, writer = await connect()
            assert await timed(reader.readexactly(4)) == b"0123"
            assert await timed(reader.readexactly(6)) == b"456789"
            assert await timed(reader.readexactly(0)) == b""
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await timed(reader.readexactly(5))
            err = info.value
            assert err.partial == b"abc"
            assert err.expected == 5
            assert str(err) == "3 bytes read on a total of 5 expected bytes"
            assert isinstance(err, EOFError)
            assert reader.at_eof()
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await timed(reader.readexactly(1))
            assert info.value.partial == b""
            with pytest.raises(ValueError, match="readexactly size can not be less than zero"):
                await reader.readexactly(-1)
            await close_writer(writer)
            await handlers.wait_all(1)

    loop.run_until_complete(main())


def test_readuntil(loop, family, short_tmp):
    async def main():
        async with serving(sends_then_closes(b"alpha||beta||gamma"), family,
                           short_tmp) as (handlers, connect):
            reader, writer = await connect()
            assert await timed(reader.readuntil(b"||")) == b"alpha||"
            assert await timed(reader.readuntil(b"||")) == b"beta||"
            with pytest.raises(ValueError, match="Separator should be at least one-byte string"):
                await reader.readuntil(b"")
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await timed(reader.readuntil(b"||"))
            assert info.value.partial == b"gamma"
            assert info.value.expected is None
            assert reader.at_eof()
            await close_writer(writer)
            await handlers.wait_all(1)

    loop.run_until_complete(main())


def test_reader_at_eof(loop, family, short_tmp):
    async def main():
        async with serving(sends_then_closes(b"bye"), family, short_tmp) as (handlers, connect):
            reader, writer = await connect()
            assert await timed(reader.read()) == b"bye"
            assert reader.at_eof()
            assert await timed(reader.read()) == b""
            assert await timed(reader.read(10)) == b""
            assert await timed(reader.readline()) == b""
            assert reader.exception() is None
            await close_writer(writer)
            await handlers.wait_all(1)

    loop.run_until_complete(main())


def test_limit_overrun(loop, family, short_tmp):
    long_line = b"x" * 40 + b"\n"

    async def main():
        async with serving(sends_then_closes(long_line + b"ok\n"), family,
                           short_tmp) as (handlers, connect):
            reader, writer = await connect(limit=16)
            # Wait until everything has arrived (and the reader paused its transport at 2*limit).
            await handlers.wait_all(1)
            with pytest.raises(asyncio.LimitOverrunError) as info:
                await timed(reader.readuntil(b"\n"))
            assert info.value.consumed > 16
            assert str(info.value).startswith("Separator")
            # Nothing was consumed: the whole line is still there.
            assert await timed(reader.readexactly(len(long_line))) == long_line
            assert await timed(reader.readline()) == b"ok\n"
            assert await timed(reader.read()) == b""
            await close_writer(writer)

    loop.run_until_complete(main())


def test_readline_limit_overrun_raises_value_error(loop, family, short_tmp):
    async def main():
        async with serving(sends_then_closes(b"y" * 40 + b"\nok\n"), family,
                           short_tmp) as (handlers, connect):
            reader, writer = await connect(limit=16)
            await handlers.wait_all(1)
            with pytest.raises(ValueError, match="Separator is found, but chunk is longer"):
                await timed(reader.readline())
            # readline dropped the overlong line, separator included.
            assert await timed(reader.readline()) == b"ok\n"
            await close_writer(writer)

    loop.run_until_complete(main())


def test_large_payload_echo(loop, family, short_tmp):
    payload = os.urandom(4 * MiB)

    async def main():
        async with serving(echo_chunks, family, short_tmp) as (handlers, connect):
            reader, writer = await connect()

            async def send():
                view = memoryview(payload)
                for i in range(0, len(view), 256 * 1024):
                    writer.write(view[i:i + 256 * 1024])
                    await writer.drain()
                writer.write_eof()

            sent, got = await timed(asyncio.gather(send(), reader.read()), "4 MiB echo")
            assert len(got) == len(payload)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            assert reader.at_eof()
            await close_writer(writer)
            await handlers.wait_all(1)

    loop.run_until_complete(main())


def test_drain_waits_for_slow_reader(loop, family, short_tmp):
    size = MiB

    async def main():
        release = asyncio.Event()

        async def body(reader, writer):
            await release.wait()
            total = 0
            while True:
                data = await reader.read(16 * 1024)
                if not data:
                    break
                total += len(data)
            writer.write(str(total).encode())
            await writer.drain()

        async with serving(body, family, short_tmp) as (handlers, connect):
            reader, writer = await connect()
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            writer.write(b"d" * size)
            transport = writer.transport
            assert transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
            drain = asyncio.ensure_future(writer.drain())
            # The server is not reading: the drain cannot complete however long we wait.
            done, _ = await asyncio.wait([drain], timeout=0.2)
            assert not done
            assert transport.get_write_buffer_size() > 0
            release.set()
            await timed(drain, "drain after the server started reading")
            assert transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[0]
            writer.write_eof()
            assert await timed(reader.read()) == str(size).encode()
            await close_writer(writer)
            await handlers.wait_all(1)

    loop.run_until_complete(main())


def test_drain_loop_with_slow_reader(loop, family, short_tmp):
    chunk = os.urandom(64 * 1024)
    count = 64

    async def main():
        digest = hashlib.sha256()

        async def body(reader, writer):
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                digest.update(data)
                await asyncio.sleep(0)

        async with serving(body, family, short_tmp) as (handlers, connect):
            reader, writer = await connect()
            for _ in range(count):
                writer.write(chunk)
                await timed(writer.drain())
                assert writer.transport.get_write_buffer_size() <= 64 * 1024
            await close_writer(writer)
            await handlers.wait_all(1)
        assert digest.digest() == hashlib.sha256(chunk * count).digest()

    loop.run_until_complete(main())


def test_close_and_wait_closed(loop, family, short_tmp):
    seen = []

    async def body(reader, writer):
        seen.append(await reader.read())
        seen.append(reader.at_eof())

    async def main():
        async with serving(body, family, short_tmp) as (handlers, connect):
            reader, writer = await connect()
            writer.write(b"parting words")
            assert not writer.is_closing()
            writer.close()
            assert writer.is_closing()
            await timed(writer.wait_closed())
            await timed(writer.wait_closed())  # again: returns at once
            await handlers.wait_all(1)
            assert seen == [b"parting words", True]
            # The server's close reaches our reader as EOF.
            assert await timed(reader.read()) == b""

    loop.run_until_complete(main())


def test_server_closes_connection_client_sees_eof(loop, family, short_tmp):
    async def body(reader, writer):
        writer.write(b"goodbye\n")

    async def main():
        async with serving(body, family, short_tmp) as (handlers, connect):
            reader, writer = await connect()
            assert await timed(reader.readline()) == b"goodbye\n"
            assert await timed(reader.readline()) == b""
            assert reader.at_eof()
            await handlers.wait_all(1)
            await close_writer(writer)

    loop.run_until_complete(main())


def test_many_concurrent_clients(loop, family, short_tmp):
    clients = 50

    async def main():
        async with serving(echo_lines, family, short_tmp) as (handlers, connect):

            async def client(i):
                reader, writer = await connect()
                try:
                    for j in range(3):
                        line = f"client {i} line {j}\n".encode()
                        writer.write(line)
                        await writer.drain()
                        assert await reader.readline() == line
                finally:
                    await close_writer(writer)
                return i

            results = await timed(asyncio.gather(*(client(i) for i in range(clients))),
                                  f"{clients} echo clients")
            assert results == list(range(clients))
            await handlers.wait_all(clients)
            assert handlers.started == clients

    loop.run_until_complete(main())


def test_connection_refused(loop, family, short_tmp):
    async def main():
        if family == "tcp":
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))  # bound, not listening
            port = probe.getsockname()[1]
            try:
                with pytest.raises(ConnectionRefusedError):
                    await timed(asyncio.open_connection("127.0.0.1", port))
            finally:
                probe.close()
        else:
            with pytest.raises(FileNotFoundError):
                await timed(asyncio.open_unix_connection(os.path.join(short_tmp, "missing")))

    loop.run_until_complete(main())
