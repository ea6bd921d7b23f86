"""Outgoing connections: loop.create_connection (resolution, several addresses, happy eyeballs,
interleaving, error reporting, local_addr, sock=), create_unix_connection,
connect_accepted_socket and loop.sendfile (zero-copy and fallback).

Peers are plain sockets driven through the loop's sock_* API, so these tests depend on nothing
but the code under test. Several tests replace ``loop.getaddrinfo`` or ``loop.sock_connect`` on
the loop instance (both loops look them up there) to control what is resolved or connected.
"""

import asyncio
import errno
import io
import os
import pathlib
import socket
import ssl
import sys

import pytest
from _stdlib import loop_has, requires
from tokioloop import _compat

from _netutil import HAS_IPV6, PAYLOAD, check_unix_arguments, listener, needs_ipv6, read_all
from conftest import tokioloop_only

needs_exception_group = pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup")


def refused_address(family=socket.AF_INET, host="127.0.0.1"):
    """An address nothing listens on (a port just released)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()


class Recorder(asyncio.Protocol):
    """Records what the transport tells it; ``lost`` resolves on connection_lost."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.lost = loop.create_future()
        self.got_data = asyncio.Event()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.data += data
        self.got_data.set()

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    async def read_until(self, size):
        while len(self.data) < size:
            self.got_data.clear()
            await self.got_data.wait()
        return bytes(self.data)


async def close_transport(transport, proto):
    transport.close()
    await proto.lost


async def connect_to_listener(loop, sockets, srv, *args, **kwargs):
    """``create_connection(Recorder, *args, **kwargs)`` must reach the listening ``srv``;
    then the transport is closed."""
    accept = asyncio.ensure_future(loop.sock_accept(srv))
    transport, proto = await loop.create_connection(Recorder, *args, **kwargs)
    sockets((await accept)[0])
    assert transport.get_extra_info("peername") == srv.getsockname()
    await close_transport(transport, proto)


async def peer_sends(loop, conn, proto, data):
    """The raw peer ``conn`` sends ``data``: all the Recorder ``proto`` has received is that."""
    await loop.sock_sendall(conn, data)
    assert await proto.read_until(len(data)) == data


def fake_resolver(loop, infos):
    """Make ``loop.getaddrinfo`` answer ``infos`` (recording each query)."""
    queries = []

    async def getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        queries.append((host, port, family, type, proto, flags))
        return list(infos)

    loop.getaddrinfo = getaddrinfo
    return queries


def stream_info(address, family=socket.AF_INET):
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)


def resolve_to_refused(loop, *more):
    """Make ``loop.getaddrinfo`` answer two different refused addresses, then the ``more``
    addresses; returns the two refused ones."""
    bad1, bad2 = refused_address(), refused_address()
    while bad2 == bad1:
        bad2 = refused_address()
    fake_resolver(loop, [stream_info(a) for a in (bad1, bad2, *more)])
    return bad1, bad2


def scripted_connect(loop, refuse=(), hang=()):
    """Wrap ``loop.sock_connect``: refuse (ECONNREFUSED) or hang forever on the given
    addresses, connect normally otherwise. Returns the list of addresses tried, in order."""
    real = loop.sock_connect
    tried = []

    async def sock_connect(sock, address):
        tried.append(address)
        if address in refuse:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"refused {address}")
        if address in hang:
            await loop.create_future()  # until cancelled
        return await real(sock, address)

    loop.sock_connect = sock_connect
    return tried


# -- create_connection: basics --------------------------------------------------------------


def test_connect_exchange_and_close(loop, sockets):
    srv = listener(sockets)

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        transport, proto = await loop.create_connection(Recorder, *srv.getsockname())
        conn, _ = await accept
        sockets(conn)
        assert proto.events == ["made"] and proto.transport is transport
        assert transport.get_extra_info("peername") == srv.getsockname()
        assert transport.get_extra_info("sockname") == conn.getpeername()
        assert transport.get_extra_info("socket").family == socket.AF_INET
        transport.write(b"ping")
        assert await loop.sock_recv(conn, 10) == b"ping"
        await peer_sends(loop, conn, proto, b"pong")
        conn.shutdown(socket.SHUT_WR)
        await close_transport(transport, proto)
        assert proto.events == ["made", "eof", "lost"] or proto.events == ["made", "lost"]

    loop.run_until_complete(main())


@needs_ipv6
def test_connect_ipv6(loop, sockets):
    srv = listener(sockets, socket.AF_INET6, "::1")

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        transport, proto = await loop.create_connection(Recorder, "::1", srv.getsockname()[1])
        sockets((await accept)[0])
        assert transport.get_extra_info("socket").family == socket.AF_INET6
        assert transport.get_extra_info("peername")[:2] == srv.getsockname()[:2]
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_connect_by_name_resolves(loop, sockets):
    srv = listener(sockets)

    async def main():
        await connect_to_listener(
            loop, sockets, srv, "localhost", srv.getsockname()[1], family=socket.AF_INET
        )

    loop.run_until_complete(main())


def test_connect_refused(loop):
    address = refused_address()

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.create_connection(asyncio.Protocol, *address)
        assert info.value.errno == errno.ECONNREFUSED

    loop.run_until_complete(main())


def test_connect_empty_resolution(loop):
    fake_resolver(loop, [])

    async def main():
        with pytest.raises(OSError, match="getaddrinfo\\(\\) returned empty list"):
            await loop.create_connection(asyncio.Protocol, "example.invalid", 80)

    loop.run_until_complete(main())


def test_resolver_receives_arguments(loop):
    queries = fake_resolver(loop, [])

    async def main():
        with pytest.raises(OSError):
            await loop.create_connection(
                asyncio.Protocol, "example.invalid", 80, family=socket.AF_INET,
                flags=socket.AI_CANONNAME,
            )

    loop.run_until_complete(main())
    assert queries == [("example.invalid", 80, socket.AF_INET, socket.SOCK_STREAM, 0,
                        socket.AI_CANONNAME)]


def test_protocol_factory_error_propagates(loop, sockets):
    srv = listener(sockets)

    def factory():
        raise LookupError("no protocol")

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        sock = sockets(socket.socket())
        sock.setblocking(False)
        await loop.sock_connect(sock, srv.getsockname())
        sockets((await accept)[0])
        with pytest.raises(LookupError, match="no protocol"):
            await loop.create_connection(factory, sock=sock)

    loop.run_until_complete(main())


# -- several addresses ------------------------------------------------------------------------


def test_first_address_refused_second_works(loop, sockets):
    srv = listener(sockets)
    bad = refused_address()
    fake_resolver(loop, [stream_info(bad), stream_info(srv.getsockname())])

    async def main():
        await connect_to_listener(loop, sockets, srv, "example.test", 1)

    loop.run_until_complete(main())


def test_all_refused_same_message_raises_first(loop):
    bad = refused_address()
    fake_resolver(loop, [stream_info(bad), stream_info(bad)])

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "example.test", 1)

    loop.run_until_complete(main())


def test_all_refused_different_messages_combined(loop):
    bad1, bad2 = resolve_to_refused(loop)

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_connection(asyncio.Protocol, "example.test", 1)
        assert type(info.value) is OSError
        message = str(info.value)
        assert message.startswith("Multiple exceptions: ")
        assert str(bad1) in message and str(bad2) in message

    loop.run_until_complete(main())


@requires("create_connection", "all_errors")
@needs_exception_group
@tokioloop_only
def test_all_errors_raises_exception_group(loop):
    resolve_to_refused(loop)

    async def main():
        with pytest.raises(ExceptionGroup) as info:
            await loop.create_connection(asyncio.Protocol, "example.test", 1, all_errors=True)
        group = info.value
        assert group.message == "create_connection failed"
        assert [type(e) for e in group.exceptions] == [ConnectionRefusedError] * 2

    loop.run_until_complete(main())


@requires("create_connection", "all_errors")
@needs_exception_group
@tokioloop_only
def test_all_errors_single_failure_is_still_a_group(loop):
    fake_resolver(loop, [stream_info(refused_address())])

    async def main():
        with pytest.raises(ExceptionGroup) as info:
            await loop.create_connection(asyncio.Protocol, "example.test", 1, all_errors=True)
        assert len(info.value.exceptions) == 1

    loop.run_until_complete(main())


@requires("create_connection", "all_errors")
@tokioloop_only
def test_all_errors_success_is_unaffected(loop, sockets):
    srv = listener(sockets)

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        transport, proto = await loop.create_connection(
            Recorder, *srv.getsockname(), all_errors=True
        )
        sockets((await accept)[0])
        await close_transport(transport, proto)

    loop.run_until_complete(main())


V4 = [("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 1)]
V6 = [("2001:db8::1", 1, 0, 0), ("2001:db8::2", 1, 0, 0), ("2001:db8::3", 1, 0, 0)]
MIXED = [stream_info(a) for a in V4] + [stream_info(a, socket.AF_INET6) for a in V6]


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6")
@pytest.mark.parametrize(
    "interleave, order",
    [
        (None, V4 + V6),
        (0, V4 + V6),
        (1, [V4[0], V6[0], V4[1], V6[1], V4[2], V6[2]]),
        (2, [V4[0], V4[1], V6[0], V4[2], V6[1], V6[2]]),
        (3, [V4[0], V4[1], V4[2], V6[0], V6[1], V6[2]]),
    ],
)
def test_interleave_order(loop, interleave, order):
    fake_resolver(loop, MIXED)
    tried = scripted_connect(loop, refuse=set(V4 + V6))

    async def main():
        with pytest.raises(OSError, match="Multiple exceptions"):
            await loop.create_connection(
                asyncio.Protocol, "example.test", 1, interleave=interleave
            )

    loop.run_until_complete(main())
    assert tried == order


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6")
def test_happy_eyeballs_interleaves_by_default(loop):
    fake_resolver(loop, MIXED)
    tried = scripted_connect(loop, refuse=set(V4 + V6))

    async def main():
        with pytest.raises(OSError, match="Multiple exceptions"):
            await loop.create_connection(
                asyncio.Protocol, "example.test", 1, happy_eyeballs_delay=10
            )

    loop.run_until_complete(main())
    # Each failure starts the next attempt at once: no delay is waited out here.
    assert tried == [V4[0], V6[0], V4[1], V6[1], V4[2], V6[2]]


def test_happy_eyeballs_overtakes_a_hanging_attempt(loop, sockets):
    srv = listener(sockets)
    stuck = ("192.0.2.7", 9)  # TEST-NET-1: never answers here (scripted)
    fake_resolver(loop, [stream_info(stuck), stream_info(srv.getsockname())])
    tried = scripted_connect(loop, hang={stuck})

    async def main():
        await connect_to_listener(loop, sockets, srv, "example.test", 1, happy_eyeballs_delay=0.01)

    loop.run_until_complete(main())
    assert tried == [stuck, srv.getsockname()]


def test_happy_eyeballs_mix_of_refused_and_working(loop, sockets):
    srv = listener(sockets)
    resolve_to_refused(loop, srv.getsockname())

    async def main():
        await connect_to_listener(loop, sockets, srv, "example.test", 1, happy_eyeballs_delay=0.25)

    loop.run_until_complete(main())


def test_happy_eyeballs_all_refused(loop):
    resolve_to_refused(loop)

    async def main():
        with pytest.raises(OSError, match="Multiple exceptions"):
            await loop.create_connection(
                asyncio.Protocol, "example.test", 1, happy_eyeballs_delay=0.25
            )

    loop.run_until_complete(main())


def test_cancel_while_connecting_closes_socket(loop):
    stuck = ("192.0.2.7", 9)
    fake_resolver(loop, [stream_info(stuck)])
    seen = []

    async def sock_connect(sock, address):
        seen.append(sock)
        await loop.create_future()

    loop.sock_connect = sock_connect

    async def main():
        task = asyncio.ensure_future(loop.create_connection(asyncio.Protocol, "example.test", 1))
        while not seen:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop.run_until_complete(main())
    assert seen[0].fileno() == -1


# -- local_addr -----------------------------------------------------------------------------


def test_local_addr(loop, sockets):
    srv = listener(sockets)
    local = refused_address()  # a free port to bind to

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        transport, proto = await loop.create_connection(
            Recorder, *srv.getsockname(), local_addr=local
        )
        conn, peer = await accept
        sockets(conn)
        assert peer == local
        assert transport.get_extra_info("sockname") == local
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_local_addr_bind_error(loop, sockets):
    srv = listener(sockets)
    busy = listener(sockets)

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_connection(
                asyncio.Protocol, *srv.getsockname(), local_addr=busy.getsockname()
            )
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value).startswith("[Errno %d] error while attempting to bind on address "
                                          "%r: " % (errno.EADDRINUSE, busy.getsockname()))

    loop.run_until_complete(main())


@needs_ipv6
def test_local_addr_family_mismatch(loop, sockets):
    srv = listener(sockets, socket.AF_INET6, "::1")

    async def main():
        with pytest.raises(OSError, match="no matching local address with family="):
            await loop.create_connection(
                asyncio.Protocol, "::1", srv.getsockname()[1], local_addr=("127.0.0.1", 0)
            )

    loop.run_until_complete(main())


# -- sock= and argument checks ---------------------------------------------------------------


def test_connect_with_sock(loop, sockets):
    srv = listener(sockets)

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        sock = socket.socket()
        sock.connect(srv.getsockname())  # blocking: create_connection makes it non-blocking
        sockets((await accept)[0])
        transport, proto = await loop.create_connection(Recorder, sock=sock)
        assert transport.get_extra_info("socket").fileno() == sock.fileno()
        assert sock.gettimeout() == 0
        await close_transport(transport, proto)
        assert sock.fileno() == -1

    loop.run_until_complete(main())


def test_connect_with_unix_stream_sock(loop):
    a, b = socket.socketpair()

    async def main():
        transport, proto = await loop.create_connection(Recorder, sock=a)
        try:
            b.sendall(b"hi")
            assert await proto.read_until(2) == b"hi"
        finally:
            await close_transport(transport, proto)

    try:
        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()


def test_sock_must_be_stream(loop):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=sock))


def test_ssl_socket_rejected(loop):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    with ctx.wrap_socket(socket.socket(), do_handshake_on_connect=False) as sock:
        with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
            loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=sock))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({}, ValueError, "host and port was not specified and no sock specified"),
        ({"host": "127.0.0.1", "port": 1, "sock": "SOCK"}, ValueError,
         "host/port and sock can not be specified at the same time"),
        ({"port": 1, "sock": "SOCK"}, ValueError,
         "host/port and sock can not be specified at the same time"),
        ({"host": "127.0.0.1", "port": 1, "server_hostname": "x"}, ValueError,
         "server_hostname is only meaningful with ssl"),
        ({"host": "127.0.0.1", "port": 1, "ssl": False, "server_hostname": "x"}, ValueError,
         "server_hostname is only meaningful with ssl"),
        ({"host": "127.0.0.1", "port": 1, "ssl_handshake_timeout": 1}, ValueError,
         "ssl_handshake_timeout is only meaningful with ssl"),
        pytest.param({"host": "127.0.0.1", "port": 1, "ssl_shutdown_timeout": 1}, ValueError,
                     "ssl_shutdown_timeout is only meaningful with ssl",
                     marks=requires("create_connection", "ssl_shutdown_timeout")),
        ({"port": 1, "ssl": True}, ValueError,
         "You must set server_hostname when using ssl without a host"),
    ],
)
def test_create_connection_bad_arguments(loop, kwargs, error, message):
    kwargs = dict(kwargs)
    sock = None
    if kwargs.get("sock") == "SOCK":
        sock = kwargs["sock"] = socket.socket()
    try:
        with pytest.raises(error, match=message):
            loop.run_until_complete(loop.create_connection(asyncio.Protocol, **kwargs))
    finally:
        if sock is not None:
            sock.close()


# -- Unix connections ------------------------------------------------------------------------


def unix_listener(sockets, path):
    srv = sockets(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    srv.setblocking(False)
    srv.bind(path)
    srv.listen(8)
    return srv


@pytest.mark.parametrize("kind", ["str", "pathlike", "bytes"])
def test_unix_connection(loop, sockets, tmp_path, kind):
    path = tmp_path / "srv.sock"
    srv = unix_listener(sockets, str(path))
    target = {"str": str(path), "pathlike": pathlib.Path(path), "bytes": os.fsencode(path)}[kind]

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        transport, proto = await loop.create_unix_connection(Recorder, target)
        conn = sockets((await accept)[0])
        assert transport.get_extra_info("socket").family == socket.AF_UNIX
        transport.write(b"over unix")
        assert await loop.sock_recv(conn, 100) == b"over unix"
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_unix_connection_abstract(loop, sockets):
    name = f"\0tokioloop-test-{os.getpid()}-{id(loop)}"
    srv = unix_listener(sockets, name)

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        transport, proto = await loop.create_unix_connection(Recorder, name)
        sockets((await accept)[0])
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_unix_connection_with_sock(loop, sockets, tmp_path):
    path = str(tmp_path / "srv.sock")
    srv = unix_listener(sockets, path)

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        conn = sockets((await accept)[0])
        transport, proto = await loop.create_unix_connection(Recorder, sock=sock)
        assert sock.gettimeout() == 0
        await peer_sends(loop, conn, proto, b"back")
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_unix_connection_missing_path(loop, tmp_path):
    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(asyncio.Protocol, str(tmp_path / "nope.sock"))

    loop.run_until_complete(main())


def test_unix_connection_bad_arguments(loop, tmp_path):
    async def main():
        await check_unix_arguments(
            loop.create_unix_connection, str(tmp_path / "x"), "no path and sock were specified"
        )
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            with pytest.raises(ValueError, match="A UNIX Domain Stream Socket was expected"):
                await loop.create_unix_connection(asyncio.Protocol, sock=sock)
        with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
            await loop.create_unix_connection(
                asyncio.Protocol, str(tmp_path / "x"), server_hostname="h"
            )

    loop.run_until_complete(main())


# -- connect_accepted_socket -----------------------------------------------------------------


def test_connect_accepted_socket(loop, sockets):
    srv = listener(sockets)
    client = sockets(socket.socket())

    async def main():
        client.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        await loop.sock_connect(client, srv.getsockname())
        conn, peer = await accept
        transport, proto = await loop.connect_accepted_socket(Recorder, conn)
        assert proto.events == ["made"]
        assert transport.get_extra_info("peername") == peer
        await loop.sock_sendall(client, b"request")
        assert await proto.read_until(7) == b"request"
        transport.write(b"reply")
        assert await loop.sock_recv(client, 100) == b"reply"
        client.shutdown(socket.SHUT_WR)
        await proto.lost
        assert proto.events == ["made", "eof", "lost"]

    loop.run_until_complete(main())


def test_connect_accepted_socket_checks(loop):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            with pytest.raises(ValueError, match="A Stream Socket was expected"):
                await loop.connect_accepted_socket(asyncio.Protocol, sock)
        a, b = socket.socketpair()
        with a, b:
            with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
                await loop.connect_accepted_socket(asyncio.Protocol, a, ssl_handshake_timeout=1)
            if loop_has("connect_accepted_socket", "ssl_shutdown_timeout"):
                with pytest.raises(ValueError, match="ssl_shutdown_timeout is only meaningful"):
                    await loop.connect_accepted_socket(asyncio.Protocol, a, ssl_shutdown_timeout=1)
            else:
                with pytest.raises(TypeError, match="ssl_shutdown_timeout"):
                    await loop.connect_accepted_socket(asyncio.Protocol, a, ssl_shutdown_timeout=1)

    loop.run_until_complete(main())


def test_given_socket_without_a_transport(loop, sockets):
    # The protocol factory fails, so no transport takes the caller's socket: from CPython
    # gh-153133 on it is closed; before, it stays open (the caller's to close).
    async def main():
        srv = listener(sockets)
        sock = sockets(socket.create_connection(srv.getsockname()))

        def factory():
            raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await loop.create_connection(factory, sock=sock)
        assert (sock.fileno() == -1) is _compat.TRANSPORT_FAILURE_CLOSES_SOCK

    loop.run_until_complete(main())


# -- loop.sendfile ---------------------------------------------------------------------------

async def connected_pair(loop, sockets):
    """A create_connection transport and the raw peer socket on the other end."""
    srv = listener(sockets)
    accept = asyncio.ensure_future(loop.sock_accept(srv))
    transport, proto = await loop.create_connection(Recorder, *srv.getsockname())
    conn, _ = await accept
    return transport, proto, sockets(conn)


@pytest.mark.parametrize("offset, count", [(0, None), (1000, None), (10, 100_000)])
def test_sendfile_native(loop, sockets, payload_file, offset, count):
    expected = PAYLOAD[offset:offset + count] if count else PAYLOAD[offset:]

    async def main():
        transport, proto, conn = await connected_pair(loop, sockets)
        reader = asyncio.ensure_future(read_all(loop, conn, len(expected)))
        sent = await loop.sendfile(transport, payload_file, offset, count)
        assert sent == len(expected)
        assert await reader == expected
        assert payload_file.tell() == offset + sent
        # The transport still works both ways afterwards.
        assert transport.is_reading()
        transport.write(b"tail")
        assert await loop.sock_recv(conn, 10) == b"tail"
        await peer_sends(loop, conn, proto, b"up")
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_sendfile_peer_closes_midway(loop, sockets, payload_file):
    async def main():
        srv = listener(sockets)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        transport, proto = await loop.create_connection(Recorder, *srv.getsockname())
        conn, _ = await accept
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        async def peer():
            got = 0
            while got < 1024:
                got += len(await loop.sock_recv(conn, 1024))
            conn.close()  # with unread data: the sender gets a reset

        closer = asyncio.ensure_future(peer())
        with pytest.raises(ConnectionError):
            await loop.sendfile(transport, payload_file)
        await closer
        assert 1024 <= payload_file.tell() < len(PAYLOAD)
        assert isinstance(await proto.lost, (ConnectionError, type(None)))
        assert transport.is_closing()

    loop.run_until_complete(main())


def test_sendfile_cancelled(loop, sockets, payload_file):
    async def main():
        transport, proto, conn = await connected_pair(loop, sockets)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        task = asyncio.ensure_future(loop.sendfile(transport, payload_file))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()  # the peer reads nothing: 1 MiB does not fit the buffers
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.is_reading() and not transport.is_closing()
        await peer_sends(loop, conn, proto, b"after")
        transport.abort()
        await proto.lost

    loop.run_until_complete(main())


def test_sendfile_after_buffered_write(loop, sockets, payload_file):
    async def main():
        transport, proto, conn = await connected_pair(loop, sockets)
        transport.write(b"header:")
        reader = asyncio.ensure_future(read_all(loop, conn, 7 + len(PAYLOAD)))
        assert await loop.sendfile(transport, payload_file) == len(PAYLOAD)
        assert await reader == b"header:" + PAYLOAD
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_sendfile_fallback(loop, sockets):
    data = PAYLOAD[:200_000]

    async def main():
        transport, proto, conn = await connected_pair(loop, sockets)
        transport.set_write_buffer_limits(high=4096)  # exercise pause/resume_writing
        file = io.BytesIO(data)  # no fileno(): os.sendfile is not possible
        reader = asyncio.ensure_future(read_all(loop, conn, len(data) - 5))
        sent = await loop.sendfile(transport, file, 5)
        assert sent == len(data) - 5
        assert await reader == data[5:]
        assert file.tell() == len(data)
        assert transport.get_protocol() is proto
        assert transport.is_reading()
        await peer_sends(loop, conn, proto, b"still read")
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_sendfile_fallback_count(loop, sockets):
    async def main():
        transport, proto, conn = await connected_pair(loop, sockets)
        file = io.BytesIO(PAYLOAD)
        reader = asyncio.ensure_future(read_all(loop, conn, 50_000))
        assert await loop.sendfile(transport, file, 0, 50_000) == 50_000
        assert await reader == PAYLOAD[:50_000]
        assert file.tell() == 50_000
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_sendfile_file_position_from_the_offset(loop, sockets, payload_file):
    # Where the file is left, and where the fallback starts reading, when the file position
    # is not the offset. From CPython gh-150107 on, the position is set to offset + sent even
    # when nothing was sent, and the fallback reads from offset 0 too; before it, both kept
    # the position the caller left.
    fixed = _compat.SENDFILE_ALWAYS_SETS_POSITION

    async def main():
        transport, proto, conn = await connected_pair(loop, sockets)
        payload_file.seek(123)
        assert await loop.sendfile(transport, payload_file, len(PAYLOAD)) == 0
        assert payload_file.tell() == (len(PAYLOAD) if fixed else 123)
        file = io.BytesIO(PAYLOAD[:1000])  # no fileno(): the fallback
        file.seek(400)
        expected = PAYLOAD[:1000] if fixed else PAYLOAD[400:1000]
        reader = asyncio.ensure_future(read_all(loop, conn, len(expected)))
        assert await loop.sendfile(transport, file) == len(expected)
        assert await reader == expected
        assert file.tell() == len(expected)  # offset + sent, either way
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_sendfile_fallback_disabled(loop, sockets):
    async def main():
        transport, proto, conn = await connected_pair(loop, sockets)
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sendfile(transport, io.BytesIO(b"data"), fallback=False)
        assert transport.is_reading()
        await close_transport(transport, proto)

    loop.run_until_complete(main())


def test_sendfile_checks(loop, sockets, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("text")

    async def main():
        transport, proto, conn = await connected_pair(loop, sockets)
        with open(path) as text:
            with pytest.raises(ValueError, match="binary mode"):
                await loop.sendfile(transport, text)
        with open(path, "rb") as f:
            with pytest.raises(ValueError, match="offset must be a non-negative integer"):
                await loop.sendfile(transport, f, -1)
            with pytest.raises(ValueError, match="count must be a positive integer"):
                await loop.sendfile(transport, f, 0, 0)
            await close_transport(transport, proto)
            with pytest.raises(RuntimeError, match="Transport is closing"):
                await loop.sendfile(transport, f)

    loop.run_until_complete(main())


def test_sendfile_unsupported_transport(loop):
    class Plain(asyncio.Transport):
        def is_closing(self):
            return False

    async def main():
        with pytest.raises(RuntimeError, match="sendfile is not supported for transport"):
            await loop.sendfile(Plain(), io.BytesIO(b"x"))

    loop.run_until_complete(main())


@pytest.mark.parametrize("method", ["create_connection", "create_server"])
def test_closed_socket_as_sock_raises_oserror(loop, method):
    """A closed socket passed as sock=: the same OSError (EBADF) on both loops, nothing leaked."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()

    async def main():
        with pytest.raises(OSError) as info:
            await getattr(loop, method)(asyncio.Protocol, sock=sock)
        return info.value.errno

    assert loop.run_until_complete(main()) == errno.EBADF
