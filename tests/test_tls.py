"""TLS connections: set-up, extra info, certificate and hostname checks, argument validation and
the ways a handshake fails (checklist items 1-9, 24-25 of the TLS brief, §5).

Every test runs on the stdlib loop (the oracle) and on tokioloop with the same assertions.
The peers are blocking ``ssl`` sockets in threads (``_tls.Peers``).
"""

import asyncio
import gc
import socket
import ssl
import warnings
import weakref

import pytest
from _stdlib import requires, stdlib_has_bug
from _tls import (  # noqa: F401  (certs and peers are fixtures)
    ANSWERS_CLOSE_NOTIFY, NEW_SSLPROTO, Recorder, certs, client_context, decoded_cert, echo_handler,
    insecure_client_context, peers, serve, server_context, until,
)

ADDR = "127.0.0.1"


async def connect(loop, port, ctx, **kw):
    return await loop.create_connection(Recorder, ADDR, port, ssl=ctx, **kw)


# -- 1, 2: a connection and what it tells -------------------------------------------------------


def test_client_connection_and_extra_info(loop, peers, certs):
    async def main():
        lsock = peers.listener()
        server = peers.thread(serve, lsock, server_context(certs), echo_handler)
        ctx = client_context(certs)
        tr, pr = await connect(loop, lsock.getsockname()[1], ctx)
        assert isinstance(tr, asyncio.Transport)
        assert "ssl" in type(tr).__name__.lower()
        # connection_made ran once, after the handshake: the SSL object was there already.
        assert pr.events == ["cm"]
        assert pr.transport is tr
        sslobj = tr.get_extra_info("ssl_object")
        assert isinstance(sslobj, ssl.SSLObject)
        assert pr.cm_ssl_object is sslobj
        assert tr.get_extra_info("sslcontext") is ctx
        cipher = tr.get_extra_info("cipher")
        assert isinstance(cipher, tuple) and len(cipher) == 3
        assert [type(x) for x in cipher] == [str, str, int]
        assert cipher == sslobj.cipher()
        assert tr.get_extra_info("compression") is None
        assert tr.get_extra_info("peercert") == decoded_cert(certs.server)
        assert tr.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
        sock = tr.get_extra_info("socket")
        assert sock.getsockname() == tr.get_extra_info("sockname")
        assert sock.getpeername() == tr.get_extra_info("peername") == lsock.getsockname()
        assert tr.get_extra_info("no-such-key", "dflt") == "dflt"
        tr.write(b"ping")
        assert await pr.read(4) == b"ping"
        tr.close()
        assert await pr.closed() is None
        assert await server.wait() == [4]

    loop.run_until_complete(main())


def test_insecure_client_sees_empty_peercert(loop, peers, certs):
    async def main():
        lsock = peers.listener()
        server = peers.thread(serve, lsock, server_context(certs, selfsigned=True), echo_handler)
        tr, pr = await connect(loop, lsock.getsockname()[1], insecure_client_context())
        assert tr.get_extra_info("peercert") == {}
        assert isinstance(tr.get_extra_info("ssl_object"), ssl.SSLObject)
        tr.close()
        await pr.closed()
        assert await server.wait() == [0]

    loop.run_until_complete(main())


def client_thread(port, ctx, payload=b"hi", hostname="localhost"):
    """A blocking TLS client: send ``payload``, read its echo, send close_notify and wait for
    the server's. Returns (what it read, whether the server answered the close_notify)."""
    with socket.create_connection((ADDR, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
            tls.sendall(payload)
            got = bytearray()
            while len(got) < len(payload):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                got += chunk
            try:
                tls.unwrap()
            except ssl.SSLEOFError:
                return bytes(got), False
            return bytes(got), True


# The server side's callbacks when the client sends close_notify after an exchange.
SERVER_EVENTS = (["cm", "data", "eof", ("cl", None)] if NEW_SSLPROTO
                 else ["cm", "data", ("cl", None)])


class EchoServerProtocol(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


@pytest.mark.parametrize("mtls", [False, True], ids=["no-client-cert", "client-cert"])
def test_server_side_extra_info(loop, peers, certs, mtls):
    # 2 (server side) and 27 (mTLS): peercert is None without a client certificate and the
    # client's certificate when one is required.
    async def main():
        protos = []

        def factory():
            protos.append(EchoServerProtocol())
            return protos[-1]

        sctx = server_context(certs, client_auth=mtls)
        server = await loop.create_server(factory, ADDR, 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        client = peers.thread(client_thread, port, client_context(certs, client_cert=mtls))
        assert await client.wait() == (b"hi", ANSWERS_CLOSE_NOTIFY)
        await until(lambda: protos and protos[0].lost.done(), what="server connection lost")
        pr = protos[0]
        assert pr.events == SERVER_EVENTS
        tr = pr.transport
        assert pr.cm_ssl_object is not None
        assert isinstance(pr.cm_ssl_object, ssl.SSLObject)
        assert pr.cm_ssl_object.server_side
        assert tr.get_extra_info("sslcontext") is sctx
        if mtls:
            peercert = tr.get_extra_info("peercert")
            assert peercert == decoded_cert(certs.client)
            assert peercert["subject"] == ((("commonName", "tokioloop-client"),),)
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_server_peercert_none_without_client_cert(loop, peers, certs):
    async def main():
        seen = loop.create_future()

        class P(EchoServerProtocol):
            def connection_made(self, transport):
                super().connection_made(transport)
                seen.set_result(transport.get_extra_info("peercert", "missing"))

        server = await loop.create_server(P, ADDR, 0, ssl=server_context(certs))
        port = server.sockets[0].getsockname()[1]
        client = peers.thread(client_thread, port, client_context(certs))
        assert await client.wait() == (b"hi", ANSWERS_CLOSE_NOTIFY)
        assert await seen is None
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


# -- 3: ssl=True ----------------------------------------------------------------------------------


def test_ssl_true_calls_create_default_context_at_call_time(loop, peers, certs, monkeypatch):
    made = []
    real = ssl.create_default_context

    def fake(*args, **kwargs):
        ctx = real(*args, **kwargs)
        ctx.load_verify_locations(certs.ca)
        made.append(ctx)
        return ctx

    monkeypatch.setattr(ssl, "create_default_context", fake)

    async def main():
        lsock = peers.listener()
        server = peers.thread(serve, lsock, server_context(certs), echo_handler, 2)
        port = lsock.getsockname()[1]
        for n in (1, 2):  # a fresh default context for every connection
            tr, pr = await connect(loop, port, True)
            assert len(made) == n
            assert tr.get_extra_info("sslcontext") is made[-1]
            assert tr.get_extra_info("peercert") == decoded_cert(certs.server)
            tr.close()
            await pr.closed()
        assert await server.wait() == [0, 0]

    loop.run_until_complete(main())


def test_ssl_true_rejects_a_certificate_it_does_not_trust(loop, peers, certs):
    async def main():
        lsock = peers.listener()
        server = peers.thread(serve, lsock, server_context(certs, selfsigned=True), echo_handler)
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await connect(loop, lsock.getsockname()[1], True, server_hostname="localhost")
        assert info.value.reason == "CERTIFICATE_VERIFY_FAILED"
        [outcome] = await server.wait()
        assert isinstance(outcome, OSError)  # the server's handshake failed too

    loop.run_until_complete(main())


# -- 4: server_hostname -----------------------------------------------------------------------


def _no_hostname_refused():
    """True if the ssl module refuses an SSL object of a hostname-checking client context
    made without a name (CPython 3.14's ssl checks this in wrap_bio; 3.13's did not)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=None)
    except ValueError:
        return True
    return False


_NO_HOSTNAME_REFUSED = _no_hostname_refused()


def test_server_hostname_rules(loop, peers, certs, exc_contexts):
    # The self-signed certificate names DNS:localhost only; the client trusts it directly.
    async def main():
        lsock = peers.listener()
        port = lsock.getsockname()[1]
        server = peers.thread(serve, lsock, server_context(certs, selfsigned=True),
                              echo_handler, 5)
        ctx = client_context(certs, trust=certs.selfsigned)
        # The host is the default name: an IP address is checked against IP SANs.
        with pytest.raises(ssl.SSLCertVerificationError,
                           match=r"IP address mismatch, certificate is not valid for "
                                 r"'127\.0\.0\.1'\."):
            await connect(loop, port, ctx)
        with pytest.raises(ssl.SSLCertVerificationError,
                           match=r"Hostname mismatch, certificate is not valid for "
                                 r"'not-localhost'\."):
            await connect(loop, port, ctx, server_hostname="not-localhost")
        if _NO_HOSTNAME_REFUSED:
            # This ssl module refuses a checking context without a name (asyncio turns ''
            # into none) when the SSL object is made.
            with pytest.raises(ValueError, match="check_hostname requires server_hostname"):
                await connect(loop, port, ctx, server_hostname="")
        else:
            # '' skips the name check but still verifies the chain.
            tr, pr = await connect(loop, port, ctx, server_hostname="")
            assert tr.get_extra_info("peercert") == decoded_cert(certs.selfsigned)
            tr.close()
            await pr.closed()
        tr, pr = await connect(loop, port, ctx, server_hostname="localhost")
        assert tr.get_extra_info("ssl_object").server_hostname == "localhost"
        tr.close()
        await pr.closed()
        # '' does not turn off chain verification: an untrusted chain still fails.
        with pytest.raises(ValueError if _NO_HOSTNAME_REFUSED else ssl.SSLCertVerificationError):
            await connect(loop, port, client_context(certs), server_hostname="")
        outcomes = await server.wait()
        if _NO_HOSTNAME_REFUSED:
            # The refused client closed its TCP connection before any handshake.
            assert isinstance(outcomes[2], ssl.SSLError) and outcomes[3] == 0
        else:
            assert outcomes[2:4] == [0, 0]
        assert exc_contexts == []

    loop.run_until_complete(main())


def test_server_hostname_defaults_to_host_name(loop, peers, certs):
    async def main():
        lsock = peers.listener()
        server = peers.thread(serve, lsock, server_context(certs), echo_handler)
        # 'localhost' may also resolve to ::1, which nobody listens on; the IPv4 attempt wins.
        tr, pr = await loop.create_connection(
            Recorder, "localhost", lsock.getsockname()[1], ssl=client_context(certs),
            family=socket.AF_INET)
        assert tr.get_extra_info("ssl_object").server_hostname == "localhost"
        tr.close()
        await pr.closed()
        assert await server.wait() == [0]

    loop.run_until_complete(main())


# -- 5: argument validation (§2) ----------------------------------------------------------------


def test_create_connection_argument_errors(loop, certs, sockets):
    ctx = client_context(certs)

    async def main():
        with pytest.raises(ValueError, match="^server_hostname is only meaningful with ssl$"):
            await loop.create_connection(asyncio.Protocol, ADDR, 1, server_hostname="x")
        with pytest.raises(ValueError,
                           match="^ssl_handshake_timeout is only meaningful with ssl$"):
            await loop.create_connection(asyncio.Protocol, ADDR, 1, ssl_handshake_timeout=1)
        raw = sockets(socket.socket())
        with pytest.raises(ValueError,
                           match="^You must set server_hostname when using ssl without a host$"):
            await loop.create_connection(asyncio.Protocol, ssl=ctx, sock=raw)
        wrapped = sockets(ctx.wrap_socket(socket.socket(), server_hostname="x",
                                          do_handshake_on_connect=False))
        with pytest.raises(TypeError, match="^Socket cannot be of type SSLSocket$"):
            await loop.create_connection(asyncio.Protocol, sock=wrapped)

    loop.run_until_complete(main())


@requires("create_connection", "ssl_shutdown_timeout")
def test_ssl_shutdown_timeout_needs_ssl(loop, certs, sockets):
    async def main():
        with pytest.raises(ValueError,
                           match="^ssl_shutdown_timeout is only meaningful with ssl$"):
            await loop.create_connection(asyncio.Protocol, ADDR, 1, ssl_shutdown_timeout=1)
        with pytest.raises(ValueError,
                           match="^ssl_shutdown_timeout is only meaningful with ssl$"):
            await loop.create_server(asyncio.Protocol, ADDR, 0, ssl_shutdown_timeout=1)
        with socket.socket() as s:
            with pytest.raises(ValueError,
                               match="^ssl_shutdown_timeout is only meaningful with ssl$"):
                await loop.connect_accepted_socket(asyncio.Protocol, s, ssl_shutdown_timeout=1)

    loop.run_until_complete(main())


@pytest.mark.parametrize("value", [0, -1.5])
def test_nonpositive_handshake_timeout(loop, loop_kind, certs, sockets, value):
    # Checked by the TLS layer, i.e. after the TCP connection was made; the socket is closed.
    async def main():
        lsock = sockets(socket.create_server((ADDR, 0)))
        with pytest.raises(
            ValueError, match=rf"^ssl_handshake_timeout should be a positive number, got {value}$"
        ):
            await loop.create_connection(asyncio.Protocol, ADDR, lsock.getsockname()[1],
                                         ssl=client_context(certs), ssl_handshake_timeout=value)
        conn, _ = lsock.accept()
        conn.settimeout(10)
        with conn:
            assert conn.recv(100) == b""  # closed without a byte sent

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.run_until_complete(main())
        gc.collect()
    if not stdlib_has_bug(loop_kind, "tls_bad_timeout_leaks_socket"):
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@requires("create_connection", "ssl_shutdown_timeout")
def test_nonpositive_shutdown_timeout(loop, certs, sockets):
    async def main():
        lsock = sockets(socket.create_server((ADDR, 0)))
        with pytest.raises(
            ValueError, match=r"^ssl_shutdown_timeout should be a positive number, got 0$"
        ):
            await loop.create_connection(asyncio.Protocol, ADDR, lsock.getsockname()[1],
                                         ssl=client_context(certs), ssl_shutdown_timeout=0)

    loop.run_until_complete(main())


def test_server_argument_errors(loop, certs, tmp_path):
    async def main():
        for bad in (True, False):
            with pytest.raises(TypeError, match="^ssl argument must be an SSLContext or None$"):
                await loop.create_server(asyncio.Protocol, ADDR, 0, ssl=bad)
            with pytest.raises(TypeError, match="^ssl argument must be an SSLContext or None$"):
                await loop.create_unix_server(asyncio.Protocol, str(tmp_path / "s"), ssl=bad)
        with pytest.raises(ValueError,
                           match="^ssl_handshake_timeout is only meaningful with ssl$"):
            await loop.create_server(asyncio.Protocol, ADDR, 0, ssl_handshake_timeout=1)
        with pytest.raises(ValueError,
                           match="^ssl_handshake_timeout is only meaningful with ssl$"):
            await loop.create_unix_server(asyncio.Protocol, str(tmp_path / "s"),
                                          ssl_handshake_timeout=1)
        assert not (tmp_path / "s").exists()

    loop.run_until_complete(main())


def test_connect_accepted_socket_argument_errors(loop, certs, sockets):
    # 24: the server side needs a real context.
    async def main():
        a, b = sockets(*socket.socketpair())
        with pytest.raises(ValueError, match="^Server side SSL needs a valid SSLContext$"):
            await loop.connect_accepted_socket(asyncio.Protocol, a, ssl=True)
        with pytest.raises(ValueError,
                           match="^ssl_handshake_timeout is only meaningful with ssl$"):
            await loop.connect_accepted_socket(asyncio.Protocol, b, ssl_handshake_timeout=1)

    loop.run_until_complete(main())


def test_unix_connection_argument_errors(loop, certs, tmp_path):
    # 25
    async def main():
        path = str(tmp_path / "nobody")
        with pytest.raises(ValueError, match="^you have to pass server_hostname when using ssl$"):
            await loop.create_unix_connection(asyncio.Protocol, path, ssl=client_context(certs))
        with pytest.raises(ValueError, match="^server_hostname is only meaningful with ssl$"):
            await loop.create_unix_connection(asyncio.Protocol, path, server_hostname="x")
        with pytest.raises(ValueError,
                           match="^ssl_handshake_timeout is only meaningful with ssl$"):
            await loop.create_unix_connection(asyncio.Protocol, path, ssl_handshake_timeout=1)

    loop.run_until_complete(main())


# -- 6-9: failed handshakes -------------------------------------------------------------------


def test_verify_failure(loop, peers, certs, exc_contexts):
    made = []

    def factory():
        made.append(Recorder())
        return made[-1]

    async def main():
        lsock = peers.listener()
        server = peers.thread(serve, lsock, server_context(certs, selfsigned=True), echo_handler)
        with pytest.raises(ssl.SSLCertVerificationError,
                           match=r"(?i)certificate.verify.failed") as info:
            await loop.create_connection(factory, ADDR, lsock.getsockname()[1],
                                         ssl=client_context(certs), server_hostname="localhost")
        assert info.value.reason == "CERTIFICATE_VERIFY_FAILED"
        [outcome] = await server.wait()
        assert isinstance(outcome, OSError)
        await asyncio.sleep(0.05)  # any late callback would land here

    loop.run_until_complete(main())
    # The protocol was made, but its connection never came up: no callbacks at all.
    assert [p.events for p in made] == [[]]
    assert exc_contexts == []


def silent_server(lsock, stop):
    """Accept one connection, read what comes, never answer; return what was read once the
    client closed (or the test stopped)."""
    conn, _ = lsock.accept()
    conn.settimeout(0.05)
    got = bytearray()
    with conn:
        while not stop.is_set():
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return bytes(got), "eof"
            got += chunk
    return bytes(got), "stopped"


def test_handshake_timeout(loop, peers, certs, exc_contexts):
    made = []

    def factory():
        made.append(Recorder())
        return made[-1]

    async def main():
        lsock = peers.listener()
        server = peers.thread(silent_server, lsock, peers.stop)
        with pytest.raises(ConnectionAbortedError) as info:
            await loop.create_connection(factory, ADDR, lsock.getsockname()[1],
                                         ssl=client_context(certs), ssl_handshake_timeout=0.3)
        assert str(info.value) == (
            "SSL handshake is taking longer than 0.3 seconds: aborting the connection")
        hello, how = await server.wait()
        assert how == "eof"  # the socket was closed
        assert hello[:1] == b"\x16"  # a ClientHello was sent first

    loop.run_until_complete(main())
    assert [p.events for p in made] == [[]]
    assert exc_contexts == []


def closing_server(lsock, rst):
    conn, _ = lsock.accept()
    with conn:
        conn.settimeout(10)
        hello = conn.recv(65536)
        if rst:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    return hello


def test_peer_closes_during_handshake(loop, peers, certs, exc_contexts):
    async def main():
        lsock = peers.listener()
        server = peers.thread(closing_server, lsock, False)
        with pytest.raises(ConnectionResetError) as info:
            await connect(loop, lsock.getsockname()[1], client_context(certs))
        assert info.value.args == ()
        assert (await server.wait())[:1] == b"\x16"

    loop.run_until_complete(main())
    assert exc_contexts == []


def test_peer_resets_during_handshake(loop, peers, certs, exc_contexts):
    async def main():
        lsock = peers.listener()
        server = peers.thread(closing_server, lsock, True)
        with pytest.raises(ConnectionResetError) as info:
            await connect(loop, lsock.getsockname()[1], client_context(certs))
        assert info.value.errno == 104
        await server.wait()

    loop.run_until_complete(main())
    assert exc_contexts == []


def test_cancel_during_handshake(loop, peers, certs, exc_contexts):
    ctx = client_context(certs)
    ctx_ref = weakref.ref(ctx)

    async def main(ctx):
        lsock = peers.listener()
        server = peers.thread(silent_server, lsock, peers.stop)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(connect(loop, lsock.getsockname()[1], ctx), 0.3)
        del ctx
        _, how = await server.wait()
        assert how == "eof"  # the client's socket was closed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.run_until_complete(main(ctx))
        del ctx
        loop.run_until_complete(asyncio.sleep(0.01))
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert exc_contexts == []
    assert ctx_ref() is None


# -- 24: connect_accepted_socket ------------------------------------------------------------


def test_connect_accepted_socket_with_ssl(loop, peers, certs, sockets):
    async def main():
        lsock = sockets(socket.create_server((ADDR, 0)))
        client = peers.thread(client_thread, lsock.getsockname()[1], client_context(certs),
                              b"accepted")
        conn, _ = lsock.accept()
        sockets(conn)
        sctx = server_context(certs)
        tr, pr = await loop.connect_accepted_socket(EchoServerProtocol, conn, ssl=sctx)
        assert tr.get_extra_info("sslcontext") is sctx
        assert tr.get_extra_info("ssl_object").server_side
        assert await client.wait() == (b"accepted", ANSWERS_CLOSE_NOTIFY)
        await pr.closed()
        assert pr.events == SERVER_EVENTS
        assert bytes(pr.data) == b"accepted"

    loop.run_until_complete(main())
