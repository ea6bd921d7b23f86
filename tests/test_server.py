"""Servers: loop.create_server (host forms, options, errors), create_unix_server (paths,
abstract names, stale files, cleanup), the Server object (sockets, serve_forever,
start_serving, close/wait_closed, close_clients/abort_clients, ``async with``), accepting
under descriptor exhaustion, and many connections without descriptor leaks.

Clients are plain sockets driven through the loop's sock_* API. Behaviour the 3.11 stdlib does
not have (wait_closed fixed in 3.12.1, close_clients/abort_clients, keep_alive and
cleanup_socket from 3.13) is checked on tokioloop alone.
"""

import asyncio
import errno
import gc
import os
import pathlib
import socket
import stat

import pytest
from _stdlib import loop_has, requires
from tokioloop import _compat

from _netutil import check_unix_arguments, needs_ipv6


class Echo(asyncio.Protocol):
    """Echoes data back; counts live connections on the class-level ``live`` list."""

    def __init__(self, registry=None):
        self.registry = registry
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        if self.registry is not None:
            self.registry.append(self)

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def echo_server(create, *args, **kwargs):
    """Serve ``Echo`` with ``create`` (loop.create_server or loop.create_unix_server, called
    with ``args`` and ``kwargs``); returns the server and the list of the protocols it made."""
    made = []
    server = await create(lambda: Echo(made), *args, **kwargs)
    return server, made


async def tcp_client(loop, sockets, address, family=socket.AF_INET):
    """A plain non-blocking socket of ``family`` (AF_UNIX too), connected to ``address``."""
    sock = sockets(socket.socket(family, socket.SOCK_STREAM))
    sock.setblocking(False)
    await loop.sock_connect(sock, address)
    return sock


async def roundtrip(loop, sock, data=b"ping"):
    await loop.sock_sendall(sock, data)
    got = b""
    while len(got) < len(data):
        chunk = await loop.sock_recv(sock, 1024)
        assert chunk, "connection closed before the echo"
        got += chunk
    return got


async def read_eof(loop, sock):
    """Read until end of stream; True for a clean EOF, False for a reset."""
    try:
        while await loop.sock_recv(sock, 1024):
            pass
    except ConnectionResetError:
        return False
    return True


async def echo_once(loop, sockets, made, address, family=socket.AF_INET):
    """A client connects to the echo server at ``address``, has its ping echoed and hangs up;
    returns once the server side (``made[0]``, the server's first connection) is lost."""
    client = await tcp_client(loop, sockets, address, family)
    assert await roundtrip(loop, client) == b"ping"
    client.close()
    await made[0].lost


def address_of(server, index=0):
    return server.sockets[index].getsockname()


async def close_server(server):
    server.close()
    await server.wait_closed()


# -- create_server: host forms and sockets ----------------------------------------------------


def test_serve_and_echo(loop, sockets):
    async def main():
        server, made = await echo_server(loop.create_server, "127.0.0.1", 0)
        assert server.is_serving()
        assert server.get_loop() is loop
        client = await tcp_client(loop, sockets, address_of(server))
        assert await roundtrip(loop, client) == b"ping"
        (proto,) = made
        assert proto.transport.get_extra_info("peername") == client.getsockname()
        assert proto.transport.get_extra_info("sockname") == address_of(server)
        client.close()
        await proto.lost
        await close_server(server)

    loop.run_until_complete(main())


def test_sockets_property(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        (tsock,) = server.sockets
        assert isinstance(tsock, asyncio.trsock.TransportSocket)
        assert tsock.family == socket.AF_INET and tsock.type == socket.SOCK_STREAM
        assert tsock.getsockname()[0] == "127.0.0.1"
        assert server.sockets == server.sockets or len(server.sockets) == 1
        assert tsock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert "sockets=" in repr(server) and type(server).__name__ in repr(server)
        await close_server(server)
        assert server.sockets == ()
        assert not server.is_serving()
        server.close()  # a second close does nothing

    loop.run_until_complete(main())


@pytest.mark.parametrize("host", [None, ""])
def test_all_interfaces(loop, sockets, host):
    async def main():
        server, made = await echo_server(loop.create_server, host, 0)
        families = {s.family for s in server.sockets}
        assert socket.AF_INET in families
        v4 = next(s for s in server.sockets if s.family == socket.AF_INET)
        assert v4.getsockname()[0] == "0.0.0.0"
        for s in server.sockets:
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != 0
        await echo_once(loop, sockets, made, ("127.0.0.1", v4.getsockname()[1]))
        await close_server(server)

    loop.run_until_complete(main())


@needs_ipv6
def test_host_list(loop, sockets):
    async def main():
        server, made = await echo_server(loop.create_server, ["127.0.0.1", "::1", "127.0.0.1"], 0)
        by_family = {s.family: s.getsockname() for s in server.sockets}
        assert len(server.sockets) == 2  # the duplicate host is bound once
        assert set(by_family) == {socket.AF_INET, socket.AF_INET6}
        c4 = await tcp_client(loop, sockets, by_family[socket.AF_INET])
        c6 = await tcp_client(loop, sockets, by_family[socket.AF_INET6][:2], socket.AF_INET6)
        assert await roundtrip(loop, c4, b"four") == b"four"
        assert await roundtrip(loop, c6, b"six") == b"six"
        c4.close()
        c6.close()
        await asyncio.gather(*(p.lost for p in made))
        await close_server(server)

    loop.run_until_complete(main())


def test_host_by_name(loop, sockets):
    async def main():
        server = await loop.create_server(
            asyncio.Protocol, "localhost", 0, family=socket.AF_INET
        )
        assert [s.getsockname()[0] for s in server.sockets] == ["127.0.0.1"]
        await close_server(server)

    loop.run_until_complete(main())


def test_server_on_given_socket(loop, sockets):
    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server, made = await echo_server(loop.create_server, sock=sock)
        assert sock.gettimeout() == 0
        assert address_of(server) == sock.getsockname()
        await echo_once(loop, sockets, made, sock.getsockname())
        await close_server(server)
        assert sock.fileno() == -1  # the server owns and closes it

    loop.run_until_complete(main())


def test_reuse_port(loop):
    async def main():
        first = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
        port = address_of(first)[1]
        second = await loop.create_server(asyncio.Protocol, "127.0.0.1", port, reuse_port=True)
        assert address_of(second)[1] == port
        assert second.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        await close_server(first)
        await close_server(second)

    loop.run_until_complete(main())


def test_reuse_address_off(loop):
    async def main():
        server = await loop.create_server(
            asyncio.Protocol, "127.0.0.1", 0, reuse_address=False
        )
        assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        await close_server(server)

    loop.run_until_complete(main())


@requires("create_server", "keep_alive")
def test_keep_alive(loop, sockets):
    async def main():
        server, made = await echo_server(loop.create_server, "127.0.0.1", 0, keep_alive=True)
        client = await tcp_client(loop, sockets, address_of(server))
        await roundtrip(loop, client)
        accepted = made[0].transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        client.close()
        await made[0].lost
        await close_server(server)

    loop.run_until_complete(main())


def test_address_in_use(loop):
    async def main():
        first = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        address = address_of(first)
        with pytest.raises(OSError) as info:
            await loop.create_server(asyncio.Protocol, *address)
        assert info.value.errno == errno.EADDRINUSE
        assert f"error while attempting to bind on address {address!r}: " in str(info.value)
        await close_server(first)

    loop.run_until_complete(main())


def test_create_server_bad_arguments(loop):
    async def main():
        with pytest.raises(ValueError, match="Neither host/port nor sock were specified"):
            await loop.create_server(asyncio.Protocol)
        with socket.socket() as sock:
            with pytest.raises(ValueError, match="host/port and sock can not be specified"):
                await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, sock=sock)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            with pytest.raises(ValueError, match="A Stream Socket was expected"):
                await loop.create_server(asyncio.Protocol, sock=sock)
        with pytest.raises(TypeError, match="ssl argument must be an SSLContext or None"):
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=True)
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl_handshake_timeout=1)
        if loop_has("create_server", "ssl_shutdown_timeout"):
            with pytest.raises(ValueError, match="ssl_shutdown_timeout is only meaningful"):
                await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl_shutdown_timeout=1)

    loop.run_until_complete(main())


# -- the Server object -----------------------------------------------------------------------


def test_start_serving_later(loop, sockets):
    async def main():
        server, made = await echo_server(loop.create_server, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        sock = sockets(socket.socket())
        sock.setblocking(False)
        with pytest.raises(ConnectionRefusedError):  # not even listening yet
            await loop.sock_connect(sock, address_of(server))
        await server.start_serving()
        assert server.is_serving()
        await server.start_serving()  # again: nothing changes
        await echo_once(loop, sockets, made, address_of(server))
        await close_server(server)

    loop.run_until_complete(main())


def test_serve_forever_cancelled(loop, sockets):
    async def main():
        server, made = await echo_server(loop.create_server, "127.0.0.1", 0, start_serving=False)
        address = address_of(server)
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        with pytest.raises(RuntimeError, match="is already being awaited on serve_forever"):
            await server.serve_forever()
        await echo_once(loop, sockets, made, address)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving() and server.sockets == ()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()

    loop.run_until_complete(main())


def test_close_keeps_connections(loop, sockets):
    async def main():
        server, made = await echo_server(loop.create_server, "127.0.0.1", 0)
        address = address_of(server)
        client = await tcp_client(loop, sockets, address)
        await roundtrip(loop, client)
        waiting = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0)
        server.close()
        late = sockets(socket.socket())
        late.setblocking(False)
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(late, address)
        # The accepted connection outlives close(), and wait_closed waits for it.
        assert await roundtrip(loop, client, b"still") == b"still"
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()
        client.close()
        await made[0].lost
        await waiting
        await server.wait_closed()

    loop.run_until_complete(main())


def test_wait_closed_without_connections(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        waiting = asyncio.ensure_future(server.wait_closed())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not waiting.done()  # an open server is waited on
        server.close()
        await waiting
        await server.wait_closed()

    loop.run_until_complete(main())


def test_wait_closed_after_close_waits_for_connections(loop, sockets):
    # asyncio 3.12.1+ waits for the connections; before it, a closed server's wait_closed
    # returns at once. The stdlib half checks that tokioloop's version gate is the right one.
    waits = _compat.WAIT_CLOSED_WAITS_FOR_CLIENTS

    async def main():
        server, made = await echo_server(loop.create_server, "127.0.0.1", 0)
        client = await tcp_client(loop, sockets, address_of(server))
        await roundtrip(loop, client)
        server.close()
        waiting = asyncio.ensure_future(server.wait_closed())
        for _ in range(5):
            await asyncio.sleep(0)
        assert waiting.done() is not waits
        client.close()
        await waiting
        if waits:
            assert made[0].lost.done()
        await made[0].lost

    loop.run_until_complete(main())


@requires("close_clients", server=True)
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_close_and_abort_clients(loop, sockets, how):
    async def main():
        server, made = await echo_server(loop.create_server, "127.0.0.1", 0)
        clients = [await tcp_client(loop, sockets, address_of(server)) for _ in range(3)]
        for c in clients:
            await roundtrip(loop, c)
        server.close()
        getattr(server, how)()
        await server.wait_closed()
        assert all(p.lost.done() for p in made) and len(made) == 3
        for c in clients:
            clean = await read_eof(loop, c)
            if how == "close_clients":
                assert clean

    loop.run_until_complete(main())


def test_async_with(loop, sockets):
    async def main():
        server, made = await echo_server(loop.create_server, "127.0.0.1", 0)
        async with server as entered:
            assert entered is server
            await echo_once(loop, sockets, made, address_of(server))
        assert not server.is_serving() and server.sockets == ()

    loop.run_until_complete(main())


def test_accepted_transport(loop, sockets):
    async def main():
        server, made = await echo_server(loop.create_server, "127.0.0.1", 0)
        client = await tcp_client(loop, sockets, address_of(server))
        await roundtrip(loop, client)
        transport = made[0].transport
        assert not transport.is_closing() and transport.is_reading()
        assert transport.get_extra_info("peername") == client.getsockname()
        assert transport.get_extra_info("socket").gettimeout() == 0
        transport.close()
        assert await read_eof(loop, client)
        await made[0].lost
        await close_server(server)

    loop.run_until_complete(main())


# -- Unix servers ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["str", "pathlike"])
def test_unix_server(loop, sockets, tmp_path, kind):
    path = tmp_path / "srv.sock"
    target = str(path) if kind == "str" else pathlib.Path(path)

    async def main():
        server, made = await echo_server(loop.create_unix_server, target)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert server.sockets[0].getsockname() == str(path)
        await echo_once(loop, sockets, made, str(path), socket.AF_UNIX)
        await close_server(server)

    loop.run_until_complete(main())


def test_unix_server_abstract(loop, sockets):
    name = f"\0tokioloop-server-{os.getpid()}-{id(loop)}"

    async def main():
        server, made = await echo_server(loop.create_unix_server, name)
        assert server.sockets[0].getsockname() == name.encode()
        await echo_once(loop, sockets, made, name, socket.AF_UNIX)
        await close_server(server)

    loop.run_until_complete(main())


def test_unix_server_replaces_stale_socket_file(loop, sockets, tmp_path):
    path = str(tmp_path / "stale.sock")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()  # leaves the socket file behind
    assert os.path.exists(path)

    async def main():
        server, made = await echo_server(loop.create_unix_server, path)
        await echo_once(loop, sockets, made, path, socket.AF_UNIX)
        await close_server(server)

    loop.run_until_complete(main())


def test_unix_server_refuses_regular_file(loop, tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_unix_server(asyncio.Protocol, str(path))
        assert info.value.errno == errno.EADDRINUSE
        assert f"Address {str(path)!r} is already in use" in str(info.value)

    loop.run_until_complete(main())
    assert path.read_text() == "keep me"


def test_unix_server_on_given_socket(loop, sockets, tmp_path):
    path = str(tmp_path / "given.sock")

    async def main():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        server, made = await echo_server(loop.create_unix_server, sock=sock)
        await echo_once(loop, sockets, made, path, socket.AF_UNIX)
        await close_server(server)

    loop.run_until_complete(main())


def test_unix_server_bad_arguments(loop, tmp_path):
    async def main():
        await check_unix_arguments(
            loop.create_unix_server, str(tmp_path / "x"),
            "path was not specified, and no sock specified",
        )
        with pytest.raises(TypeError, match="ssl argument must be an SSLContext or None"):
            await loop.create_unix_server(asyncio.Protocol, str(tmp_path / "x"), ssl=True)

    loop.run_until_complete(main())
    assert not (tmp_path / "x").exists()


def test_unix_server_cleanup_on_close(loop, tmp_path):
    # asyncio removes the socket file on close from 3.13 (cleanup_socket); before, it stays.
    path = tmp_path / "clean.sock"

    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, path)
        assert path.exists()
        await close_server(server)
        assert path.exists() is not loop_has("create_unix_server", "cleanup_socket")

    loop.run_until_complete(main())


@requires("create_unix_server", "cleanup_socket")
def test_unix_server_no_cleanup(loop, tmp_path):
    path = tmp_path / "kept.sock"

    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, path, cleanup_socket=False)
        await close_server(server)
        assert stat.S_ISSOCK(os.stat(path).st_mode)

    loop.run_until_complete(main())


def test_unix_server_cleanup_spares_a_replaced_file(loop, tmp_path):
    path = tmp_path / "replaced.sock"

    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, path)
        os.unlink(path)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            other.bind(str(path))  # someone else's socket now lives at the path
            await close_server(server)
            assert stat.S_ISSOCK(os.stat(path).st_mode)
        finally:
            other.close()

    loop.run_until_complete(main())


def test_unix_server_cleanup_given_socket(loop, tmp_path):
    path = str(tmp_path / "given.sock")

    async def main():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        server = await loop.create_unix_server(asyncio.Protocol, sock=sock)
        await close_server(server)
        assert os.path.exists(path) is not loop_has("create_unix_server", "cleanup_socket")

    loop.run_until_complete(main())


# -- accepting under pressure ----------------------------------------------------------------


class FlakyListener(socket.socket):
    """A listening socket whose accept() fails with EMFILE the first ``failures`` times."""

    failures = 0
    calls = 0

    def accept(self):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_accept_out_of_descriptors_backs_off_and_resumes(loop, sockets, exc_contexts):
    async def main():
        listener = FlakyListener(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.failures = 1
        server, made = await echo_server(loop.create_server, sock=listener)
        address = listener.getsockname()
        first = await tcp_client(loop, sockets, address)
        assert await roundtrip(loop, first, b"one") == b"one"
        second = await tcp_client(loop, sockets, address)
        assert await roundtrip(loop, second, b"two") == b"two"
        # Accepting was retried after the back-off, not spun on.
        assert listener.calls < 20
        assert len(exc_contexts) == 1
        (context,) = exc_contexts
        assert context["message"] == "socket.accept() out of system resource"
        assert context["exception"].errno == errno.EMFILE
        assert context["socket"].fileno() == listener.fileno()
        exc_contexts.clear()
        first.close()
        second.close()
        await asyncio.gather(*(p.lost for p in made))
        await close_server(server)

    loop.run_until_complete(main())


def test_accept_other_errors_are_reported_and_serving_goes_on(loop, sockets, exc_contexts):
    class Failing(socket.socket):
        failures = 1

        def accept(self):
            if self.failures:
                self.failures -= 1
                raise OSError(errno.EPERM, "not allowed")
            return super().accept()

    async def main():
        listener = Failing(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        server, made = await echo_server(loop.create_server, sock=listener)
        client = await tcp_client(loop, sockets, listener.getsockname())
        assert await roundtrip(loop, client) == b"ping"
        assert len(exc_contexts) == 1
        assert exc_contexts[0]["exception"].errno == errno.EPERM
        exc_contexts.clear()
        client.close()
        await made[0].lost
        await close_server(server)

    loop.run_until_complete(main())


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_many_connections_do_not_leak_descriptors(loop, sockets):
    clients_per_round = 500
    rounds = 3

    async def one_round(server, made):
        address = address_of(server)
        clients = []
        for _ in range(clients_per_round):
            sock = socket.socket()
            sock.setblocking(False)
            clients.append(sock)
        await asyncio.gather(*(loop.sock_connect(c, address) for c in clients))
        replies = await asyncio.gather(*(roundtrip(loop, c, b"x") for c in clients))
        assert replies == [b"x"] * clients_per_round
        assert len(made) == clients_per_round
        for c in clients:
            c.close()
        await asyncio.gather(*(p.lost for p in made))
        made.clear()

    async def main():
        server, made = await echo_server(loop.create_server, "127.0.0.1", 0, backlog=1024)
        for _ in range(rounds):
            await one_round(server, made)
        await close_server(server)

    gc.collect()
    before = _open_fds()
    loop.run_until_complete(main())
    gc.collect()
    assert _open_fds() == before


def test_cancelled_serve_forever_and_open_connections(loop):
    """gh-123720 (3.14, and backports): cancelling serve_forever() closes the server's
    connections too; before it (from 3.12.1, whose wait_closed() waits for connections), the
    cancellation waits until each peer hangs up."""
    accepted = []
    lost = []

    async def main():
        server = await loop.create_server(lambda: _Accepted(accepted, lost), "127.0.0.1", 0)
        serving = asyncio.ensure_future(server.serve_forever())
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        for _ in range(1000):
            if accepted:
                break
            await asyncio.sleep(0.005)
        serving.cancel()
        if _compat.SERVE_FOREVER_CLOSES_CLIENTS:
            assert await reader.read() == b""  # the server closed our connection
        elif _compat.WAIT_CLOSED_WAITS_FOR_CLIENTS:
            for _ in range(10):
                await asyncio.sleep(0)
            assert not serving.done()  # still waiting for us to hang up
        # (before 3.12.1 wait_closed() returned at once: the cancellation ends by itself)
        writer.close()
        await writer.wait_closed()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()
        for _ in range(1000):  # (before 3.12.1 nothing waited for the server's side to go)
            if lost:
                break
            await asyncio.sleep(0.005)

    loop.run_until_complete(main())
    assert len(accepted) == 1


class _Accepted(asyncio.Protocol):
    def __init__(self, accepted, lost):
        self.accepted, self.lost = accepted, lost

    def connection_made(self, transport):
        self.accepted.append(transport)

    def connection_lost(self, exc):
        self.lost.append(exc)
