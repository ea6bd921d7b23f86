"""The low-level socket API: loop.sock_* coroutines, on socketpairs and loopback sockets."""

import asyncio
import errno
import io
import os
import socket
import ssl

import pytest
from _stdlib import loop_has, requires

from _netutil import PAYLOAD, listener, needs_ipv6, read_all


@pytest.fixture
def pair(sockets):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return sockets(a, b)


def tcp_client(sockets, family=socket.AF_INET):
    c = sockets(socket.socket(family, socket.SOCK_STREAM))
    c.setblocking(False)
    return c


def test_recv_ready_at_once(loop, pair):
    a, b = pair
    b.send(b"hello")
    assert loop.run_until_complete(loop.sock_recv(a, 100)) == b"hello"


def test_recv_waits_for_data(loop, pair):
    a, b = pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not task.done()
        loop.call_soon(b.send, b"later")
        return await task

    assert loop.run_until_complete(main()) == b"later"


def test_recv_into_and_partial(loop, pair):
    a, b = pair

    async def main():
        buf = bytearray(4)
        task = asyncio.ensure_future(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0)
        b.send(b"abcdef")
        n = await task
        rest = await loop.sock_recv(a, 100)
        return n, bytes(buf), rest

    assert loop.run_until_complete(main()) == (4, b"abcd", b"ef")


def test_recv_eof_returns_empty(loop, pair):
    a, b = pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        b.close()
        return await task

    assert loop.run_until_complete(main()) == b""


def test_recv_connection_reset(loop, sockets):
    srv = listener(sockets)
    client = tcp_client(sockets)

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        await loop.sock_connect(client, srv.getsockname())
        conn, _ = await accept
        sockets(conn)
        recv = asyncio.ensure_future(loop.sock_recv(client, 10))
        await asyncio.sleep(0)
        # An abortive close (RST): linger on, timeout zero.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()
        with pytest.raises(ConnectionResetError):
            await recv

    loop.run_until_complete(main())


def test_cancel_recv_removes_reader(loop, pair):
    a, b = pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The watch is gone: the fd can be watched afresh and data is still there to read.
        b.send(b"x")
        assert await loop.sock_recv(a, 10) == b"x"

    loop.run_until_complete(main())
    # Teardown fails if a reader leaked.


def test_cancel_accept_removes_reader(loop, sockets):
    srv = listener(sockets)

    async def main():
        task = asyncio.ensure_future(loop.sock_accept(srv))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop.run_until_complete(main())


def test_second_recv_takes_over_the_watch(loop, pair):
    # As asyncio's selector loop: the second add_reader replaces the first, whose future is
    # never resolved; cancelling the first afterwards does not remove the second's watch.
    a, b = pair

    async def main():
        first = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        b.send(b"data")
        assert await second == b"data"
        assert first.cancelled()

    loop.run_until_complete(main())


def test_sendall_large_with_slow_reader(loop, pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = os.urandom(4 * 1024 * 1024)

    async def reader():
        chunks = []
        total = 0
        while total < len(payload):
            data = await loop.sock_recv(b, 1000)
            assert data
            chunks.append(data)
            total += len(data)
            await asyncio.sleep(0)
        return b"".join(chunks)

    async def main():
        rtask = asyncio.ensure_future(reader())
        await loop.sock_sendall(a, payload)
        return await rtask

    assert loop.run_until_complete(main()) == payload


def test_sendall_memoryview_and_empty(loop, pair):
    a, b = pair

    async def main():
        assert await loop.sock_sendall(a, memoryview(b"abc")) is None
        assert await loop.sock_sendall(a, b"") is None
        return await loop.sock_recv(b, 10)

    assert loop.run_until_complete(main()) == b"abc"


def test_sendall_to_closed_peer(loop, pair):
    a, b = pair
    b.close()

    async def main():
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            await loop.sock_sendall(a, b"x" * 1024)

    loop.run_until_complete(main())


def test_sendall_cancel_removes_writer(loop, pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendall(a, b"x" * (8 * 1024 * 1024)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop.run_until_complete(main())


def test_tcp_connect_accept_roundtrip(loop, sockets):
    srv = listener(sockets)
    client = tcp_client(sockets)

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        assert await loop.sock_connect(client, srv.getsockname()) is None
        conn, addr = await accept
        sockets(conn)
        assert conn.gettimeout() == 0  # accepted sockets are non-blocking
        assert addr == client.getsockname()
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(conn, 10) == b"ping"
        await loop.sock_sendall(conn, b"pong")
        return await loop.sock_recv(client, 10)

    assert loop.run_until_complete(main()) == b"pong"


@needs_ipv6
def test_tcp_ipv6_roundtrip(loop, sockets):
    srv = listener(sockets, socket.AF_INET6, "::1")
    client = tcp_client(sockets, socket.AF_INET6)

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        await loop.sock_connect(client, ("::1", srv.getsockname()[1]))
        conn, _ = await accept
        sockets(conn)
        await loop.sock_sendall(conn, b"six")
        return await loop.sock_recv(client, 10)

    assert loop.run_until_complete(main()) == b"six"


def test_connect_resolves_localhost(loop, sockets):
    srv = listener(sockets)
    client = tcp_client(sockets)
    seen = []
    real = loop.getaddrinfo

    async def spy(*args, **kwargs):
        seen.append(args)
        return await real(*args, **kwargs)

    loop.getaddrinfo = spy

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        await loop.sock_connect(client, ("localhost", srv.getsockname()[1]))
        conn, _ = await accept
        sockets(conn)
        # A numeric address does not go through getaddrinfo.
        other = tcp_client(sockets)
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        await loop.sock_connect(other, srv.getsockname())
        sockets((await accept)[0])

    try:
        loop.run_until_complete(main())
    finally:
        del loop.getaddrinfo
    assert seen == [("localhost", srv.getsockname()[1])]


def test_connect_refused(loop, sockets):
    probe = sockets(socket.socket())
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]  # bound, not listening: connections are refused
    client = tcp_client(sockets)

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.sock_connect(client, ("127.0.0.1", port))
        return info.value

    exc = loop.run_until_complete(main())
    assert exc.errno == errno.ECONNREFUSED


def test_connect_unix_socketpair_path(loop, sockets, tmp_path):
    path = str(tmp_path / "s")
    srv = sockets(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    srv.bind(path)
    srv.listen(1)
    srv.setblocking(False)
    client = sockets(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    client.setblocking(False)

    async def main():
        await loop.sock_connect(client, path)
        conn, _ = await loop.sock_accept(srv)
        sockets(conn)
        await loop.sock_sendall(client, b"unix")
        return await loop.sock_recv(conn, 10)

    assert loop.run_until_complete(main()) == b"unix"


@requires("sock_recvfrom")
def test_udp_sendto_recvfrom(loop, sockets):
    a = sockets(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    b = sockets(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    for s in (a, b):
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))

    async def main():
        recv = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0)
        assert not recv.done()
        assert await loop.sock_sendto(a, b"datagram", b.getsockname()) == 8
        data, addr = await recv
        assert (data, addr) == (b"datagram", a.getsockname())
        buf = bytearray(16)
        await loop.sock_sendto(b, b"reply", a.getsockname())
        n, addr = await loop.sock_recvfrom_into(a, buf)
        assert (n, bytes(buf[:n]), addr) == (5, b"reply", b.getsockname())
        await loop.sock_sendto(b, b"truncate", a.getsockname())
        buf = bytearray(16)
        n, addr = await loop.sock_recvfrom_into(a, buf, 3)
        assert (n, bytes(buf[:4])) == (3, b"tru\x00")

    loop.run_until_complete(main())


@requires("sock_recvfrom")
def test_recvfrom_cancel_removes_reader(loop, sockets):
    s = sockets(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.setblocking(False)
    s.bind(("127.0.0.1", 0))

    async def main():
        task = asyncio.ensure_future(loop.sock_recvfrom(s, 10))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop.run_until_complete(main())


SOCK_CALLS = [
    ("sock_recv", lambda s: (s, 10)),
    ("sock_recv_into", lambda s: (s, bytearray(10))),
    ("sock_recvfrom", lambda s: (s, 10)),
    ("sock_recvfrom_into", lambda s: (s, bytearray(10))),
    ("sock_sendall", lambda s: (s, b"x")),
    ("sock_sendto", lambda s: (s, b"x", ("127.0.0.1", 9))),
    ("sock_connect", lambda s: (s, ("127.0.0.1", 9))),
    ("sock_accept", lambda s: (s,)),
]
SOCK_CALLS = [(name, args) for name, args in SOCK_CALLS if loop_has(name)]


@pytest.mark.parametrize("name,args", SOCK_CALLS, ids=[n for n, _ in SOCK_CALLS])
def test_blocking_socket_rejected_in_debug(loop, sockets, name, args):
    s = sockets(socket.socket())
    assert s.gettimeout() is None
    loop.set_debug(True)
    with pytest.raises(ValueError, match="the socket must be non-blocking"):
        loop.run_until_complete(getattr(loop, name)(*args(s)))


def test_blocking_socket_not_checked_without_debug(loop, pair):
    # asyncio checks the timeout in debug mode only; a ready blocking socket just works.
    a, b = pair
    a.setblocking(True)
    b.send(b"ok")
    assert loop.run_until_complete(loop.sock_recv(a, 10)) == b"ok"


@pytest.mark.parametrize("name,args", SOCK_CALLS, ids=[n for n, _ in SOCK_CALLS])
def test_ssl_socket_rejected(loop, sockets, name, args):
    ctx = ssl.create_default_context()
    s = sockets(ctx.wrap_socket(socket.socket(), do_handshake_on_connect=False,
                                server_hostname="x"))
    with pytest.raises(TypeError, match="SSLSocket"):
        loop.run_until_complete(getattr(loop, name)(*args(s)))


# -- sock_sendfile -------------------------------------------------------------------------

def _sendfile_roundtrip(loop, pair, file, **kwargs):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def main():
        count = kwargs.get("count")
        offset = kwargs.get("offset", 0)
        expect = (count if count else len(PAYLOAD) - offset)
        reader = asyncio.ensure_future(read_all(loop, b, expect))
        sent = await loop.sock_sendfile(a, file, **kwargs)
        return sent, await reader

    return loop.run_until_complete(main())


def test_sendfile_whole(loop, pair, payload_file):
    sent, got = _sendfile_roundtrip(loop, pair, payload_file)
    assert sent == len(PAYLOAD)
    assert got == PAYLOAD
    assert payload_file.tell() == len(PAYLOAD)


def test_sendfile_offset_count(loop, pair, payload_file):
    sent, got = _sendfile_roundtrip(loop, pair, payload_file, offset=1000, count=300000)
    assert sent == 300000
    assert got == PAYLOAD[1000:301000]
    assert payload_file.tell() == 301000


def test_sendfile_fallback_offset_count(loop, pair, payload_file):
    # A file object without fileno(): only the read + sock_sendall path can send it.
    class Plain:
        mode = "rb"

        def __init__(self, f):
            self._f = f

        def readinto(self, buf):
            return self._f.readinto(buf)

        def seek(self, pos):
            return self._f.seek(pos)

    plain = Plain(payload_file)
    sent, got = _sendfile_roundtrip(loop, pair, plain, offset=10, count=200000)
    assert sent == 200000
    assert got == PAYLOAD[10:200010]
    assert payload_file.tell() == 200010


def test_sendfile_no_fallback_raises(loop, pair):
    class Plain:
        mode = "rb"

        def readinto(self, buf):
            return 0

    a, _ = pair
    with pytest.raises(asyncio.SendfileNotAvailableError):
        loop.run_until_complete(loop.sock_sendfile(a, Plain(), fallback=False))


def test_sendfile_empty_file(loop, pair, tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        assert loop.run_until_complete(loop.sock_sendfile(pair[0], f)) == 0


def test_sendfile_param_checks(loop, sockets, pair, payload_file, tmp_path):
    a, _ = pair
    udp = sockets(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    udp.setblocking(False)
    text = tmp_path / "t.txt"
    text.write_text("x")
    run = loop.run_until_complete
    with pytest.raises(ValueError, match="only SOCK_STREAM"):
        run(loop.sock_sendfile(udp, payload_file))
    with open(text, "r") as tf:
        with pytest.raises(ValueError, match="binary mode"):
            run(loop.sock_sendfile(a, tf))
    with pytest.raises(ValueError, match="count must be a positive integer"):
        run(loop.sock_sendfile(a, payload_file, count=0))
    with pytest.raises(TypeError, match="count must be a positive integer"):
        run(loop.sock_sendfile(a, payload_file, count=1.5))
    with pytest.raises(ValueError, match="offset must be a non-negative integer"):
        run(loop.sock_sendfile(a, payload_file, offset=-1))
    with pytest.raises(TypeError, match="offset must be a non-negative integer"):
        run(loop.sock_sendfile(a, payload_file, offset="1"))
    blocking = sockets(socket.socket())
    loop.set_debug(True)
    with pytest.raises(ValueError, match="the socket must be non-blocking"):
        run(loop.sock_sendfile(blocking, payload_file))


def test_sendfile_cancel_removes_writer(loop, pair, payload_file):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendfile(a, payload_file))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop.run_until_complete(main())


def test_sendfile_peer_closed(loop, pair, payload_file):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendfile(a, payload_file))
        await asyncio.sleep(0)
        b.close()
        with pytest.raises(OSError):
            await task

    loop.run_until_complete(main())


@requires("sock_sendto")
def test_sendto_retries_after_blocking(loop, sockets):
    # The retry looks the method up on the socket again each time (as asyncio does), so a
    # sendto that would block first is retried from the writer callback.
    a = sockets(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    b = sockets(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    for s in (a, b):
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))

    class Flaky:
        def __init__(self, sock):
            self._sock = sock
            self.calls = 0

        def __getattr__(self, name):
            return getattr(self._sock, name)

        def sendto(self, *args):
            self.calls += 1
            if self.calls == 1:
                raise BlockingIOError
            return self._sock.sendto(*args)

    flaky = Flaky(a)

    async def main():
        assert await loop.sock_sendto(flaky, b"retry", b.getsockname()) == 5
        return await loop.sock_recvfrom(b, 100)

    assert loop.run_until_complete(main()) == (b"retry", a.getsockname())
    assert flaky.calls == 2


def test_user_reader_added_during_recv_survives_its_cancellation(loop, pair):
    a, b = pair
    calls = []

    async def main():
        waiting = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        # User code takes the fd over while sock_recv waits, as with the stdlib selector loop.
        loop.add_reader(a, lambda: calls.append(a.recv(10)))
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        b.send(b"x")
        for _ in range(50):
            if calls:
                break
            await asyncio.sleep(0.01)
        assert loop.remove_reader(a) is True

    loop.run_until_complete(main())
    assert calls == [b"x"]


def test_sendfile_fallback_start_after_reads(loop, pair):
    """The fallback (a file without fileno()) with offset 0 and a file already read from:
    3.14 seeks to the offset and sends it all; before it the send starts where the file is."""
    from tokioloop import _compat

    data = bytes(range(256)) * 4
    file = io.BytesIO(data)
    file.read(100)
    expected = data if _compat.SENDFILE_FALLBACK_SEEKS_TO_OFFSET else data[100:]
    a, b = pair

    async def main():
        reader = asyncio.ensure_future(read_all(loop, b, len(expected)))
        sent = await loop.sock_sendfile(a, file, 0)
        return sent, await reader

    assert loop.run_until_complete(main()) == (len(expected), expected)
    # Both then leave the file at offset + bytes sent (so 3.13 "rewinds" it to 924 here).
    assert file.tell() == len(expected)
