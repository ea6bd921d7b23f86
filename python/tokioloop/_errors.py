"""Exception reporting: the loop's exception handler, as asyncio defines it.

``call_exception_handler(context)`` routes errors that have no caller to raise to (an
exception in a callback, a task destroyed while pending, ...) to the handler set with
``set_exception_handler`` or to ``default_exception_handler``, which logs through the
``asyncio`` logger exactly as the stdlib loop does, so log filters and tests written against
asyncio keep working.
"""

from __future__ import annotations

import traceback
from asyncio.log import logger
from typing import Any, Callable, Optional

from ._compat import EXCEPTION_HANDLER_IN_CALLBACK_CONTEXT, FORMAT_CALLBACK_TAKES_DEBUG

_TRACEBACK_KEYS = {
    "source_traceback": "Object created at (most recent call last):\n",
    "handle_traceback": "Handle created at (most recent call last):\n",
}


def _callback_context(context):
    """The contextvars.Context of the task, future or handle that failed, if it has one."""
    for key in ("task", "future", "handle"):
        thing = context.get(key)
        if thing is not None:
            get_context = getattr(thing, "get_context", None)
            found = get_context() if get_context is not None else None
            return found if hasattr(found, "run") else None
    return None


class ExceptionHandling:
    """Mixin for ``Loop``: exception handler get/set/call and the default handler."""

    _exception_handler: Optional[Callable[[Any, dict], object]] = None
    _current_handle: Any = None

    def get_exception_handler(self):
        """The handler set with ``set_exception_handler``, or None."""
        return self._exception_handler

    def set_exception_handler(self, handler):
        """Set ``handler(loop, context)`` as the handler; None restores the default."""
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context):
        """Log ``context`` on the ``asyncio`` logger at ERROR, with the exception's traceback."""
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info = (type(exception), exception, exception.__traceback__) if exception is not None else False
        current = self._current_handle
        if "source_traceback" not in context and current is not None and current._source_traceback:
            context["handle_traceback"] = current._source_traceback
        lines = [message]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            value = context[key]
            if key in _TRACEBACK_KEYS:
                value = _TRACEBACK_KEYS[key] + "".join(traceback.format_list(value)).rstrip()
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context):
        """Report ``context`` (keys: message, exception, handle, future, task, ...)."""
        handler = self._exception_handler
        if handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            run_in = _callback_context(context) if EXCEPTION_HANDLER_IN_CALLBACK_CONTEXT else None
            if run_in is None:
                handler(self, context)
            else:
                run_in.run(handler, self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {"message": "Unhandled error in exception handler", "exception": exc, "context": context}
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an unexpected error "
                    "in custom exception handler",
                    exc_info=True,
                )

    def _callback_error(self, handle, exc):
        """Called by the native turn when a callback raised an ordinary exception."""
        from asyncio.format_helpers import _format_callback_source

        if FORMAT_CALLBACK_TAKES_DEBUG:
            source = _format_callback_source(handle._callback, handle._args, debug=self.get_debug())
        else:
            source = _format_callback_source(handle._callback, handle._args)
        context = {"message": f"Exception in callback {source}", "exception": exc, "handle": handle}
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)
