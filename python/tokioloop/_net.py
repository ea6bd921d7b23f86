"""Connection setup and servers: ``create_connection``, ``create_server``, their Unix variants,
``connect_accepted_socket`` and ``sendfile``, plus the accept loop behind ``Server``.

Everything here is Python on top of the loop's native pieces: ``getaddrinfo`` for resolution,
``sock_connect`` for connecting, fd readiness (``_add_reader``) for accepting, and
``_make_socket_transport`` (see ``_transport.py``) for the transport every path ends in.
Argument checking, error messages and the order things happen in follow stdlib asyncio's
``BaseEventLoop`` / ``_UnixSelectorEventLoop``, with the newest API: ``all_errors`` (3.12),
``keep_alive`` and ``cleanup_socket`` (3.13). With ``ssl``, the transport is the TLS layer's
(``_tls.py``), stacked on the socket transport.
"""

from __future__ import annotations

import collections.abc
import contextvars
import errno
import itertools
import os
import socket
import sys
from asyncio import constants, exceptions, protocols, tasks, trsock
from asyncio.log import logger

from . import _compat
from ._server import Server, _stat_path, _unlink_path
from ._sock import _reject_ssl_socket, _seek_to_start
from ._tls import context_from_ssl_argument

_HAS_IPv6 = hasattr(socket, "AF_INET6")

# accept() errors meaning "out of descriptors or memory": back off instead of spinning.
_ACCEPT_RESOURCE_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

_SENDFILE_FALLBACK_CHUNK = 16384  # what asyncio's transport fallback reads per step

class _Tls:
    """What a connection path needs to put TLS on a socket: ``ssl=`` and its companions."""

    __slots__ = ("context", "server_side", "server_hostname", "handshake_timeout",
                 "shutdown_timeout")

    def __init__(self, ssl, server_side, server_hostname, handshake_timeout, shutdown_timeout):
        self.context = context_from_ssl_argument(ssl)
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.handshake_timeout = handshake_timeout
        self.shutdown_timeout = shutdown_timeout


def _bind_error_text(exc):
    if _compat.BIND_ERROR_NAMES_WHOLE_ERROR or exc.strerror is None:
        return str(exc).lower()
    return exc.strerror.lower()


def _interleave_by_family(infos, first_family_count=1):
    """Reorder addrinfo entries so address families alternate (RFC 8305).

    The first family (the resolver's first answer) keeps ``first_family_count`` entries in a
    row at the start; after that one entry of each family in turn, in the resolver's order."""
    groups = {}
    for info in infos:
        groups.setdefault(info[0], []).append(info)
    queues = list(groups.values())
    ordered = []
    if first_family_count > 1:
        lead = first_family_count - 1
        ordered.extend(queues[0][:lead])
        queues[0] = queues[0][lead:]
    for row in itertools.zip_longest(*queues):
        ordered.extend(info for info in row if info is not None)
    return ordered


def _set_reuse_port(sock):
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        )


def _is_abstract_unix_path(path):
    return path[:1] in ("\0", b"\0")


def _check_unix_stream(sock):
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")


def _check_stream(sock):
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A Stream Socket was expected, got {sock!r}")


def _check_ssl_timeouts(with_ssl, ssl_handshake_timeout, ssl_shutdown_timeout):
    """The TLS timeouts are refused without ``ssl`` (``with_ssl``: whether it was given)."""
    if ssl_handshake_timeout is not None and not with_ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if ssl_shutdown_timeout is not None and not with_ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")


def _check_server_ssl(ssl, with_ssl, ssl_handshake_timeout, ssl_shutdown_timeout):
    """The servers' ssl checks: no bool for ``ssl``, then the TLS timeouts (asyncio's
    create_server counts any ``ssl`` not None as given, create_unix_server a true one)."""
    if isinstance(ssl, bool):
        raise TypeError("ssl argument must be an SSLContext or None")
    _check_ssl_timeouts(with_ssl, ssl_handshake_timeout, ssl_shutdown_timeout)


def _check_address_or_sock(has_address, sock, address_names, missing_message, check_sock):
    """An address (host/port, or a path) or a socket, not both; a given socket must pass
    ``check_sock``. The messages are asyncio's."""
    if has_address:
        if sock is not None:
            raise ValueError(f"{address_names} and sock can not be specified at the same time")
    elif sock is None:
        raise ValueError(missing_message)
    else:
        check_sock(sock)


def _first_connected(attempts):
    """The first finished attempt (task) of a race that connected, or None."""
    for task in attempts:
        if task.done() and not task.cancelled() and task.exception() is None:
            return task
    return None


def _settle_attempt(task):
    """An attempt of a race that did not win: its error is consumed (the attempt lists
    report it), and a socket it connected is closed."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


def _single_connect_error(errors):
    """asyncio's rule for reporting several failed connection attempts as one OSError."""
    if len(errors) == 1:
        return errors[0]
    first = str(errors[0])
    if all(str(exc) == first for exc in errors):
        return errors[0]
    return OSError("Multiple exceptions: {}".format(", ".join(str(exc) for exc in errors)))


class NetSupport:
    """Mixin for ``Loop``: connections, servers and loop.sendfile."""

    # -- outgoing connections -------------------------------------------------------------

    async def create_connection(
        self, protocol_factory, host=None, port=None, *, ssl=None, family=0, proto=0, flags=0,
        sock=None, local_addr=None, server_hostname=None, ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None, happy_eyeballs_delay=None, interleave=None, all_errors=False,
    ):
        """Open a TCP connection to ``host``:``port`` (or wrap the connected ``sock``).

        Returns ``(transport, protocol)``. With ``happy_eyeballs_delay`` the resolved addresses
        are tried in a staggered race (RFC 8305); ``interleave`` alternates address families.
        When every attempt fails, the error is an ``ExceptionGroup`` of all of them if
        ``all_errors`` is true, else one OSError as asyncio builds it."""
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl and not host:
            # (With a host, TLS would default server_hostname to it.)
            raise ValueError("You must set server_hostname when using ssl without a host")
        _check_ssl_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            _reject_ssl_socket(sock)
        # AF_UNIX is accepted too, as long as it is a stream socket (as in asyncio).
        _check_address_or_sock(
            host is not None or port is not None, sock, "host/port",
            "host and port was not specified and no sock specified", _check_stream,
        )
        tls = None
        if ssl:
            tls = _Tls(ssl, False, host if server_hostname is None else server_hostname,
                       ssl_handshake_timeout, ssl_shutdown_timeout)

        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1  # happy eyeballs alternates families unless told otherwise

        own_sock = sock is None
        if own_sock:
            sock = await self._net_connect_tcp(
                host, port, family, proto, flags, local_addr, happy_eyeballs_delay, interleave,
                all_errors,
            )
        transport, protocol = await self._net_make_transport(
            sock, protocol_factory, own_sock, tls
        )
        if self.get_debug():
            logger.debug(
                "%r connected to %s:%r: (%r, %r)",
                transport.get_extra_info("socket"), host, port, transport, protocol,
            )
        return transport, protocol

    async def _net_connect_tcp(self, host, port, family, proto, flags, local_addr,
                               happy_eyeballs_delay, interleave, all_errors):
        """Resolve, then connect to the addresses in turn (or in a staggered race)."""
        infos = await self._resolve_address(
            (host, port), family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
        )
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        local_infos = None
        if local_addr is not None:
            local_infos = await self._resolve_address(
                local_addr, family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
            )
            if not local_infos:
                raise OSError("getaddrinfo() returned empty list")
        if interleave:
            infos = _interleave_by_family(infos, interleave)

        # One list of OSErrors per attempt, in the order the attempts started.
        attempts = []
        try:
            sock = await self._net_connect_attempts(attempts, infos, local_infos,
                                                    happy_eyeballs_delay)
            if sock is not None:
                return sock
            errors = [exc for attempt in attempts for exc in attempt]
            if all_errors:
                raise ExceptionGroup("create_connection failed", errors)
            raise _single_connect_error(errors)
        finally:
            # Each error's traceback holds this frame and its attempt's frames, which hold
            # these lists (the race's partials too): empty them, or the errors would wait
            # for the GC, held by a cycle through their own tracebacks.
            for attempt in attempts:
                attempt.clear()
            attempts.clear()
            errors = attempts = None

    async def _net_connect_attempts(self, attempts, infos, local_infos, happy_eyeballs_delay):
        """Try the addresses one after another, or in a staggered race; the connected socket
        or None. Each attempt appends its list of errors to ``attempts``."""
        if happy_eyeballs_delay is None:
            for info in infos:
                try:
                    return await self._net_connect_one(attempts, info, local_infos)
                except OSError:
                    continue
            return None
        return await self._net_staggered_race(attempts, infos, local_infos, happy_eyeballs_delay)

    async def _net_staggered_race(self, attempts, infos, local_infos, delay):
        """RFC 8305's race, as asyncio's staggered_race runs it: the first attempt starts at
        once, each next one when the one before it fails or ``delay`` seconds after it
        started; the first socket to connect wins and the other attempts are cancelled.

        Unlike the stdlib's race, every socket that lost is closed (one that connected
        while the winner was chosen, or while this coroutine itself was cancelled), and the
        attempts' errors are kept only in ``attempts``: nothing here leads back to them."""
        started = []
        winner = None
        try:
            for info in infos:
                latest = self.create_task(self._net_connect_one(attempts, info, local_infos))
                started.append(latest)
                deadline = self.time() + delay
                while not latest.done():
                    timeout = deadline - self.time()
                    if timeout <= 0:
                        break
                    await tasks.wait(started, timeout=timeout, return_when=tasks.FIRST_COMPLETED)
                    winner = _first_connected(started)
                    if winner is not None:
                        return winner.result()
            while True:
                winner = _first_connected(started)
                if winner is not None:
                    return winner.result()
                running = [task for task in started if not task.done()]
                if not running:
                    return None
                await tasks.wait(running, return_when=tasks.FIRST_COMPLETED)
        finally:
            for task in started:
                if task is winner:
                    continue
                if task.done():
                    _settle_attempt(task)
                else:
                    task.cancel()
                    task.add_done_callback(_settle_attempt)
            latest = winner = started = None

    async def _net_connect_one(self, attempts, info, local_infos):
        """Create a socket for ``info``, bind it to a matching local address, connect it."""
        errors = []
        attempts.append(errors)
        family, type_, proto, _, address = info
        sock = None
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if local_infos is not None:
                self._net_bind_local(sock, family, local_infos, errors)
            await self.sock_connect(sock, address)
            return sock
        except OSError as exc:
            errors.append(exc)
            if sock is not None:
                sock.close()
            raise
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            attempts = errors = None

    @staticmethod
    def _net_bind_local(sock, family, local_infos, errors):
        for lfamily, _, _, _, laddr in local_infos:
            if lfamily != family:
                continue  # a local address of another family cannot serve this socket
            try:
                sock.bind(laddr)
                return
            except OSError as exc:
                errors.append(OSError(
                    exc.errno,
                    f"error while attempting to bind on address {laddr!r}: "
                    f"{_bind_error_text(exc)}",
                ))
        if errors:
            raise errors.pop()  # re-recorded by the caller, as asyncio does
        raise OSError(f"no matching local address with family={family!r} found")

    async def _net_make_transport(self, sock, protocol_factory, own_sock, tls=None):
        """Build the transport (with ``tls``, a TLS one) on a connected socket; wait until it
        is set up (for TLS: handshaken).

        A socket this loop created is closed if no transport could take it over; so is a
        caller's socket, from CPython gh-153133 on."""
        try:
            sock.setblocking(False)
            if _compat.CONNECTION_CONTEXT:
                # 3.15: the connection's context is taken before the protocol factory runs,
                # so what the factory sets stays in the caller's context only.
                context = contextvars.copy_context()
                protocol = protocol_factory()
                transport, set_up = context.run(self._net_new_transport, sock, protocol, tls)
            else:
                protocol = protocol_factory()
                transport, set_up = self._net_new_transport(sock, protocol, tls)
        except BaseException:
            if own_sock or _compat.TRANSPORT_FAILURE_CLOSES_SOCK:
                sock.close()
            raise
        await set_up
        return transport, protocol

    def _net_new_transport(self, sock, protocol, tls, **kwargs):
        """Make the transport for ``protocol`` on ``sock`` (with ``tls``, a TLS transport).
        Returns it and a coroutine to await at once: it waits until the transport is set up,
        closing it if that fails."""
        waiter = self.create_future()
        if tls is None:
            transport = self._make_socket_transport(sock, protocol, waiter, **kwargs)
        else:
            transport = self._make_ssl_transport(
                sock, protocol, tls.context, waiter, server_side=tls.server_side,
                server_hostname=tls.server_hostname, ssl_handshake_timeout=tls.handshake_timeout,
                ssl_shutdown_timeout=tls.shutdown_timeout, **kwargs,
            )
        return transport, self._net_transport_set_up(transport, waiter)

    @staticmethod
    async def _net_transport_set_up(transport, waiter):
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        finally:
            waiter = None  # no traceback -> frame -> exception cycles

    async def create_unix_connection(
        self, protocol_factory, path=None, *, ssl=None, sock=None, server_hostname=None,
        ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
    ):
        """Connect to the Unix socket at ``path`` (or wrap ``sock``); ``(transport, protocol)``."""
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            _check_ssl_timeouts(False, ssl_handshake_timeout, ssl_shutdown_timeout)
        _check_address_or_sock(
            path is not None, sock, "path", "no path and sock were specified", _check_unix_stream
        )
        if path is not None:
            path = os.fspath(path)
        tls = None
        if ssl:
            tls = _Tls(ssl, False, server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout)

        own_sock = path is not None
        if own_sock:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            sock.setblocking(False)
        return await self._net_make_transport(sock, protocol_factory, own_sock, tls)

    async def connect_accepted_socket(
        self, protocol_factory, sock, *, ssl=None, ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Wrap a connection accepted outside the loop; return ``(transport, protocol)``."""
        _check_stream(sock)
        _check_ssl_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        _reject_ssl_socket(sock)
        tls = None
        if ssl:
            if isinstance(ssl, bool):
                raise ValueError("Server side SSL needs a valid SSLContext")
            tls = _Tls(ssl, True, "", ssl_handshake_timeout, ssl_shutdown_timeout)
        transport, protocol = await self._net_make_transport(sock, protocol_factory, False, tls)
        if self.get_debug():
            logger.debug(
                "%r handled: (%r, %r)", transport.get_extra_info("socket"), transport, protocol
            )
        return transport, protocol

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

    # -- sendfile over a transport --------------------------------------------------------

    async def sendfile(self, transport, file, offset=0, count=None, *, fallback=True):
        """Send ``file`` over ``transport``; return the number of bytes sent.

        Uses os.sendfile on the transport's socket when the transport allows it, else (if
        ``fallback``) reads the file and writes it, honouring the transport's flow control.
        The file position is left just past what was sent."""
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        mode = getattr(transport, "_sendfile_compatible", constants._SendfileMode.UNSUPPORTED)
        if mode is constants._SendfileMode.UNSUPPORTED:
            raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
        if mode is constants._SendfileMode.TRY_NATIVE:
            try:
                return await self._sendfile_native(transport, file, offset, count)
            except exceptions.SendfileNotAvailableError:
                if not fallback:
                    raise
        if not fallback:
            raise RuntimeError(
                f"fallback is disabled and native sendfile is not supported for transport "
                f"{transport!r}"
            )
        return await self._sendfile_fallback(transport, file, offset, count)

    async def _sendfile_native(self, transport, file, offset, count):
        """os.sendfile on the transport's socket, once its write buffer has drained; reading
        is paused meanwhile so nothing interleaves."""
        resume_reading = transport.is_reading()
        transport.pause_reading()
        try:
            await transport._make_empty_waiter()
        except BaseException:
            if resume_reading:
                transport.resume_reading()
            raise
        # The loop's registry may belong to the transport for this fd (a native transport
        # owns its socket there and add_writer on it is refused), so the zero-copy send
        # watches a duplicate descriptor of the same socket. The transport stays registered,
        # with reading paused and its write queue empty (write() is refused meanwhile).
        duplicate = None
        try:
            duplicate = transport._sock.dup()
            return await self.sock_sendfile(duplicate, file, offset, count, fallback=False)
        finally:
            if duplicate is not None:
                self._remove_writer(duplicate.fileno())  # normally gone already
                duplicate.close()
            transport._reset_empty_waiter()
            if resume_reading:
                transport.resume_reading()

    async def _sendfile_fallback(self, transport, file, offset, count):
        _seek_to_start(file, offset)
        blocksize = min(count, _SENDFILE_FALLBACK_CHUNK) if count else _SENDFILE_FALLBACK_CHUNK
        buf = bytearray(blocksize)
        total = 0
        stand_in = _SendfileFallbackProtocol(self, transport)
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        return total
                view = memoryview(buf)[:blocksize]
                got = await self.run_in_executor(None, file.readinto, view)
                if not got:
                    return total  # end of file
                await stand_in.drain()
                # A copy: the buffer is reused for the next chunk.
                transport.write(bytes(view[:got]))
                total += got
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)
            await stand_in.restore()


def _writing_paused(transport):
    """Whether the transport has told its protocol to pause writing."""
    paused = getattr(transport, "_protocol_paused", None)
    if paused is not None:
        return bool(paused)
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]


class _SendfileFallbackProtocol(protocols.Protocol):
    """Stands in for the transport's protocol while the fallback writes the file: reading is
    paused, and pause_writing/resume_writing gate the next chunk. ``restore`` puts the
    original protocol back in the state it was in."""

    def __init__(self, loop, transport):
        self._loop = loop
        self._transport = transport
        self._proto = transport.get_protocol()
        self._should_resume_reading = transport.is_reading()
        self._should_resume_writing = _writing_paused(transport)
        transport.pause_reading()
        transport.set_protocol(self)
        self._write_ready_fut = loop.create_future() if self._should_resume_writing else None

    async def drain(self):
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self._write_ready_fut is not None:
            await self._write_ready_fut

    def connection_made(self, transport):
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc):
        if self._write_ready_fut is not None:
            # Writing was paused, so the peer left before taking the whole file.
            if exc is None:
                self._write_ready_fut.set_exception(ConnectionError("Connection is closed by peer"))
            else:
                self._write_ready_fut.set_exception(exc)
        self._proto.connection_lost(exc)

    def pause_writing(self):
        if self._write_ready_fut is None:
            self._write_ready_fut = self._loop.create_future()

    def resume_writing(self):
        if self._write_ready_fut is not None:
            self._write_ready_fut.set_result(False)
            self._write_ready_fut = None

    def data_received(self, data):
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self):
        raise RuntimeError("Invalid state: reading should be paused")

    async def restore(self):
        self._transport.set_protocol(self._proto)
        if self._should_resume_reading:
            self._transport.resume_reading()
        if self._write_ready_fut is not None:
            # Nobody waits on it any more; cancelling keeps it from being logged.
            self._write_ready_fut.cancel()
        if self._should_resume_writing:
            self._proto.resume_writing()
