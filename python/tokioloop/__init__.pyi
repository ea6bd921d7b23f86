import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._tokioloop import Handle as Handle, LoopCore, TimerHandle as TimerHandle

_T = TypeVar("_T")

class Loop(LoopCore, asyncio.AbstractEventLoop):
    slow_callback_duration: float
    def __init__(self) -> None: ...

def new_event_loop() -> Loop: ...
def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = ..., **run_kwargs: Any) -> _T: ...

class EventLoopPolicy(asyncio.DefaultEventLoopPolicy): ...

def install() -> None: ...

__version__: str
