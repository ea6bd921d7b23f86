"""Signals: the loop's self-pipe, the wakeup fd while running, and ``add_signal_handler``.

tokio's reactor retries ``epoll_wait`` on EINTR, so a signal alone would not wake a parked
loop. While the loop runs on the main thread, CPython's ``signal.set_wakeup_fd`` points at our
self-pipe, which is registered with the reactor: a signal makes the loop's next turn start at
once, and the turn runs pending Python signal handlers first (so Ctrl+C raises
KeyboardInterrupt promptly). Handlers added with ``add_signal_handler`` are dispatched through
the ready queue from the signal numbers CPython writes into the pipe.
"""

from __future__ import annotations

import contextvars
import errno
import signal
import socket
import threading
from asyncio import coroutines, events
from asyncio.log import logger

from . import _compat


def _ignore_signal(signum, frame):
    """Python-level handler for signals the loop dispatches itself via the wakeup fd: it only
    tells the running loop to look at its self-pipe on its next turn, busy or not."""
    loop = events._get_running_loop()
    note = getattr(loop, "_note_signal", None)
    if note is not None:
        note()


class SignalSupport:
    """Mixin for ``Loop``: self-pipe, wakeup fd, add/remove_signal_handler."""

    _ssock = None
    _csock = None

    def _open_self_pipe(self):
        self._signal_handlers = {}
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._add_reader(self._ssock.fileno(), self._read_from_self, ())
        self._set_self_pipe_fd(self._ssock.fileno())

    def _close_self_pipe(self):
        if self._ssock is None:
            return
        self._remove_reader(self._ssock.fileno())
        self._set_self_pipe_fd(-1)
        self._ssock.close()
        self._csock.close()
        self._ssock = self._csock = None

    def _read_from_self(self):
        while True:
            try:
                data = self._ssock.recv(4096)
            except InterruptedError:
                continue
            except BlockingIOError:
                return
            if not data:
                return
            for signum in data:
                if signum:
                    self._dispatch_signal(signum)

    def _dispatch_signal(self, signum):
        entry = self._signal_handlers.get(signum)
        if entry is not None:
            callback, args, context = entry
            self.call_soon(callback, *args, context=context)

    def _install_wakeup_fd(self):
        """Point CPython's wakeup fd at our self-pipe for this run; returns how to undo it."""
        if self._csock is None or threading.current_thread() is not threading.main_thread():
            return None
        try:
            return signal.set_wakeup_fd(self._csock.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            return None

    def _restore_wakeup_fd(self, previous):
        if previous is None or self._signal_handlers:
            return
        try:
            signal.set_wakeup_fd(previous)
        except (ValueError, OSError):
            pass

    @staticmethod
    def _check_signal(sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig, callback, *args):
        """Call ``callback(*args)`` from the loop whenever signal ``sig`` arrives. Main thread only."""
        if coroutines.iscoroutine(callback) or _compat.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            signal.set_wakeup_fd(self._csock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        self._signal_handlers[sig] = (callback, args, contextvars.copy_context())
        try:
            signal.signal(sig, _ignore_signal)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._clear_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught")
            raise

    def remove_signal_handler(self, sig):
        """Remove the handler for ``sig``; True if there was one."""
        self._check_signal(sig)
        if self._signal_handlers.pop(sig, None) is None:
            return False
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, default)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught")
            raise
        if not self._signal_handlers:
            self._clear_wakeup_fd()
        return True

    @staticmethod
    def _clear_wakeup_fd():
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(-1) failed: %s", exc)

    def _remove_all_signal_handlers(self):
        if not self._signal_handlers:
            return
        if threading.current_thread() is not threading.main_thread():
            import warnings

            warnings.warn(
                f"Closing the loop {self!r} on a non-main thread; signal handlers cannot be removed",
                ResourceWarning,
                source=self,
            )
            self._signal_handlers.clear()
            return
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
