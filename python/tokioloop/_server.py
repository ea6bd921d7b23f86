"""``tokioloop`` servers: the ``Server`` object that ``create_server`` and ``create_unix_server``
return.

A Server owns its listening sockets and the set of connections it accepted. The accepting
itself (watching the listening sockets, calling ``accept``, building transports) is the loop's
job, in ``_serve.ServeSupport``; the Server only tells the loop when to start and stop, and keeps
the bookkeeping ``close`` / ``wait_closed`` / ``close_clients`` need. The public API is the
running version's asyncio.Server: ``close_clients``/``abort_clients`` from 3.13; ``wait_closed``
returns once the server is closed *and* every accepted connection has gone (since 3.12.1;
before it, a server already closed returns at once).

Transports tie themselves to their Server with ``server._attach(transport)`` when made and
``server._detach(transport)`` after ``connection_lost``.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from asyncio import trsock
from asyncio.log import logger

from . import _compat
from ._tokioloop import _path_stat, _path_unlink


def _stat_path(path):
    """``os.stat(path)`` made natively: ``(st_dev, st_ino, is_socket)``. (Blocking-call
    detectors patch ``os.stat``; asyncio's own calls are allow-listed, ours are native.)"""
    return _path_stat(os.fsencode(path), path)


def _unlink_path(path):
    """``os.unlink(path)`` made natively (see ``_stat_path``)."""
    _path_unlink(os.fsencode(path), path)


class Server(asyncio.AbstractServer):
    """A listening server; made by ``loop.create_server`` / ``loop.create_unix_server``."""

    def __init__(self, loop, sockets, protocol_factory, backlog, *, keep_alive=False,
                 unix_paths=None, tls=None):
        self._loop = loop
        self._sockets = list(sockets)
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._keep_alive = bool(keep_alive)
        # TLS for each accepted connection (``_net._Tls``), or None.
        self._tls = tls
        # Listening socket -> (path, st_dev, st_ino) of the Unix socket file to unlink on close.
        self._unix_paths = dict(unix_paths or {})
        # Weak, so an abandoned transport can still be noticed (and warned about) by its __del__.
        self._clients = weakref.WeakSet()
        # Futures of wait_closed(); None once the server is closed and has no connections.
        self._waiters = []
        self._serving = False
        self._serving_forever_fut = None
        # Listening socket -> TimerHandle that resumes accepting after a resource error.
        self._accept_retries = {}
        loop._census("server", self)

    def __repr__(self):
        return f"<{type(self).__name__} sockets={self.sockets!r}>"

    # -- transports -----------------------------------------------------------------------

    def _attach(self, transport):
        self._clients.add(transport)

    def _detach(self, transport):
        self._clients.discard(transport)
        if not self._clients and self._sockets is None:
            self._wakeup()

    def _wakeup(self):
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    # -- serving --------------------------------------------------------------------------

    def _start_serving(self):
        if self._serving:
            return
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)
            self._loop._net_watch_listener(self, sock)

    def get_loop(self):
        """The loop this server runs on."""
        return self._loop

    def is_serving(self):
        """True while the server accepts new connections."""
        return self._serving

    @property
    def sockets(self):
        """The listening sockets, as ``asyncio.trsock.TransportSocket`` wrappers (() once closed)."""
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(sock) for sock in self._sockets)

    def _census_open(self):
        """Whether telemetry counts this server as open (``LoopMetrics.open``)."""
        return self._sockets is not None

    def close(self):
        """Stop listening and close the listening sockets; accepted connections stay open."""
        self._close(close_sockets=True)

    def _close(self, close_sockets):
        """``close``; with ``close_sockets`` false the listening sockets are only unwatched
        (a create_server that failed leaves a socket it was given to its owner)."""
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        for sock in sockets:
            retry = self._accept_retries.pop(sock, None)
            if retry is not None:
                retry.cancel()
            self._loop._net_unwatch_listener(sock)
            if close_sockets:
                sock.close()
                self._cleanup_unix_path(sock)
        self._serving = False
        fut = self._serving_forever_fut
        if fut is not None and not fut.done():
            fut.cancel()
            self._serving_forever_fut = None
        if not self._clients:
            self._wakeup()

    def _cleanup_unix_path(self, sock):
        entry = self._unix_paths.pop(sock, None)
        if entry is None:
            return
        path, dev, ino = entry
        try:
            if _stat_path(path)[:2] == (dev, ino):
                _unlink_path(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.error("Unable to clean up listening UNIX socket %r: %r", path, exc)

    def close_clients(self):
        """Close every connection this server accepted (buffered data is flushed first)."""
        for transport in list(self._clients):
            transport.close()

    def abort_clients(self):
        """Abort every connection this server accepted (buffered data is dropped)."""
        for transport in list(self._clients):
            transport.abort()

    async def start_serving(self):
        """Start accepting connections (a no-op if already serving)."""
        self._start_serving()
        # One turn, so the listening sockets are watched before the caller goes on.
        await asyncio.sleep(0)

    async def serve_forever(self):
        """Accept connections until cancelled; cancelling closes the server (and, from CPython
        gh-123720 on, its client connections) and waits for it."""
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                if _compat.SERVE_FOREVER_CLOSES_CLIENTS:
                    self.close_clients()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self):
        """Wait until the server is closed and every connection it accepted has been lost."""
        if self._waiters is None:
            return
        if self._sockets is None and not _compat.WAIT_CLOSED_WAITS_FOR_CLIENTS:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter


_compat.conform_to_stdlib(Server, asyncio.Server)
