"""Every socket the loop opens or takes over is closed explicitly, on every path.

A socket left to the garbage collector emits ``ResourceWarning: unclosed <socket.socket ...>``
from its finalizer, which suites running with ``filterwarnings = error`` turn into failures.
Each test runs connection and server paths (success, failure, cancellation) with
ResourceWarning as an error, then closes the loop and collects garbage; a warning raised in
a finalizer reaches ``sys.unraisablehook``, which is recorded, and the test fails if anything
was recorded.

Where the stdlib itself leaks a socket, the test documents it (and checks tokioloop):
- create_connection whose protocol_factory raises: asyncio leaves the connected socket;
- happy eyeballs cancelled mid-race: asyncio's staggered race does not close the socket of an
  attempt that connected as it was cancelled (timing-dependent, so not asserted there);
- create_server cancelled during its final turn: the server is lost with its sockets open.
"""

import asyncio
import gc
import hashlib
import os
import socket
import ssl
import struct
import sys
import tempfile
import warnings

import pytest

from _netutil import connect_from_busy_address, free_port, serve_on_busy_address
from _stdlib import skip_stdlib_bug, stdlib_has_bug
from _tls import certs, client_context, server_context, until  # noqa: F401  (certs: a fixture)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/fd")


def unclosed_after(loop, make_coro):
    """Run ``make_coro()`` on ``loop`` with ResourceWarning as an error, close the loop and
    collect garbage; return what reached sys.unraisablehook or was warned."""
    caught = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: caught.append(repr(unraisable.exc_value))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            try:
                loop.run_until_complete(make_coro())
                loop.run_until_complete(asyncio.sleep(0))
            finally:
                loop.close()
            gc.collect()
            gc.collect()
    finally:
        sys.unraisablehook = previous_hook
    return caught


def full_listener():
    """A listener whose backlog is full: a connect to it stays pending (no SYN-ACK)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fillers.append(filler)
    return listener, fillers


# -- client connections ----------------------------------------------------------------------


class _LossRecorder(asyncio.Protocol):
    """Server side: resolves ``lost`` when its connection goes (wait_closed before 3.12.1
    does not wait for the server's connections)."""

    def __init__(self, lost):
        self.lost = lost

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(None)


def test_create_connection_success_and_close(loop):
    async def main():
        lost = loop.create_future()
        server = await loop.create_server(lambda: _LossRecorder(lost), "127.0.0.1", 0)
        transport, _ = await loop.create_connection(
            asyncio.Protocol, *server.sockets[0].getsockname()
        )
        transport.close()
        server.close()
        await server.wait_closed()
        await lost

    assert unclosed_after(loop, main) == []


@pytest.mark.parametrize("delay", [None, 0.01])
def test_create_connection_refused(loop, delay):
    async def main():
        for _ in range(2):
            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(
                    asyncio.Protocol, "127.0.0.1", free_port(), happy_eyeballs_delay=delay
                )

    assert unclosed_after(loop, main) == []


def test_create_connection_local_bind_fails(loop):
    async def main():
        await connect_from_busy_address(loop)

    assert unclosed_after(loop, main) == []


def test_create_connection_protocol_factory_raises(loop, loop_kind):
    async def main():
        def factory():
            raise RuntimeError("no protocol")

        with socket.create_server(("127.0.0.1", 0)) as listener:
            with pytest.raises(RuntimeError):
                await loop.create_connection(factory, *listener.getsockname())

    caught = unclosed_after(loop, main)
    if stdlib_has_bug(loop_kind, "connect_protocol_error_leaks_socket"):
        assert caught and "unclosed <socket.socket" in caught[0]
    else:
        assert caught == []


@pytest.mark.parametrize("delay", [None, 0.01])
def test_create_connection_cancelled_while_connecting(loop, delay):
    async def main():
        listener, fillers = full_listener()
        try:
            task = loop.create_task(loop.create_connection(
                asyncio.Protocol, *listener.getsockname(), happy_eyeballs_delay=delay
            ))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            for filler in fillers:
                filler.close()
            listener.close()

    assert unclosed_after(loop, main) == []


@pytest.mark.parametrize("delay", [None, 0])
def test_create_connection_cancelled_at_every_step(loop, loop_kind, delay):
    if delay is not None:
        skip_stdlib_bug(loop_kind, "staggered_race_leaks_cancelled_socket")

    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        for turns in range(12):
            task = loop.create_task(loop.create_connection(
                asyncio.Protocol, *address, happy_eyeballs_delay=delay
            ))
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            try:
                transport, _ = await task
            except asyncio.CancelledError:
                pass
            else:
                transport.close()
            task = None
        await asyncio.sleep(0.01)
        server.close()

    assert unclosed_after(loop, main) == []


def test_open_connection_and_close(loop):
    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    assert unclosed_after(loop, main) == []


def test_create_unix_connection_missing_path(loop, tmp_path):
    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(asyncio.Protocol, str(tmp_path / "missing"))

    assert unclosed_after(loop, main) == []


# -- servers ---------------------------------------------------------------------------------


def test_server_with_clients_closed(loop):
    async def main():
        made = []

        class Track(asyncio.Protocol):
            def connection_made(self, transport):
                made.append(transport)

        server = await loop.create_server(Track, "127.0.0.1", 0)
        clients = [socket.create_connection(server.sockets[0].getsockname()) for _ in range(3)]
        while len(made) < 3:
            await asyncio.sleep(0.01)
        server.close()
        for transport in made:
            transport.close()
        await server.wait_closed()
        for client in clients:
            client.close()

    assert unclosed_after(loop, main) == []


def test_server_closed_with_connections_waiting(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        clients = [socket.create_connection(server.sockets[0].getsockname()) for _ in range(3)]
        server.close()
        await server.wait_closed()
        for client in clients:
            client.close()
        await asyncio.sleep(0.01)

    assert unclosed_after(loop, main) == []


def test_start_server_serve_forever_cancelled(loop):
    async def main():
        handled = loop.create_future()

        async def handle(reader, writer):
            try:
                await reader.read()
            finally:
                writer.close()
                await writer.wait_closed()
                handled.set_result(None)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        task = loop.create_task(server.serve_forever())
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        await asyncio.sleep(0.01)
        task.cancel()
        writer.close()
        await writer.wait_closed()
        with pytest.raises(asyncio.CancelledError):
            await task
        task = None
        await handled

    assert unclosed_after(loop, main) == []


def test_create_server_address_in_use(loop):
    async def main():
        await serve_on_busy_address(loop)

    assert unclosed_after(loop, main) == []


def test_create_server_cancelled_before_it_returns(loop, loop_kind):
    skip_stdlib_bug(loop_kind, "cancelled_create_server_leaks")
    async def main():
        task = loop.create_task(loop.create_server(asyncio.Protocol, "127.0.0.1", 0))
        while True:  # until it has bound its socket and waits for its last turn
            await asyncio.sleep(0)
            if task.done() or _listening_sockets(loop):
                break
        task.cancel()
        try:
            server = await task
        except asyncio.CancelledError:
            pass
        else:
            server.close()
        task = None

    assert unclosed_after(loop, main) == []


def _listening_sockets(loop):
    counts = getattr(loop, "_debug_counts", None)
    if counts is not None:
        return counts()["readers"] > 0
    return len(loop._selector.get_map()) > 1  # the selector loop: its self-pipe, plus ours


def test_unix_server_with_connection(loop):
    directory = tempfile.mkdtemp(prefix="tl-rw-")
    path = os.path.join(directory, "s.sock")

    async def main():
        lost = loop.create_future()

        class ServerSide(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(None)

        server = await loop.create_unix_server(ServerSide, path)
        transport, _ = await loop.create_unix_connection(asyncio.Protocol, path)
        transport.close()
        await lost  # (asyncio before 3.12.1: wait_closed does not wait for connections)
        server.close()
        await server.wait_closed()

    try:
        assert unclosed_after(loop, main) == []
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(directory)


# -- sendfile --------------------------------------------------------------------------------


def _sendfile_case(loop, size, action):
    """A connected transport whose peer is a plain socket; ``action(transport, file, peer)``
    runs a sendfile scenario; everything is closed afterwards."""

    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            transport, _ = await loop.create_connection(
                asyncio.Protocol, *listener.getsockname()
            )
            peer, _ = listener.accept()
        with peer, tempfile.TemporaryFile() as file:
            file.write(b"x" * size)
            file.seek(0)
            try:
                await action(transport, file, peer)
            finally:
                transport.close()
                await asyncio.sleep(0)

    return main


def test_sendfile_completes(loop):
    async def action(transport, file, peer):
        peer.setblocking(False)
        reading = loop.create_task(_drain(loop, peer))
        assert await loop.sendfile(transport, file) == 100_000
        transport.close()
        await reading

    assert unclosed_after(loop, _sendfile_case(loop, 100_000, action)) == []


async def _drain(loop, sock):
    while await loop.sock_recv(sock, 65536):
        pass


def test_sendfile_cancelled(loop):
    async def action(transport, file, peer):
        task = loop.create_task(loop.sendfile(transport, file))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert unclosed_after(loop, _sendfile_case(loop, 64 << 20, action)) == []


def test_sendfile_peer_resets(loop):
    async def action(transport, file, peer):
        def reset():
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()

        loop.call_later(0.01, reset)
        with pytest.raises((OSError, RuntimeError)):
            await loop.sendfile(transport, file)

    assert unclosed_after(loop, _sendfile_case(loop, 64 << 20, action)) == []


# -- the connection ends early: TLS refused or abandoned, a reader gone mid-sendfile -----------
# Both ends are on the loop under test, as in an aiohttp test (its server and its client on
# one loop). Each case ends in two ways (the ``ending`` fixture): once every descriptor it
# opened is closed again, or with the one turn aiohttp's teardown gives; then no socket may be
# left to the garbage collector.


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=["settled", "next_turn"])
def ending(request):
    """How a case ends. ``settled``: it waits until every descriptor it opened is closed, so
    only a socket never closed can warn. ``next_turn``: it does not; the loop gets the one more
    turn aiohttp's test teardown gives it and is closed, so a socket closed later than asyncio
    closes it warns too (pass the result to ``_finish``)."""
    return request.param


async def _finish(ending, fds_before):
    if ending == "settled":
        await until(lambda: _open_fds() <= fds_before, what="the sockets to be closed")


class _ClosingProtocol(asyncio.Protocol):
    """A server's protocol that closes its transport once the connection is lost, as servers
    do (3.10's TLS transport otherwise warns that the application never closed it)."""

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport.close()


def _tls_case(loop, certs, client, ending):
    """A TLS server on ``loop``; ``client(port)`` connects to it and ends its connection its
    own way; then the server is closed and every socket must go."""

    async def main():
        before = _open_fds()
        server = await loop.create_server(
            _ClosingProtocol, "127.0.0.1", 0, ssl=server_context(certs)
        )
        try:
            await client(server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()
        await _finish(ending, before)

    return main


@linux_only
@pytest.mark.parametrize("closing", ["close", "abort", "close_then_abort"])
def test_tls_connection_refused_by_caller_after_handshake(loop, certs, closing, ending):
    # aiohttp's fingerprint check: the handshake succeeded, the caller dislikes the peer's
    # certificate and closes (and later aborts) the transport it was given.
    async def client(port):
        transport, _ = await loop.create_connection(
            asyncio.Protocol, "127.0.0.1", port, ssl=client_context(certs)
        )
        certificate = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert hashlib.sha256(certificate).digest() != bytes(32)  # "mismatch"
        if closing != "abort":
            transport.close()
        if closing != "close":
            transport.abort()

    assert unclosed_after(loop, _tls_case(loop, certs, client, ending)) == []


@linux_only
def test_tls_handshake_fails_verification(loop, certs, ending):
    # The client trusts nothing the server's certificate chains to.
    async def client(port):
        untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", port, ssl=untrusting, server_hostname="localhost"
            )

    assert unclosed_after(loop, _tls_case(loop, certs, client, ending)) == []


@linux_only
def test_tls_server_hostname_override_fails_verification(loop, certs, ending):
    async def client(port):
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", port, ssl=client_context(certs),
                server_hostname="not-the-server.example",
            )

    assert unclosed_after(loop, _tls_case(loop, certs, client, ending)) == []


@linux_only
@pytest.mark.parametrize("leaving", ["close", "abort"])
def test_sendfile_reader_leaves_midway(loop, leaving, ending):
    # A server on the loop sends a large file; its client, on the same loop, reads a little
    # and goes. The server's sendfile fails, and it closes its side.
    async def main():
        before = _open_fds()
        failures = []

        async def serve(reader, writer):
            writer.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            with tempfile.TemporaryFile() as file:
                file.truncate(64 << 20)
                try:
                    await loop.sendfile(writer.transport, file)
                except (ConnectionError, OSError) as exc:
                    failures.append(exc)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            assert await reader.readexactly(1000) == bytes(1000)
            if leaving == "close":
                writer.close()
            else:
                writer.transport.abort()
            await until(lambda: failures, what="the server's sendfile to fail")
        finally:
            server.close()
            await server.wait_closed()
        await _finish(ending, before)

    assert unclosed_after(loop, main) == []
