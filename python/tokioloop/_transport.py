"""Socket stream transports (TCP and Unix): ``Loop._make_socket_transport``.

``SocketTransport`` is an ``asyncio.Transport`` driven by a native engine, ``StreamEngine``,
which owns everything per read and per write: the receive into a per-thread buffer and the
protocol call, the direct send, the queue flushed with one ``sendmsg``. The engine's
``write``, ``get_write_buffer_size``, ``is_closing``, ``is_reading`` and ``get_protocol`` are
bound onto each transport, so calling them runs no Python. This class keeps what happens
once per connection and what the engine calls by name when something rare happens: set-up,
``close`` (flushes) and ``abort`` (drops), EOF, errors, the flow-control calls into the
protocol, extra info and sendfile's hand-over. (A native base class cannot be combined with
asyncio's slotted ``BaseTransport``; composition keeps ``isinstance(t, asyncio.Transport)``
true.) Every connection path (create_connection, create_server, the Unix
variants, connect_accepted_socket) builds its transport through

    loop._make_socket_transport(sock, protocol, waiter=None, *, extra=None, server=None)

which schedules ``protocol.connection_made(transport)``, then starts reading, then resolves
``waiter`` (if given) with None. With ``server``, the transport calls ``server._attach(self)``
at once and ``server._detach(self)`` after ``connection_lost``.
"""

from __future__ import annotations

import operator
import socket
import warnings
from asyncio import constants, futures, protocols, transports, trsock
from asyncio.log import logger

from . import _compat
from ._tokioloop import StreamEngine


def _set_tcp_nodelay(sock):
    """Small writes go out at once, as asyncio arranges for its TCP transports."""
    if (
        hasattr(socket, "TCP_NODELAY")
        and sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_STREAM
        and sock.proto == socket.IPPROTO_TCP
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def add_socket_extra(extra, sock):
    """A socket transport's extra info, as asyncio's: socket (a TransportSocket), sockname,
    and peername unless the creator gave it (None where the socket has none)."""
    extra["socket"] = trsock.TransportSocket(sock)
    try:
        extra["sockname"] = sock.getsockname()
    except OSError:
        extra["sockname"] = None
    if "peername" not in extra:
        try:
            extra["peername"] = sock.getpeername()
        except OSError:
            extra["peername"] = None


def engine_state(name):
    """A read-only transport attribute that lives in its native engine (``self._engine``),
    which alone writes it, through its verbs (``_begin_close()``, ``_mark_lost()``...).
    Read with ``operator.attrgetter``: no Python frame."""
    return property(operator.attrgetter(f"_engine.{name}"))


def water_marks(high, low, default_high):
    """asyncio's rule for a (high, low) pair of write or read limits: only low given means
    high = 4 * low; only high given means low = high // 4; neither means the default."""
    if high is None:
        high = default_high if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low


def tell_protocol(loop, protocol, method, transport, reported_protocol):
    """Call ``protocol.pause_writing()`` or ``resume_writing()``; a failure goes to the
    exception handler, with the transport and protocol asyncio names in that report."""
    try:
        getattr(protocol, method)()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        loop.call_exception_handler(
            {
                "message": f"protocol.{method}() failed",
                "exception": exc,
                "transport": transport,
                "protocol": reported_protocol,
            }
        )


def repr_parts(transport, handle, fd):
    """The start of asyncio's transport repr: the class name, "closed" (``handle``, the socket
    or pipe, is None) or "closing", and the fd. The caller adds its own details while open."""
    parts = [type(transport).__name__]
    if handle is None:
        parts.append("closed")
    elif transport._closing:
        parts.append("closing")
    parts.append(f"fd={fd}")
    return parts


class WriteFlowControl:
    """asyncio's write flow control (CPython's ``transports._FlowControlMixin``), shared by
    every transport here: sockets and pipes (``EngineTransport``), datagrams and TLS. The
    marks and the "protocol paused" flag live in a native object, ``self._flow`` (the
    engine; the TLS layer for TLS), which decides each crossing and flips the flag itself:
    pause_writing above the high mark, resume_writing at or below the low one, failures
    reported to the exception handler. The engine calls ``_maybe_pause_protocol`` and
    ``_maybe_resume_protocol`` by name when its buffer crosses a mark."""

    _DEFAULT_HIGH_WATER = StreamEngine._DEFAULT_HIGH_WATER

    @property
    def _flow(self):
        return self._engine

    def set_write_buffer_limits(self, high=None, low=None):
        high, low = water_marks(high, low, self._DEFAULT_HIGH_WATER)
        self._flow._set_write_limits(high, low)
        self._write_limits_changed()

    def get_write_buffer_limits(self):
        return self._flow._write_limits()

    def _write_limits_changed(self):
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self):
        if self._flow._pause_protocol_if_over():
            self._tell_protocol("pause_writing")

    def _maybe_resume_protocol(self):
        if self._flow._resume_protocol_if_under():
            self._tell_protocol("resume_writing")

    def _tell_protocol(self, method):
        protocol = self._protocol
        tell_protocol(self._loop, protocol, method, self, protocol)


class SelectorEnding:
    """How asyncio's selector transports end (their ``close``, ``abort``, ``_fatal_error``),
    for a class that provides ``_halt_reading``, ``_force_close`` and
    ``_call_connection_lost``."""

    def close(self):
        """Stop reading; once the queue is flushed, call connection_lost(None) and close."""
        if not self._engine._begin_close():
            return
        self._halt_reading()
        if not self.get_write_buffer_size():
            self._engine._mark_lost()
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self):
        """Close at once, dropping anything queued."""
        self._force_close(None)

    def _fatal_error(self, exc, message="Fatal error on transport"):
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
            )
        self._force_close(exc)


class EngineTransport(WriteFlowControl):
    """What every transport on the native stream engine shares (sockets here, pipes in
    ``_pipes.py``): the engine's state as read-only attributes, set-up, flow-control calls
    into the protocol, extra info. Mixed into a class that also derives from an asyncio
    transport."""

    _closing = engine_state("_closing")
    _conn_lost = engine_state("_conn_lost")
    _eof = engine_state("_eof")
    _paused = engine_state("_paused")  # 3.10's asyncio.sslproto reads it on its transport
    _protocol_paused = engine_state("_protocol_paused")
    _sock_fd = engine_state("_sock_fd")

    def _start_engine(self, loop, fileobj, *, pipe=None):
        """Make the engine for ``fileobj`` and register its descriptor; with ``pipe`` (None,
        "read" or "write") the engine follows asyncio's pipe transport rules. Returns False
        if the descriptor cannot be watched at all (a character device epoll refuses)."""
        engine = StreamEngine(loop, fileobj, self)
        if pipe is not None:
            engine._set_pipe_mode(pipe == "write")
        try:
            attached = engine._attach_io()
        except PermissionError:
            if pipe != "write":
                raise
            attached = None  # e.g. /dev/null: written to at once, never waited on
        if attached is False:
            engine._detach_io()
            raise RuntimeError(f"File descriptor {engine._sock_fd} is already watched by the loop")
        self._engine = engine
        if pipe is not None:
            loop._census("pipe", self)
        else:
            loop._census("unix" if fileobj.family == socket.AF_UNIX else "tcp", self)
        self.write = engine.write
        self.get_write_buffer_size = engine.get_write_buffer_size
        self.is_closing = engine.is_closing
        self.get_protocol = engine.get_protocol
        self._loop = loop
        return attached is not None

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    # pause_reading/resume_reading, for the transports that read (bound to them by name).
    def _pause_reading(self):
        if self._engine._pause_reading() and self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def _resume_reading(self):
        if self._engine._resume_reading() and self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    @property
    def _protocol(self):
        return self.get_protocol()

class SocketTransport(SelectorEnding, EngineTransport, transports.Transport):
    """An ``asyncio.Transport`` over a connected stream socket, reading and writing natively."""

    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _start_tls_compatible = True

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        super().__init__(extra)
        self._sock = None
        self._start_engine(loop, sock)
        self.is_reading = self._engine.is_reading
        add_socket_extra(self._extra, sock)
        self._sock = sock
        self._server = None
        self._empty_waiter = None
        self._protocol_connected = False
        self.set_protocol(protocol)
        self._server = server
        if server is not None:
            server._attach(self)
        _set_tcp_nodelay(sock)
        # 3.15+: connection_made shares the context data_received and connection_lost run in.
        context = self._engine._context if _compat.CONNECTION_CONTEXT else None
        loop.call_soon(protocol.connection_made, self, context=context)
        loop.call_soon(self._engine._start_reading, context=context)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None, context=context)

    def __repr__(self):
        parts = repr_parts(self, self._sock, self._sock_fd)
        if self._sock is not None:
            parts.append("read=" + ("polling" if self.is_reading() else "idle"))
            size = self.get_write_buffer_size()
            parts.append(f"write=<{'polling' if size else 'idle'}, bufsize={size}>")
        return f"<{' '.join(parts)}>"

    def __del__(self, _warn=warnings.warn):
        sock = getattr(self, "_sock", None)
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._engine._detach_io()
            sock.close()

    # -- the asyncio.Transport interface ------------------------------------------------

    def set_protocol(self, protocol):
        self._engine._set_protocol(protocol, isinstance(protocol, protocols.BufferedProtocol))
        self._protocol_connected = True

    pause_reading = EngineTransport._pause_reading
    resume_reading = EngineTransport._resume_reading

    def writelines(self, list_of_data):
        if _compat.SOCKET_WRITELINES_OWN and self._engine._eof:
            raise RuntimeError("Cannot call writelines() after write_eof()")
        self.write(b"".join(list_of_data))

    def write_eof(self):
        """Shut the write side once everything queued is sent."""
        if not self._engine._request_eof():
            return
        if not self.get_write_buffer_size():
            self._sock.shutdown(socket.SHUT_WR)

    def can_write_eof(self):
        return True

    def _halt_reading(self):
        self._engine._stop_reading()

    def _force_close(self, exc):
        if self._conn_lost:
            return
        self._engine._clear_write_buffer()
        if self._engine._begin_close():
            self._engine._stop_reading()
        self._engine._mark_lost()
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._engine._detach_io()
            self._sock.close()
            self._sock = None
            self._engine._take_protocol()
            self._loop = None
            server = self._server
            if server is not None:
                server._detach(self)
                self._server = None

    def _on_eof(self):
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if keep_open:
            self._engine._stop_reading()
        else:
            self.close()

    def _on_write_error(self, exc):
        self._engine._clear_write_buffer()
        self._fatal_error(exc, "Fatal write error on socket transport")
        if self._empty_waiter is not None:
            self._empty_waiter.set_exception(exc)

    def _on_drained(self):
        if self._empty_waiter is not None:
            self._empty_waiter.set_result(None)
        if self._closing:
            self._call_connection_lost(None)
        elif self._eof:
            self._sock.shutdown(socket.SHUT_WR)

    # -- sendfile hand-over (loop.sendfile) -------------------------------------------------

    def _make_empty_waiter(self):
        """A future resolved once the write queue is empty; write() is refused meanwhile."""
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        self._engine._set_sendfile(True)
        if not self.get_write_buffer_size():
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self):
        self._empty_waiter = None
        self._engine._set_sendfile(False)


class TransportSupport:
    """Mixin for ``Loop``: the stream transport constructor and its error report."""

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _transport_error(self, transport, exc):
        """The native turn's report when a transport's own error path raised."""
        self.call_exception_handler(
            {
                "message": f"Exception in I/O callback of {transport!r}",
                "exception": exc,
                "transport": transport,
            }
        )
