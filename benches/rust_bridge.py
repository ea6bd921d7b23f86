#!/usr/bin/env python3
"""Rust async extensions on asyncio loops: pyo3-async-runtimes against tokioloop's native bridge.

Two test extensions expose the same async functions (``tests/rust_ext``): ``par_only`` is built
on pyo3-async-runtimes, which runs each Rust future on its own tokio threads and completes it
through ``call_soon_threadsafe``; ``bridge_demo`` is built on ``tokioloop-rs``, which on a
running tokioloop loop polls the future on the loop's own thread through the native bridge
(issue 21) and elsewhere falls back to pyo3-async-runtimes.

Cells (extension on loop): par on asyncio, uvloop, tokioloop; tokioloop-rs's fallback on
uvloop; tokioloop-rs native on tokioloop. Workloads:

* ``ready``: ``await ready(i)`` in sequence (a future that is ready at its first poll);
* ``gather``: ``gather`` of 1000 ``ready`` futures, repeated;
* ``yield_once``: ``await yield_once(i)`` in sequence (pending once, woken by itself);
* ``sleep``: ``await sleep_ms(1)`` in sequence; reports the p50/p99 lateness past 1 ms;
* ``loaded``: ``await yield_once(i)`` in sequence while the loop also runs a chain of 200 us
  Python callbacks (one per turn); reports the p50/p99 latency of one await.
* ``tcp``: 64-byte TCP round trips in sequence against an asyncio echo server on 127.0.0.1 in
  the same process and loop. par_only's ``tcp_roundtrip((host, port), payload)`` makes one
  connection per call, so each op here is connect + one 64-byte round trip + close, in both
  extensions (bridge_demo's ``tcp_roundtrip(host, port, 1, 64)`` does the same, natively on
  tokioloop's reactor); the echo server's Python work counts in every cell alike.

Every (cell, workload, repeat) sample runs in a fresh child process pinned to one core; cells
are interleaved within a repeat with the order rotated each repeat, so drift hits all alike.
CPU is ``time.process_time()`` of the whole child, so work pushed to tokio's threads counts.
The report gives medians per op and ratios to par on uvloop, the reference of issue 21's targets
(ready: wall <= 0.2x, CPU <= 0.15x; yield_once <= 0.25x; tcp: wall <= 0.7x, CPU <= 0.5x; par on
tokioloop <= 1.1x par on uvloop).
This machine is shared and noisy: read ratios, not absolute times.

Usage:
    python benches/rust_bridge.py [--quick] [--repeat N] [--only ready,gather] [--json PATH]

Needs both extensions installed (``pip install ./tests/rust_ext/par_only
./tests/rust_ext/bridge_demo``, as nox's tests session does) and uvloop.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

CELLS = (
    ("par_only", "asyncio"),
    ("par_only", "uvloop"),
    ("par_only", "tokioloop"),
    ("bridge_demo", "uvloop"),
    ("bridge_demo", "tokioloop"),
)
REFERENCE = ("par_only", "uvloop")
WORKLOADS = {"ready": 20_000, "gather": 20, "yield_once": 20_000, "sleep": 300, "loaded": 1_000,
             "tcp": 2_000}
BUSY_CALLBACK = 200e-6  # seconds each callback of the ``loaded`` workload's chain spins
TCP_PAYLOAD = 64
# The in-process echo server of the ``tcp`` workload, started by ``child`` before the timing.
_echo_address = None
GATHER_WIDTH = 1000
CHILD_TIMEOUT = 300.0


def label(cell):
    module, loop = cell
    if module == "par_only":
        return f"par on {loop}"
    return f"tokioloop-rs {'native' if loop == 'tokioloop' else 'fallback'} on {loop}"


# ---- child side ----------------------------------------------------------------------------

def _loop_factory(kind):
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    if kind == "tokioloop":
        import tokioloop
        return tokioloop.new_event_loop
    return asyncio.new_event_loop


async def _echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _tcp_round_trips(ext, n):
    host, port = _echo_address
    if ext.__name__ == "par_only":
        payload = b"x" * TCP_PAYLOAD
        for _ in range(n):
            await ext.tcp_roundtrip((host, port), payload)
    else:
        for _ in range(n):
            await ext.tcp_roundtrip(host, port, 1, TCP_PAYLOAD)


async def _run_workload(ext, workload, n):
    """Runs ``n`` operations of ``workload``; returns (ops, extra figures)."""
    if workload == "ready":
        for i in range(n):
            await ext.ready(i)
        return n, {}
    if workload == "gather":
        for _ in range(n):
            await asyncio.gather(*[ext.ready(i) for i in range(GATHER_WIDTH)])
        return n * GATHER_WIDTH, {}
    if workload == "yield_once":
        for i in range(n):
            await ext.yield_once(i)
        return n, {}
    if workload == "sleep":
        late = []
        for _ in range(n):
            started = time.perf_counter()
            await ext.sleep_ms(1)
            late.append(time.perf_counter() - started - 0.001)
        late.sort()
        return n, {"late_p50_ms": statistics.median(late) * 1e3,
                   "late_p99_ms": late[int(0.99 * (len(late) - 1))] * 1e3}
    if workload == "loaded":
        loop = asyncio.get_running_loop()
        running = True

        def spin():
            end = time.perf_counter() + BUSY_CALLBACK
            while time.perf_counter() < end:
                pass
            if running:
                loop.call_soon(spin)

        loop.call_soon(spin)
        latency = []
        try:
            for i in range(n):
                started = time.perf_counter()
                await ext.yield_once(i)
                latency.append(time.perf_counter() - started)
        finally:
            running = False
        latency.sort()
        return n, {"lat_p50_ms": statistics.median(latency) * 1e3,
                   "lat_p99_ms": latency[int(0.99 * (len(latency) - 1))] * 1e3}
    if workload == "tcp":
        await _tcp_round_trips(ext, n)
        return n, {}
    raise ValueError(workload)


def child(module, loop_kind, workload, n):
    global _echo_address
    ext = __import__(module)
    loop = _loop_factory(loop_kind)()
    server = None
    try:
        if workload == "tcp":
            server = loop.run_until_complete(asyncio.start_server(_echo, "127.0.0.1", 0))
            _echo_address = server.sockets[0].getsockname()[:2]
        if hasattr(ext, "mode"):
            # tokioloop-rs says what it would do on a running loop: checked, never assumed.
            async def which():
                return ext.mode()
            mode = loop.run_until_complete(which())
            expected = "native" if loop_kind == "tokioloop" else "fallback"
            if mode != expected:
                raise SystemExit(f"{module} on {loop_kind} runs {mode!r}, expected {expected!r}")
        loop.run_until_complete(_run_workload(ext, workload, max(1, n // 20)))  # warm-up
        wall0, cpu0 = time.perf_counter(), time.process_time()
        ops, extra = loop.run_until_complete(_run_workload(ext, workload, n))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        if server is not None:
            server.close()
            loop.run_until_complete(server.wait_closed())
        loop.close()
    print(json.dumps({"ops": ops, "wall": wall, "cpu": cpu, **extra}))


# ---- parent side ---------------------------------------------------------------------------

def sample(cell, workload, n, core):
    module, loop = cell
    command = [sys.executable, __file__, "--child", module, loop, workload, str(n)]
    preexec = (lambda: os.sched_setaffinity(0, {core})) if hasattr(os, "sched_setaffinity") else None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                              preexec_fn=preexec)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"rc={done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N/10 and 3 repeats")
    p.add_argument("--repeat", type=int, default=None, help="repeats (default 5, --quick 3)")
    p.add_argument("--only", default="", help="comma-separated workloads")
    p.add_argument("--core", type=int, default=None, help="the core children are pinned to")
    p.add_argument("--json", default=None, help="write the raw samples here")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        module, loop, workload, n = args.child
        child(module, loop, workload, int(n))
        # Out at once: pyo3-async-runtimes on the stdlib loop segfaults in interpreter
        # finalization in about 2 of 3 runs (its tokio threads outlive the interpreter), after
        # the sample is out. Every cell skips finalization alike.
        sys.stdout.flush()
        os._exit(0)
    repeat = args.repeat or (3 if args.quick else 5)
    workloads = [w for w in (args.only.split(",") if args.only else WORKLOADS) if w]
    core = args.core if args.core is not None else (os.cpu_count() or 1) - 1
    samples = {}
    for r in range(repeat):
        order = CELLS[r % len(CELLS):] + CELLS[:r % len(CELLS)]
        for workload in workloads:
            n = WORKLOADS[workload] // (10 if args.quick else 1)
            for cell in order:
                result = sample(cell, workload, n, core)
                samples.setdefault((workload, cell), []).append(result)
                shown = result.get("error") or f"{result['wall'] / result['ops'] * 1e6:.2f} us/op"
                print(f"repeat {r + 1}/{repeat} {workload:10} {label(cell):36} {shown}",
                      file=sys.stderr, flush=True)
    report(samples, workloads, repeat)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"python": sys.version, "repeat": repeat, "samples": [
                {"workload": w, "cell": list(c), "results": rs} for (w, c), rs in samples.items()
            ]}, out, indent=1)
    return 0


def median_of(results, key, per_op=True):
    values = [r[key] / r["ops"] if per_op else r[key] for r in results if "error" not in r]
    return statistics.median(values) if values else None


def report(samples, workloads, repeat):
    print(f"# Rust bridge benchmark ({repeat} repeats, medians; ratios to {label(REFERENCE)})\n")
    print(f"Python {sys.version.split()[0]}, children pinned to one core, fresh process per sample.\n")
    print("| workload | cell | wall us/op | CPU us/op | wall ratio | CPU ratio | extra |")
    print("|---|---|---:|---:|---:|---:|---|")
    for workload in workloads:
        ref = samples.get((workload, REFERENCE), [])
        ref_wall, ref_cpu = median_of(ref, "wall"), median_of(ref, "cpu")
        for cell in CELLS:
            results = samples.get((workload, cell), [])
            errors = [r["error"] for r in results if "error" in r]
            wall, cpu = median_of(results, "wall"), median_of(results, "cpu")
            if wall is None:
                print(f"| {workload} | {label(cell)} | error: {errors[0] if errors else 'none'} |||||")
                continue
            extra = ", ".join(
                f"{k} {statistics.median(r[k] for r in results if k in r):.3f}"
                for k in ("late_p50_ms", "late_p99_ms", "lat_p50_ms", "lat_p99_ms")
                if any(k in r for r in results))
            ratio_wall = f"{wall / ref_wall:.2f}x" if ref_wall else "n/a"
            ratio_cpu = f"{cpu / ref_cpu:.2f}x" if ref_cpu else "n/a"
            print(f"| {workload} | {label(cell)} | {wall * 1e6:.2f} | {cpu * 1e6:.2f} | "
                  f"{ratio_wall} | {ratio_cpu} | {extra} |")


if __name__ == "__main__":
    sys.exit(main())
