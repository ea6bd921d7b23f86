"""Datagram endpoints: ``create_datagram_endpoint`` and its transport (UDP, Unix datagrams).

``DatagramTransport`` keeps what happens once per endpoint: set-up, close (flushes what is
queued) and abort, errors that end it, the flow-control calls into the protocol, extra info.
Its native engine (``src/transports/datagram.rs``) is the socket's reader and writer and the
transport's ``sendto``: receiving and sending run with no Python frame of ours. Argument
checking and its order follow the running version's asyncio (``reuse_address`` exists only on
3.10; 3.13 accepts any non-stream socket for ``sock=`` and sends empty datagrams).
"""

from __future__ import annotations

import socket
import sys
import warnings
from asyncio import futures, selector_events, transports
from asyncio.log import logger

from ._net import _set_reuse_port
from ._server import _stat_path, _unlink_path
from ._tokioloop import DatagramEngine
from ._transport import (
    SelectorEnding, WriteFlowControl, add_socket_extra, engine_state, repr_parts,
)


#: What each queued datagram adds to the write buffer size beyond its bytes: 3.13 counts an
#: 8-byte header per datagram (and we subtract it again when it is sent: gh-135444).
_HEADER_SIZE = 8 if sys.version_info >= (3, 13) else 0
#: 3.13 sends an empty datagram; earlier versions drop it (gh-113812).
_SENDS_EMPTY = sys.version_info >= (3, 13)
#: 3.12 made asyncio's datagram transport an ``asyncio.DatagramTransport`` too (it has always
#: been an ``asyncio.Transport``).
_BASES = (
    (transports.Transport, transports.DatagramTransport)
    if issubclass(selector_events._SelectorDatagramTransport, transports.DatagramTransport)
    else (transports.Transport,)
)
#: 3.13 refuses only stream sockets for ``sock=`` (gh-114887); earlier, any non-datagram one.
_REFUSES_ONLY_STREAM = sys.version_info >= (3, 13)

_UNSET = object()

#: 3.10 still has the ``reuse_address`` argument (refusing True); 3.11 removed it.
_HAS_REUSE_ADDRESS = sys.version_info < (3, 11)
#: 3.10's datagram transport has no pause_reading/resume_reading/is_reading (asyncio's
#: base class raises NotImplementedError there); 3.11 added them.
_READING_CONTROL = "pause_reading" in vars(selector_events._SelectorTransport)


class DatagramTransport(SelectorEnding, WriteFlowControl, *_BASES):
    """A datagram socket as an asyncio transport; ``sendto`` is the native engine's."""

    _conn_lost = engine_state("_conn_lost")
    _closing = engine_state("_closing")
    _protocol_paused = engine_state("_protocol_paused")

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        super().__init__(extra)
        self._sock = None
        loop._ensure_fd_no_transport(sock.fileno())
        engine = DatagramEngine(loop, sock, self, _HEADER_SIZE, _SENDS_EMPTY)
        self._engine = engine
        self.sendto = engine.sendto
        self.get_write_buffer_size = engine.get_write_buffer_size
        self.get_protocol = engine.get_protocol
        add_socket_extra(self._extra, sock)
        self._loop = loop
        self._sock = sock
        self._sock_fd = sock.fileno()
        loop._datagram_transports[self._sock_fd] = self
        loop._census("datagram", self)
        self._address = address
        self._paused = False
        self._writing = False
        engine._set_address(address, bool(self._extra["peername"]))
        engine._set_protocol(protocol)
        loop.call_soon(protocol.connection_made, self)
        # Reading starts only once connection_made() has run.
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        parts = repr_parts(self, self._sock, self._sock_fd)
        if self._sock is not None:
            reading = not self._paused and not self._closing
            parts.append("read=" + ("polling" if reading else "idle"))
            parts.append(f"write=<{'polling' if self._writing else 'idle'}, "
                         f"bufsize={self.get_write_buffer_size()}>")
        return f"<{' '.join(parts)}>"

    def __del__(self, _warn=warnings.warn):
        sock = getattr(self, "_sock", None)
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()

    @property
    def _protocol(self):
        return self.get_protocol()

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    def set_protocol(self, protocol):
        self._engine._set_protocol(protocol)

    def is_closing(self):
        return self._closing

    # -- reading --------------------------------------------------------------------------

    def _start_reading(self):
        if self._paused or self._closing or self._sock is None:
            return
        self._engine._set_reading(True)
        self._loop._add_reader(self._sock_fd, self._engine._read_ready, ())
        # asyncio hears of a socket error (an ICMP refusal) through its reader: so do we.
        self._loop._watch_errors(self._sock_fd)

    def _stop_reading(self):
        self._engine._set_reading(False)
        if self._sock is not None:
            self._loop._remove_reader(self._sock_fd)

    def is_reading(self):
        return not self._paused and not self._closing

    def pause_reading(self):
        if self._closing or self._paused:
            return
        self._paused = True
        self._stop_reading()

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        self._start_reading()

    # -- writing (called by the engine) ----------------------------------------------------

    def _start_writing(self):
        if not self._writing:
            self._writing = True
            self._loop._add_writer(self._sock_fd, self._engine._write_ready, ())

    def _stop_writing(self):
        if self._writing:
            self._writing = False
            self._loop._remove_writer(self._sock_fd)

    def _on_drained(self):
        self._stop_writing()
        if self._closing:
            self._call_connection_lost(None)

    # -- ending ---------------------------------------------------------------------------

    def _halt_reading(self):
        self._stop_reading()

    def _force_close(self, exc):
        if self._conn_lost:
            return
        self._engine._clear_queue()
        self._stop_writing()
        if self._engine._begin_close():
            self._stop_reading()
        self._engine._mark_lost()
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._stop_reading()
            self._stop_writing()
            self._loop._datagram_transports.pop(self._sock_fd, None)
            self._sock.close()
            self._sock = None
            self._engine._detach()
            self._loop = None


if not _READING_CONTROL:
    del DatagramTransport.pause_reading, DatagramTransport.resume_reading
    del DatagramTransport.is_reading


def _check_datagram_sock(sock):
    if _REFUSES_ONLY_STREAM:
        if sock.type == socket.SOCK_STREAM:
            raise ValueError(f"A datagram socket was expected, got {sock!r}")
    elif sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"A UDP Socket was expected, got {sock!r}")


def _remove_stale_unix_socket(path):
    try:
        if _stat_path(path)[2]:
            _unlink_path(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # The directory may allow creating the socket but not inspecting it.
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, exc)


class DatagramSupport:
    """Mixin for ``Loop``: create_datagram_endpoint."""

    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None,
                                       *, family=0, proto=0, flags=0, reuse_address=_UNSET,
                                       reuse_port=None, allow_broadcast=None, sock=None):
        """Create a datagram endpoint; returns ``(transport, protocol)``.

        With ``sock``, that socket is used as it is; otherwise one is made for the first
        (family, protocol) that the addresses resolve to and that binds (``local_addr``) and
        connects (``remote_addr``, unless ``allow_broadcast``, where it is only the default
        destination). ``reuse_address`` exists on 3.10 only, where asyncio refuses True."""
        if sock is not None:
            _check_datagram_sock(sock)
            if (local_addr or remote_addr or family or proto or flags or reuse_port
                    or allow_broadcast):
                given = dict(local_addr=local_addr, remote_addr=remote_addr, family=family,
                             proto=proto, flags=flags)
                if _HAS_REUSE_ADDRESS:
                    # 3.10 lists reuse_address too, its "not given" marker included (truthy).
                    given["reuse_address"] = reuse_address
                given.update(reuse_port=reuse_port, allow_broadcast=allow_broadcast)
                problems = ", ".join(f"{k}={v}" for k, v in given.items() if v)
                raise ValueError(
                    f"socket modifier keyword arguments can not be used when sock is "
                    f"specified. ({problems})"
                )
            sock.setblocking(False)
            remote = None
        else:
            pairs = await self._datagram_address_pairs(local_addr, remote_addr, family, proto,
                                                       flags)
            if reuse_address is not _UNSET:
                if reuse_address:
                    raise ValueError(
                        "Passing `reuse_address=True` is no longer supported, as the usage of "
                        "SO_REUSEPORT in UDP poses a significant security concern."
                    )
                warnings.warn(
                    "The *reuse_address* parameter has been deprecated as of 3.5.10 and is "
                    "scheduled for removal in 3.11.", DeprecationWarning, stacklevel=2,
                )
            sock, remote = await self._datagram_socket(pairs, local_addr, remote_addr,
                                                       reuse_port, allow_broadcast)
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = DatagramTransport(self, sock, protocol, remote, waiter)
        if self.get_debug():
            if local_addr:
                logger.info("Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                            local_addr, remote_addr, transport, protocol)
            else:
                logger.debug("Datagram endpoint remote_addr=%r created: (%r, %r)",
                             remote_addr, transport, protocol)
        await self._net_transport_set_up(transport, waiter)
        return transport, protocol

    async def _datagram_address_pairs(self, local_addr, remote_addr, family, proto, flags):
        """The ((family, proto), (local, remote)) candidates, in asyncio's order."""
        if not (local_addr or remote_addr):
            if family == 0:
                raise ValueError("unexpected address family")
            return [((family, proto), (None, None))]
        if hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
            for addr in (local_addr, remote_addr):
                if addr is not None and not isinstance(addr, str):
                    raise TypeError("string is expected")
            if local_addr and local_addr[0] not in (0, "\x00"):
                _remove_stale_unix_socket(local_addr)
            return [((family, proto), (local_addr, remote_addr))]
        by_family = {}  # (family, proto) -> [local, remote], in resolution order
        for index, addr in ((0, local_addr), (1, remote_addr)):
            if addr is None:
                continue
            if not (isinstance(addr, tuple) and len(addr) == 2):
                raise TypeError("2-tuple is expected")
            infos = await self._resolve_address(addr, family=family, type=socket.SOCK_DGRAM,
                                                proto=proto, flags=flags)
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            for info_family, _, info_proto, _, address in infos:
                by_family.setdefault((info_family, info_proto), [None, None])[index] = address
        pairs = [
            (key, pair) for key, pair in by_family.items()
            if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))
        ]
        if not pairs:
            raise ValueError("can not get address information")
        return pairs

    async def _datagram_socket(self, pairs, local_addr, remote_addr, reuse_port,
                               allow_broadcast):
        """The first candidate socket that binds and connects; the remote it is for."""
        errors = []
        for (family, proto), (local, remote) in pairs:
            sock = None
            try:
                sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
                if reuse_port:
                    _set_reuse_port(sock)
                if allow_broadcast:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.setblocking(False)
                if local_addr:
                    sock.bind(local)
                if remote_addr:
                    if not allow_broadcast:
                        await self.sock_connect(sock, remote)
                    return sock, remote
                return sock, None
            except OSError as exc:
                if sock is not None:
                    sock.close()
                errors.append(exc)
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        try:
            raise errors[0]
        finally:
            errors = None
