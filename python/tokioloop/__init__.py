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
import sys as _sys

from ._loop import Loop
from ._tokioloop import Handle, TimerHandle

__all__ = ["Loop", "new_event_loop", "run", "EventLoopPolicy", "install", "Handle", "TimerHandle"]
__version__ = "0.1.0"


def new_event_loop() -> Loop:
    """Return a new tokioloop event loop."""
    return Loop()


def run(main, *, debug=None, **run_kwargs):
    """Run coroutine ``main`` on a new tokioloop loop and return its result, like ``asyncio.run``.

    The loop is closed afterwards; extra keyword arguments go to ``asyncio.Runner``.
    """
    if _asyncio.events._get_running_loop() is not None:
        # Refuse before a loop exists, as asyncio.run does: nothing to clean up, nothing leaked.
        raise RuntimeError("tokioloop.run() cannot be called from a running event loop")
    if "loop_factory" in run_kwargs:
        raise TypeError("tokioloop.run() chooses the loop itself; use asyncio.run() for another loop_factory")
    with _asyncio.Runner(debug=debug, loop_factory=new_event_loop, **run_kwargs) as runner:
        return runner.run(main)


if _sys.version_info < (3, 16):
    from ._policy import EventLoopPolicy, install
