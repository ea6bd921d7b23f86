"""Subprocesses: ``subprocess_exec`` and ``subprocess_shell`` (and so asyncio's
``create_subprocess_exec``/``_shell``).

Both methods are asyncio's own (``BaseEventLoop``'s), bound to this loop; they call this
loop's ``_make_subprocess_transport``. The child is started by ``subprocess.Popen`` through
asyncio's own subprocess transport (``asyncio.unix_events._UnixSubprocessTransport``), so
every keyword the running version's asyncio passes to Popen behaves exactly as it does there
(``preexec_fn``, ``pass_fds``, ``process_group``, ``user``...), as do the transport's
callbacks and their order, ``_wait()`` and ``get_extra_info('subprocess')``. Its pipes are
the loop's native pipe transports.

What is tokioloop's own is how the exit is noticed. A pidfd (``os.pidfd_open``) is watched
by the loop's reactor like any readable descriptor; when it fires, the child is reaped with
``waitid(P_PIDFD)``, which can only ever reap that child. No SIGCHLD handler is installed,
no thread waits per child, and nothing calls ``waitpid(-1)``, so other code's children and a
user's own SIGCHLD handler are left alone. A child someone else reaped first reports 255 with
asyncio's warning. Signals go through the pidfd too (``pidfd_send_signal``): a recycled pid is
never hit. Where the kernel or a sandbox refuses ``pidfd_open``, each child is waited for by
a thread blocked in ``waitpid(pid)`` instead (asyncio's threaded watcher's way).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from asyncio import base_events, unix_events
from asyncio.log import logger

#: Whether this kernel (and sandbox) lets us open pidfds; found on first use.
_pidfd_works = None


def _pidfd_available():
    global _pidfd_works
    if _pidfd_works is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
        except (AttributeError, OSError):
            _pidfd_works = False
        else:
            _pidfd_works = True
    return _pidfd_works


def _lost_status_warning(pid):
    if sys.version_info >= (3, 12):
        logger.warning(
            "child process pid %d exit status already read:  will report returncode 255", pid
        )
    else:
        logger.warning("Unknown child process pid %d, will report returncode 255", pid)


def _exit_code(result):
    """The returncode of a ``waitid`` result: the exit status, or -signal."""
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return -result.si_status


class SubprocessTransport(unix_events._UnixSubprocessTransport):
    """asyncio's subprocess transport, signalling through the child's pidfd once the loop
    watches one (``send_signal``/``terminate``/``kill``: ProcessLookupError once the
    transport has lost its process, nothing once the exit is known)."""

    _pidfd = None

    def send_signal(self, signal_number):
        self._check_proc()
        if self._returncode is not None:
            return  # reaped: the pid may belong to someone else by now
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal_number)
            else:
                os.kill(self._proc.pid, signal_number)
        except ProcessLookupError:
            pass  # exited, not yet reaped

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class SubprocessSupport:
    """Mixin for ``Loop``: subprocess_exec, subprocess_shell and the exit watch."""

    # asyncio's own entry points, run as methods of this loop: the argument checks and their
    # order, the protocol's creation and the debug log are the running version's. And the
    # child starts beneath a frame of asyncio/base_events.py named subprocess_exec or
    # subprocess_shell, as on asyncio's loop: that is what blockbuster's allowlist matches
    # (the calling frames' file and function names) to let Popen's blocking read of its
    # exec-error pipe through, and nothing else is let through with it.
    subprocess_exec = base_events.BaseEventLoop.subprocess_exec
    subprocess_shell = base_events.BaseEventLoop.subprocess_shell
    _log_subprocess = base_events.BaseEventLoop._log_subprocess

    @property
    def _debug(self):
        """What the stdlib methods above read for ``get_debug()``."""
        return self.get_debug()

    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr,
                                         bufsize, extra=None, **kwargs):
        waiter = self.create_future()
        transport = SubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter=waiter,
            extra=extra, **kwargs,
        )
        self._census("subprocess", transport)
        self._watch_child_exit(transport)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        finally:
            waiter = None
        return transport

    # -- the exit watch ---------------------------------------------------------------------

    def _watch_child_exit(self, transport):
        pid = transport.get_pid()
        if not _pidfd_available():
            self._wait_child_in_thread(transport, pid)
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            # Already gone and reaped (SIGCHLD ignored, or another waiter was quicker).
            self.call_soon(self._child_status_lost, transport, pid)
            return
        transport._pidfd = pidfd
        self._add_reader(pidfd, self._child_exited, (transport, pid, pidfd))

    def _child_exited(self, transport, pid, pidfd):
        self._remove_reader(pidfd)
        try:
            result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        except ChildProcessError:
            result = None
        finally:
            transport._pidfd = None
            os.close(pidfd)
        if result is None:
            self._child_status_lost(transport, pid)
        else:
            transport._process_exited(_exit_code(result))

    def _child_status_lost(self, transport, pid):
        _lost_status_warning(pid)
        transport._process_exited(255)

    def _wait_child_in_thread(self, transport, pid):
        def wait():
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                returncode = None
            else:
                returncode = os.waitstatus_to_exitcode(status)
            try:
                if returncode is None:
                    self.call_soon_threadsafe(self._child_status_lost, transport, pid)
                else:
                    self.call_soon_threadsafe(transport._process_exited, returncode)
            except RuntimeError:
                pass  # the loop was closed meanwhile: nobody is waiting any more

        threading.Thread(target=wait, name=f"tokioloop-waitpid-{pid}", daemon=True).start()

