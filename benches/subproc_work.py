"""Workloads of the subprocess and pipe benchmark (benches/subproc.py), child side.

Each workload is a coroutine function ``f(loop, n, ctx)`` that does ``n`` rounds
of one job on ``loop`` and returns a dict with at least ``units`` (how many
units the table counts: children, MiB, lines) and optionally ``lat_exited_us`` /
``lat_wait_us`` lists (exit_latency also counts ``wait_before_process_exited``:
how often wait() came back before process_exited() had run). ``ctx`` carries
paths found by the parent (the exit-stamp helper). ``run_sample`` is the body of
one sample process: it pins itself, builds the optional big heap, makes the
loop, warms up, then measures one run with wall time and the CPU time of the
process (all threads) and of its reaped children (``getrusage``), and prints
one JSON line.

This file must not be named after a stdlib module: benches/ is sys.path[0] of
every bench script, so a benches/subprocess.py would shadow the stdlib's.
"""

import asyncio
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time

MIB = 1 << 20
LINES_PER_CHILD = 200_000  # the chatty child: `seq 200000`
COMM_MIB = 10  # one communicate() pushes this much through cat and back
CONCURRENCY = 20
CHUNK = 256 * 1024  # connect_write_pipe write size


def now_ns():
    """CLOCK_MONOTONIC: one clock for the whole machine on Linux, so a child's
    stamp and the parent's are comparable."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def tool(name):
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH")
    return path


# ---- 1. spawn and wait /bin/true ----

async def spawn_seq(loop, n, ctx):
    """n children of /bin/true, one after the other, each awaited with wait()."""
    true = tool("true")
    for _ in range(n):
        proc = await asyncio.create_subprocess_exec(true)
        if await proc.wait() != 0:
            raise RuntimeError(f"/bin/true exited with {proc.returncode}")
    return {"units": n}


async def spawn_concurrent(loop, n, ctx):
    """n children of /bin/true, CONCURRENCY workers each spawning and awaiting in turn,
    so about CONCURRENCY children are alive at any moment."""
    true = tool("true")
    left = [n]

    async def worker():
        while left[0] > 0:
            left[0] -= 1
            proc = await asyncio.create_subprocess_exec(true)
            if await proc.wait() != 0:
                raise RuntimeError(f"/bin/true exited with {proc.returncode}")

    await asyncio.gather(*(worker() for _ in range(min(CONCURRENCY, n))))
    return {"units": n}


# ---- 2. communicate() through cat ----

async def communicate_cat(loop, n, ctx):
    """n rounds of `cat` fed COMM_MIB MiB on stdin by communicate(), stdout read back."""
    cat, data = tool("cat"), ctx.setdefault("comm_data", os.urandom(COMM_MIB * MIB))
    for _ in range(n):
        proc = await asyncio.create_subprocess_exec(
            cat, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await proc.communicate(data)
        if len(out) != len(data) or proc.returncode != 0:
            raise RuntimeError(f"cat gave back {len(out)} of {len(data)} bytes, "
                               f"exit {proc.returncode}")
    if out != data:
        raise RuntimeError("cat gave back different bytes")
    return {"units": n * COMM_MIB}


# ---- 3. exit-notification latency ----

class StampProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's own protocol for Process, plus the time process_exited() ran
    (``exited``, a future: some loops let wait() return before they call it)."""

    def __init__(self, limit, loop):
        super().__init__(limit=limit, loop=loop)
        self.exited = loop.create_future()

    def process_exited(self):
        if not self.exited.done():
            self.exited.set_result(now_ns())
        super().process_exited()


async def exit_latency(loop, n, ctx):
    """n children, one at a time, each writing CLOCK_MONOTONIC (ns) to its stdout (a
    file) right before _exit(0). Latency = parent's clock when process_exited() runs,
    and when wait() returns, minus the child's stamp. No pipes, so nothing but the
    exit itself has to be noticed."""
    helper = ctx["stamp_helper"]
    path = os.path.join(ctx["tmpdir"], f"stamps-{os.getpid()}")
    exited, waited, early = [], [], 0
    with open(path, "wb") as out:
        for _ in range(n):
            transport, protocol = await loop.subprocess_exec(
                lambda: StampProtocol(limit=2 ** 16, loop=loop), *helper,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL)
            proc = asyncio.subprocess.Process(transport, protocol, loop)
            if await proc.wait() != 0:
                raise RuntimeError(f"stamp helper exited with {proc.returncode}")
            waited.append(now_ns())
            early += not protocol.exited.done()
            exited.append(await protocol.exited)
            transport.close()
    with open(path, "rb") as f:
        stamps = [int(x) for x in f.read().split()]
    os.unlink(path)
    if len(stamps) != n:
        raise RuntimeError(f"{len(stamps)} stamps for {n} children")
    return {"units": n, "wait_before_process_exited": early,
            "lat_exited_us": [(e - s) / 1e3 for e, s in zip(exited, stamps)],
            "lat_wait_us": [(w - s) / 1e3 for w, s in zip(waited, stamps)]}


# ---- 4. line-by-line reader ----

async def readline_chatty(loop, n, ctx):
    """n children of `seq 200000` (about 1.3 MiB of short lines, written by stdio in
    4 KiB blocks), each read with `async for line in proc.stdout`."""
    seq = tool("seq")
    for _ in range(n):
        proc = await asyncio.create_subprocess_exec(
            seq, str(LINES_PER_CHILD), stdout=subprocess.PIPE)
        count = 0
        async for _line in proc.stdout:
            count += 1
        if await proc.wait() != 0 or count != LINES_PER_CHILD:
            raise RuntimeError(f"read {count} lines, seq exited with {proc.returncode}")
    return {"units": n * LINES_PER_CHILD}


# ---- 5. connect_read_pipe / connect_write_pipe ----

def abandon(pipe, child):
    """After a failure: close our end (a loop that refused it never took it over, so
    the child would block on it forever) and stop the child."""
    try:
        pipe.close()
    except OSError:
        pass
    child.kill()
    child.wait()


class Drain(asyncio.Protocol):
    """Counts what a read pipe delivers; ``done`` resolves at connection_lost."""

    def __init__(self, loop):
        self.received, self.done = 0, loop.create_future()

    def data_received(self, data):
        self.received += len(data)

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)


async def read_pipe(loop, n, ctx):
    """Drain n MiB from an os.pipe() whose write end belongs to `dd if=/dev/zero bs=1M`
    (started with subprocess.Popen, outside the loop), through loop.connect_read_pipe."""
    r, w = os.pipe()
    try:
        writer = subprocess.Popen([tool("dd"), "if=/dev/zero", "bs=1M", f"count={n}",
                                   "status=none"], stdout=w)
    finally:
        os.close(w)
    pipe = os.fdopen(r, "rb", buffering=0)
    try:
        transport, proto = await loop.connect_read_pipe(lambda: Drain(loop), pipe)
        exc = await proto.done
        transport.close()
    except BaseException:
        abandon(pipe, writer)
        raise
    if writer.wait() != 0:
        raise RuntimeError(f"dd exited with {writer.returncode}")
    if exc is not None or proto.received != n * MIB:
        raise RuntimeError(f"got {proto.received} of {n * MIB} bytes ({exc!r})")
    return {"units": n}


class Feed(asyncio.Protocol):
    """A write pipe's protocol with flow control: ``writable()`` waits while paused."""

    def __init__(self, loop):
        self.loop, self.paused, self.waiter = loop, False, None
        self.done = loop.create_future()

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def writable(self):
        if self.paused:
            self.waiter = self.loop.create_future()
            await self.waiter

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)
        self.resume_writing()


async def write_pipe(loop, n, ctx):
    """Write n MiB in 256 KiB chunks through loop.connect_write_pipe into an os.pipe()
    read by `cat > /dev/null` (started with subprocess.Popen), honouring
    pause_writing/resume_writing; done when cat has read it all and exited."""
    r, w = os.pipe()
    try:
        reader = subprocess.Popen([tool("cat")], stdin=r, stdout=subprocess.DEVNULL)
    finally:
        os.close(r)
    chunk = b"x" * CHUNK
    pipe = os.fdopen(w, "wb", buffering=0)
    try:
        transport, proto = await loop.connect_write_pipe(lambda: Feed(loop), pipe)
        for _ in range(n * MIB // CHUNK):
            await proto.writable()
            if proto.done.done():
                break
            transport.write(chunk)
        transport.close()  # flushes what is buffered, then connection_lost
        exc = await proto.done
    except BaseException:
        abandon(pipe, reader)
        raise
    status = reader.wait()
    if exc is not None or status != 0:
        raise RuntimeError(f"write pipe lost with {exc!r}, cat exited with {status}")
    return {"units": n}


# ---- One sample (the child process) ----

def rusage_s(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def make_heap(mib):
    """A bytearray of ``mib`` MiB with one byte written per page, so it is resident
    (a fresh bytearray is untouched zero pages). Returns it and VmRSS in MiB."""
    heap = bytearray(mib * MIB)
    page = os.sysconf("SC_PAGE_SIZE")
    heap[::page] = b"\x01" * len(range(0, len(heap), page))
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return heap, rss / 1024


def run_sample(make_loop, func, n, warm, core, heap_mib, ctx):
    """Measure one (loop, workload) and print one JSON line; never returns."""
    result, heap = {}, None
    try:
        if core is not None:
            os.sched_setaffinity(0, {core})  # before any thread or child exists
        if heap_mib:
            heap, result["rss_mib"] = make_heap(heap_mib)
        loop = make_loop()
        asyncio.set_event_loop(loop)
        if warm:
            loop.run_until_complete(func(loop, warm, ctx))
        gc.collect()
        s0, c0, w0 = rusage_s(resource.RUSAGE_SELF), rusage_s(resource.RUSAGE_CHILDREN), \
            time.perf_counter()
        out = loop.run_until_complete(func(loop, n, ctx))
        wall = time.perf_counter() - w0
        result.update(out, wall=wall, cpu_self=rusage_s(resource.RUSAGE_SELF) - s0,
                      cpu_children=rusage_s(resource.RUSAGE_CHILDREN) - c0)
        try:
            loop.close()
        except Exception as exc:  # the sample is still valid
            result["note"] = f"close() failed: {exc!r}"[:200]
    except BaseException as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"[:200],
                  "not_implemented": isinstance(exc, NotImplementedError)}
    del heap
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # don't let a stuck runtime thread hang the shutdown
