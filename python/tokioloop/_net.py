"""Outgoing connections: ``create_connection``, ``create_unix_connection`` and
``connect_accepted_socket``, and the step every connection path ends in (a transport on a
connected socket, set up before the caller gets it).

Contract: ``NetSupport`` is a mixin of ``Loop`` (``_loop.py``); its private methods carry the
``_net_`` prefix, which ``ServeSupport`` (``_serve.py``) shares, because accepted connections
take the same last step (``_net_new_transport``). Everything here is Python on top of the
loop's native pieces: ``getaddrinfo`` for resolution, ``sock_connect`` for connecting and
``_make_socket_transport`` (``_transport.py``) or ``_make_ssl_transport`` (``_tls.py``, stacked
on the socket transport) for the transport. Argument checking, error messages and the order
things happen in follow stdlib asyncio's ``BaseEventLoop`` / ``_UnixSelectorEventLoop``, with
the newest API: ``all_errors`` (3.12), ``keep_alive`` (3.13).

Callers: asyncio's public API through ``Loop``; ``_serve.py`` (``_Tls``, the argument checks,
``_net_new_transport``); ``_datagram.py`` (``_set_reuse_port``, ``_net_transport_set_up``).
"""

from __future__ import annotations

import contextvars
import itertools
import os
import socket
from asyncio import tasks
from asyncio.log import logger

from . import _compat
from ._sock import _reject_ssl_socket
from ._tls import context_from_ssl_argument


def _bind_error_text(exc):
    if _compat.BIND_ERROR_NAMES_WHOLE_ERROR or exc.strerror is None:
        return str(exc).lower()
    return exc.strerror.lower()


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
    """Mixin for ``Loop``: outgoing connections and the transport every connection gets."""

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
