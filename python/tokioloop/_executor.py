"""Thread-pool integration: ``run_in_executor`` and the default executor's lifecycle.

Work submitted here runs on other threads; its completion comes back to the loop only
through ``call_soon_threadsafe`` (inside ``asyncio.wrap_future``), which wakes a parked loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import warnings
from asyncio import futures

from ._compat import DEFAULT_EXECUTOR_MUST_BE_THREAD_POOL


class ExecutorSupport:
    """Mixin for ``Loop``: run_in_executor, set_default_executor, shutdown_default_executor."""

    _default_executor = None
    _executor_shutdown_called = False

    def run_in_executor(self, executor, func, *args):
        """Run ``func(*args)`` in ``executor`` (the default thread pool if None)."""
        self._check_closed()
        if self.get_debug():
            self._check_callback(func, "run_in_executor")
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        future = futures.wrap_future(executor.submit(func, *args), loop=self)
        self._executor_jobs += 1
        future.add_done_callback(self._executor_job_done)
        return future

    def set_default_executor(self, executor):
        """Use ``executor`` (a ThreadPoolExecutor) for ``run_in_executor(None, ...)``."""
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            if DEFAULT_EXECUTOR_MUST_BE_THREAD_POOL:
                raise TypeError("executor must be ThreadPoolExecutor instance")
            warnings.warn(
                "Using the default executor that is not an instance of ThreadPoolExecutor "
                "is deprecated and will be prohibited in Python 3.9",
                DeprecationWarning,
                stacklevel=2,
            )
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout=None):
        """Shut the default executor down, waiting up to ``timeout`` seconds for its threads."""
        self._executor_shutdown_called = True
        if self._default_executor is None:
            return
        done = self.create_future()
        thread = threading.Thread(target=self._shutdown_executor_in_thread, args=(done,))
        thread.start()
        try:
            await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            warnings.warn(
                "The executor did not finishing joining its threads within "
                f"{timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._default_executor.shutdown(wait=False)
        else:
            thread.join()

    def _shutdown_executor_in_thread(self, done):
        try:
            self._default_executor.shutdown(wait=True)
            if not self.is_closed():
                self.call_soon_threadsafe(_resolve, done, None, None)
        except Exception as exc:
            if not self.is_closed():
                self.call_soon_threadsafe(_resolve, done, None, exc)

    def _close_executor(self):
        self._executor_shutdown_called = True
        executor, self._default_executor = self._default_executor, None
        if executor is not None:
            executor.shutdown(wait=False)


def _resolve(future, result, exc):
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
