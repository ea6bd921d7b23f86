"""Pipe transports: ``loop.connect_read_pipe`` and ``loop.connect_write_pipe``.

On os.pipe() pipes, named FIFOs, socketpairs, ptys (read side EIO, write side, both at once as
CPython's test_bidirectional_pty) and character devices (/dev/null), with asyncio's file-type
checks and messages. Read side: data, eof_received then connection_lost(None), pause/resume,
close(). Write side: byte-exact delivery, write_eof/close, abort, flow control at asyncio's
64 KiB / 16 KiB defaults, writes after close dropped, the reader's close noticed
(connection_lost(None), or BrokenPipeError with data buffered), ``write(str)`` failing
asyncio's assert. connection_lost closes the pipe object. The stdlib loop is the oracle.
"""

import asyncio
import errno
import os
import pty
import socket
import time
import tty

import pytest

from _proc import eventually, run

HIGH, LOW = 64 * 1024, 16 * 1024

# The stdlib's read pipe transport has is_reading() from 3.11; 3.10's inherits
# ReadTransport's NotImplementedError. Asked of asyncio itself.
HAS_IS_READING = "is_reading" in vars(asyncio.unix_events._UnixReadPipeTransport)


class PipeProto(asyncio.Protocol):
    """Records callbacks; ``done`` resolves with connection_lost's argument."""

    def __init__(self, loop, eof_result=None):
        self.events = []
        self.data = b""
        self.transport = None
        self.eof_result = eof_result
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        return self.eof_result

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.done.set_result(exc)

    def summary(self):
        """The events with runs of "data" collapsed into one."""
        out = []
        for e in self.events:
            if not (e == "data" and out and out[-1] == "data"):
                out.append(e)
        return out


@pytest.fixture
def fds():
    """Register raw fds to close at teardown (those not handed to a transport)."""
    owned = []

    def own(*new):
        owned.extend(new)
        return new[0] if len(new) == 1 else new

    yield own
    for fd in owned:
        try:
            os.close(fd)
        except OSError:
            pass


async def read_fd(fd, size, timeout=5.0):
    """Read ``size`` bytes from a non-blocking fd, polling (it is not the transport's fd)."""
    os.set_blocking(fd, False)
    got = b""

    def more():
        nonlocal got
        try:
            got += os.read(fd, size - len(got))
        except BlockingIOError:
            pass
        return len(got) >= size

    await eventually(more, timeout=timeout, what=f"{size} bytes on fd {fd}")
    return got


# -- read pipes ------------------------------------------------------------------------------

def test_read_pipe_data_then_eof(loop):
    r, w = os.pipe()
    pipe = os.fdopen(r, "rb", 0)

    async def main():
        transport, proto = await loop.connect_read_pipe(lambda: PipeProto(loop), pipe)
        assert proto.events == ["made"]
        assert transport.get_extra_info("pipe") is pipe
        assert not transport.is_closing()
        if HAS_IS_READING:
            assert transport.is_reading()
        os.write(w, b"one ")
        await eventually(lambda: proto.data == b"one ")
        os.write(w, b"two")
        os.close(w)
        assert await proto.done is None
        return proto

    proto = run(loop, main())
    assert proto.summary() == ["made", "data", "eof", "lost"]
    assert proto.data == b"one two"
    assert pipe.closed  # connection_lost closed the pipe object


def test_read_pipe_eof_received_true_still_closes(loop):
    r, w = os.pipe()
    os.close(w)

    async def main():
        _, proto = await loop.connect_read_pipe(lambda: PipeProto(loop, eof_result=True), os.fdopen(r, "rb", 0))
        assert await proto.done is None
        return proto.events

    assert run(loop, main()) == ["made", "eof", "lost"]


def test_read_pipe_pause_and_resume(loop, fds):
    r, w = os.pipe()
    fds(w)

    async def main():
        transport, proto = await loop.connect_read_pipe(lambda: PipeProto(loop), os.fdopen(r, "rb", 0))
        transport.pause_reading()
        if HAS_IS_READING:
            assert not transport.is_reading()
        os.write(w, b"held")
        await asyncio.sleep(0.05)
        assert proto.data == b""
        transport.resume_reading()
        if HAS_IS_READING:
            assert transport.is_reading()
        await eventually(lambda: proto.data == b"held")
        transport.close()
        assert transport.is_closing()
        assert await proto.done is None
        return proto.events

    assert run(loop, main()) == ["made", "data", "lost"]  # close(): no eof_received


def test_read_pipe_large_stream_byte_exact(loop):
    r, w = os.pipe()
    data = os.urandom(4 << 20)

    async def main():
        _, proto = await loop.connect_read_pipe(lambda: PipeProto(loop), os.fdopen(r, "rb", 0))
        writer, wproto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(w, "wb", 0))
        writer.write(data)
        writer.close()
        assert await wproto.done is None
        assert await proto.done is None
        return proto.data

    assert run(loop, main()) == data


def test_read_named_fifo(loop, tmp_path, fds):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    pipe = open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", 0)
    w = os.open(path, os.O_WRONLY)

    async def main():
        _, proto = await loop.connect_read_pipe(lambda: PipeProto(loop), pipe)
        os.write(w, b"through the fifo")
        os.close(w)
        assert await proto.done is None
        return proto.summary(), proto.data

    assert run(loop, main()) == (["made", "data", "eof", "lost"], b"through the fifo")


def test_read_socketpair(loop, sockets):
    ours, peer = sockets(*socket.socketpair())

    async def main():
        _, proto = await loop.connect_read_pipe(lambda: PipeProto(loop), ours)
        peer.sendall(b"over a socket")
        peer.shutdown(socket.SHUT_WR)
        assert await proto.done is None
        return proto.summary(), proto.data

    assert run(loop, main()) == (["made", "data", "eof", "lost"], b"over a socket")
    assert ours.fileno() == -1  # closed by connection_lost


def test_read_pty_master_eio(loop, fds):
    # After the slave side closes, reading the master fails with EIO: connection_lost gets
    # that OSError, eof_received is not called and the exception handler is not (the
    # fixture fails the test if it was).
    master, slave = os.openpty()
    fds(slave)
    tty.setraw(slave)

    async def main():
        _, proto = await loop.connect_read_pipe(lambda: PipeProto(loop), os.fdopen(master, "rb", 0))
        os.write(slave, b"from the slave")
        await eventually(lambda: proto.data == b"from the slave")
        os.close(slave)
        exc = await proto.done
        return proto.summary(), exc

    events, exc = run(loop, main())
    assert events == ["made", "data", "lost"]
    assert isinstance(exc, OSError) and exc.errno == errno.EIO


def test_read_pipe_on_regular_file_is_refused(loop, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"not a pipe")
    with open(path, "rb") as f:
        with pytest.raises(ValueError) as info:
            run(loop, loop.connect_read_pipe(asyncio.Protocol, f))
        assert str(info.value) == "Pipe transport is for pipes/sockets only."
        assert not f.closed and f.read() == b"not a pipe"  # refused, not taken over


# -- write pipes -----------------------------------------------------------------------------

def test_write_pipe_delivers_and_write_eof_closes(loop, fds):
    r, w = os.pipe()
    fds(r)
    pipe = os.fdopen(w, "wb", 0)

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), pipe)
        assert transport.get_extra_info("pipe") is pipe
        assert transport.get_write_buffer_limits() == (LOW, HIGH)
        assert transport.can_write_eof()
        transport.write(b"abc")
        transport.write(b"")  # ignored
        transport.write(bytearray(b"def"))
        transport.write(memoryview(b"ghi"))
        assert await read_fd(r, 9) == b"abcdefghi"
        transport.write_eof()
        assert transport.is_closing()
        assert await proto.done is None
        transport.write(b"dropped")  # after close: dropped silently
        assert os.read(r, 100) == b""  # EOF: the write end was closed
        return proto.events

    assert run(loop, main()) == ["made", "lost"]
    assert pipe.closed


def test_write_pipe_flow_control(loop):
    r, w = os.pipe()
    data = os.urandom(1 << 20)

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(w, "wb", 0))
        transport.write(data)
        # The kernel took at most a pipe's worth; the rest is buffered, above the high mark.
        assert transport.get_write_buffer_size() > HIGH
        assert proto.events == ["made", "pause"]  # paused from inside write()
        _, reader = await loop.connect_read_pipe(lambda: PipeProto(loop), os.fdopen(r, "rb", 0))
        await eventually(lambda: "resume" in proto.events, what="resume_writing")
        assert transport.get_write_buffer_size() <= LOW
        transport.close()
        assert await proto.done is None
        assert await reader.done is None
        return proto.events, reader.data

    events, got = run(loop, main())
    assert events == ["made", "pause", "resume", "lost"]
    assert got == data


def test_write_pipe_custom_limits(loop, fds):
    r, w = os.pipe()
    fds(r)

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(w, "wb", 0))
        transport.set_write_buffer_limits(high=1000)
        assert transport.get_write_buffer_limits() == (250, 1000)  # low defaults to high // 4
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=10, low=20)
        transport.abort()  # nothing buffered: just closes
        assert await proto.done is None
        return proto.events

    assert run(loop, main()) == ["made", "lost"]


def test_write_pipe_reader_closes_with_empty_buffer(loop):
    r, w = os.pipe()

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(w, "wb", 0))
        transport.write(b"consumed")
        assert os.read(r, 100) == b"consumed"
        os.close(r)
        assert await proto.done is None  # noticed through the write end turning readable
        return transport.is_closing()

    assert run(loop, main()) is True


def test_write_pipe_reader_closes_with_data_buffered(loop):
    r, w = os.pipe()

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(w, "wb", 0))
        transport.write(b"z" * (1 << 20))
        assert transport.get_write_buffer_size() > 0
        os.close(r)
        exc = await proto.done
        assert isinstance(exc, BrokenPipeError)
        assert transport.get_write_buffer_size() == 0

    run(loop, main())


def test_write_pipe_abort_drops_buffer(loop, fds):
    r, w = os.pipe()
    fds(r)

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(w, "wb", 0))
        transport.write(b"q" * (1 << 20))
        transport.abort()
        assert transport.is_closing()
        assert await proto.done is None
        return transport.get_write_buffer_size()

    assert run(loop, main()) == 0


def test_write_named_fifo_and_reader_close(loop, tmp_path, fds):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    r = fds(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    pipe = open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "wb", 0)

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), pipe)
        transport.write(b"into the fifo")
        assert await read_fd(r, 13) == b"into the fifo"
        os.close(r)
        assert await proto.done is None

    run(loop, main())
    assert pipe.closed


def test_write_socketpair_peer_close(loop, sockets):
    ours, peer = sockets(*socket.socketpair())

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), ours)
        transport.write(b"to the peer")
        peer.settimeout(5)
        assert peer.recv(100) == b"to the peer"
        peer.close()
        assert await proto.done is None

    run(loop, main())
    assert ours.fileno() == -1


def test_write_dev_null(loop):
    pipe = open("/dev/null", "wb", 0)

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), pipe)
        transport.write(b"x" * (1 << 20))  # a character device takes everything at once
        assert transport.get_write_buffer_size() == 0
        transport.close()
        assert await proto.done is None
        return proto.events

    assert run(loop, main()) == ["made", "lost"]
    assert pipe.closed


def test_write_pipe_on_regular_file_is_refused(loop, tmp_path):
    with open(tmp_path / "regular", "wb") as f:
        with pytest.raises(ValueError) as info:
            run(loop, loop.connect_write_pipe(asyncio.Protocol, f))
        assert str(info.value) == "Pipe transport is only for pipes, sockets and character devices"
        assert not f.closed


@pytest.mark.skipif(not __debug__, reason="asyncio checks write()'s argument with assert (gone under -O)")
def test_write_str_fails_the_assert(loop, fds):
    r, w = os.pipe()
    fds(r)

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(w, "wb", 0))
        with pytest.raises(AssertionError):
            transport.write("text")
        transport.close()
        await proto.done

    run(loop, main())


# -- ptys ------------------------------------------------------------------------------------

def test_write_pty(loop, fds):
    master, slave = os.openpty()
    fds(master)
    tty.setraw(slave)

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(slave, "wb", 0))
        transport.write(b"1")
        assert await read_fd(master, 1) == b"1"
        transport.write(b"2345")
        assert await read_fd(master, 4) == b"2345"
        transport.close()
        assert await proto.done is None
        return proto.events

    assert run(loop, main()) == ["made", "lost"]


def test_write_pty_has_no_reader_close_detection(loop):
    # A pty is a character device: the write transport does not watch for the other side's
    # close; the next write fails with EIO, which goes to connection_lost, not the handler.
    master, slave = os.openpty()

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(slave, "wb", 0))
        os.close(master)
        await asyncio.sleep(0.05)
        assert not proto.done.done() and not transport.is_closing()
        transport.write(b"into the void")
        exc = await proto.done
        assert isinstance(exc, OSError) and exc.errno == errno.EIO

    run(loop, main())


def test_bidirectional_pty(loop, fds):
    master, read_slave = os.openpty()
    fds(master)
    write_slave = os.dup(read_slave)
    tty.setraw(read_slave)

    async def main():
        reader, rproto = await loop.connect_read_pipe(lambda: PipeProto(loop), os.fdopen(read_slave, "rb", 0))
        writer, wproto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(write_slave, "wb", 0))
        os.write(master, b"ping")
        await eventually(lambda: rproto.data == b"ping")
        writer.write(b"pong")
        assert await read_fd(master, 4) == b"pong"
        os.write(master, b" again")
        await eventually(lambda: rproto.data == b"ping again")
        writer.write(b" back")
        assert await read_fd(master, 5) == b" back"
        reader.close()
        writer.close()
        return await rproto.done, await wproto.done, rproto.summary(), wproto.events

    assert run(loop, main()) == (None, None, ["made", "data", "lost"], ["made", "lost"])


def test_pty_module_openpty_pair(loop):
    # The same through pty.openpty(): the master read transport sees the slave's output.
    master, slave = pty.openpty()
    tty.setraw(slave)

    async def main():
        _, proto = await loop.connect_read_pipe(lambda: PipeProto(loop), os.fdopen(master, "rb", 0))
        os.write(slave, b"tty output")
        await eventually(lambda: proto.data == b"tty output")
        os.close(slave)
        return await proto.done

    exc = run(loop, main())
    assert isinstance(exc, OSError) and exc.errno == errno.EIO


def test_write_pipe_close_racing_reader_hangup_loses_connection_once(loop):
    """close() (write_eof with nothing buffered) in the same turns as the reader going away:
    a hang-up already noticed when the transport stops watching must not end it a second
    time (connection_lost once, nothing for the exception handler)."""

    async def one(spins):
        r, w = os.pipe()
        transport, proto = await loop.connect_write_pipe(lambda: PipeProto(loop), os.fdopen(w, "wb", 0))
        os.close(r)
        for _ in range(spins):
            time.sleep(0.0003)  # past the busy loop's reactor poll interval
            await asyncio.sleep(0)
        transport.close()
        assert await proto.done is None
        for _ in range(3):
            await asyncio.sleep(0)
        return proto.events

    async def main():
        return [await one(spins) for spins in range(12) for _ in range(4)]

    for events in run(loop, main()):
        assert events == ["made", "lost"]
