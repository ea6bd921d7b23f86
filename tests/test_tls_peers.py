"""TLS upgrades, servers, streams and other peers: start_tls (client, server, TLS-in-TLS),
asyncio streams, sendfile, mutual TLS, encrypted keys, ALPN, SNI, Unix sockets, many clients,
and ``openssl s_server`` / ``s_client`` as peers (checklist items 21-27 of the TLS brief, §5).
"""

import asyncio
import hashlib
import socket
import ssl

import pytest
from _netutil import PAYLOAD
from _tls import (  # noqa: F401  (certs and peers are fixtures)
    ANSWERS_CLOSE_NOTIFY, NEW_SSLPROTO, PASSWORD, TIMEOUT, Recorder, certs, client_context,
    close_notify, communicate, decoded_cert, echo_handler, peers, recv_exactly,
    server_context, start_s_server, until,
)

ADDR = "127.0.0.1"
# Whether the running asyncio's TLS transport can itself be upgraded (3.11+).
TLS_IN_TLS = getattr(asyncio.sslproto._SSLProtocolTransport, "_start_tls_compatible", False)


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


class UpgradeEcho(Recorder):
    """Plain text until ``TRIGGER`` arrives; answers ``REPLY`` and upgrades with start_tls
    (server side), then echoes what comes over TLS. Bytes that arrive before start_tls has
    returned are kept and echoed once the TLS transport is known."""

    TRIGGER, REPLY = b"STARTTLS\n", b"OK\n"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.tls = None
        self.upgrading = False
        self.pending = bytearray()
        self.task = None

    def data_received(self, data):
        super().data_received(data)
        if self.upgrading:
            self.pending += data
            self.flush()
        elif self.data.endswith(self.TRIGGER):
            self.upgrading = True
            self.transport.write(self.REPLY)
            self.task = asyncio.ensure_future(self.upgrade())

    def flush(self):
        if self.tls is not None and self.pending:
            self.tls.write(bytes(self.pending))
            self.pending.clear()

    async def upgrade(self):
        loop = asyncio.get_running_loop()
        self.tls = await loop.start_tls(self.transport, self, self.ctx, server_side=True)
        self.events.append("upgraded")
        self.flush()


# -- 21: start_tls ---------------------------------------------------------------------------


def starttls_server(lsock, ctx):
    """Plaintext 'STARTTLS' -> 'OK', then TLS: echo until close_notify."""
    conn, _ = lsock.accept()
    conn.settimeout(TIMEOUT)
    with conn:
        assert recv_exactly(conn, 9) == b"STARTTLS\n"
        conn.sendall(b"OK\n")
        with ctx.wrap_socket(conn, server_side=True) as tls:
            return echo_handler(tls)


@pytest.mark.parametrize("buffered", [False, True], ids=["protocol", "buffered"])
def test_start_tls_client(loop, peers, certs, buffered):
    class Buf(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(777)
            self.data = bytearray()
            self.events = []

        def connection_made(self, tr):
            self.events.append("cm")

        def get_buffer(self, hint):
            return memoryview(self.buf)

        def buffer_updated(self, n):
            self.data += self.buf[:n]

        def eof_received(self):
            self.events.append("eof")

        def connection_lost(self, exc):
            self.events.append(("cl", exc))

    async def main():
        lsock = peers.listener()
        server = peers.thread(starttls_server, lsock, server_context(certs))
        tr, pr = await loop.create_connection(Buf if buffered else Recorder, ADDR,
                                              lsock.getsockname()[1])
        tr.write(b"STARTTLS\n")
        await until(lambda: bytes(pr.data) == b"OK\n", what="OK")
        ctx = client_context(certs)
        tls = await loop.start_tls(tr, pr, ctx, server_hostname="localhost")
        assert tls is not tr
        assert tls.get_extra_info("sslcontext") is ctx
        assert tls.get_extra_info("peercert") == decoded_cert(certs.server)
        assert pr.events == (["cm"] if buffered else ["cm", "data"])
        tls.write(PAYLOAD[:200000])
        await until(lambda: len(pr.data) >= 3 + 200000, what="the echo")
        assert bytes(pr.data) == b"OK\n" + PAYLOAD[:200000]
        tls.close()
        await until(lambda: pr.events[-1:] == [("cl", None)], what="connection_lost")
        assert pr.events.count("cm") == 1  # no second connection_made
        assert await server.wait() == 200000

    loop.run_until_complete(main())


def test_start_tls_server(loop, peers, certs):
    def client(port):
        with socket.create_connection((ADDR, port), timeout=TIMEOUT) as raw:
            raw.sendall(b"STARTTLS\n")
            assert recv_exactly(raw, 3) == b"OK\n"
            with client_context(certs).wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"secret")
                got = recv_exactly(tls, 6)
                try:
                    tls.unwrap()
                except ssl.SSLEOFError:  # 3.10 does not answer close_notify
                    assert not ANSWERS_CLOSE_NOTIFY
                return got

    async def main():
        protos = []
        sctx = server_context(certs)
        server = await loop.create_server(lambda: protos.append(UpgradeEcho(sctx)) or protos[-1],
                                          ADDR, 0)
        c = peers.thread(client, server.sockets[0].getsockname()[1])
        assert await c.wait() == b"secret"
        pr = protos[0]
        await pr.closed()
        await pr.task
        assert bytes(pr.data) == b"STARTTLS\nsecret"
        assert pr.tls.get_extra_info("sslcontext") is sctx
        assert pr.events.count("cm") == 1  # no second connection_made
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_start_tls_errors(loop, peers, certs, sockets):
    async def main():
        lsock = peers.listener()
        server = peers.thread(starttls_server, lsock, server_context(certs, selfsigned=True))
        tr, pr = await loop.create_connection(Recorder, ADDR, lsock.getsockname()[1])
        for bad in (None, True):
            with pytest.raises(TypeError, match="^sslcontext is expected to be an instance of "
                                                rf"ssl.SSLContext, got {bad!r}$"):
                await loop.start_tls(tr, pr, bad)
        other = asyncio.Transport()
        with pytest.raises(TypeError) as info:
            await loop.start_tls(other, pr, client_context(certs))
        assert str(info.value) == f"transport {other!r} is not supported by start_tls()"
        assert not tr.is_closing()
        # A failed handshake closes the original transport.
        tr.write(b"STARTTLS\n")
        await pr.read(3)
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.start_tls(tr, pr, client_context(certs), server_hostname="localhost")
        assert tr.is_closing()
        with pytest.raises(OSError):
            await server.wait()

    loop.run_until_complete(main())


def test_start_tls_handshake_timeout(loop, peers, certs):
    def silent(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(TIMEOUT)
        with conn:
            got = bytearray()
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return bytes(got)
                got += chunk

    async def main():
        lsock = peers.listener()
        server = peers.thread(silent, lsock)
        tr, pr = await loop.create_connection(Recorder, ADDR, lsock.getsockname()[1])
        tr.write(b"plain")
        with pytest.raises(ConnectionAbortedError, match="^SSL handshake is taking longer "
                                                         r"than 0\.3 seconds"):
            await loop.start_tls(tr, pr, client_context(certs), server_hostname="localhost",
                                 ssl_handshake_timeout=0.3)
        assert tr.is_closing()
        got = await server.wait()
        assert got.startswith(b"plain\x16")  # the ClientHello followed the plain text

    loop.run_until_complete(main())


def test_tls_in_tls(loop, certs):
    # 22: both ends on the loop; the inner TLS runs over the outer TLS transport.
    inner_ctx = server_context(certs)

    async def main():
        protos = []
        server = await loop.create_server(
            lambda: protos.append(UpgradeEcho(inner_ctx)) or protos[-1], ADDR, 0,
            ssl=server_context(certs))
        port = server.sockets[0].getsockname()[1]
        outer, pr = await loop.create_connection(Recorder, ADDR, port,
                                                 ssl=client_context(certs))
        if not TLS_IN_TLS:  # 3.10: start_tls refuses a TLS transport
            with pytest.raises(TypeError, match="is not supported by start_tls"):
                await loop.start_tls(outer, pr, client_context(certs))
            outer.close()
            await pr.closed()
            await until(lambda: protos[0].lost.done(), what="the server side to close")
            server.close()
            await server.wait_closed()
            return
        outer.write(b"STARTTLS\n")
        await pr.read(3)
        inner = await loop.start_tls(outer, pr, client_context(certs),
                                     server_hostname="localhost")
        assert inner.get_extra_info("ssl_object") is not outer.get_extra_info("ssl_object")
        assert isinstance(inner.get_extra_info("ssl_object"), ssl.SSLObject)
        inner.write(b"nested" * 10000)
        assert await pr.read(60003) == b"OK\n" + b"nested" * 10000
        inner.close()
        await pr.closed()
        await until(lambda: protos[0].lost.done(), what="the server side to close")
        assert protos[0].events.count("cm") == 1
        assert "upgraded" in protos[0].events
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


# -- 23: many clients against one server -------------------------------------------------------


def test_create_server_with_25_clients(loop, peers, certs, exc_contexts):
    def good(port, i):
        with socket.create_connection((ADDR, port), timeout=TIMEOUT) as raw:
            with client_context(certs).wrap_socket(raw, server_hostname="localhost") as tls:
                msg = f"client {i} ".encode() * 100
                tls.sendall(msg)
                return recv_exactly(tls, len(msg)) == msg

    def bad(port):
        with socket.create_connection((ADDR, port), timeout=TIMEOUT) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS
            try:
                return raw.recv(100)
            except ConnectionResetError:
                return b""

    async def main():
        made = []
        server = await loop.create_server(lambda: made.append(Echo()) or made[-1], ADDR, 0,
                                          ssl=server_context(certs), ssl_handshake_timeout=5)
        port = server.sockets[0].getsockname()[1]
        badpeer = peers.thread(bad, port)
        clients = [peers.thread(good, port, i) for i in range(25)]
        assert [await c.wait() for c in clients] == [True] * 25
        assert await badpeer.wait() == b""  # closed without an answer
        await until(lambda: len(made) == 26 and sum(p.lost.done() for p in made) == 25,
                    what="all connections gone")
        # The bad client's protocol was made, but its failed handshake called nothing.
        assert sorted(p.events for p in made)[0] == []
        assert all(p.data and p.events[0] == "cm" for p in made if p.events)
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)

    loop.run_until_complete(main())
    assert exc_contexts == []


# -- 25, 26: Unix sockets and streams -----------------------------------------------------------


def test_unix_server_and_connection(loop, certs, tmp_path):
    async def main():
        path = str(tmp_path / "tls.sock")
        server = await loop.create_unix_server(Echo, path, ssl=server_context(certs))
        tr, pr = await loop.create_unix_connection(Recorder, path, ssl=client_context(certs),
                                                   server_hostname="localhost")
        assert tr.get_extra_info("peercert") == decoded_cert(certs.server)
        tr.write(PAYLOAD[:100000])
        assert await pr.read(100000) == PAYLOAD[:100000]
        tr.close()
        await pr.closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_streams_over_tls(loop, certs):
    done = None

    # 26: the server's close_notify is an EOF for the client's StreamReader (the stream
    # protocol knows the transport is TLS by its 'sslcontext' and lets the TLS layer close).
    sctx = server_context(certs)

    async def handle(reader, writer):
        assert writer.get_extra_info("sslcontext") is sctx
        data = await reader.readexactly(3000)
        writer.write(data[::-1])
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        done.set_result(None)

    async def main():
        nonlocal done
        done = loop.create_future()
        server = await asyncio.start_server(handle, ADDR, 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        cctx = client_context(certs)
        reader, writer = await asyncio.open_connection(ADDR, port, ssl=cctx)
        assert writer.get_extra_info("sslcontext") is cctx
        assert not writer.can_write_eof()
        writer.write(b"abc" * 1000)
        await writer.drain()
        assert await reader.read() == b"cba" * 1000
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(done, TIMEOUT)  # the server side has closed too
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_stream_echo_over_tls(loop, certs):
    done = None

    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
        writer.close()
        await writer.wait_closed()
        done.set_result(None)

    async def main():
        nonlocal done
        done = loop.create_future()
        server = await asyncio.start_server(handle, ADDR, 0, ssl=server_context(certs))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(ADDR, port, ssl=client_context(certs),
                                                       server_hostname="localhost")
        for i in range(20):
            writer.write(b"line %d\n" % i)
            assert await reader.readline() == b"LINE %d\n" % i
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(done, TIMEOUT)  # the server side has closed too
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


@pytest.mark.skipif(not hasattr(asyncio.StreamWriter, "start_tls"),
                    reason="StreamWriter.start_tls is new in 3.11")
def test_stream_writer_start_tls(loop, certs):
    done = None

    sctx = server_context(certs)

    async def handle(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.start_tls(sctx)
        assert writer.get_extra_info("sslcontext") is sctx
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        done.set_result(None)

    async def main():
        nonlocal done
        done = loop.create_future()
        server = await asyncio.start_server(handle, ADDR, 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(ADDR, port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_context(certs), server_hostname="localhost")
        assert writer.get_extra_info("peercert") == decoded_cert(certs.server)
        writer.write(b"quiet\n")
        assert await reader.readline() == b"QUIET\n"
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(done, TIMEOUT)  # the server side has closed too
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


# -- 27: sendfile, keys, ALPN, SNI, openssl peers ---------------------------------------------


def test_sendfile_over_tls(loop, peers, certs, payload_file):
    def handler(conn):
        data = bytearray()
        while True:
            chunk = conn.recv(262144)
            if not chunk:
                break
            data += chunk
        close_notify(conn)
        return hashlib.sha256(data).hexdigest(), len(data)

    async def main():
        lsock = peers.listener()
        server = peers.thread(serve_one, lsock, server_context(certs), handler)
        tr, pr = await loop.create_connection(Recorder, ADDR, lsock.getsockname()[1],
                                              ssl=client_context(certs))
        sent = await loop.sendfile(tr, payload_file)
        assert sent == len(PAYLOAD)
        assert payload_file.tell() == len(PAYLOAD)
        tr.close()
        await pr.closed()
        assert await server.wait() == (hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD))

    loop.run_until_complete(main())


def serve_one(lsock, ctx, handler):
    conn, _ = lsock.accept()
    conn.settimeout(TIMEOUT)
    with ctx.wrap_socket(conn, server_side=True) as tls:
        return handler(tls)


@pytest.mark.parametrize("password", ["str", "bytes", "callable"])
def test_encrypted_server_key(loop, certs, password):
    async def main():
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        pw = {"str": PASSWORD, "bytes": PASSWORD.encode(),
              "callable": lambda: PASSWORD}[password]
        sctx.load_cert_chain(certs.server, certs.server_key_encrypted, password=pw)
        server = await loop.create_server(Echo, ADDR, 0, ssl=sctx)
        tr, pr = await loop.create_connection(Recorder, ADDR,
                                              server.sockets[0].getsockname()[1],
                                              ssl=client_context(certs))
        tr.write(b"key")
        assert await pr.read(3) == b"key"
        tr.close()
        await pr.closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_alpn_and_sni(loop, certs):
    seen = []
    sctx = server_context(certs)
    sctx.set_alpn_protocols(["http/1.1", "x-tokioloop"])

    def sni(sslobj, name, ctx):
        seen.append((type(sslobj).__name__, name))

    sctx.sni_callback = sni

    async def main():
        protos = []
        server = await loop.create_server(lambda: protos.append(Echo()) or protos[-1],
                                          ADDR, 0, ssl=sctx)
        cctx = client_context(certs)
        cctx.set_alpn_protocols(["h2", "x-tokioloop"])
        tr, pr = await loop.create_connection(Recorder, ADDR,
                                              server.sockets[0].getsockname()[1], ssl=cctx,
                                              server_hostname="localhost")
        assert tr.get_extra_info("ssl_object").selected_alpn_protocol() == "x-tokioloop"
        tr.write(b"x")
        await pr.read(1)
        assert protos[0].transport.get_extra_info(
            "ssl_object").selected_alpn_protocol() == "x-tokioloop"
        tr.close()
        await pr.closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert seen == [("SSLObject", "localhost")]


def test_openssl_s_server_peer(loop, peers, certs):
    # Our client against `openssl s_server` requiring a client certificate, with ALPN; the
    # server prints what it receives and ends when our close_notify comes.
    async def main():
        proc, port = await start_s_server(peers, certs, "-Verify", "1", "-CAfile", certs.ca,
                                          "-alpn", "x-tokioloop")
        cctx = client_context(certs, client_cert=True)
        cctx.set_alpn_protocols(["x-tokioloop"])
        tr, pr = await loop.create_connection(Recorder, ADDR, port, ssl=cctx,
                                              server_hostname="localhost")
        assert tr.get_extra_info("ssl_object").selected_alpn_protocol() == "x-tokioloop"
        tr.write(b"hello-from-the-loop\n")
        tr.close()
        await pr.closed()
        out, err = await communicate(peers, proc)
        assert b"hello-from-the-loop" in out, (out, err)
        assert proc.returncode == 0, err

    loop.run_until_complete(main())


def test_openssl_s_client_peer(loop, peers, certs):
    # `openssl s_client` against our server: it sends stdin, prints what we answer, and ends
    # when our close_notify comes.
    class Answer(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if self.data.endswith(b"\n"):
                self.transport.write(b"ANSWER:" + bytes(self.data))
                self.transport.close()

    async def main():
        server = await loop.create_server(Answer, ADDR, 0, ssl=server_context(certs))
        port = server.sockets[0].getsockname()[1]
        proc = peers.openssl("s_client", "-connect", f"{ADDR}:{port}", "-CAfile", certs.ca,
                             "-verify_return_error", "-servername", "localhost",
                             "-verify_hostname", "localhost", "-quiet")
        out, err = await communicate(peers, proc, b"question\n")
        assert out == b"ANSWER:question\n", (out, err)
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def _starttls_client(port, ctx):
    """A client that sends its ClientHello in the same segment as the STARTTLS command, then
    finishes the handshake, sends one line and returns the server's reply."""
    sock = socket.create_connection((ADDR, port), timeout=TIMEOUT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")

    def pump():
        if outgoing.pending:
            sock.sendall(outgoing.read())
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        incoming.write(data)

    with sock:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        sock.sendall(b"STARTTLS\n" + outgoing.read())
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
        tls.write(b"hello\n")
        sock.sendall(outgoing.read())
        reply = b""
        while not reply.endswith(b"\n"):
            try:
                reply += tls.read(1024)
            except ssl.SSLWantReadError:
                pump()
        return reply


@pytest.mark.skipif(
    not __import__("tokioloop._compat")._compat.START_TLS_CARRIES_STREAM_BUFFER,
    reason="this Python's start_tls leaves bytes the StreamReader holds in it (gh-142352): "
           "both loops then wait for a ClientHello that already came",
)
def test_server_start_tls_takes_hello_sent_with_command(loop, peers, certs):
    """gh-142352: a server upgrading a stream connection hands the bytes its StreamReader
    already holds (here the ClientHello, sent with the command) to the TLS layer."""

    async def main():
        lines = []

        async def handle(reader, writer):
            try:
                lines.append(await reader.readline())
                await writer.start_tls(server_context(certs))
                line = await reader.readline()
                lines.append(line)
                writer.write(line.upper())
                await writer.drain()
            finally:
                writer.close()

        server = await asyncio.start_server(handle, ADDR, 0)
        try:
            client = peers.thread(_starttls_client, server.sockets[0].getsockname()[1],
                                  client_context(certs))
            reply = await client.wait()
        finally:
            server.close()
            await server.wait_closed()
        return lines, reply

    assert loop.run_until_complete(main()) == ([b"STARTTLS\n", b"hello\n"], b"HELLO\n")
