"""Servers: ``create_server`` and ``create_unix_server``, binding their listening sockets, and
the accept loop behind ``Server`` (``_server.py``).

Contract: ``ServeSupport`` is a mixin of ``Loop`` (``_loop.py``). A listening socket is watched
with the loop's level-triggered fd readiness (``_add_reader``); each accepted connection gets a
task that builds its transport with ``_net_new_transport`` (``_net.py``), the same last step as
an outgoing connection. The private methods keep the ``_net_`` prefix they share with
``NetSupport``, so ``Server`` calls ``_net_watch_listener`` / ``_net_unwatch_listener`` on
whichever mixin holds them. Argument checking, error messages and the order things happen in
follow stdlib asyncio's ``BaseEventLoop`` / ``_UnixSelectorEventLoop``, with the newest API:
``keep_alive`` and ``cleanup_socket`` (3.13).

Callers: asyncio's public API through ``Loop``; ``Server`` (start and stop watching).
"""

from __future__ import annotations

import collections.abc
import errno
import itertools
import os
import socket
import sys
from asyncio import constants, tasks, trsock
from asyncio.log import logger

from . import _compat
from ._net import (
    _bind_error_text,
    _check_address_or_sock,
    _check_ssl_timeouts,
    _check_stream,
    _check_unix_stream,
    _set_reuse_port,
    _Tls,
)
from ._server import Server, _stat_path, _unlink_path
from ._sock import _reject_ssl_socket

_HAS_IPv6 = hasattr(socket, "AF_INET6")

# accept() errors meaning "out of descriptors or memory": back off instead of spinning.
_ACCEPT_RESOURCE_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def _is_abstract_unix_path(path):
    return path[:1] in ("\0", b"\0")


def _check_server_ssl(ssl, with_ssl, ssl_handshake_timeout, ssl_shutdown_timeout):
    """The servers' ssl checks: no bool for ``ssl``, then the TLS timeouts (asyncio's
    create_server counts any ``ssl`` not None as given, create_unix_server a true one)."""
    if isinstance(ssl, bool):
        raise TypeError("ssl argument must be an SSLContext or None")
    _check_ssl_timeouts(with_ssl, ssl_handshake_timeout, ssl_shutdown_timeout)


class ServeSupport:
    """Mixin for ``Loop``: servers, their listening sockets and accepting."""

    # -- servers --------------------------------------------------------------------------

    async def create_server(
        self, protocol_factory, host=None, port=None, *, family=socket.AF_UNSPEC,
        flags=socket.AI_PASSIVE, sock=None, backlog=100, ssl=None, reuse_address=None,
        reuse_port=None, keep_alive=None, ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
        start_serving=True,
    ):
        """Listen for TCP connections on ``host`` (None or '' for all interfaces, a name, or
        a sequence of them) and ``port``, or on the listening ``sock``. Returns a Server.

        Each address a host resolves to gets its own socket; duplicates are bound once."""
        _check_server_ssl(ssl, ssl is not None, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            _reject_ssl_socket(sock)
        _check_address_or_sock(
            host is not None or port is not None, sock, "host/port",
            "Neither host/port nor sock were specified", _check_stream,
        )
        tls = None
        if ssl:
            tls = _Tls(ssl, True, None, ssl_handshake_timeout, ssl_shutdown_timeout)

        own_sockets = sock is None
        if own_sockets:
            if reuse_address is None:
                reuse_address = os.name == "posix" and sys.platform != "cygwin"
            sockets = await self._net_bind_listeners(
                host, port, family, flags, reuse_address, reuse_port, keep_alive
            )
        else:
            sockets = [sock]
        try:
            for listener in sockets:
                listener.setblocking(False)
        except BaseException:
            if own_sockets:
                for listener in sockets:
                    listener.close()
            raise
        server = Server(self, sockets, protocol_factory, backlog, keep_alive=keep_alive, tls=tls)
        await self._net_start_server(server, start_serving, own_sockets)
        if self.get_debug():
            logger.info("%r is serving", server)
        return server

    async def _net_bind_listeners(self, host, port, family, flags, reuse_address, reuse_port,
                                  keep_alive):
        if host == "":
            hosts = [None]
        elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
            hosts = [host]
        else:
            hosts = host
        answers = await tasks.gather(
            *[self._net_server_addresses(h, port, family, flags) for h in hosts]
        )
        infos = set(itertools.chain.from_iterable(answers))

        sockets = []
        completed = False
        try:
            for af, socktype, proto, _, address in infos:
                try:
                    sock = socket.socket(af, socktype, proto)
                except OSError:
                    # Most likely a family/type/protocol this host does not support.
                    if self.get_debug():
                        logger.warning(
                            "create_server() failed to create socket.socket(%r, %r, %r)",
                            af, socktype, proto, exc_info=True,
                        )
                    continue
                sockets.append(sock)
                if reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                if reuse_port:
                    _set_reuse_port(sock)
                if keep_alive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                if _HAS_IPv6 and af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    # One socket per family: no dual-stack socket answering IPv4 as well.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                try:
                    sock.bind(address)
                except OSError as exc:
                    message = (
                        f"error while attempting to bind on address {address!r}: "
                        f"{_bind_error_text(exc)}"
                    )
                    if exc.errno == errno.EADDRNOTAVAIL:
                        # Taken to mean this address family is not enabled here (bpo-30945).
                        sockets.pop()
                        sock.close()
                        if self.get_debug():
                            logger.warning(message)
                        continue
                    raise OSError(exc.errno, message) from None
            if not sockets:
                raise OSError(
                    f"could not bind on any address out of {[info[4] for info in infos]!r}"
                )
            completed = True
        finally:
            if not completed:
                for sock in sockets:
                    sock.close()
        return sockets

    async def _net_server_addresses(self, host, port, family, flags):
        infos = await self._resolve_address(
            (host, port), family=family, type=socket.SOCK_STREAM, flags=flags
        )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned empty list")
        return infos

    async def create_unix_server(
        self, protocol_factory, path=None, *, sock=None, backlog=100, ssl=None,
        ssl_handshake_timeout=None, ssl_shutdown_timeout=None, start_serving=True,
        cleanup_socket=True,
    ):
        """Listen on the Unix socket ``path`` (a leading NUL: Linux's abstract namespace) or
        on the listening ``sock``. Returns a Server.

        A stale socket file at ``path`` is removed first. From 3.13, with ``cleanup_socket``,
        the socket file is unlinked when the server closes, if it is still the one bound here
        (older versions' asyncio leaves it, and has no ``cleanup_socket``)."""
        _check_server_ssl(ssl, ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        _check_address_or_sock(
            path is not None, sock, "path", "path was not specified, and no sock specified",
            _check_unix_stream,
        )
        if path is not None:
            path = os.fspath(path)
        tls = None
        if ssl:
            tls = _Tls(ssl, True, None, ssl_handshake_timeout, ssl_shutdown_timeout)

        own_sock = path is not None
        if own_sock:
            sock = self._net_bind_unix(path)
        try:
            unix_paths = {}
            if cleanup_socket and _compat.UNIX_SERVER_CLEANUP:
                bound = sock.getsockname()
                if bound and not _is_abstract_unix_path(bound):
                    try:
                        dev, ino, _ = _stat_path(bound)
                    except FileNotFoundError:
                        pass
                    else:
                        unix_paths[sock] = (bound, dev, ino)
            sock.setblocking(False)
        except BaseException:
            if own_sock:
                sock.close()
            raise
        server = Server(self, [sock], protocol_factory, backlog, unix_paths=unix_paths, tls=tls)
        return await self._net_start_server(server, start_serving, own_sock)

    @staticmethod
    async def _net_start_server(server, start_serving, own_sockets):
        """Start ``server`` if asked and give the loop one turn, as asyncio does (the sockets
        are watched from then on). If that fails or is cancelled, no one will ever get the
        server: it is closed, with the listening sockets the loop made (a socket the caller
        passed is only unwatched: it stays the caller's)."""
        try:
            if start_serving:
                server._start_serving()
                await tasks.sleep(0)
        except BaseException:
            server._close(close_sockets=own_sockets)
            raise
        return server

    @staticmethod
    def _net_bind_unix(path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if path and not _is_abstract_unix_path(path):
            try:
                if _stat_path(path)[2]:
                    _unlink_path(path)  # a stale socket file from an earlier server
            except FileNotFoundError:
                pass
            except OSError as exc:
                # The directory may allow creating the socket but not inspecting it.
                logger.error("Unable to check or remove stale UNIX socket %r: %r", path, exc)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
            raise
        except BaseException:
            sock.close()
            raise
        return sock

    # -- accepting (driven by Server) -----------------------------------------------------

    def _net_watch_listener(self, server, sock):
        self._check_closed()
        self._add_reader(sock.fileno(), self._net_accept_ready, (server, sock))

    def _net_unwatch_listener(self, sock):
        fd = sock.fileno()
        if fd != -1 and not self.is_closed():
            self._remove_reader(fd)

    def _net_accept_ready(self, server, sock):
        """Reader callback of a listening socket: accept what is waiting, up to backlog."""
        for _ in range(server._backlog):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # nothing more waiting
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
                    raise  # reported by the loop as a failed callback; the watch stays
                # Level-triggered readiness would call us again at once: stop watching and
                # try again after a delay (asyncio's ACCEPT_RETRY_DELAY).
                self.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": exc,
                    "socket": trsock.TransportSocket(sock),
                })
                self._remove_reader(sock.fileno())
                server._accept_retries[sock] = self.call_later(
                    constants.ACCEPT_RETRY_DELAY, self._net_resume_accepting, server, sock
                )
                return
            if self.get_debug():
                logger.debug("%r got a new connection from %r: %r", server, address, conn)
            try:
                conn.setblocking(False)
                if server._keep_alive:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
            except OSError:
                conn.close()  # e.g. the peer is already gone
                continue
            self.create_task(self._net_serve_connection(server, conn, {"peername": address}))

    def _net_resume_accepting(self, server, sock):
        server._accept_retries.pop(sock, None)
        if server._sockets is not None and server._serving:
            self._net_watch_listener(server, sock)

    async def _net_serve_connection(self, server, conn, extra):
        """Task per accepted connection: build its transport and wait until it is set up."""
        protocol = transport = None
        try:
            if server._sockets is None:
                conn.close()  # the server closed between accept() and now
                return
            protocol = server._protocol_factory()
            transport, set_up = self._net_new_transport(
                conn, protocol, server._tls, extra=extra, server=server
            )
            await set_up
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            if self.get_debug():
                context = {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
                if protocol is not None:
                    context["protocol"] = protocol
                if transport is not None:
                    context["transport"] = transport
                self.call_exception_handler(context)
