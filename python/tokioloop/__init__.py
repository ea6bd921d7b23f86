"""tokioloop: a fast asyncio event loop on a tokio engine.

    import asyncio, tokioloop
    tokioloop.run(main())                                         # like asyncio.run
    asyncio.run(main(), loop_factory=tokioloop.new_event_loop)    # Python 3.12+
    with asyncio.Runner(loop_factory=tokioloop.new_event_loop) as runner:
        runner.run(main())

Python async code runs unchanged; asyncio's documented behaviour is the contract.
"""

from __future__ import annotations

import asyncio as _asyncio

from . import _compat
from ._loop import Loop
from ._tokioloop import Handle, TimerHandle

__all__ = ["Loop", "new_event_loop", "run", "EventLoopPolicy", "install", "Handle", "TimerHandle"]
__version__ = "0.1.0"


def new_event_loop() -> Loop:
    """Return a new tokioloop event loop."""
    return Loop()


def run(main, *, debug=None, **run_kwargs):
    """Run coroutine ``main`` on a new tokioloop loop and return its result, like ``asyncio.run``.

    The loop is closed afterwards. On 3.11+ this is ``asyncio.Runner`` with tokioloop's loop
    (extra keyword arguments go to it); on 3.10, which has no Runner, it does what 3.10's
    ``asyncio.run`` does: cancel the tasks left, close async generators, shut the default
    executor down, close the loop.
    """
    if _asyncio.events._get_running_loop() is not None:
        # Refuse before a loop exists, as asyncio.run does: nothing to clean up, nothing leaked.
        raise RuntimeError("tokioloop.run() cannot be called from a running event loop")
    if "loop_factory" in run_kwargs:
        raise TypeError("tokioloop.run() chooses the loop itself; use asyncio.run() for another loop_factory")
    if _compat.HAS_RUNNER:
        with _asyncio.Runner(debug=debug, loop_factory=new_event_loop, **run_kwargs) as runner:
            return runner.run(main)
    if run_kwargs:
        raise TypeError(f"tokioloop.run() got an unexpected keyword argument '{next(iter(run_kwargs))}'")
    return _run_without_runner(main, debug)


def _run_without_runner(main, debug):
    if not _asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = new_event_loop()
    try:
        _asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            _asyncio.runners._cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            _asyncio.set_event_loop(None)
            loop.close()


if _compat.HAS_POLICIES:
    from ._policy import install

if _compat.HAS_POLICIES and not _compat.POLICIES_DEPRECATED:
    from ._policy import EventLoopPolicy
elif _compat.HAS_POLICIES:
    # As asyncio 3.14+ does for DefaultEventLoopPolicy: the name warns when it is read (and
    # is left out of __all__, so a star import does not read it).
    __all__.remove("EventLoopPolicy")

    def __getattr__(name):
        if name == "EventLoopPolicy":
            _compat.warn_policy_deprecated(f"{__name__}.{name}", stacklevel=2)
            from ._policy import EventLoopPolicy

            return EventLoopPolicy
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
else:
    __all__.remove("EventLoopPolicy")
    __all__.remove("install")
