"""``tokioloop.Loop``: an ``asyncio.AbstractEventLoop`` whose engine is native.

Scheduling (call_soon, call_later, call_at, call_soon_threadsafe), the turn and fd readiness
live in the native base class ``LoopCore``. This module adds what asyncio does once per run,
per task or per error: run_forever's bookkeeping (running-loop guard, async generator hooks,
coroutine origin tracking, the wakeup fd), run_until_complete, tasks and futures, debug mode
and close. The mixins hold the exception handler, the executor and signals.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
import traceback
import warnings
from asyncio import coroutines, events, format_helpers, futures, tasks
from asyncio.log import logger
import weakref

from . import _compat
from ._datagram import DatagramSupport
from ._dns import DnsSupport
from ._errors import ExceptionHandling
from ._executor import ExecutorSupport
from ._net import NetSupport
from ._serve import ServeSupport
from ._signals import SignalSupport
from ._sock import SockSupport
from ._pipes import PipeSupport
from ._subprocess import SubprocessSupport
from ._tls import TlsSupport
from ._transport import TransportSupport
from ._tokioloop import LoopCore

_DEBUG_STACK_DEPTH = 10
_READ = "r"
_WRITE = "w"

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


def _fileobj_to_fd(fileobj):
    """The descriptor number of ``fileobj`` (an int, or an object with ``fileno()``), as
    selectors read it; negative for a closed object, which the caller decides about."""
    if isinstance(fileobj, int):
        return fileobj
    try:
        return int(fileobj.fileno())
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"Invalid file object: {fileobj!r}") from None


def _format_handle(handle):
    owner = getattr(handle._callback, "__self__", None)
    if isinstance(owner, tasks.Task):
        return repr(owner)
    return str(handle)


class Loop(
    LoopCore, ExceptionHandling, ExecutorSupport, SignalSupport, SockSupport, DnsSupport,
    NetSupport, ServeSupport, TransportSupport, TlsSupport, PipeSupport, SubprocessSupport,
    DatagramSupport, asyncio.AbstractEventLoop,
):
    """An asyncio event loop on a tokio current-thread runtime. Create with ``new_event_loop()``."""

    def __init__(self):
        _LOOPS.add(self)
        self._asyncgens = weakref.WeakSet()
        # Datagram transports by fd (stream transports are known to the native registry).
        self._datagram_transports = weakref.WeakValueDictionary()
        self._asyncgens_shutdown_called = False
        self.slow_callback_duration = 0.1
        self._current_handle = None
        # Telemetry (``metrics()``): open objects by kind, executor jobs, the slow-callback hook.
        self._census_sets = {}
        self._executor_jobs = 0
        self._slow_callback_hook = None
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

    def _ensure_fd_no_transport(self, fd):
        """asyncio's rule: a descriptor an open transport uses is not for add_reader/sock_*."""
        fd = _fileobj_to_fd(fd)
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        transport = self._fd_transport(fd)
        if transport is None:
            transport = self._datagram_transports.get(fd)
        if transport is not None:
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")
        return fd

    def add_reader(self, fd, callback, *args):
        """Call ``callback(*args)`` every turn while ``fd`` is readable."""
        self._check_closed()
        fileno = _fileobj_to_fd(fd)
        if fileno < 0:
            self._add_closed(fd, fileno, _READ, callback, args)
            return None
        self._ensure_fd_no_transport(fileno)
        if self.get_debug():
            self._check_callback(callback, "add_reader")
        self._add_reader(fileno, callback, args, fd)
        return None

    def remove_reader(self, fd):
        """Stop watching ``fd`` for reading; True if it was watched."""
        fileno = _fileobj_to_fd(fd)
        if fileno < 0:
            return self._remove_closed(fd, fileno, _READ)
        return self._remove_watch_as_selector(self._ensure_fd_no_transport(fileno), True)

    def add_writer(self, fd, callback, *args):
        """Call ``callback(*args)`` every turn while ``fd`` is writable."""
        self._check_closed()
        fileno = _fileobj_to_fd(fd)
        if fileno < 0:
            self._add_closed(fd, fileno, _WRITE, callback, args)
            return None
        self._ensure_fd_no_transport(fileno)
        if self.get_debug():
            self._check_callback(callback, "add_writer")
        self._add_writer(fileno, callback, args, fd)
        return None

    def remove_writer(self, fd):
        """Stop watching ``fd`` for writing; True if it was watched."""
        fileno = _fileobj_to_fd(fd)
        if fileno < 0:
            return self._remove_closed(fd, fileno, _WRITE)
        return self._remove_watch_as_selector(self._ensure_fd_no_transport(fileno), False)

    # A file object closed since it was registered (fileno() == -1) is still found by the
    # registration made with it, as selectors find their key by the object. What the stdlib's
    # selector does then is followed: the same direction can be replaced or removed; changing
    # what is watched fails, and the failure drops the whole registration.

    def _closed_registration(self, fileobj, fileno):
        found = None if isinstance(fileobj, int) else self._fileobj_registration(fileobj)
        if found is None:
            raise ValueError(f"Invalid file descriptor: {fileno}")
        return found

    def _closed_modify_failed(self, fd, fileno):
        """Changing the directions watched for a closed object: the selector's modify fails
        on the closed descriptor (epoll: EBADF; kqueue re-registers it, and its lookup by the
        object fails) and drops the registration. Returns the exception to raise."""
        self._forget_fd_callbacks(fd)
        if sys.platform.startswith("linux"):
            return OSError(errno.EBADF, os.strerror(errno.EBADF))
        return ValueError(f"Invalid file descriptor: {fileno}")

    def _add_closed(self, fileobj, fileno, direction, callback, args):
        fd, reading, writing = self._closed_registration(fileobj, fileno)
        if (reading if direction is _READ else writing):
            add = self._add_reader if direction is _READ else self._add_writer
            add(fd, callback, args, fileobj)
            return
        raise self._closed_modify_failed(fd, fileno)

    def _remove_closed(self, fileobj, fileno, direction):
        if self.is_closed():
            return False
        fd, reading, writing = self._closed_registration(fileobj, fileno)
        watched, other = (reading, writing) if direction is _READ else (writing, reading)
        if not watched:
            return False
        if other:
            raise self._closed_modify_failed(fd, fileno)
        remove = self._remove_reader if direction is _READ else self._remove_writer
        return remove(fd)

    def _debug_counts(self):
        """Pending work for leak checks: ready handles, live timers, user fd callbacks."""
        counts = self._native_counts()
        if self._ssock is not None:
            counts["readers"] -= 1
        return counts

    # -- telemetry ------------------------------------------------------------------------

    def metrics(self):
        """A snapshot of this loop's telemetry, a ``tokioloop.telemetry.LoopMetrics`` (that
        module documents every field). Cheap enough to take every second; any thread."""
        from . import telemetry  # on first use: `import tokioloop` stays as light as it was

        open_counts = dict.fromkeys(telemetry.OPEN_KINDS, 0)
        for kind, members in list(self._census_sets.items()):
            # A copy of the weak references, made in one step under the GIL: another thread
            # (an exporter's) may take a snapshot while the loop adds connections.
            for ref in members.data.copy():
                member = ref()
                if member is None:
                    continue
                still_open = getattr(member, "_census_open", None)
                if still_open() if still_open is not None else not member.is_closing():
                    open_counts[kind] += 1
                else:
                    members.discard(member)
        return telemetry.snapshot(self, self._metrics(), self._executor_jobs, open_counts)

    def _census(self, kind, obj):
        """Counts ``obj`` among the open objects of ``kind`` until it closes (or is gone)."""
        members = self._census_sets.get(kind)
        if members is None:
            members = self._census_sets[kind] = weakref.WeakSet()
        members.add(obj)

    def _executor_job_done(self, future):
        self._executor_jobs -= 1

    def _set_slow_callback_hook(self, hook, threshold):
        self._slow_callback_hook = hook
        self._set_slow_callback_threshold(threshold)

    def _report_slow_callback(self, what, duration):
        """Called by the turn after a callback that ran at least the threshold."""
        hook = self._slow_callback_hook
        if hook is None:
            return
        from . import telemetry

        try:
            hook(telemetry.describe_slow(what, duration))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.call_exception_handler({
                "message": "Exception in the slow-callback hook",
                "exception": exc,
                "hook": hook,
            })

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
        if coroutines.iscoroutine(callback) or _compat.iscoroutinefunction(callback):
            raise TypeError(f"coroutines cannot be used with {method}()")
        if not callable(callback):
            raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")

    @staticmethod
    def _extract_stack():
        """The caller's stack, for a debug-mode handle's source traceback: empty when the
        caller has no Python frame (a thread that calls in from C or Rust, as a Rust bridge's
        worker does with call_soon_threadsafe)."""
        caller = sys._getframe(0).f_back
        if caller is None:
            return traceback.StackSummary()
        return format_helpers.extract_stack(caller)

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

    def _report_slow_bridge_poll(self, future, elapsed):
        """Debug mode: a Rust extension's future (``tokioloop_ffi``'s bridge) took ``elapsed``
        seconds, at least slow_callback_duration, to poll: warned of as a slow callback is."""
        logger.warning("Executing <Rust future completing %r> took %.3f seconds", future, elapsed)


# The running version's method set and signatures: 3.11's sock_recvfrom on 3.10, 3.12's
# all_errors or 3.13's keep_alive on older versions are refused as their asyncio refuses them.
_compat.conform_to_stdlib(Loop, asyncio.SelectorEventLoop, own=("metrics",))

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
