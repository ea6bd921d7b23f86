"""TLS transports moving data: echo, BufferedProtocol, flow control, the write API, and every
way a connection ends (checklist items 10-20 of the TLS brief, §5).

The peer is a blocking ``ssl`` socket in a thread (``_tls.serve``) whose ragged EOFs are not
suppressed, so it can tell a close_notify (recv returns b'') from a bare FIN (SSLEOFError).
Expectations that changed with 3.11's new TLS layer read ``_tls.NEW_SSLPROTO``.
"""

import asyncio
import hashlib
import logging
import socket
import ssl
import threading

import pytest
from _netutil import PAYLOAD
from _stdlib import requires, skip_stdlib_bug
from tokioloop import _compat
from _tls import (  # noqa: F401  (certs and peers are fixtures)
    ANSWERS_CLOSE_NOTIFY, NEW_SSLPROTO, TIMEOUT, Recorder, certs, client_context, close_notify, echo_handler,
    peers, recv_exactly, serve, server_context, until,
)

ADDR = "127.0.0.1"
MAX_CHUNK = 256 * 1024
# A local close(): 3.11's layer reports the peer's close_notify answer as eof_received.
LOCAL_CLOSE_EVENTS = ["cm", "eof", ("cl", None)] if NEW_SSLPROTO else ["cm", ("cl", None)]


def read_until_end(conn):
    """Read until the connection ends; returns (data, how): 'close_notify' (recv gave b''),
    'eof' (a FIN without close_notify) or 'reset'."""
    got = bytearray()
    try:
        while True:
            chunk = conn.recv(262144)
            if not chunk:
                return bytes(got), "close_notify"
            got += chunk
    except ssl.SSLEOFError:
        return bytes(got), "eof"
    except ConnectionResetError:
        return bytes(got), "reset"


async def start(loop, peers, certs, handler, protocol=Recorder, **kw):
    lsock = peers.listener(kw.pop("rcvbuf", None))
    server = peers.thread(serve, lsock, server_context(certs), handler)
    tr, pr = await loop.create_connection(protocol, ADDR, lsock.getsockname()[1],
                                          ssl=client_context(certs), **kw)
    return tr, pr, server


# -- 10, 11: data ----------------------------------------------------------------------------


def test_echo_one_mib(loop, peers, certs):
    async def main():
        tr, pr, server = await start(loop, peers, certs, echo_handler)
        tr.write(PAYLOAD)
        assert await pr.read(len(PAYLOAD)) == PAYLOAD
        assert pr.chunks and max(pr.chunks) <= MAX_CHUNK
        tr.close()
        await pr.closed()
        assert pr.events == ["cm", "data"] + LOCAL_CLOSE_EVENTS[1:]
        assert await server.wait() == [len(PAYLOAD)]

    loop.run_until_complete(main())


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, kind, size):
        self.storage = bytearray(size)
        self.kind = kind
        self.data = bytearray()
        self.events = []
        self.hints = []
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("cm")

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        return memoryview(self.storage) if self.kind == "memoryview" else self.storage

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.storage)
        self.data += self.storage[:nbytes]
        if self.events[-1] != "data":
            self.events.append("data")

    def data_received(self, data):  # must never be called for a BufferedProtocol
        self.events.append("data_received!")

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("cl", exc))
        self.lost.set_result(exc)


@pytest.mark.parametrize("kind", ["memoryview", "bytearray"])
def test_buffered_protocol(loop, loop_kind, peers, certs, kind):
    if kind == "bytearray":
        skip_stdlib_bug(loop_kind, "tls_buffered_bytearray")
    payload = PAYLOAD[: 300 * 1024]

    async def main():
        tr, pr, server = await start(loop, peers, certs, echo_handler,
                                     protocol=lambda: Buffered(kind, 1000))
        tr.write(payload)
        await until(lambda: len(pr.data) >= len(payload), what="the echo")
        tr.close()
        await asyncio.wait_for(pr.lost, TIMEOUT)
        assert bytes(pr.data) == payload
        assert pr.events == ["cm", "data"] + LOCAL_CLOSE_EVENTS[1:]
        assert await server.wait() == [len(payload)]

    loop.run_until_complete(main())


# -- 12: write flow control --------------------------------------------------------------------


def held_reader(go):
    """A handler that reads nothing until ``go`` is set, then reads to close_notify and
    answers it; returns (bytes read, sha256 hex)."""
    def handler(conn):
        assert go.wait(TIMEOUT)
        data, how = read_until_end(conn)
        assert how == "close_notify", how
        close_notify(conn)
        return len(data), hashlib.sha256(data).hexdigest()
    return handler


def test_write_flow_control(loop, peers, certs, sockets):
    go = threading.Event()
    expected = (131072, 524288) if NEW_SSLPROTO else (16384, 65536)

    async def main():
        lsock = peers.listener(rcvbuf=4096)
        server = peers.thread(serve, lsock, server_context(certs), held_reader(go))
        raw = sockets(socket.socket())
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        raw.connect(lsock.getsockname())
        raw.setblocking(False)
        tr, pr = await loop.create_connection(Recorder, sock=raw, ssl=client_context(certs),
                                              server_hostname="localhost")
        assert tr.get_write_buffer_limits() == expected
        digest = hashlib.sha256()
        written = 0
        chunk = PAYLOAD[:65536]
        while "pause" not in pr.events:
            assert written < 64 * 1024 * 1024, "pause_writing never came"
            tr.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            await asyncio.sleep(0)
        [(what, size)] = pr.flow_sizes
        assert what == "pause" and size > expected[1]
        assert tr.get_write_buffer_size() > expected[1]
        go.set()
        await until(lambda: "resume" in pr.events, what="resume_writing")
        assert pr.flow_sizes[1][0] == "resume" and pr.flow_sizes[1][1] <= expected[0]
        tr.close()
        await pr.closed()
        assert pr.events[:3] == ["cm", "pause", "resume"]
        assert await server.wait() == [(written, digest.hexdigest())]

    loop.run_until_complete(main())


def test_set_write_buffer_limits(loop, peers, certs):
    async def main():
        tr, pr, server = await start(loop, peers, certs, echo_handler)
        with pytest.raises(ValueError, match=r"^high \(1\) must be >= low \(2\) must be >= 0$"):
            tr.set_write_buffer_limits(high=1, low=2)
        tr.set_write_buffer_limits(low=1000)  # only low: high is 4 * low
        assert tr.get_write_buffer_limits() == (1000, 4000)
        tr.set_write_buffer_limits(high=0)
        assert tr.get_write_buffer_limits() == (0, 0)
        tr.close()
        await pr.closed()
        await server.wait()

    loop.run_until_complete(main())


# -- 13: pause_reading ---------------------------------------------------------------------------


def test_pause_and_resume_reading(loop, peers, certs):
    sent = threading.Event()

    def handler(conn):
        assert recv_exactly(conn, 4) == b"send"
        conn.sendall(b"z" * 50000)
        sent.set()
        data, how = read_until_end(conn)
        close_notify(conn)
        return how

    async def main():
        tr, pr, server = await start(loop, peers, certs, handler)
        assert tr.is_reading()
        if NEW_SSLPROTO:
            assert tr.get_read_buffer_limits() == (65536, 262144)
        tr.pause_reading()
        assert not tr.is_reading()
        tr.write(b"send")
        await until(sent.is_set, what="the peer's data")
        for _ in range(20):  # the peer's 50000 bytes arrive meanwhile; none is delivered
            await asyncio.sleep(0.005)
        assert pr.data == b""
        tr.resume_reading()
        assert tr.is_reading()
        assert pr.data == b""  # delivered on a later loop turn, not inside resume_reading
        assert await pr.read(50000) == b"z" * 50000
        tr.close()
        await pr.closed()
        assert await server.wait() == ["close_notify"]

    loop.run_until_complete(main())


# -- 14: the write API ----------------------------------------------------------------------------


def test_write_api(loop, peers, certs):
    async def main():
        tr, pr, server = await start(loop, peers, certs, echo_handler)
        with pytest.raises(TypeError, match="^data: expecting a bytes-like instance, got str$"):
            tr.write("text")
        tr.write(b"")
        tr.write(bytearray())
        assert tr.get_write_buffer_size() == 0
        assert tr.can_write_eof() is False
        with pytest.raises(NotImplementedError):
            tr.write_eof()
        tr.write(bytearray(b"ab"))
        tr.write(memoryview(b"cd"))
        tr.writelines([b"e", b"f"])
        assert await pr.read(6) == b"abcdef"
        tr.close()
        await pr.closed()
        assert await server.wait() == [6]

    loop.run_until_complete(main())


# -- 15, 16: local close -------------------------------------------------------------------------


def drain_handler(conn):
    data, how = read_until_end(conn)
    if how == "close_notify":
        close_notify(conn)
    return len(data), hashlib.sha256(data).hexdigest(), how


def test_close_flushes_then_close_notify(loop, peers, certs):
    async def main():
        tr, pr, server = await start(loop, peers, certs, drain_handler)
        tr.write(PAYLOAD)
        tr.close()
        assert tr.is_closing()
        assert await pr.closed() is None
        assert pr.events == LOCAL_CLOSE_EVENTS
        assert await server.wait() == [
            (len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(), "close_notify")]

    loop.run_until_complete(main())


def test_writes_after_close_are_dropped(loop, peers, certs, caplog):
    async def main():
        tr, pr, server = await start(loop, peers, certs, drain_handler)
        tr.write(b"last")
        tr.close()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(7):
                tr.write(b"dropped")
        await pr.closed()
        assert await server.wait() == [(4, hashlib.sha256(b"last").hexdigest(), "close_notify")]

    loop.run_until_complete(main())
    warned = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    # From the 6th write after close on, each one warns (3.11's layer; 3.10's says nothing).
    assert warned == (["SSL connection is closed"] * 2 if NEW_SSLPROTO else [])


# -- 17, 18: the peer ends the connection -----------------------------------------------------


@pytest.mark.parametrize("eof_result", [None, True])
def test_peer_close_notify(loop, peers, certs, caplog, eof_result):
    def handler(conn):
        conn.sendall(b"bye")
        try:
            conn.unwrap()  # close_notify, then wait for the client's answer
        except ssl.SSLEOFError:
            return "not answered"
        return "answered"

    class P(Recorder):
        pass

    P.eof_result = eof_result

    async def main():
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            tr, pr, server = await start(loop, peers, certs, handler, protocol=P)
            assert await pr.closed() is None
        assert bytes(pr.data) == b"bye"
        # 3.10's layer shuts down on the close_notify without telling the app of the EOF.
        if NEW_SSLPROTO:
            assert pr.events == ["cm", "data", "eof", ("cl", None)]
        else:
            assert pr.events == ["cm", "data", ("cl", None)]
        assert await server.wait() == ["answered" if ANSWERS_CLOSE_NOTIFY else "not answered"]

    loop.run_until_complete(main())
    warned = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert warned == (
        ["returning true from eof_received() has no effect when using ssl"]
        if eof_result and NEW_SSLPROTO else [])


def test_peer_fin_without_close_notify(loop, peers, certs):
    def handler(conn):
        conn.sendall(b"hello")
        return "closed"  # serve() closes the socket: a FIN, no close_notify

    async def main():
        tr, pr, server = await start(loop, peers, certs, handler)
        assert await pr.closed() is None
        assert bytes(pr.data) == b"hello"
        # Truncation is not reported as an error: eof_received, then connection_lost(None).
        assert pr.events == ["cm", "data", "eof", ("cl", None)]
        assert await server.wait() == ["closed"]

    loop.run_until_complete(main())


# -- 19, 20: shutdown timeout and abort ---------------------------------------------------------


@requires("create_connection", "ssl_shutdown_timeout")
def test_shutdown_timeout(loop, peers, certs):
    def handler(conn):
        assert recv_exactly(conn, 2) == b"hi"
        assert peers.stop.wait(TIMEOUT)  # never reads the close_notify, never answers
        return "held"

    async def main():
        tr, pr, server = await start(loop, peers, certs, handler, ssl_shutdown_timeout=0.3)
        tr.write(b"hi")
        tr.close()
        exc = await pr.closed()
        assert type(exc) is TimeoutError
        assert str(exc) == "SSL shutdown timed out"
        assert pr.events == ["cm", ("cl", exc)]
        peers.stop.set()
        assert await server.wait() == ["held"]

    loop.run_until_complete(main())


@pytest.mark.skipif(
    not _compat.TLS_SHUTDOWN_TIMEOUT_UNTIL_LOST,
    reason="this asyncio's close after a peer's EOF waits for ever on a peer that stopped reading",
)
@pytest.mark.parametrize("close_first", [True, False], ids=["close-then-eof", "eof-only"])
def test_shutdown_timeout_after_eof_from_a_peer_not_reading(loop, peers, certs, close_first):
    # The peer sends a bare FIN and reads nothing more, while records are still queued for it:
    # the close the EOF starts (or a close() before it) cannot flush them, and
    # ssl_shutdown_timeout ends it.
    filled = threading.Event()

    def handler(conn):
        assert filled.wait(TIMEOUT)
        conn.shutdown(socket.SHUT_WR)
        assert peers.stop.wait(TIMEOUT)
        return "held"

    async def main():
        tr, pr, server = await start(loop, peers, certs, handler, ssl_shutdown_timeout=0.3,
                                     rcvbuf=4096)
        chunk = bytes(256 * 1024)
        for _ in range(256):
            if "pause" in pr.events:
                break
            tr.write(chunk)
            await asyncio.sleep(0)
        assert "pause" in pr.events
        if close_first:
            tr.close()
        filled.set()
        exc = await pr.closed()
        assert type(exc) is TimeoutError
        assert str(exc) == "SSL shutdown timed out"
        assert tr.is_closing()
        peers.stop.set()
        assert await server.wait() == ["held"]

    loop.run_until_complete(main())


def test_abort_sends_no_close_notify(loop, peers, certs):
    def handler(conn):
        assert recv_exactly(conn, 2) == b"hi"
        conn.sendall(b"ok")
        data, how = read_until_end(conn)
        return data, how

    async def main():
        tr, pr, server = await start(loop, peers, certs, handler)
        tr.write(b"hi")
        await pr.read(2)
        tr.abort()
        assert tr.is_closing()
        tr.close()  # after abort(): no error
        assert await pr.closed() is None
        assert pr.events == ["cm", "data", ("cl", None)]
        [(data, how)] = await server.wait()
        assert data == b""
        assert how in ("eof", "reset")

    loop.run_until_complete(main())
