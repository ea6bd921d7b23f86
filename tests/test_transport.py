"""Stream transports, driven through the public ``loop.connect_accepted_socket``.

The transport side is one end of a ``socket.socketpair()`` (AF_UNIX) or of a loopback TCP pair
made with plain sockets; the peer is the other end, a plain non-blocking socket driven with the
loop's ``sock_*`` coroutines. Stdlib asyncio (``selector_events._SelectorSocketTransport``) is
the oracle for every assertion.
"""

import asyncio
import contextvars
import errno
import hashlib
import logging
import os
import socket
import struct

import pytest
from _stdlib import WRONG_WRITE_TYPE, skip_stdlib_bug

TIMEOUT = 10.0
MiB = 1024 * 1024
DEFAULT_LIMITS = (16 * 1024, 64 * 1024)  # asyncio's (low, high) write-buffer defaults
LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, timeout 0: close() sends a RST


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(params=["unix", "tcp"])
def pair_kind(request):
    return request.param


def make_pair(sockets, kind="unix", small=False):
    """(ours, peer): ``ours`` goes to connect_accepted_socket, ``peer`` stays a plain socket.

    ``small`` shrinks the kernel buffers between them so that a few hundred KiB written by the
    transport, with the peer not reading, stay in the transport's own write buffer.
    """
    if kind == "unix":
        ours, peer = socket.socketpair()
        sockets(ours, peer)
    else:
        lsock = sockets(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        if small:  # inherited by the accepted socket; must precede listen() to bound the window
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        peer = sockets(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        if small:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.connect(lsock.getsockname())
        ours, _ = lsock.accept()
        sockets(ours)
        lsock.close()
    if small:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.setblocking(False)
    return ours, peer


class Recorder(asyncio.Protocol):
    """Records every callback in order. ``events`` collapses runs of data_received into one
    ``"data"`` entry; ``chunks`` keeps each data_received argument."""

    eof_result = None

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.events = []
        self.data = bytearray()
        self.chunks = []
        self.transport = None
        self.made = self.loop.create_future()
        self.lost = self.loop.create_future()
        self._wakeup = None

    def _note(self, event):
        if event == "data" and self.events and self.events[-1] == "data":
            pass
        else:
            self.events.append(event)
        w = self._wakeup
        if w is not None and not w.done():
            w.set_result(None)

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)  # a second call would raise InvalidStateError
        self._note("made")

    def data_received(self, data):
        self.chunks.append(data)
        self.data += data
        self._note("data")

    def eof_received(self):
        self._note("eof")
        return self.eof_result

    def connection_lost(self, exc):
        self.lost.set_result(exc)  # a second call would raise InvalidStateError
        self._note(("lost", exc))

    async def until(self, predicate, what="condition"):
        async def wait():
            while not predicate():
                self._wakeup = self.loop.create_future()
                await self._wakeup

        try:
            await asyncio.wait_for(wait(), TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}; events={self.events!r}, "
                f"{len(self.data)} bytes received"
            ) from None

    async def until_data(self, n):
        await self.until(lambda: len(self.data) >= n, f"{n} bytes")

    async def wait_lost(self):
        try:
            return await asyncio.wait_for(asyncio.shield(self.lost), TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"connection_lost not called; events={self.events!r}"
            ) from None


class KeepOpen(Recorder):
    eof_result = True


class FlowRecorder(Recorder):
    """Also records pause_writing/resume_writing, with the buffer size seen at each call."""

    def __init__(self):
        super().__init__()
        self.flow = []

    def pause_writing(self):
        self.flow.append(("pause", self.transport.get_write_buffer_size()))
        self._note("pause")

    def resume_writing(self):
        self.flow.append(("resume", self.transport.get_write_buffer_size()))
        self._note("resume")


async def attach(loop, sock, factory=Recorder):
    """connect_accepted_socket with a timeout; returns (transport, protocol)."""
    return await asyncio.wait_for(loop.connect_accepted_socket(factory, sock), TIMEOUT)


async def peer_read(loop, sock, n=None):
    """Read from the peer until EOF (or ``n`` bytes). A reset ends the read like EOF; the
    exception (or None) is returned with the data."""

    async def body():
        got = bytearray()
        while n is None or len(got) < n:
            try:
                chunk = await loop.sock_recv(sock, 256 * 1024)
            except (ConnectionResetError, BrokenPipeError) as exc:
                return bytes(got), exc
            if not chunk:
                break
            got += chunk
        return bytes(got), None

    try:
        return await asyncio.wait_for(body(), TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"peer read timed out (wanted {n} bytes or EOF)") from None


async def peer_read_exactly(loop, sock, n):
    data, exc = await peer_read(loop, sock, n)
    assert exc is None, exc
    assert len(data) == n, f"peer got {len(data)} of {n} bytes before EOF"
    return data


async def peer_read_to_eof(loop, sock):
    data, exc = await peer_read(loop, sock)
    assert exc is None, exc
    return data


async def spin(turns=5):
    for _ in range(turns):
        await asyncio.sleep(0)


async def settle():
    """Let the loop run for a while (turns, 50 ms, turns): what is ready has been handled."""
    await spin()
    await asyncio.sleep(0.05)
    await spin()


def write_beyond_kernel_buffers(tr, size):
    """Write ``size`` random bytes (more than a ``small`` pair's kernel buffers take, the peer
    not reading): some stay in the transport's buffer. Returns what was written."""
    payload = os.urandom(size)
    tr.write(payload)
    assert tr.get_write_buffer_size() > 0
    return payload


async def close_and_wait(tr, proto):
    tr.close()
    return await proto.wait_lost()


async def fill_write_buffer(tr, chunk=64 * 1024, at_least=1):
    """Write until the transport buffers at least ``at_least`` bytes; returns bytes written."""
    written = 0
    for _ in range(1000):
        tr.write(b"f" * chunk)
        written += chunk
        if tr.get_write_buffer_size() >= at_least:
            return written
    raise AssertionError(f"transport never buffered {at_least} bytes (peer not reading)")


# -- lifecycle -----------------------------------------------------------------------------


def test_lifecycle_order(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)
    peer.sendall(b"early")

    async def main():
        tr, proto = await attach(loop, ours)
        # The waiter is resolved only after connection_made has run.
        assert proto.events[:1] == ["made"]
        assert proto.transport is tr
        assert tr.get_protocol() is proto
        assert not tr.is_closing()
        await proto.until_data(5)
        await loop.sock_sendall(peer, b"late")
        await proto.until_data(9)
        peer.shutdown(socket.SHUT_WR)
        assert await proto.wait_lost() is None
        # close/abort after connection_lost: no second connection_lost.
        tr.close()
        tr.abort()
        tr.close()
        await spin()
        assert proto.events == ["made", "data", "eof", ("lost", None)]
        assert bytes(proto.data) == b"earlylate"
        assert all(type(c) is bytes for c in proto.chunks)
        assert tr.is_closing()
        assert await peer_read_to_eof(loop, peer) == b""

    loop.run_until_complete(main())


def test_transport_owns_socket(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)
    ours.setblocking(True)

    async def main():
        tr, proto = await attach(loop, ours)
        assert ours.gettimeout() == 0  # made non-blocking by connect_accepted_socket
        assert await close_and_wait(tr, proto) is None
        assert ours.fileno() == -1  # closed once connection_lost has run

    loop.run_until_complete(main())


def test_close_twice_and_abort_after_close_single_connection_lost(loop, sockets):
    ours, peer = make_pair(sockets, small=True)

    async def main():
        tr, proto = await attach(loop, ours)
        await fill_write_buffer(tr, at_least=64 * 1024)
        tr.close()
        tr.close()
        assert tr.is_closing()
        tr.abort()  # drops the pending data
        tr.abort()
        tr.close()
        assert await proto.wait_lost() is None
        await spin()
        assert proto.events == ["made", ("lost", None)]

    loop.run_until_complete(main())


def test_eof_received_true_keeps_transport_open(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)

    async def main():
        tr, proto = await attach(loop, ours, KeepOpen)
        await loop.sock_sendall(peer, b"question")
        peer.shutdown(socket.SHUT_WR)
        await proto.until(lambda: "eof" in proto.events, "eof_received")
        await spin()
        assert not tr.is_closing()
        assert not proto.lost.done()
        tr.write(b"answer after eof")  # half-close: we can still write
        assert await peer_read_exactly(loop, peer, 16) == b"answer after eof"
        assert await close_and_wait(tr, proto) is None
        assert await peer_read_to_eof(loop, peer) == b""
        assert proto.events == ["made", "data", "eof", ("lost", None)]
        assert bytes(proto.data) == b"question"

    loop.run_until_complete(main())


@pytest.mark.parametrize("result", [False, None])
def test_eof_received_falsy_closes_transport(loop, sockets, result):
    ours, peer = make_pair(sockets)

    class Proto(Recorder):
        eof_result = result

    async def main():
        tr, proto = await attach(loop, ours, Proto)
        peer.shutdown(socket.SHUT_WR)
        assert await proto.wait_lost() is None
        assert tr.is_closing()
        assert proto.events == ["made", "eof", ("lost", None)]
        assert await peer_read_to_eof(loop, peer) == b""

    loop.run_until_complete(main())


def test_is_closing(loop, sockets):
    ours, peer = make_pair(sockets, small=True)

    async def main():
        tr, proto = await attach(loop, ours)
        assert tr.is_closing() is False
        total = await fill_write_buffer(tr, at_least=1)
        tr.close()
        assert tr.is_closing() is True  # at once, though data is still pending
        await peer_read_exactly(loop, peer, total)
        assert await proto.wait_lost() is None
        assert tr.is_closing() is True

    loop.run_until_complete(main())


def test_close_in_connection_made(loop, sockets):
    ours, peer = make_pair(sockets)

    class Closer(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.close()

    async def main():
        tr, proto = await attach(loop, ours, Closer)
        assert tr.is_closing()
        assert await proto.wait_lost() is None
        assert proto.events == ["made", ("lost", None)]
        assert await peer_read_to_eof(loop, peer) == b""

    loop.run_until_complete(main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_in_data_received_stops_reading(loop, sockets, how):
    # The peer's data and EOF are both queued; after close()/abort() inside data_received
    # neither more data nor eof_received is delivered.
    ours, peer = make_pair(sockets)
    peer.sendall(b"data")
    peer.shutdown(socket.SHUT_WR)

    class Closer(Recorder):
        def data_received(self, data):
            super().data_received(data)
            getattr(self.transport, how)()

    async def main():
        tr, proto = await attach(loop, ours, Closer)
        assert await proto.wait_lost() is None
        await spin()
        assert proto.events == ["made", "data", ("lost", None)]
        assert bytes(proto.data) == b"data"

    loop.run_until_complete(main())


def test_write_from_data_received(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)

    class Upper(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(data.upper())

    async def main():
        tr, proto = await attach(loop, ours, Upper)
        for word in (b"one", b"two", b"three"):
            await loop.sock_sendall(peer, word)
            assert await peer_read_exactly(loop, peer, len(word)) == word.upper()
        peer.shutdown(socket.SHUT_WR)
        assert await proto.wait_lost() is None
        assert await peer_read_to_eof(loop, peer) == b""

    loop.run_until_complete(main())


# -- write ---------------------------------------------------------------------------------


def test_write_bytes_like_and_writelines(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)

    async def main():
        tr, proto = await attach(loop, ours)
        assert tr.write(b"ab") is None
        tr.write(bytearray(b"cd"))
        tr.write(memoryview(b"xefgx")[1:4])
        tr.write(b"")
        tr.write(bytearray())
        tr.writelines([b"1", bytearray(b"2"), memoryview(b"3")])
        tr.writelines([])
        tr.writelines(iter([b"4", b"5"]))
        expected = b"abcdefg12345"
        assert await peer_read_exactly(loop, peer, len(expected)) == expected
        await close_and_wait(tr, proto)
        assert await peer_read_to_eof(loop, peer) == b""

    loop.run_until_complete(main())


def test_write_copies_buffered_data(loop, sockets, loop_kind):
    skip_stdlib_bug(loop_kind, "write_buffers_uncopied")
    # Once write() returns, mutating (or resizing) the object passed must not change what is
    # sent, even when the data had to be buffered.
    ours, peer = make_pair(sockets, small=True)

    async def main():
        tr, proto = await attach(loop, ours)
        filler = await fill_write_buffer(tr, at_least=1)
        ba = bytearray(b"original-1")
        tr.write(ba)
        ba[:] = b"MUTATED!!!"
        ba.extend(b"-and-grown")  # no buffer export may be held on it
        backing = bytearray(b"original-2")
        tr.write(memoryview(backing))
        backing[:] = b"MUTATED!!!"
        tr.writelines([bytearray(b"original-3")])
        assert tr.get_write_buffer_size() > 0
        got = await peer_read_exactly(loop, peer, filler + 30)
        assert got[filler:] == b"original-1original-2original-3"
        # Unbuffered path too.
        ba = bytearray(b"direct")
        tr.write(ba)
        ba[:] = b"XXXXXX"
        assert await peer_read_exactly(loop, peer, 6) == b"direct"
        await close_and_wait(tr, proto)

    loop.run_until_complete(main())


def test_write_non_bytes_raises_type_error(loop, sockets):
    ours, peer = make_pair(sockets)

    async def main():
        tr, proto = await attach(loop, ours)
        for bad, name in [("text", "str"), (None, "NoneType"), (42, "int"),
                          ([b"x"], "list"), (bytes, "type")]:
            with pytest.raises(TypeError) as info:
                tr.write(bad)
            assert str(info.value) == f"{WRONG_WRITE_TYPE}, not {name!r}"
        with pytest.raises(TypeError):
            tr.writelines(["text"])
        assert not tr.is_closing()
        tr.write(b"still fine")
        assert await peer_read_exactly(loop, peer, 10) == b"still fine"
        await close_and_wait(tr, proto)
        # The type check comes first, even on a closed transport.
        with pytest.raises(TypeError, match=WRONG_WRITE_TYPE):
            tr.write("text")

    loop.run_until_complete(main())


def test_write_after_close_is_dropped_with_warning(loop, sockets, caplog):
    ours, peer = make_pair(sockets)
    caplog.set_level(logging.WARNING, logger="asyncio")

    def send_warnings():
        return [r for r in caplog.records
                if r.name == "asyncio" and "socket.send() raised exception" in r.getMessage()]

    async def main():
        tr, proto = await attach(loop, ours)
        tr.close()
        assert tr.write(b"dropped") is None  # no exception
        assert send_warnings() == []  # the first few writes are silent
        for _ in range(9):
            tr.write(b"dropped")
        assert send_warnings(), "asyncio logs 'socket.send() raised exception.' by the 5th write"
        assert all(r.levelno == logging.WARNING for r in send_warnings())
        assert await proto.wait_lost() is None
        tr.write(b"dropped too")  # after connection_lost as well
        assert await peer_read_to_eof(loop, peer) == b""

    loop.run_until_complete(main())


def test_methods_after_connection_lost_are_harmless(loop, sockets, loop_kind):
    skip_stdlib_bug(loop_kind, "write_buffers_uncopied")
    ours, peer = make_pair(sockets)

    async def main():
        tr, proto = await attach(loop, ours)
        await close_and_wait(tr, proto)
        tr.write(b"x")
        tr.writelines([b"y"])
        tr.write_eof()
        tr.pause_reading()
        tr.resume_reading()
        tr.set_write_buffer_limits(high=10, low=5)
        assert tr.get_write_buffer_limits() == (5, 10)
        assert tr.get_write_buffer_size() == 0
        assert tr.is_closing()
        assert not tr.is_reading()
        tr.close()
        tr.abort()
        assert tr.can_write_eof() is True
        await spin()
        assert proto.events == ["made", ("lost", None)]

    loop.run_until_complete(main())


# -- write_eof -----------------------------------------------------------------------------


def test_write_eof(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)

    async def main():
        tr, proto = await attach(loop, ours)
        assert tr.can_write_eof() is True
        tr.write(b"last words")
        tr.write_eof()
        tr.write_eof()  # idempotent
        assert not tr.is_closing()
        assert await peer_read_to_eof(loop, peer) == b"last words"
        with pytest.raises(RuntimeError, match=r"Cannot call write\(\) after write_eof\(\)"):
            tr.write(b"more")
        with pytest.raises(RuntimeError, match=r"Cannot call write\(\) after write_eof\(\)"):
            tr.write(b"")  # checked before the empty-data shortcut
        # Our read side is still open.
        await loop.sock_sendall(peer, b"reply")
        await proto.until_data(5)
        peer.close()
        assert await proto.wait_lost() is None
        assert proto.events == ["made", "data", "eof", ("lost", None)]
        assert bytes(proto.data) == b"reply"

    loop.run_until_complete(main())


def test_write_eof_waits_for_buffered_data(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind, small=True)

    async def main():
        tr, proto = await attach(loop, ours)
        payload = write_beyond_kernel_buffers(tr, MiB)
        tr.write_eof()
        assert await peer_read_to_eof(loop, peer) == payload
        assert not proto.lost.done()
        await close_and_wait(tr, proto)

    loop.run_until_complete(main())


# -- close and abort -----------------------------------------------------------------------


def test_close_flushes_pending_data(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind, small=True)

    async def main():
        tr, proto = await attach(loop, ours)
        payload = write_beyond_kernel_buffers(tr, 2 * MiB)
        tr.close()
        await spin()
        # The peer is not reading, so nothing can complete the flush yet.
        assert not proto.lost.done()
        assert tr.get_write_buffer_size() > 0
        got = await peer_read_to_eof(loop, peer)
        assert len(got) == len(payload)
        assert got == payload
        assert await proto.wait_lost() is None
        assert proto.events == ["made", ("lost", None)]

    loop.run_until_complete(main())


def test_abort_drops_pending_data(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind, small=True)

    async def main():
        tr, proto = await attach(loop, ours)
        payload = write_beyond_kernel_buffers(tr, 4 * MiB)
        tr.abort()
        assert tr.is_closing()
        assert tr.get_write_buffer_size() == 0
        assert await proto.wait_lost() is None
        got, _exc = await peer_read(loop, peer)  # EOF or reset, either way short
        assert len(got) < len(payload)
        assert payload.startswith(got)
        assert proto.events == ["made", ("lost", None)]

    loop.run_until_complete(main())


# -- reading control -----------------------------------------------------------------------


def test_pause_resume_reading(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)

    async def main():
        tr, proto = await attach(loop, ours)
        assert tr.is_reading() is True
        tr.pause_reading()
        tr.pause_reading()  # idempotent
        assert tr.is_reading() is False
        await loop.sock_sendall(peer, b"while paused")
        await settle()
        assert proto.data == b""
        tr.resume_reading()
        tr.resume_reading()  # idempotent
        assert tr.is_reading() is True
        await proto.until_data(12)
        assert bytes(proto.data) == b"while paused"
        # EOF is not seen while paused either.
        tr.pause_reading()
        await loop.sock_sendall(peer, b"+tail")
        peer.shutdown(socket.SHUT_WR)
        await settle()
        assert proto.events == ["made", "data"]
        assert bytes(proto.data) == b"while paused"
        tr.resume_reading()
        assert await proto.wait_lost() is None
        assert bytes(proto.data) == b"while paused+tail"
        assert proto.events == ["made", "data", "eof", ("lost", None)]
        assert tr.is_reading() is False
        tr.pause_reading()  # no-ops once closed
        tr.resume_reading()
        assert tr.is_reading() is False

    loop.run_until_complete(main())


def test_is_reading_false_after_close(loop, sockets):
    ours, peer = make_pair(sockets)

    async def main():
        tr, proto = await attach(loop, ours)
        tr.close()
        assert tr.is_reading() is False
        tr.resume_reading()
        assert tr.is_reading() is False
        await proto.wait_lost()

    loop.run_until_complete(main())


def test_pause_reading_in_connection_made(loop, sockets, loop_kind):
    skip_stdlib_bug(loop_kind, "pause_in_connection_made")
    # Reading starts only after connection_made, which may pause it first.
    ours, peer = make_pair(sockets)
    peer.sendall(b"early")

    class Paused(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    async def main():
        tr, proto = await attach(loop, ours, Paused)
        assert tr.is_reading() is False
        await settle()
        assert proto.events == ["made"]
        tr.resume_reading()
        await proto.until_data(5)
        await close_and_wait(tr, proto)

    loop.run_until_complete(main())


# -- flow control --------------------------------------------------------------------------


def test_write_buffer_limits(loop, sockets):
    ours, peer = make_pair(sockets)

    async def main():
        tr, proto = await attach(loop, ours)
        assert tr.get_write_buffer_limits() == DEFAULT_LIMITS
        assert tr.get_write_buffer_size() == 0
        tr.set_write_buffer_limits(high=100)
        assert tr.get_write_buffer_limits() == (25, 100)
        tr.set_write_buffer_limits(low=10)
        assert tr.get_write_buffer_limits() == (10, 40)
        tr.set_write_buffer_limits(high=50, low=50)
        assert tr.get_write_buffer_limits() == (50, 50)
        tr.set_write_buffer_limits(0)
        assert tr.get_write_buffer_limits() == (0, 0)
        tr.set_write_buffer_limits()
        assert tr.get_write_buffer_limits() == DEFAULT_LIMITS
        with pytest.raises(ValueError) as info:
            tr.set_write_buffer_limits(high=1, low=2)
        assert str(info.value) == "high (1) must be >= low (2) must be >= 0"
        with pytest.raises(ValueError, match=r"high \(-1\) must be >= low \(-1\) must be >= 0"):
            tr.set_write_buffer_limits(high=-1)
        with pytest.raises(ValueError, match=r"high \(10\) must be >= low \(-1\) must be >= 0"):
            tr.set_write_buffer_limits(high=10, low=-1)
        assert tr.get_write_buffer_limits() == DEFAULT_LIMITS  # unchanged by failed calls
        await close_and_wait(tr, proto)

    loop.run_until_complete(main())


def test_pause_and_resume_writing(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind, small=True)
    low, high = DEFAULT_LIMITS

    async def main():
        tr, proto = await attach(loop, ours, FlowRecorder)
        written = 0
        chunk = b"w" * 16384
        while not proto.flow:
            tr.write(chunk)
            written += len(chunk)
            # pause_writing is called from inside write(), as soon as the buffer exceeds high.
            if tr.get_write_buffer_size() > high:
                assert [f[0] for f in proto.flow] == ["pause"]
            assert written < 100 * MiB
        assert proto.flow[0][1] > high
        for _ in range(10):  # still paused: no second call
            tr.write(chunk)
            written += len(chunk)
        assert [f[0] for f in proto.flow] == ["pause"]
        assert tr.get_write_buffer_size() > high
        got = await peer_read_exactly(loop, peer, written)
        assert set(got) == {ord("w")}
        await proto.until(lambda: len(proto.flow) == 2, "resume_writing")
        assert proto.flow[1][0] == "resume"
        assert proto.flow[1][1] <= low
        assert tr.get_write_buffer_size() == 0
        await close_and_wait(tr, proto)
        assert [f[0] for f in proto.flow] == ["pause", "resume"]

    loop.run_until_complete(main())


def test_lowering_high_water_pauses_at_once(loop, sockets):
    ours, peer = make_pair(sockets, small=True)

    async def main():
        tr, proto = await attach(loop, ours, FlowRecorder)
        written = await fill_write_buffer(tr, chunk=4096, at_least=4096)
        assert tr.get_write_buffer_size() <= DEFAULT_LIMITS[1]
        assert proto.flow == []
        tr.set_write_buffer_limits(high=1024)
        assert [f[0] for f in proto.flow] == ["pause"]
        tr.set_write_buffer_limits(high=512)  # already paused
        assert [f[0] for f in proto.flow] == ["pause"]
        await peer_read_exactly(loop, peer, written)
        await proto.until(lambda: len(proto.flow) == 2, "resume_writing")
        assert [f[0] for f in proto.flow] == ["pause", "resume"]
        await close_and_wait(tr, proto)

    loop.run_until_complete(main())


def test_flow_control_callback_errors_go_to_handler(loop, sockets, exc_contexts):
    ours, peer = make_pair(sockets, small=True)

    class Bad(Recorder):
        def pause_writing(self):
            raise ZeroDivisionError("pause")

        def resume_writing(self):
            raise KeyError("resume")

    async def main():
        tr, proto = await attach(loop, ours, Bad)
        written = await fill_write_buffer(tr, at_least=DEFAULT_LIMITS[1] + 1)
        assert len(exc_contexts) == 1
        ctx = exc_contexts[0]
        assert ctx["message"] == "protocol.pause_writing() failed"
        assert isinstance(ctx["exception"], ZeroDivisionError)
        assert ctx["transport"] is tr
        assert ctx["protocol"] is proto
        assert not tr.is_closing()  # not fatal
        await peer_read_exactly(loop, peer, written)
        await spin()
        assert len(exc_contexts) == 2
        ctx = exc_contexts[1]
        assert ctx["message"] == "protocol.resume_writing() failed"
        assert isinstance(ctx["exception"], KeyError)
        assert ctx["transport"] is tr
        assert ctx["protocol"] is proto
        tr.write(b"still works")
        assert await peer_read_exactly(loop, peer, 11) == b"still works"
        assert await close_and_wait(tr, proto) is None
        exc_contexts.clear()

    loop.run_until_complete(main())


# -- protocol errors -----------------------------------------------------------------------


def test_data_received_error_is_fatal(loop, sockets, exc_contexts):
    ours, peer = make_pair(sockets)
    raised = []

    class Boom(Recorder):
        def data_received(self, data):
            super().data_received(data)
            exc = ValueError("boom")
            raised.append(exc)
            raise exc

    async def main():
        tr, proto = await attach(loop, ours, Boom)
        await loop.sock_sendall(peer, b"trigger")
        exc = await proto.wait_lost()
        assert exc is raised[0]
        assert tr.is_closing()
        assert len(exc_contexts) == 1
        ctx = exc_contexts[0]
        assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
        assert ctx["exception"] is exc
        assert ctx["transport"] is tr
        assert ctx["protocol"] is proto
        assert proto.events == ["made", "data", ("lost", exc)]
        assert await peer_read_to_eof(loop, peer) == b""
        exc_contexts.clear()

    loop.run_until_complete(main())


def test_data_received_oserror_is_fatal_but_not_reported(loop, sockets):
    # asyncio's _fatal_error reports only non-OSError exceptions to the handler.
    ours, peer = make_pair(sockets)

    class Boom(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise ConnectionAbortedError("protocol gave up")

    async def main():
        tr, proto = await attach(loop, ours, Boom)
        await loop.sock_sendall(peer, b"trigger")
        exc = await proto.wait_lost()
        assert isinstance(exc, ConnectionAbortedError)
        assert str(exc) == "protocol gave up"
        assert await peer_read_to_eof(loop, peer) == b""

    loop.run_until_complete(main())


def test_eof_received_error_is_fatal(loop, sockets, exc_contexts):
    ours, peer = make_pair(sockets)

    class Boom(Recorder):
        def eof_received(self):
            super().eof_received()
            raise RuntimeError("eof boom")

    async def main():
        tr, proto = await attach(loop, ours, Boom)
        peer.shutdown(socket.SHUT_WR)
        exc = await proto.wait_lost()
        assert isinstance(exc, RuntimeError) and str(exc) == "eof boom"
        assert len(exc_contexts) == 1
        ctx = exc_contexts[0]
        assert ctx["message"] == "Fatal error: protocol.eof_received() call failed."
        assert ctx["exception"] is exc
        assert ctx["transport"] is tr
        assert ctx["protocol"] is proto
        assert proto.events == ["made", "eof", ("lost", exc)]
        exc_contexts.clear()

    loop.run_until_complete(main())


# -- extra info, protocol switching, repr -------------------------------------------------


def test_get_extra_info(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)
    fd = ours.fileno()
    sockname, peername = ours.getsockname(), ours.getpeername()

    async def main():
        tr, proto = await attach(loop, ours)
        assert tr.get_extra_info("sockname") == sockname
        assert tr.get_extra_info("peername") == peername
        if pair_kind == "tcp":
            assert peername == peer.getsockname()
            assert sockname == peer.getpeername()
        else:
            assert peername == "" and sockname == ""  # unnamed AF_UNIX socketpair
        tsock = tr.get_extra_info("socket")
        assert isinstance(tsock, asyncio.trsock.TransportSocket)
        assert tsock.fileno() == fd
        assert tsock.family == ours.family
        assert tsock.type == socket.SOCK_STREAM
        assert tsock.getsockname() == sockname
        assert tr.get_extra_info("no such key") is None
        assert tr.get_extra_info("no such key", 42) == 42
        await close_and_wait(tr, proto)
        # Cached values survive the close.
        assert tr.get_extra_info("sockname") == sockname
        assert tr.get_extra_info("peername") == peername

    loop.run_until_complete(main())


def test_set_protocol(loop, sockets):
    ours, peer = make_pair(sockets)

    async def main():
        tr, first = await attach(loop, ours)
        await loop.sock_sendall(peer, b"one")
        await first.until_data(3)
        second = Recorder()
        tr.set_protocol(second)
        assert tr.get_protocol() is second
        await loop.sock_sendall(peer, b"two")
        peer.shutdown(socket.SHUT_WR)
        assert await second.wait_lost() is None
        assert second.events == ["data", "eof", ("lost", None)]  # no connection_made
        assert bytes(second.data) == b"two"
        assert first.events == ["made", "data"]
        assert bytes(first.data) == b"one"

    loop.run_until_complete(main())


class BufferedRecorder(asyncio.BufferedProtocol):
    def __init__(self, size=7, view=False):
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray(size)
        self.view = view
        self.data = bytearray()
        self.events = []
        self.sizes = []
        self.lost = self.loop.create_future()

    def connection_made(self, transport):
        self.events.append("made")

    def get_buffer(self, sizehint):
        assert isinstance(sizehint, int)
        return memoryview(self.buf) if self.view else self.buf

    def buffer_updated(self, nbytes):
        self.sizes.append(nbytes)
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.lost.set_result(exc)


@pytest.mark.parametrize("view", [False, True], ids=["bytearray", "memoryview"])
def test_buffered_protocol_small_buffer(loop, sockets, pair_kind, view):
    ours, peer = make_pair(sockets, pair_kind)
    payload = os.urandom(5000)

    async def main():
        tr, proto = await attach(loop, ours, lambda: BufferedRecorder(7, view))
        await loop.sock_sendall(peer, payload)
        peer.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(proto.lost, TIMEOUT) is None
        assert bytes(proto.data) == payload
        assert all(0 < n <= 7 for n in proto.sizes)
        assert proto.events == ["made", "eof", ("lost", None)]

    loop.run_until_complete(main())


def test_switch_to_buffered_protocol(loop, sockets):
    ours, peer = make_pair(sockets)

    async def main():
        tr, first = await attach(loop, ours)
        await loop.sock_sendall(peer, b"plain")
        await first.until_data(5)
        second = BufferedRecorder(3)
        tr.set_protocol(second)
        await loop.sock_sendall(peer, b"buffered")
        peer.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(second.lost, TIMEOUT) is None
        assert bytes(second.data) == b"buffered"
        assert second.events == ["eof", ("lost", None)]
        assert first.events == ["made", "data"]

    loop.run_until_complete(main())


@pytest.mark.parametrize("case", ["empty", "raises", "buffer_updated_raises"])
def test_buffered_protocol_errors(loop, sockets, exc_contexts, case):
    ours, peer = make_pair(sockets)

    class Bad(BufferedRecorder):
        def get_buffer(self, sizehint):
            if case == "empty":
                return bytearray()
            if case == "raises":
                raise LookupError("no buffer")
            return super().get_buffer(sizehint)

        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            raise LookupError("bad update")

    peer.sendall(b"data")  # before attaching: the peer's send cannot race the fatal close

    async def main():
        tr, proto = await attach(loop, ours, Bad)
        exc = await asyncio.wait_for(proto.lost, TIMEOUT)
        assert len(exc_contexts) == 1
        ctx = exc_contexts[0]
        assert ctx["exception"] is exc
        assert ctx["transport"] is tr
        assert ctx["protocol"] is proto
        if case == "empty":
            assert isinstance(exc, RuntimeError)
            assert str(exc) == "get_buffer() returned an empty buffer"
            assert ctx["message"] == "Fatal error: protocol.get_buffer() call failed."
        elif case == "raises":
            assert isinstance(exc, LookupError) and str(exc) == "no buffer"
            assert ctx["message"] == "Fatal error: protocol.get_buffer() call failed."
        else:
            assert isinstance(exc, LookupError) and str(exc) == "bad update"
            assert ctx["message"] == "Fatal error: protocol.buffer_updated() call failed."
            assert bytes(proto.data) == b"data"
        assert proto.events == ["made", ("lost", exc)]
        # Closed with unread data ("empty", "raises"): the peer may see a reset instead of EOF.
        got, _ = await peer_read(loop, peer)
        assert got == b""
        exc_contexts.clear()

    loop.run_until_complete(main())


def test_get_buffer_only_called_when_data_arrives(loop, sockets):
    # asyncio asks for a buffer only once the socket is readable (one get_buffer per read).
    ours, peer = make_pair(sockets)
    calls = []

    class Counting(BufferedRecorder):
        def get_buffer(self, sizehint):
            calls.append(len(self.data))
            return super().get_buffer(sizehint)

    async def main():
        tr, proto = await attach(loop, ours, lambda: Counting(64))
        try:
            await settle()
            assert calls == [], "get_buffer() called before any data was readable"
            await loop.sock_sendall(peer, b"hello")
            await proto_until(lambda: len(proto.data) == 5)
            assert calls[0] == 0
        finally:
            tr.close()
            await asyncio.wait_for(proto.lost, TIMEOUT)

    async def proto_until(pred):
        async def poll():
            while not pred():
                await asyncio.sleep(0.005)
        await asyncio.wait_for(poll(), TIMEOUT)

    loop.run_until_complete(main())


def test_repr_never_raises(loop, sockets):
    ours, peer = make_pair(sockets, small=True)
    reprs, errors = [], []

    def take(stage, tr):
        try:
            r = repr(tr)
        except Exception as exc:  # collected so the transport is still cleaned up
            errors.append((stage, exc))
        else:
            assert isinstance(r, str) and r, stage
            reprs.append(r)

    async def main():
        tr, proto = await attach(loop, ours)
        take("open", tr)
        await fill_write_buffer(tr, at_least=1)
        tr.pause_reading()
        take("buffered, paused", tr)
        tr.abort()
        take("aborted", tr)
        await proto.wait_lost()
        take("after connection_lost", tr)
        return tr

    tr = loop.run_until_complete(main())
    loop.close()
    take("loop closed", tr)
    assert errors == []


# -- large transfers and peer failures -----------------------------------------------------


def test_large_transfer_both_directions(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)
    out_payload = os.urandom(8 * MiB)
    in_payload = os.urandom(8 * MiB)

    async def main():
        tr, proto = await attach(loop, ours, KeepOpen)

        async def peer_send():
            await loop.sock_sendall(peer, in_payload)
            peer.shutdown(socket.SHUT_WR)

        async def transport_send():
            view = memoryview(out_payload)
            for i in range(0, len(view), 1024 * 1024):
                tr.write(view[i:i + 1024 * 1024])
                await asyncio.sleep(0)
            tr.write_eof()

        sender = asyncio.ensure_future(peer_send())
        reader = asyncio.ensure_future(peer_read(loop, peer))
        await transport_send()
        got, exc = await reader
        await asyncio.wait_for(sender, TIMEOUT)
        await proto.until(lambda: "eof" in proto.events, "eof_received")
        assert exc is None
        assert len(got) == len(out_payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(out_payload).digest()
        assert len(proto.data) == len(in_payload)
        assert hashlib.sha256(proto.data).digest() == hashlib.sha256(in_payload).digest()
        assert tr.get_write_buffer_size() == 0
        assert await close_and_wait(tr, proto) is None

    loop.run_until_complete(main())


@pytest.mark.parametrize("writing", [True, False], ids=["mid_write", "idle"])
def test_peer_reset(loop, sockets, writing):
    ours, peer = make_pair(sockets, "tcp", small=True)

    async def main():
        tr, proto = await attach(loop, ours)
        if writing:
            tr.write(os.urandom(4 * MiB))
            assert tr.get_write_buffer_size() > 0
        else:
            await loop.sock_sendall(peer, b"hi")
            await proto.until_data(2)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        peer.close()
        exc = await proto.wait_lost()
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc
        assert tr.is_closing()
        for _ in range(10):
            tr.write(b"into the void")  # dropped, no exception
        assert proto.events[-1] == ("lost", exc)
        assert proto.events.count(("lost", exc)) == 1
        assert "eof" not in proto.events

    loop.run_until_complete(main())


def test_writes_after_peer_closed_default_protocol(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)

    async def main():
        tr, proto = await attach(loop, ours)
        peer.close()
        assert await proto.wait_lost() is None  # EOF, eof_received -> None -> close
        for _ in range(10):
            assert tr.write(b"nobody listens") is None
        assert proto.events == ["made", "eof", ("lost", None)]

    loop.run_until_complete(main())


def test_writes_after_peer_closed_keep_open(loop, sockets, pair_kind):
    ours, peer = make_pair(sockets, pair_kind)

    async def main():
        tr, proto = await attach(loop, ours, KeepOpen)
        peer.close()
        await proto.until(lambda: "eof" in proto.events, "eof_received")

        async def write_until_lost():
            while not proto.lost.done():
                assert tr.write(b"nobody listens") is None
                await asyncio.sleep(0.01)

        await asyncio.wait_for(write_until_lost(), TIMEOUT)
        exc = proto.lost.result()
        assert isinstance(exc, (BrokenPipeError, ConnectionResetError)), exc
        tr.write(b"after lost")
        assert proto.events == ["made", "eof", ("lost", exc)]

    loop.run_until_complete(main())


def test_peer_closed_before_attach(loop, sockets):
    ours, peer = make_pair(sockets)
    peer.sendall(b"bye")
    peer.close()

    async def main():
        tr, proto = await attach(loop, ours)
        assert await proto.wait_lost() is None
        assert proto.events == ["made", "data", "eof", ("lost", None)]
        assert bytes(proto.data) == b"bye"

    loop.run_until_complete(main())


# -- connect_accepted_socket argument errors -----------------------------------------------


def test_connect_accepted_socket_closed_socket(loop, sockets):
    sock = sockets(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.close()
    made = []

    async def main():
        with pytest.raises(OSError) as info:
            await asyncio.wait_for(
                loop.connect_accepted_socket(lambda: made.append(1) or Recorder(), sock), TIMEOUT
            )
        assert info.value.errno == errno.EBADF
        assert made == []  # fails before the protocol factory is called

    loop.run_until_complete(main())


def test_connect_accepted_socket_rejects_datagram_socket(loop, sockets):
    sock = sockets(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    made = []

    async def main():
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            await loop.connect_accepted_socket(lambda: made.append(1) or Recorder(), sock)
        assert made == []

    loop.run_until_complete(main())


# -- contextvars ---------------------------------------------------------------------------

VAR = contextvars.ContextVar("VAR", default="unset")


def test_callbacks_run_in_copy_of_creator_context(loop, sockets):
    # asyncio: the transport's callbacks run in copies of the context of the task that created
    # it, taken at creation; what they set is not seen by that task, what the task sets later
    # is not seen by them, and values set in data_received persist to later reads.
    ours, peer = make_pair(sockets)
    seen = []

    class CtxProto(Recorder):
        def connection_made(self, transport):
            seen.append(("made", VAR.get()))
            super().connection_made(transport)

        def data_received(self, data):
            seen.append(("data", VAR.get()))
            VAR.set("set in data_received")
            super().data_received(data)

        def eof_received(self):
            seen.append(("eof", VAR.get()))
            return super().eof_received()

    async def main():
        VAR.set("creator")
        tr, proto = await attach(loop, ours, CtxProto)
        VAR.set("changed after creation")
        await loop.sock_sendall(peer, b"1")
        await proto.until_data(1)
        await loop.sock_sendall(peer, b"2")
        await proto.until_data(2)
        peer.shutdown(socket.SHUT_WR)
        await proto.wait_lost()
        assert VAR.get() == "changed after creation"
        return proto

    loop.run_until_complete(main())
    assert VAR.get() == "unset"
    assert seen == [
        ("made", "creator"),
        ("data", "creator"),
        ("data", "set in data_received"),
        ("eof", "set in data_received"),
    ]


# -- the context protocol callbacks run in (3.15 made it one per connection) ----------------

_CONN_VAR = contextvars.ContextVar("conn_var", default="unset")


class _ContextProtocol(asyncio.Protocol):
    """Records what _CONN_VAR holds in each callback, then sets it to say who ran last."""

    def __init__(self, log, tag):
        self.log, self.tag = log, tag

    def _see(self, event):
        self.log.append((self.tag, event, _CONN_VAR.get()))
        _CONN_VAR.set(f"{self.tag}-{event}")

    def connection_made(self, transport):
        self.transport = transport
        self._see("made")

    def data_received(self, data):
        self._see("data")
        if self.tag == "server":
            self.transport.write(data)
        else:
            self.transport.close()

    def connection_lost(self, exc):
        self._see("lost")


def test_protocol_callbacks_context(loop):
    """3.15+: connection_made, data_received and connection_lost of one connection share a
    context (a copy of create_connection's caller's, or per connection of create_server's);
    before 3.15 connection_made ran in a copy of its own."""
    from tokioloop import _compat

    log = []

    async def main():
        _CONN_VAR.set("at create_server")
        server = await loop.create_server(lambda: _ContextProtocol(log, "server"), "127.0.0.1", 0)
        _CONN_VAR.set("at create_connection")
        done = loop.create_future()
        protocol = _ContextProtocol(log, "client")
        protocol.connection_lost = lambda exc: (_ContextProtocol.connection_lost(protocol, exc),
                                                done.set_result(None))
        transport, _ = await loop.create_connection(lambda: protocol, *server.sockets[0].getsockname()[:2])
        _CONN_VAR.set("after")
        transport.write(b"x")
        await done
        for _ in range(1000):  # the server's side sees the close too
            if ("server", "lost") in [(t, e) for t, e, _ in log]:
                break
            await asyncio.sleep(0.005)
        server.close()
        await server.wait_closed()
        for _ in range(3):  # (before 3.12.1 wait_closed() does not wait for the close)
            await asyncio.sleep(0)
        assert _CONN_VAR.get() == "after"

    loop.run_until_complete(main())
    shared = _compat.CONNECTION_CONTEXT
    for tag, origin in (("client", "at create_connection"), ("server", "at create_server")):
        seen = {event: value for t, event, value in log if t == tag}
        assert seen["made"] == origin
        assert seen["data"] == (f"{tag}-made" if shared else origin)
        assert seen["lost"] == f"{tag}-data"


def test_client_protocol_factory_context(loop):
    """3.15 takes a client connection's context before calling the protocol factory: what the
    factory sets stays in the caller's context and is not seen by connection_made; before
    3.15 connection_made saw it."""
    from tokioloop import _compat

    seen = []

    class Factory(asyncio.Protocol):
        def __init__(self):
            _CONN_VAR.set("set by the factory")

        def connection_made(self, transport):
            seen.append(_CONN_VAR.get())
            transport.close()

    server_lost = []

    class ServerSide(asyncio.Protocol):
        def connection_lost(self, exc):
            server_lost.append(exc)

    async def main():
        server = await loop.create_server(ServerSide, "127.0.0.1", 0)
        _CONN_VAR.set("caller")
        transport, _ = await loop.create_connection(Factory, *server.sockets[0].getsockname()[:2])
        caller_sees = _CONN_VAR.get()
        transport.close()
        for _ in range(1000):  # (before 3.12.1 wait_closed() does not wait for this)
            if server_lost:
                break
            await asyncio.sleep(0.005)
        server.close()
        await server.wait_closed()
        return caller_sees

    assert loop.run_until_complete(main()) == "set by the factory"
    assert seen == ["caller" if _compat.CONNECTION_CONTEXT else "set by the factory"]
