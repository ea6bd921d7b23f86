"""The event-loop policy entry points, for code that still goes through asyncio's policies.

Policies are deprecated from CPython 3.14 and gone in 3.16; while they exist, these emit the
DeprecationWarning the stdlib emits for the same use. Prefer ``loop_factory``.
"""

from __future__ import annotations

import asyncio
import warnings

from ._compat import POLICIES_DEPRECATED as _POLICY_DEPRECATED

# The platform default policy (on Unix: with the child-watcher API subprocess code expects)
_BasePolicy = asyncio.DefaultEventLoopPolicy


class EventLoopPolicy(_BasePolicy):
    """An asyncio event-loop policy whose loops are tokioloop loops."""

    def __init__(self):
        if _POLICY_DEPRECATED:
            warnings.warn(
                "tokioloop.EventLoopPolicy is deprecated, as are asyncio's policies; "
                "use asyncio.run(..., loop_factory=tokioloop.new_event_loop)",
                DeprecationWarning,
                stacklevel=2,
            )
        super().__init__()

    def _loop_factory(self):
        from . import new_event_loop

        return new_event_loop()


def install():
    """Make asyncio's default policy produce tokioloop loops (process-wide)."""
    if _POLICY_DEPRECATED:
        warnings.warn(
            "tokioloop.install() is deprecated, as is asyncio.set_event_loop_policy(); "
            "use asyncio.run(..., loop_factory=tokioloop.new_event_loop)",
            DeprecationWarning,
            stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(EventLoopPolicy())
