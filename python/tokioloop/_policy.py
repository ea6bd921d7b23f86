"""The event-loop policy entry points, for code that still goes through asyncio's policies.

Policies are deprecated from CPython 3.14 and gone in 3.16. While they exist, tokioloop's warn
as asyncio's own do on 3.14+: reading the name ``tokioloop.EventLoopPolicy`` warns as reading
``asyncio.DefaultEventLoopPolicy`` does (see ``tokioloop.__getattr__``), and ``install()``
warns as ``asyncio.set_event_loop_policy()`` does; the warning points at the caller's line.
Importing tokioloop warns about nothing. Prefer ``loop_factory``.
"""

from __future__ import annotations

from . import _compat


class EventLoopPolicy(_compat.default_policy_class()):
    """An asyncio event-loop policy whose loops are tokioloop loops."""

    def _loop_factory(self):
        from . import new_event_loop

        return new_event_loop()


def install():
    """Make asyncio's default policy produce tokioloop loops (process-wide)."""
    if _compat.POLICIES_DEPRECATED:
        _compat.warn_policy_deprecated("tokioloop.install", stacklevel=2)
    _install()


def _install():
    """``install()`` without its deprecation warning (``python -m tokioloop``)."""
    _compat.set_policy_quietly(EventLoopPolicy())
