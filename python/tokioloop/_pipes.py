"""Pipe transports: ``connect_read_pipe`` and ``connect_write_pipe``.

Both run on the native stream engine that socket transports use (``_transport.EngineTransport``;
the engine reads and writes a pipe, FIFO, pty or character device with read/write instead of
recv/send), with asyncio's pipe transport rules: the file types accepted and their messages,
a read pipe closing itself after EOF (``eof_received`` then ``connection_lost``), EIO from a
pty master not reported as an error, a write pipe noticing its reader going away (a hang-up
on a pipe or FIFO, read readiness on a socket), ``close()`` being ``write_eof()``, and the
transport owning the pipe object: ``connection_lost`` closes it. Subprocess pipes come through
these too (asyncio's subprocess transport calls the loop's public methods).
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from asyncio import futures, transports
from asyncio.log import logger

from . import _compat
from ._transport import EngineTransport, repr_parts


def _file_type(pipe):
    mode = os.fstat(pipe.fileno()).st_mode
    return stat.S_ISFIFO(mode), stat.S_ISSOCK(mode), stat.S_ISCHR(mode)


class _PipeTransport(EngineTransport):
    """Set-up and teardown shared by both directions."""

    def _set_up(self, loop, pipe, protocol, waiter, direction):
        self._pipe = None
        self._lost = False
        os.set_blocking(pipe.fileno(), False)
        watchable = self._start_engine(loop, pipe, pipe=direction)
        self._pipe = pipe
        self._fileno = pipe.fileno()
        self._extra["pipe"] = pipe
        self._engine._set_protocol(protocol, False)
        loop.call_soon(protocol.connection_made, self)
        return watchable

    def _resolve_waiter(self, waiter):
        if waiter is not None:
            self._loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        parts = repr_parts(self, self._pipe, self._fileno)
        if self._pipe is not None:
            parts.append("open")
        return f"<{' '.join(parts)}>"

    def __del__(self, _warn=warnings.warn):
        pipe = getattr(self, "_pipe", None)
        if pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._engine._detach_io()
            pipe.close()

    def set_protocol(self, protocol):
        self._engine._set_protocol(protocol, False)

    def _report_fatal(self, exc, message, expected):
        """An error ends the connection: an ``expected`` one is only logged in debug mode,
        any other goes to the exception handler."""
        if expected:
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })
        self._close(exc)

    def _connection_lost_soon(self, exc):
        """Ends the transport once. Every way to its end comes here: a readiness event the
        engine had already queued when the transport stopped watching (a hang-up, say) can
        still arrive after close() and must not end it again."""
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._engine._detach_io()
            self._pipe.close()
            self._pipe = None
            self._engine._take_protocol()
            self._loop = None


class ReadPipeTransport(_PipeTransport, transports.ReadTransport):
    """The read end of a pipe (or FIFO, socket, pty, character device) as a transport."""

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        is_fifo, is_socket, is_char = _file_type(pipe)
        if not (is_fifo or is_socket or is_char):
            raise ValueError("Pipe transport is for pipes/sockets only.")
        self._set_up(loop, pipe, protocol, waiter, "read")
        if _compat.READ_PIPE_HAS_IS_READING:
            self.is_reading = self._engine.is_reading
        # Reading starts only once connection_made() has run.
        loop.call_soon(self._engine._start_reading)
        self._resolve_waiter(waiter)

    pause_reading = EngineTransport._pause_reading
    resume_reading = EngineTransport._resume_reading

    def close(self):
        if not self._closing:
            self._close(None)

    def _close(self, exc):
        self._engine._begin_close()
        self._engine._stop_reading()
        self._connection_lost_soon(exc)

    # -- called by the engine ---------------------------------------------------------------

    def _on_eof(self):
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._engine._begin_close()
        self._engine._stop_reading()
        # eof_received's answer does not matter: a pipe at EOF is done.
        self._loop.call_soon(self._protocol.eof_received)
        self._connection_lost_soon(None)

    def _fatal_error(self, exc, message="Fatal error on pipe transport"):
        # EIO is how a pty master learns that its slave side closed: the usual end.
        self._report_fatal(exc, message, isinstance(exc, OSError) and exc.errno == errno.EIO)


class WritePipeTransport(_PipeTransport, transports.Transport):
    """The write end of a pipe (or FIFO, socket, pty, character device) as a transport.

    A full ``asyncio.Transport``, as asyncio's write pipe transport is (through its flow
    control mixin): the reading methods are the base class's, which raise NotImplementedError,
    and ``isinstance(t, asyncio.ReadTransport)`` holds as it does there."""

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        is_fifo, is_socket, is_char = _file_type(pipe)
        if not (is_fifo or is_socket or is_char):
            raise ValueError("Pipe transport is only for pipes, sockets and character devices")
        self._peer_gone = False
        watchable = self._set_up(loop, pipe, protocol, waiter, "write")
        if watchable and (is_fifo or is_socket):
            # Only once connection_made() has run, as asyncio adds its reader.
            loop.call_soon(self._engine._watch_hangup)
        self._resolve_waiter(waiter)

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self._closing:
            return
        assert self._pipe
        self._engine._begin_close()
        if not self.get_write_buffer_size():
            self._stop_watching()
            self._connection_lost_soon(None)

    def close(self):
        if self._pipe is not None and not self._closing:
            self.write_eof()

    def abort(self):
        self._close(None)

    def _stop_watching(self):
        self._engine._clear_write_buffer()
        self._engine._stop_reading()

    def _close(self, exc=None):
        self._engine._begin_close()
        self._stop_watching()
        self._connection_lost_soon(exc)

    def _fatal_error(self, exc, message="Fatal error on pipe transport"):
        self._report_fatal(exc, message, isinstance(exc, OSError))

    # -- called by the engine ---------------------------------------------------------------

    def _on_peer_closed(self):
        if self._peer_gone or self._pipe is None:
            return
        self._peer_gone = True
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        if self.get_write_buffer_size():
            self._close(BrokenPipeError())
        else:
            self._close()

    def _on_write_error(self, exc):
        self._engine._clear_write_buffer()
        self._engine._mark_lost()
        self._fatal_error(exc, "Fatal write error on pipe transport")

    def _on_drained(self):
        if self._closing and not self._lost:
            self._stop_watching()
            self._lost = True
            self._call_connection_lost(None)


class PipeSupport:
    """Mixin for ``Loop``: connect_read_pipe and connect_write_pipe."""

    async def connect_read_pipe(self, protocol_factory, pipe):
        """Read from ``pipe`` (an object with ``fileno()``: a pipe, FIFO, socket, pty or
        character device) into a protocol; returns ``(transport, protocol)``."""
        return await self._connect_pipe(ReadPipeTransport, "Read", protocol_factory, pipe)

    async def connect_write_pipe(self, protocol_factory, pipe):
        """Write to ``pipe`` through a transport; returns ``(transport, protocol)``."""
        return await self._connect_pipe(WritePipeTransport, "Write", protocol_factory, pipe)

    async def _connect_pipe(self, transport_class, kind, protocol_factory, pipe):
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = transport_class(self, pipe, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        finally:
            waiter = None
        if self.get_debug():
            logger.debug("%s pipe %r connected: (%r, %r)", kind, pipe.fileno(), transport, protocol)
        return transport, protocol
