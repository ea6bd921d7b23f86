"""``tokioloop.Loop``: an ``asyncio.AbstractEventLoop`` whose engine is native.

Scheduling (call_soon, call_later, call_at, call_soon_threadsafe), the turn and fd readiness
live in the native base class ``LoopCore``. This module adds what asyncio does once per run,
per task or per error: run_forever's bookkeeping (running-loop guard, async generator hooks,
coroutine origin tracking, the wakeup fd), run_until_complete, tasks and futures, debug mode
and close. The mixins hold the exception handler, the executor and signals.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import warnings
from asyncio import coroutines, events, format_helpers, futures, tasks
from asyncio.log import logger
import weakref

from . import _compat
from ._dns import DnsSupport
from ._errors import ExceptionHandling
from ._executor import ExecutorSupport
from ._net import NetSupport
from ._signals import SignalSupport
from ._sock import SockSupport
from ._transport import TransportSupport
from ._tokioloop import LoopCore
from ._unsupported import NotYetBuilt

_DEBUG_STACK_DEPTH = 10

#: Every tokioloop loop of this process, so a forked child can disown its parent's.
_LOOPS = weakref.WeakSet()


def _after_fork_in_child():
    """A forked child's copies of the parent's loops share the parent's epoll instance and
    signal wakeup fd: leave both to the parent. Each loop then refuses to run ("created in
    another process"); new loops work. (asyncio 3.12+ resets its own state the same way.)"""
    loops = list(_LOOPS)
    ours = {loop._csock.fileno() for loop in loops if loop._csock is not None}
    try:
        previous = signal.set_wakeup_fd(-1)
        if previous not in ours:
            signal.set_wakeup_fd(previous)
    except ValueError:  # the child's thread is not the main thread: not ours to change
        pass
    for loop in loops:
        loop._abandon_after_fork()


def _stop_when_done(future):
    if not future.cancelled():
        exc = future.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # The exception leaves run_forever by itself; stopping here would lose it.
            return
    futures._get_loop(future).stop()


def _format_handle(handle):
    owner = getattr(handle._callback, "__self__", None)
    if isinstance(owner, tasks.Task):
        return repr(owner)
    return str(handle)


class Loop(
    LoopCore, ExceptionHandling, ExecutorSupport, SignalSupport, SockSupport, DnsSupport,
    NetSupport, TransportSupport, NotYetBuilt, asyncio.AbstractEventLoop,
):
    """An asyncio event loop on a tokio current-thread runtime. Create with ``new_event_loop()``."""

    def __init__(self):
        _LOOPS.add(self)
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self.slow_callback_duration = 0.1
        self._current_handle = None
        self.set_debug(coroutines._is_debug_mode())
        self._open_self_pipe()

    def __repr__(self):
        return (
            f"<{type(self).__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    # -- lifecycle ----------------------------------------------------------------------

    def _check_closed(self):
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self):
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self):
        """Run turns until ``stop()`` is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        old_agen_hooks = sys.get_asyncgen_hooks()
        wakeup = self._install_wakeup_fd()
        try:
            sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook, finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            self._run_native()
        finally:
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)
            self._restore_wakeup_fd(wakeup)

    def run_until_complete(self, future):
        """Run until ``future`` (a Future, Task or coroutine) is done; return its result."""
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # Its outcome is raised here, so a "destroyed but pending" warning would be noise.
            future._log_destroy_pending = False
        future.add_done_callback(_stop_when_done)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                # The caller cannot reach the task: consume its exception so it is not logged.
                future.exception()
            raise
        finally:
            future.remove_done_callback(_stop_when_done)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self):
        """Close the loop: drop pending callbacks, shut the default executor down (no wait)."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        self._remove_all_signal_handlers()
        self._close_self_pipe()
        self._close_native()
        self._close_executor()

    def __del__(self, _warn=warnings.warn):
        try:
            closed = self.is_closed()
        except Exception:
            return
        if not closed:
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- async generators -----------------------------------------------------------------

    def _asyncgen_finalizer_hook(self, agen):
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen):
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
            )
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self):
        """Close every async generator still alive on this loop."""
        self._asyncgens_shutdown_called = True
        if not self._asyncgens:
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[agen.aclose() for agen in closing], return_exceptions=True)
        for result, agen in zip(results, closing):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # -- futures and tasks: create_future, create_task and the task factory are native ------

    # -- readiness ------------------------------------------------------------------------

    @staticmethod
    def _fileobj_to_fd(fileobj):
        if isinstance(fileobj, int):
            fd = fileobj
        else:
            try:
                fd = int(fileobj.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fileobj!r}") from None
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        return fd

    def _ensure_fd_no_transport(self, fd):
        """asyncio's rule: a descriptor an open transport uses is not for add_reader/sock_*."""
        fd = self._fileobj_to_fd(fd)
        transport = self._fd_transport(fd)
        if transport is not None:
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")
        return fd

    def add_reader(self, fd, callback, *args):
        """Call ``callback(*args)`` every turn while ``fd`` is readable."""
        self._check_closed()
        fd = self._ensure_fd_no_transport(fd)
        if self.get_debug():
            self._check_callback(callback, "add_reader")
        self._add_reader(fd, callback, args)
        return None

    def remove_reader(self, fd):
        """Stop watching ``fd`` for reading; True if it was watched."""
        return self._remove_reader(self._ensure_fd_no_transport(fd))

    def add_writer(self, fd, callback, *args):
        """Call ``callback(*args)`` every turn while ``fd`` is writable."""
        self._check_closed()
        fd = self._ensure_fd_no_transport(fd)
        if self.get_debug():
            self._check_callback(callback, "add_writer")
        self._add_writer(fd, callback, args)
        return None

    def remove_writer(self, fd):
        """Stop watching ``fd`` for writing; True if it was watched."""
        return self._remove_writer(self._ensure_fd_no_transport(fd))

    def _debug_counts(self):
        """Pending work for leak checks: ready handles, live timers, user fd callbacks."""
        counts = self._native_counts()
        if self._ssock is not None:
            counts["readers"] -= 1
        return counts

    # -- debug mode -----------------------------------------------------------------------

    def set_debug(self, enabled):
        """Turn asyncio debug mode on or off (slow callback warnings, creation tracebacks...)."""
        self._set_native_debug(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled):
        if bool(enabled) == bool(getattr(self, "_coroutine_origin_tracking_enabled", False)):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(_DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(self._coroutine_origin_tracking_saved_depth)
        self._coroutine_origin_tracking_enabled = enabled

    @staticmethod
    def _check_callback(callback, method):
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError(f"coroutines cannot be used with {method}()")
        if not callable(callback):
            raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")

    @staticmethod
    def _extract_stack():
        return format_helpers.extract_stack(sys._getframe(1))

    def _run_handle_debug(self, handle):
        """Debug mode's turn step: run ``handle`` timed, warn if slower than slow_callback_duration."""
        self._current_handle = handle
        try:
            started = self.time()
            self._run_handle(handle)
            elapsed = self.time() - started
            if elapsed >= self.slow_callback_duration:
                logger.warning("Executing %s took %.3f seconds", _format_handle(handle), elapsed)
        finally:
            self._current_handle = None


# The running version's method set and signatures: 3.11's sock_recvfrom on 3.10, 3.12's
# all_errors or 3.13's keep_alive on older versions are refused as their asyncio refuses them.
_compat.conform_to_stdlib(Loop, asyncio.SelectorEventLoop)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
