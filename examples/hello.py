"""The smallest tokioloop program: tasks, a timer and a thread hand-off on tokioloop.

    python examples/hello.py
"""

import asyncio
import threading
import time

import tokioloop


async def main():
    loop = asyncio.get_running_loop()
    print("running on", type(loop).__module__, type(loop).__name__)

    # Tasks and timers: CPython's own asyncio.Task on the native scheduler.
    results = await asyncio.gather(*(asyncio.sleep(0.01 * i, result=i) for i in range(5)))
    print("gathered", results)

    # Another thread hands a value back through call_soon_threadsafe (inside wrap_future).
    value = await loop.run_in_executor(None, lambda: (time.sleep(0.05), threading.get_ident())[1])
    print("executor thread", value != threading.get_ident())

    # A timeout, as asyncio does it.
    try:
        await asyncio.wait_for(asyncio.sleep(1), 0.02)
    except asyncio.TimeoutError:
        print("timed out as asked")
    return "done"


if __name__ == "__main__":
    print(tokioloop.run(main()))
