"""Child-process scenarios for the signal and debug tests.

Usage: python _child.py KIND SCENARIO, KIND being "asyncio" or "tokioloop".
Every scenario that waits for a signal prints "ready" (flushed) once its loop is running.
"""

import asyncio
import os
import sys
import time


def factory(kind):
    if kind == "asyncio":
        return asyncio.new_event_loop
    if kind == "tokioloop":
        import tokioloop

        return tokioloop.new_event_loop
    raise SystemExit(f"unknown kind {kind!r}")


def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def after_interrupt(loop):
    say("got KeyboardInterrupt")
    say(f"running={loop.is_running()}")
    loop.close()
    say(f"closed={loop.is_closed()}")
    # A worker thread may still be sleeping; leave without joining it.
    os._exit(0)


def sigint_idle(make):
    loop = make()
    loop.call_soon(say, "ready")
    try:
        loop.run_until_complete(asyncio.sleep(60))
    except KeyboardInterrupt:
        after_interrupt(loop)
    say("finished without interrupt")


def sigint_busy(make):
    loop = make()
    count = [0]

    def spin():
        count[0] += 1
        if count[0] == 1:
            say("ready")
        loop.call_soon(spin)

    loop.call_soon(spin)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        after_interrupt(loop)
    say("finished without interrupt")


def sigint_executor(make):
    loop = make()
    loop.call_soon(say, "ready")
    try:
        loop.run_until_complete(loop.run_in_executor(None, time.sleep, 60))
    except KeyboardInterrupt:
        after_interrupt(loop)
    say("finished without interrupt")


def sigint_runner(make):
    async def main():
        say("ready")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            say("main cancelled")
            raise
        say("main finished")

    with asyncio.Runner(loop_factory=make) as runner:
        try:
            runner.run(main())
        except KeyboardInterrupt:
            say("got KeyboardInterrupt")
        except asyncio.CancelledError:
            say("got CancelledError")
    say("runner closed")


def debug_flag(make):
    loop = make()
    try:
        say(f"debug={loop.get_debug()}")
    finally:
        loop.close()


def _fork_worker_scenario(make, fork_in_task):
    """A pre-forking server's shape: the running loop forks (inside a task step, or in a plain
    callback); the worker runs a loop of its own and leaves with sys.exit, unwinding through
    its copy of the parent's loop and finalizing the interpreter normally. The parent reports
    the worker's exit code."""
    kind = "tokioloop" if "tokioloop" in make.__module__ else "asyncio"

    async def work():
        await asyncio.sleep(0.01)
        return 7

    def fork_and_exit_in_worker():
        pid = os.fork()
        if pid == 0:
            if kind == "tokioloop":
                import tokioloop

                sys.exit(0 if tokioloop.run(work()) == 7 else 3)
            sys.exit(0 if asyncio.run(work()) == 7 else 3)
        return pid

    async def main():
        loop = asyncio.get_running_loop()
        if fork_in_task:
            pid = fork_and_exit_in_worker()
        else:
            done = loop.create_future()
            loop.call_soon(lambda: done.set_result(fork_and_exit_in_worker()))
            pid = await done
        status = await loop.run_in_executor(None, lambda: os.waitpid(pid, 0)[1])
        return os.waitstatus_to_exitcode(status)

    loop = make()
    try:
        say(f"worker exit {loop.run_until_complete(main())}")
    finally:
        loop.close()


def fork_worker(make):
    _fork_worker_scenario(make, fork_in_task=True)


def fork_worker_from_callback(make):
    """The fork in a plain callback: the worker's SystemExit leaves through the parent's loop
    copy with no Task step in between."""
    _fork_worker_scenario(make, fork_in_task=False)


SCENARIOS = {
    "fork-worker": fork_worker,
    "fork-worker-callback": fork_worker_from_callback,
    "sigint-idle": sigint_idle,
    "sigint-busy": sigint_busy,
    "sigint-executor": sigint_executor,
    "sigint-runner": sigint_runner,
    "debug-flag": debug_flag,
}


if __name__ == "__main__":
    kind, scenario = sys.argv[1], sys.argv[2]
    SCENARIOS[scenario](factory(kind))
