"""asyncio loop methods tokioloop does not provide yet.

Each raises ``NotImplementedError`` naming itself when awaited, rather than inheriting
``AbstractEventLoop``'s anonymous one. Networking, TLS, pipes and subprocesses land here as
they are built natively, and leave this list.
"""

from __future__ import annotations

NOT_YET_BUILT = (
    "create_datagram_endpoint",
)


def _not_yet_built(name):
    async def method(self, *args, **kwargs):
        raise NotImplementedError(f"tokioloop does not implement loop.{name}() yet")

    method.__name__ = name
    method.__qualname__ = f"Loop.{name}"
    method.__doc__ = f"Not implemented yet: raises NotImplementedError naming loop.{name}()."
    return method


class NotYetBuilt:
    """Mixin for ``Loop``: the methods of NOT_YET_BUILT, each raising NotImplementedError."""


for _name in NOT_YET_BUILT:
    setattr(NotYetBuilt, _name, _not_yet_built(_name))
del _name
