"""TLS: ``ssl=`` on every connection path, ``start_tls``, and the layer that speaks TLS.

A TLS connection is two stacked halves, as in asyncio: the native socket transport
(``_transport.SocketTransport``) carries ciphertext, and a TLS protocol on top of it drives an
``ssl.SSLObject`` over two ``ssl.MemoryBIO``s and offers the application its own transport.
The TLS protocol is chosen by ``tls_protocol_class()``: the one with the running CPython's own
semantics. Everything here is once per connection; the per-record work is the TLS protocol's.

Callers: ``_net.NetSupport`` (create_connection, the Unix variants, connect_accepted_socket
and the accepting side of servers) calls ``Loop._make_ssl_transport``; ``start_tls`` is a
loop method of its own.
"""

from __future__ import annotations

import enum
import warnings
from asyncio import constants, exceptions, protocols, sslproto, streams, transports
from asyncio.log import logger

from . import _compat
from ._tokioloop import TlsLayer
from ._transport import WriteFlowControl, tell_protocol, water_marks

try:
    import ssl
except ImportError:  # pragma: no cover - interpreter built without ssl
    ssl = None

if ssl is not None:
    # What asyncio reads as "OpenSSL needs more input first" (the native half's tuple).
    _AGAIN = TlsLayer._again_errors()


def tls_protocol_class():
    """The class of the TLS layer: built like asyncio's ``sslproto.SSLProtocol``. On 3.10
    that is 3.10's own (an older design, with other semantics); from 3.11, tokioloop's."""
    return SSLLayer if _compat.NATIVE_TLS else sslproto.SSLProtocol


class _State(enum.IntEnum):
    """The TLS state machine's states, by the native half's codes. Which steps are allowed
    is decided there alone (``TlsLayer._enter_state``)."""

    UNWRAPPED = TlsLayer._UNWRAPPED
    DO_HANDSHAKE = TlsLayer._DO_HANDSHAKE
    WRAPPED = TlsLayer._WRAPPED
    FLUSHING = TlsLayer._FLUSHING
    SHUTDOWN = TlsLayer._SHUTDOWN


class _App(enum.Enum):
    """What the application protocol has been told: INIT -> CON_MADE [-> EOF] -> CON_LOST."""

    INIT = "INIT"
    CON_MADE = "CON_MADE"
    EOF = "EOF"
    CON_LOST = "CON_LOST"


def _positive_timeout(name, value, default):
    if value is None:
        return default
    if value <= 0:
        raise ValueError(f"{name} should be a positive number, got {value}")
    return value


class SSLLayer(TlsLayer, protocols.BufferedProtocol):
    """The TLS protocol between a transport carrying ciphertext and the application.

    Built as asyncio's ``sslproto.SSLProtocol`` is, with its semantics (3.13's, which fix
    gh-113214: an abort passes its error down). The per-record work (reading, writing, the
    flow-control checks) is the native base class's, and so is the state machine's table of
    allowed steps (``_enter_state`` refuses any other); when to take a step is decided here."""

    def __init__(self, loop, app_protocol, sslcontext, waiter, server_side=False,
                 server_hostname=None, call_connection_made=True, ssl_handshake_timeout=None,
                 ssl_shutdown_timeout=None):
        if ssl is None:
            raise RuntimeError("stdlib ssl module not available")
        self._ssl_handshake_timeout = _positive_timeout(
            "ssl_handshake_timeout", ssl_handshake_timeout, constants.SSL_HANDSHAKE_TIMEOUT
        )
        self._ssl_shutdown_timeout = _positive_timeout(
            "ssl_shutdown_timeout", ssl_shutdown_timeout, constants.SSL_SHUTDOWN_TIMEOUT
        )
        if not sslcontext:
            if server_side:
                raise ValueError("Server side SSL needs a valid SSLContext")
            # ssl=True: a fresh default context, looked up through the module (mockable).
            sslcontext = ssl.create_default_context()
            if not server_hostname:
                sslcontext.check_hostname = False
        self._server_side = server_side
        self._server_hostname = server_hostname if server_hostname and not server_side else None
        self._sslcontext = sslcontext
        self._extra = {"sslcontext": sslcontext}
        self._waiter = waiter
        self._loop = loop
        self._set_app_protocol(app_protocol)
        self._app_transport = None
        self._app_transport_created = False
        self._app_state = _App.INIT if call_connection_made else _App.CON_MADE
        self._eof_received = False
        self._handshake_start_time = None
        self._handshake_timeout_handle = None
        self._shutdown_timeout_handle = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = sslcontext.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=self._server_hostname,
        )
        # The hot path calls the C object behind the SSLObject: no Python frame per record.
        engine = getattr(self._sslobj, "_sslobj", self._sslobj)
        self._bind_engine(loop, engine, self._incoming, self._outgoing)
        self._get_app_transport()

    def __repr__(self):
        return f"<{type(self).__name__} {self._state.name}>"

    # -- state ----------------------------------------------------------------------------

    @property
    def _state(self):
        return _State(self._state_code)

    def _set_app_protocol(self, app_protocol):
        buffered = hasattr(app_protocol, "get_buffer") and isinstance(
            app_protocol, protocols.BufferedProtocol
        )
        self._bind_app_protocol(app_protocol, buffered)

    def _wakeup_waiter(self, exc=None):
        waiter = self._waiter
        if waiter is None:
            return
        self._waiter = None
        if not waiter.cancelled():
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(None)

    def _get_app_transport(self):
        if self._app_transport is None:
            if self._app_transport_created:
                raise RuntimeError("Creating _SSLProtocolTransport twice")
            self._app_transport = SSLTransport(self._loop, self)
            self._app_transport_created = True
        return self._app_transport

    def _get_extra_info(self, name, default=None):
        if name in self._extra:
            return self._extra[name]
        transport = self._transport
        if transport is not None:
            return transport.get_extra_info(name, default)
        return default

    # -- the lower transport's protocol interface ------------------------------------------

    def connection_made(self, transport):
        self._bind_transport(transport)
        self._start_handshake()

    def connection_lost(self, exc):
        self._clear_backlog()
        self._outgoing.read()
        self._mark_lost()
        if self._app_transport is not None:
            self._app_transport._closed = True
        if self._state is not _State.DO_HANDSHAKE and self._app_state in (_App.CON_MADE, _App.EOF):
            self._app_state = _App.CON_LOST
            self._loop.call_soon(self._app_protocol.connection_lost, exc)
        self._enter_state(_State.UNWRAPPED)
        self._bind_transport(None)
        self._app_transport = None
        self._bind_app_protocol(None, False)
        self._wakeup_waiter(exc)
        for name in ("_shutdown_timeout_handle", "_handshake_timeout_handle"):
            handle = getattr(self, name)
            if handle is not None:
                handle.cancel()
                setattr(self, name, None)

    def eof_received(self):
        self._eof_received = True
        try:
            if self._loop.get_debug():
                logger.debug("%r received EOF", self)
            state = self._state
            if state is _State.DO_HANDSHAKE:
                self._on_handshake_complete(ConnectionResetError)
            elif state is _State.WRAPPED:
                self._enter_state(_State.FLUSHING)
                if self._app_reading_paused:
                    return True  # keep the socket until the application reads again
                self._do_flush()
            elif state is _State.FLUSHING:
                self._do_write()
                self._enter_state(_State.SHUTDOWN)
                self._do_shutdown()
            elif state is _State.SHUTDOWN:
                self._do_shutdown()
        except Exception:
            self._transport.close()
            raise

    def pause_writing(self):
        """The lower transport's buffer is full: records now wait in the outgoing BIO."""
        changed = self._set_ssl_writing_paused(True)
        assert changed

    def resume_writing(self):
        changed = self._set_ssl_writing_paused(False)
        assert changed
        self._process_outgoing()

    # -- handshake ------------------------------------------------------------------------

    def _start_handshake(self):
        if self._loop.get_debug():
            logger.debug("%r starts SSL handshake", self)
            self._handshake_start_time = self._loop.time()
        else:
            self._handshake_start_time = None
        self._enter_state(_State.DO_HANDSHAKE)
        self._handshake_timeout_handle = self._loop.call_later(
            self._ssl_handshake_timeout, self._check_handshake_timeout
        )
        self._do_handshake()

    def _check_handshake_timeout(self):
        if self._state is _State.DO_HANDSHAKE:
            self._fatal_error(ConnectionAbortedError(
                f"SSL handshake is taking longer than {self._ssl_handshake_timeout} seconds: "
                f"aborting the connection"
            ))

    def _do_handshake(self):
        try:
            self._sslobj.do_handshake()
        except _AGAIN:
            self._process_outgoing()
        except ssl.SSLError as exc:
            self._on_handshake_complete(exc)
        else:
            self._on_handshake_complete(None)

    def _on_handshake_complete(self, handshake_exc):
        if self._handshake_timeout_handle is not None:
            self._handshake_timeout_handle.cancel()
            self._handshake_timeout_handle = None
        sslobj = self._sslobj
        try:
            if handshake_exc is not None:
                raise handshake_exc
            self._enter_state(_State.WRAPPED)
            peercert = sslobj.getpeercert()
        except Exception as exc:
            handshake_exc = None  # no frame -> exception cycle
            self._enter_state(_State.UNWRAPPED)
            if isinstance(exc, ssl.CertificateError):
                message = "SSL handshake failed on verifying the certificate"
            else:
                message = "SSL handshake failed"
            self._fatal_error(exc, message)
            self._wakeup_waiter(exc)
            return
        if self._loop.get_debug():
            elapsed = self._loop.time() - self._handshake_start_time
            logger.debug("%r: SSL handshake took %.1f ms", self, elapsed * 1e3)
        self._extra.update(
            peercert=peercert, cipher=sslobj.cipher(), compression=sslobj.compression(),
            ssl_object=sslobj,
        )
        if self._app_state is _App.INIT:
            self._app_state = _App.CON_MADE
            self._app_protocol.connection_made(self._get_app_transport())
        self._wakeup_waiter()
        self._do_read()

    # -- shutdown -------------------------------------------------------------------------

    def _start_shutdown(self):
        state = self._state
        if state in (_State.FLUSHING, _State.SHUTDOWN, _State.UNWRAPPED):
            return
        if self._app_transport is not None:
            self._app_transport._closed = True
        if state is _State.DO_HANDSHAKE:
            self._abort(None)
            return
        self._enter_state(_State.FLUSHING)
        self._shutdown_timeout_handle = self._loop.call_later(
            self._ssl_shutdown_timeout, self._check_shutdown_timeout
        )
        self._do_flush()

    def _check_shutdown_timeout(self):
        if self._state in (_State.FLUSHING, _State.SHUTDOWN):
            self._transport._force_close(exceptions.TimeoutError("SSL shutdown timed out"))

    def _do_flush(self):
        self._do_read()
        self._enter_state(_State.SHUTDOWN)
        self._do_shutdown()

    def _do_shutdown(self):
        try:
            if not self._eof_received:
                self._sslobj.unwrap()
        except _AGAIN:
            self._process_outgoing()
        except ssl.SSLError as exc:
            self._on_shutdown_complete(exc)
        else:
            self._process_outgoing()
            self._call_eof_received()
            self._on_shutdown_complete(None)

    def _on_shutdown_complete(self, shutdown_exc):
        if shutdown_exc or not _compat.TLS_SHUTDOWN_TIMEOUT_UNTIL_LOST:
            if self._shutdown_timeout_handle is not None:
                self._shutdown_timeout_handle.cancel()
                self._shutdown_timeout_handle = None
        if shutdown_exc:
            self._fatal_error(shutdown_exc)
            return
        if self._shutdown_timeout_handle is None and _compat.TLS_SHUTDOWN_TIMEOUT_UNTIL_LOST:
            # Closing the socket transport waits until its buffer is written, which a peer
            # that stopped reading delays for ever: the timeout runs until connection_lost,
            # started here when the peer began the shutdown.
            self._shutdown_timeout_handle = self._loop.call_later(
                self._ssl_shutdown_timeout, self._check_shutdown_timeout
            )
        self._loop.call_soon(self._transport.close)

    def _is_transport_closing(self):
        transport = self._transport
        return transport is not None and transport.is_closing()

    def _abort(self, exc):
        self._enter_state(_State.UNWRAPPED)
        transport = self._transport
        if transport is not None:
            transport._force_close(exc)

    def _call_eof_received(self):
        try:
            if self._app_state is _App.CON_MADE:
                self._app_state = _App.EOF
                if self._app_protocol.eof_received():
                    logger.warning("returning true from eof_received() has no effect when using ssl")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Error calling eof_received()")

    def _fatal_error(self, exc, message="Fatal error on transport"):
        transport = self._transport
        if transport:
            transport._force_close(exc)
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        elif not isinstance(exc, exceptions.CancelledError):
            self._loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": transport,
                "protocol": self,
            })

    # -- flow control ---------------------------------------------------------------------

    def _get_write_buffer_size(self):
        return self._outgoing.pending + self._write_buffer_size

    def _control_app_writing(self):
        """asyncio's: pause_writing or resume_writing to the application once its buffer
        crosses a mark (the native half decides and flips the flag). asyncio names this
        layer as the protocol in a failure's report."""
        method = self._app_writing_change()
        if method is not None:
            tell_protocol(self._loop, self._app_protocol, method, self._app_transport, self)

    def _get_read_buffer_size(self):
        return self._incoming.pending

    def _pause_reading(self):
        self._pause_app_reading()

    def _resume_reading(self):
        if self._resume_app_reading():
            self._loop.call_soon(self._read_resumed)

    def _read_resumed(self):
        state = self._state
        if state is _State.WRAPPED:
            self._do_read()
        elif state is _State.FLUSHING:
            self._do_flush()
        elif state is _State.SHUTDOWN:
            self._do_shutdown()


class SSLTransport(WriteFlowControl, transports.Transport):
    """The application's side of a TLS connection (asyncio's ``_SSLProtocolTransport``).

    ``write`` is the native layer's own method: writing runs no Python frame. The write
    limits are the shared flow-control mixin's, held by the TLS layer; the layer decides
    when the application protocol is paused (``SSLLayer._control_app_writing``)."""

    _DEFAULT_HIGH_WATER = TlsLayer._OUTGOING_HIGH_WATER

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, loop, ssl_protocol):
        super().__init__()
        self._loop = loop
        self._ssl_protocol = ssl_protocol
        self._closed = False
        self.write = ssl_protocol._app_write
        loop._census("tls", self)

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state}>"

    def __del__(self, _warn=warnings.warn):
        if not getattr(self, "_closed", True):
            self._closed = True
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)

    def get_extra_info(self, name, default=None):
        """sslcontext, and once handshaken peercert, cipher, compression and ssl_object;
        other names are the lower transport's (socket, peername, sockname...)."""
        return self._ssl_protocol._get_extra_info(name, default)

    def set_protocol(self, protocol):
        self._ssl_protocol._set_app_protocol(protocol)

    def get_protocol(self):
        return self._ssl_protocol._app_protocol

    def is_closing(self):
        if self._closed:
            return True
        # From the fix that bounds the close by ssl_shutdown_timeout: also once the
        # connection underneath is closing.
        return (_compat.TLS_SHUTDOWN_TIMEOUT_UNTIL_LOST
                and self._ssl_protocol._is_transport_closing())

    def close(self):
        """Flush what is queued, send close_notify, then close; connection_lost follows.

        A transport already closed (by this call or by the peer) lets go of its TLS layer,
        as asyncio's does, so that an application keeping the transport does not keep the
        connection's objects (the SSLContext among them) alive. asyncio's transport then
        fails every later call with AttributeError (cpython#98539); this one answers as a
        closed transport instead."""
        if not self._closed:
            self._closed = True
            self._ssl_protocol._start_shutdown()
        else:
            detached = self._ssl_protocol = _DetachedLayer()
            self.write = detached._app_write

    def abort(self):
        """Close at once: queued data is dropped and no close_notify is sent."""
        self._force_close(None)

    def _force_close(self, exc):
        self._closed = True
        self._ssl_protocol._abort(exc)

    def is_reading(self):
        return not self._ssl_protocol._app_reading_paused

    def pause_reading(self):
        self._ssl_protocol._pause_reading()

    def resume_reading(self):
        self._ssl_protocol._resume_reading()

    @property
    def _flow(self):
        return self._ssl_protocol

    def _write_limits_changed(self):
        self._ssl_protocol._control_app_writing()

    def get_write_buffer_size(self):
        return self._ssl_protocol._get_write_buffer_size()

    def set_read_buffer_limits(self, high=None, low=None):
        high, low = water_marks(high, low, TlsLayer._INCOMING_HIGH_WATER)
        self._ssl_protocol._set_read_limits(high, low)
        self._ssl_protocol._control_ssl_reading()

    def get_read_buffer_limits(self):
        return self._ssl_protocol._read_limits()

    def get_read_buffer_size(self):
        return self._ssl_protocol._get_read_buffer_size()

    @property
    def _protocol_paused(self):
        # loop.sendfile's fallback reads this to know whether writing is paused.
        return self._ssl_protocol._app_writing_paused

    def writelines(self, list_of_data):
        write = self._ssl_protocol._app_write_unchecked
        for data in list_of_data:
            write(data)

    def write_eof(self):
        raise NotImplementedError

    def _test__append_write_backlog(self, data):
        # asyncio's hook for its own tests (CPython's test_ssl fills the backlog with it).
        self._ssl_protocol._append_backlog(data)

    def can_write_eof(self):
        return False


def _tls_protocol(loop, app_protocol, sslcontext, waiter, server_side, server_hostname,
                  call_connection_made, ssl_handshake_timeout, ssl_shutdown_timeout):
    optional = {}
    if ssl_shutdown_timeout is not None:
        # (3.10's TLS layer has no shutdown timeout; its loop methods refuse the argument.)
        optional["ssl_shutdown_timeout"] = ssl_shutdown_timeout
    return tls_protocol_class()(
        loop, app_protocol, sslcontext, waiter, server_side, server_hostname,
        call_connection_made=call_connection_made,
        ssl_handshake_timeout=ssl_handshake_timeout, **optional,
    )


def context_from_ssl_argument(ssl_argument):
    """asyncio's reading of ``ssl=``: a context is used as given; ``True`` asks the TLS layer
    for a default context (``ssl.create_default_context()``, looked up when needed)."""
    return None if isinstance(ssl_argument, bool) else ssl_argument


class TlsSupport:
    """Mixin for ``Loop``: the TLS transport constructor and ``start_tls``."""

    def _make_ssl_transport(
        self, rawsock, protocol, sslcontext, waiter=None, *, server_side=False,
        server_hostname=None, extra=None, server=None, ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Stack a TLS layer on a socket transport for ``rawsock``; return the application's
        transport. ``waiter`` is resolved once the handshake is done (or fails with its error)."""
        tls = _tls_protocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname, True,
            ssl_handshake_timeout, ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, tls, extra=extra, server=server)
        return tls._app_transport

    async def start_tls(self, transport, protocol, sslcontext, *, server_side=False,
                        server_hostname=None, ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        """Upgrade ``transport`` to TLS; return the new transport ``protocol`` must use.

        On any failure (cancellation included) the original transport is closed."""
        if ssl is None:
            raise RuntimeError("Python ssl module is not available")
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()
        tls = _tls_protocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname, False,
            ssl_handshake_timeout, ssl_shutdown_timeout,
        )
        # Reading stops first, so no ciphertext reaches the layer before connection_made.
        transport.pause_reading()
        if server_side and _compat.START_TLS_TAKES_READER_BUFFER:
            _take_reader_buffer(protocol, tls)
        transport.set_protocol(tls)
        connect = self.call_soon(tls.connection_made, transport)
        resume = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            connect.cancel()
            resume.cancel()
            raise
        finally:
            waiter = None  # no traceback -> frame -> exception cycle
        return tls._app_transport


def _take_reader_buffer(protocol, tls):
    """Move what a stream server's StreamReader buffered before start_tls (the peer's first
    handshake records, when they came early) into the TLS layer's incoming ciphertext."""
    if not isinstance(protocol, streams.StreamReaderProtocol):
        return
    reader = getattr(protocol, "_stream_reader", None)
    if reader is not None and reader._buffer:
        tls._incoming.write(reader._buffer)
        reader._buffer.clear()


class _DetachedLayer:
    """What a closed SSLTransport talks to once it has let go of its TLS layer: nothing is
    sent or received any more, writes are dropped (and logged, as after any close: a fresh
    native layer, never wrapped, does exactly that), limits stay the defaults, and extra
    info is gone."""

    _app_protocol = None
    _app_reading_paused = True
    _app_writing_paused = False

    def __init__(self):
        closed = TlsLayer()
        self._app_write = closed._app_write
        self._app_write_unchecked = closed._app_write_unchecked

    def _get_extra_info(self, name, default=None):
        return default

    def _write_limits(self):
        return water_marks(None, None, TlsLayer._OUTGOING_HIGH_WATER)[::-1]

    def _read_limits(self):
        return water_marks(None, None, TlsLayer._INCOMING_HIGH_WATER)[::-1]

    def _get_write_buffer_size(self):
        return 0

    def _get_read_buffer_size(self):
        return 0

    def _ignore(self, *args):
        pass

    _set_app_protocol = _start_shutdown = _abort = _pause_reading = _resume_reading = _ignore
    _set_write_limits = _set_read_limits = _ignore
    _control_app_writing = _control_ssl_reading = _append_backlog = _ignore
