"""Many short-lived children at once: 200 concurrent spawns with output captured, then no
zombie child of the test process and no fd growth; plus a mixed batch with stdin, stderr and
killed children. Each test is bounded (well under 20 s per loop on 2 cores): children are
/bin/sh and /bin/echo, never the Python interpreter.
"""

import asyncio
import signal
import subprocess

from _proc import (
    child_pids,
    eventually,
    no_leftover_children,  # noqa: F401 (autouse fixture)
    open_fds,
    run,
    sh,
)

PIPE = subprocess.PIPE
COUNT = 200


async def echo_pid(n):
    proc = await asyncio.create_subprocess_exec(*sh('echo "$1 $$"', "sh", str(n)), stdout=PIPE)
    out, _ = await proc.communicate()
    return proc.pid, proc.returncode, out


def test_two_hundred_concurrent_children(loop):
    async def main():
        return await asyncio.gather(*(echo_pid(n) for n in range(COUNT)))

    run(loop, echo_pid(-1))  # warm-up: anything a first spawn creates lazily
    fds, kids = open_fds(), child_pids()
    results = run(loop, main(), timeout=60)
    assert len(results) == COUNT
    for n, (pid, rc, out) in enumerate(results):
        assert (rc, out) == (0, f"{n} {pid}\n".encode())
    assert len({pid for pid, _, _ in results}) == COUNT
    assert child_pids() == kids  # every child reaped: no zombies
    run(loop, eventually(lambda: open_fds() == fds, what="fds back to the baseline"))


def test_concurrent_mixed_children(loop):
    async def cat(n):
        proc = await asyncio.create_subprocess_exec("/bin/cat", stdin=PIPE, stdout=PIPE)
        payload = f"payload {n}\n".encode() * (n + 1)
        out, _ = await proc.communicate(payload)
        return (out == payload, proc.returncode)

    async def stderr_only(n):
        proc = await asyncio.create_subprocess_exec(*sh(f"echo {n} >&2; exit {n % 7}"), stderr=PIPE)
        _, err = await proc.communicate()
        return (err == f"{n}\n".encode(), proc.returncode)

    async def killed(n):
        proc = await asyncio.create_subprocess_exec("/bin/sleep", "30")
        proc.kill()
        return (True, await proc.wait())

    async def main():
        jobs = []
        for n in range(150):
            kind = (cat, stderr_only, killed)[n % 3]
            jobs.append(kind(n))
        return await asyncio.gather(*jobs)

    run(loop, echo_pid(-1))
    fds, kids = open_fds(), child_pids()
    results = run(loop, main(), timeout=60)
    for n, (ok, rc) in enumerate(results):
        expected = (0, n % 7, -signal.SIGKILL)[n % 3]
        assert ok and rc == expected, (n, ok, rc)
    assert child_pids() == kids
    run(loop, eventually(lambda: open_fds() == fds, what="fds back to the baseline"))


def test_sequential_spawns_do_not_grow_fds(loop):
    async def main():
        for n in range(100):
            proc = await asyncio.create_subprocess_exec("/bin/echo", str(n), stdout=PIPE)
            out, _ = await proc.communicate()
            assert out == f"{n}\n".encode()

    run(loop, echo_pid(-1))
    fds, kids = open_fds(), child_pids()
    run(loop, main(), timeout=60)
    assert child_pids() == kids
    run(loop, eventually(lambda: open_fds() == fds, what="fds back to the baseline"))
