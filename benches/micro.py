#!/usr/bin/env python3
"""Micro-benchmarks for asyncio event loops: asyncio, uvloop, rloop, rsloop, tokioloop.

Each workload hammers one primitive of the loop (call_soon, timers, timer
cancellation, task creation, sleep(0) switching, future hand-off, cross-thread
wake-ups) and reports how many operations per second the loop sustains and
how much CPU time it burns per operation.

Every (loop, benchmark, repeat) sample runs in a fresh child process pinned
to a single core, so loops never share interpreter state, allocator state or
caches. Loops are interleaved within each repeat (with the order rotated per
repeat), so slow drift of the machine hits every loop alike.

Why CPU/op is the headline: this runs on a small, shared, noisy machine.
Wall time includes every moment the child was descheduled in favour of a
neighbour; CPU time (process_time: user+sys of *all* threads of the child)
only counts work the process itself did. CPU/op is therefore far more stable
than ops/s, and it is also honest about helper threads: work a loop pushes to
a background thread is still charged to it.

The report ends with a summary: per workload, the loop with the least CPU per
op and every other loop as a multiple of it, differences smaller than the
measured spread marked "within noise".

Usage:
    python benches/micro.py [--quick] [--loops asyncio,uvloop,rloop,rsloop,tokioloop]
                            [--repeat N] [--json PATH] [--only NAME,...]

With TOKIOLOOP_BENCH_TIMED=1 in the environment, tokioloop's loops run with the telemetry's
callback timing on (tokioloop.telemetry.report_slow_callbacks, a threshold never reached):
its cost, for the README's telemetry table (instructions.py passes the variable through).
"""

import argparse
import asyncio
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time

CHILD_TIMEOUT = 120.0  # seconds, per child process
PEERS = ("uvloop", "rloop", "rsloop")  # the other native loops: "best peer" is the best of these
CANDIDATE = "tokioloop"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ---- Workloads: f(loop, n) runs to completion, returns ops performed. ----

def stop_after(loop, n):
    """(tick, count): tick is a trivial callback that stops loop at call n."""
    done = 0

    def tick():
        nonlocal done
        done += 1
        if done == n:
            loop.stop()

    return tick, lambda: done


def bench_call_soon(loop, n):
    """n trivial callbacks, scheduled 1000 at a time by a driver callback."""
    tick, count = stop_after(loop, n)

    def driver(left):
        k = min(1000, left)
        for _ in range(k):
            loop.call_soon(tick)
        if left > k:
            loop.call_soon(driver, left - k)

    loop.call_soon(driver, n)
    loop.run_forever()
    return count()


def bench_call_later(loop, n):
    """n timers with distinct delays 0, 1us, 2us, ...; run until all fired."""
    tick, count = stop_after(loop, n)
    for i in range(n):
        loop.call_later(i * 1e-6, tick)
    loop.run_forever()
    return count()


def bench_timer_cancel(loop, n):
    """n far-future timers scheduled, all cancelled, then one loop turn."""
    tick, count = stop_after(loop, n)
    handles = [loop.call_later(10.0, tick) for _ in range(n)]
    for h in handles:
        h.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    if count():
        raise RuntimeError(f"{count()} cancelled timers fired")
    return n


def bench_gather(loop, n):
    """n trivial tasks created and awaited with asyncio.gather."""
    async def trivial():
        return 1

    async def main():
        tasks = [loop.create_task(trivial()) for _ in range(n)]
        return sum(await asyncio.gather(*tasks))

    return loop.run_until_complete(main())


def bench_sleep0(loop, n):
    """Two tasks alternating via `await asyncio.sleep(0)`, n iterations total."""
    async def spinner(k):
        for _ in range(k):
            await asyncio.sleep(0)
        return k

    async def main():
        a = loop.create_task(spinner(n // 2))
        b = loop.create_task(spinner(n - n // 2))
        return await a + await b

    return loop.run_until_complete(main())


def bench_sleep_1ms(loop, n):
    """`await asyncio.sleep(0.001)` n times in sequence: ops/s shows how late a short timer
    fires (1000/s would be exact), CPU/op what a park on a timer costs."""
    async def main():
        for _ in range(n):
            await asyncio.sleep(0.001)
        return n

    return loop.run_until_complete(main())


def bench_future_pingpong(loop, n):
    """Two tasks handing a fresh Future back and forth; n round trips.

    Each side resolves the future the other side is waiting on, and the result
    it sends is the future it will wait on next.
    """
    async def ping(to_pong):
        for _ in range(n):
            back = loop.create_future()
            to_pong.set_result(back)
            to_pong = await back
        to_pong.set_result(None)  # tell pong to finish
        return n

    async def pong(inbox):
        while True:
            back = await inbox
            if back is None:
                return
            inbox = loop.create_future()
            back.set_result(inbox)

    async def main():
        first = loop.create_future()
        p = loop.create_task(pong(first))
        rounds = await ping(first)
        await p
        return rounds

    return loop.run_until_complete(main())


def bench_threadsafe(loop, n):
    """Another thread calls call_soon_threadsafe(cb) n times.

    The producer thread un-pins itself (threads inherit the child's pinning),
    so it may run on the other core. Its CPU time is charged to the child.
    """
    tick, count = stop_after(loop, n)

    def producer():
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        for _ in range(n):
            loop.call_soon_threadsafe(tick)

    t = threading.Thread(target=producer)
    t.start()
    loop.run_forever()
    t.join()
    return count()


def _echo_pair(loop, server_protocol, client_protocol):
    """A TCP server on 127.0.0.1 with one client connected to it, both on ``loop``.
    Returns (server, client transport, client protocol)."""
    server = loop.run_until_complete(loop.create_server(server_protocol, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    transport, protocol = loop.run_until_complete(
        loop.create_connection(client_protocol, "127.0.0.1", port))
    return server, transport, protocol


def bench_tcp_pingpong(loop, n):
    """n round trips of 64 bytes over loopback TCP, both ends asyncio Protocols on the loop:
    the engine's read, the protocol call and the direct send, twice per op."""
    payload = b"x" * 64

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    class Pinger(asyncio.Protocol):
        def __init__(self):
            self.left = n
            self.pending = 0
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.pending -= len(data)
            if self.pending > 0:
                return
            self.left -= 1
            if self.left == 0:
                self.done.set_result(n)
                return
            self.send()

        def send(self):
            self.pending = len(payload)
            self.transport.write(payload)

    server, transport, pinger = _echo_pair(loop, Echo, Pinger)
    pinger.send()
    rounds = loop.run_until_complete(pinger.done)
    transport.close()
    server.close()
    loop.run_until_complete(server.wait_closed())
    return rounds


def bench_streams_pingpong(loop, n):
    """n round trips of 64 bytes over loopback TCP with asyncio's own streams
    (start_server / open_connection, readexactly and drain on both ends)."""
    payload = b"x" * 64

    async def echo(reader, writer):
        try:
            while True:
                writer.write(await reader.readexactly(len(payload)))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            writer.write(payload)
            await writer.drain()
            await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return n

    return loop.run_until_complete(main())


BENCHMARKS = {  # name -> (function, N for the full run)
    "call_soon": (bench_call_soon, 1_000_000),
    "call_later": (bench_call_later, 100_000),
    "timer_cancel": (bench_timer_cancel, 100_000),
    "gather": (bench_gather, 100_000),
    "sleep0": (bench_sleep0, 200_000),
    "sleep_1ms": (bench_sleep_1ms, 2_000),
    "future_pingpong": (bench_future_pingpong, 100_000),
    "threadsafe": (bench_threadsafe, 200_000),
    "tcp_pingpong": (bench_tcp_pingpong, 50_000),
    "streams_pingpong": (bench_streams_pingpong, 20_000),
}

LOOPS = {  # name -> (module, distribution name for the version)
    "asyncio": ("asyncio", None),
    "uvloop": ("uvloop", "uvloop"),
    "rloop": ("rloop", "rloop"),
    "rsloop": ("rsloop", "rsloop"),  # no wheel for every glibc: see benches/README.md
    "tokioloop": ("tokioloop", "tokioloop"),
}


def make_loop(name):
    if name == "asyncio":
        return asyncio.new_event_loop()
    loop = __import__(LOOPS[name][0]).new_event_loop()
    if name == "tokioloop" and os.environ.get("TOKIOLOOP_BENCH_TIMED"):
        # The telemetry's timed mode (every callback timed, ready waits and durations in
        # histograms) with a threshold nothing reaches: what the timing alone costs.
        from tokioloop import telemetry
        telemetry.report_slow_callbacks(loop, 3600.0, lambda report: None)
    return loop


# ---- Child side: one measurement, printed as one JSON line. ----

def child_main(loop_name, bench_name, n, measure):
    """Child side, shared with instructions.py: make the loop, run ``measure(loop, workload, n)``
    (a dict with at least "ops"), check the count, close the loop, print one JSON line, exit."""
    func = BENCHMARKS[bench_name][0]
    try:
        loop = make_loop(loop_name)
        asyncio.set_event_loop(loop)
        result = measure(loop, func, n)
        if result["ops"] != n:
            raise RuntimeError(f"workload did {result['ops']} ops, expected {n}")
        try:
            loop.close()
        except Exception as exc:  # the sample is still valid
            result["note"] = f"close() failed: {exc!r}"
    except BaseException as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # don't let a stuck runtime thread hang the shutdown


def timed(loop, func, n):
    """One measurement after a warm-up on the same loop: ops, wall and CPU seconds."""
    func(loop, max(n // 10, 100))
    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    ops = func(loop, n)
    wall = time.perf_counter() - w0
    cpu = time.process_time() - c0
    return {"ops": ops, "wall": wall, "cpu": cpu}


def run_child(loop_name, bench_name, n, core):
    if core is not None:
        os.sched_setaffinity(0, {core})  # before the loop spawns any thread
    child_main(loop_name, bench_name, n, timed)


# ---- Parent side: spawn children, aggregate, print tables. ----

def pick_core():
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    if (os.cpu_count() or 1) >= 2 and 1 in allowed:
        return 1
    return 0 if 0 in allowed else min(allowed)


def loop_status(name):
    """Version string, or None if the loop's module is not importable."""
    module, dist = LOOPS[name]
    if dist is None:
        return f"stdlib (Python {platform.python_version()})"
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin in (None, "namespace"):
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def run_sample(loop_name, bench_name, n, core):
    cmd = [sys.executable, os.path.abspath(__file__), "--child",
           loop_name, bench_name, str(n), "-1" if core is None else str(core)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {CHILD_TIMEOUT:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    rc = proc.returncode
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"child {how}: {tail}"[:200]}


def summarize(samples):
    """Medians over the successful samples of one (loop, benchmark)."""
    ok = [s for s in samples if "error" not in s]
    errors = [s["error"] for s in samples if "error" in s]
    if not ok:
        return {"error": errors[0] if errors else "no samples", "failed": len(errors)}
    cpu = [1e6 * s["cpu"] / s["ops"] for s in ok]
    return {
        "ops_per_s": statistics.median(s["ops"] / s["wall"] for s in ok),
        "wall_us_per_op": statistics.median(1e6 * s["wall"] / s["ops"] for s in ok),
        "cpu_us_per_op": statistics.median(cpu),
        "cpu_spread": (max(cpu) - min(cpu)) / statistics.median(cpu),
        "samples": len(ok),
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
    }


def render(bench_name, n, loops, med):
    """Markdown table for one benchmark."""
    uv = med.get("uvloop", {}).get("wall_us_per_op")
    peers = [(med[p]["cpu_us_per_op"], p) for p in PEERS
             if "cpu_us_per_op" in med.get(p, {})]
    best = min(peers) if peers else None
    ratio = lambda x, ref: f"{x / ref:.2f}" if ref else "-"  # noqa: E731
    rows = [f"### {bench_name} (N={n:,})", "",
            "| loop | ops/s (median) | CPU µs/op (median) | CPU spread "
            "| wall vs uvloop | CPU/op x best peer | notes |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for name in loops:
        m = med.get(name)
        if m is None:
            cells = ["not installed"] + ["-"] * 4 + [""]
        elif "error" in m:
            cells = ["error: " + m["error"]] + ["-"] * 4 + [""]
        else:
            cells = [f"{m['ops_per_s']:,.0f}", f"{m['cpu_us_per_op']:.3f}",
                     f"{100 * m['cpu_spread']:.0f}%",
                     ratio(m["wall_us_per_op"], uv),
                     ratio(m["cpu_us_per_op"], best[0] if best else None),
                     f"{m['failed']} failed: {m['first_error']}" if m["failed"] else ""]
        rows.append(f"| {name} | " + " | ".join(md_escape(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def md_escape(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---- The summary: the cheapest loop per workload, the others as multiples of it ----
# Shared with instructions.py and (through netbench.py) echo.py, http.py and udp.py. A workload's costs are
# {loop: (cost, spread)} for the loops that were measured (spread = (max - min) /
# median over the repeats, or None when there is nothing to measure it from) and
# {loop: "why not"} for the others ("not installed", "error: ...").

def rank(costs):
    """(name of the cheapest loop or None, {loop: (cost / cheapest's, within noise)}).
    A gap is within noise when it is smaller than the larger of the two loops' spreads."""
    measured = {name: c for name, c in costs.items() if not isinstance(c, str)}
    if not measured:
        return None, {}
    fastest = min(measured, key=lambda name: measured[name][0])
    best, best_spread = measured[fastest]
    ratios = {}
    for name, (cost, spread) in measured.items():
        spreads = [x for x in (spread, best_spread) if x is not None]
        ratio = cost / best if best > 0 else float("inf")
        ratios[name] = (ratio, bool(spreads) and ratio - 1 < max(spreads))
    return fastest, ratios


def summary_cell(name, costs, fastest, ratios):
    if name not in ratios:
        return costs.get(name, "not installed")
    if name == fastest:
        return "fastest"
    ratio, noise = ratios[name]
    return f"{ratio:.2f}x" + (" within noise" if noise else "")


def summary_sentence(workload, costs, fastest, ratios):
    """One plain sentence: who is fastest, by how much, and where tokioloop stands."""
    if fastest is None:
        return f"{workload}: no loop was measured."
    others = sorted((ratios[name][0], name) for name in ratios if name != fastest)
    close = [(r, name) for r, name in others if ratios[name][1]]
    text = f"{workload}: {fastest} is fastest"
    if close:
        listed = [f"{name} ({r:.2f}x)" for r, name in close]
        text += (", but " + ", ".join(listed[:-1]) + (" and " if len(listed) > 1 else "")
                 + listed[-1] + (" is" if len(listed) == 1 else " are") + " within noise of it")
    elif others:
        text += f"; the next, {others[0][1]}, needs {others[0][0]:.2f}x as much"
    else:
        text += " (the only loop measured)"
    named = [fastest] + [name for _, name in close or others[:1]]
    if CANDIDATE in ratios and CANDIDATE not in named:
        ratio, noise = ratios[CANDIDATE]
        text += (f"; {CANDIDATE} needs {ratio:.2f}x as much"
                 + (" (within noise)" if noise else ""))
    elif CANDIDATE not in ratios and CANDIDATE in costs:
        text += f"; {CANDIDATE}: {costs[CANDIDATE]}"
    return text + "."


def render_summary(rows, loops, fmt_cost, intro):
    """The summary as Markdown: ``intro``, a table (the fastest loop and its cost by
    ``fmt_cost``, every loop as a multiple of it), then one sentence per row.
    ``rows`` is a list of (workload label, costs) in the order to show."""
    lines = ["## Summary", "", intro, "",
             "| workload | fastest | " + " | ".join(loops) + " |",
             "|---|---|" + "---:|" * len(loops)]
    sentences = []
    for label, costs in rows:
        fastest, ratios = rank(costs)
        best = f"{fastest}, {fmt_cost(costs[fastest][0])}" if fastest else "-"
        cells = [label, best] + [summary_cell(name, costs, fastest, ratios) for name in loops]
        lines.append("| " + " | ".join(md_escape(c) for c in cells) + " |")
        sentences.append("- " + summary_sentence(label, costs, fastest, ratios))
    return "\n".join(lines + [""] + sentences) + "\n"


def summary_costs(med, loops):
    """A micro.py workload's medians as the costs ``render_summary`` takes."""
    costs = {}
    for name in loops:
        m = med.get(name)
        if m is None:
            costs[name] = "not installed"
        elif "error" in m:
            costs[name] = "error"
        else:
            costs[name] = (m["cpu_us_per_op"], m["cpu_spread"] if m["samples"] > 1 else None)
    return costs


def default_json_path(prefix, quick):
    """benches/results/PREFIX[-quick]-YYYYmmdd-HHMMSS.json (shared with netbench.py and
    instructions.py): every run leaves its JSON where benches/chart.py looks."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(RESULTS, f"{prefix}{'-quick' if quick else ''}-{stamp}.json")


def shown_path(path):
    """``path`` relative to the current folder when it is inside it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def csv_arg(parser, value, allowed, what):
    """A comma-separated option: its distinct items, in order; ``parser.error`` on an item not
    in ``allowed`` or on none at all (shared by instructions.py and netbench.py)."""
    items = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        parser.error(f"unknown {what}: {', '.join(bad) or '(empty)'}; "
                     f"choose from {', '.join(allowed)}")
    return items


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="N/10 and repeat=3 (unless --repeat is given)")
    parser.add_argument("--loops", default=",".join(LOOPS),
                        help="comma-separated loops (default: all)")
    parser.add_argument("--repeat", type=int,
                        help="samples per (loop, benchmark); default 5, quick 3")
    parser.add_argument("--json", metavar="PATH",
                        help="where to write raw samples + medians "
                             "(default benches/results/micro[-quick]-DATE-TIME.json)")
    parser.add_argument("--only", help="comma-separated benchmarks (default: all)")
    args = parser.parse_args(argv)

    args.loops = csv_arg(parser, args.loops, LOOPS, "loop")
    args.only = (csv_arg(parser, args.only, BENCHMARKS, "benchmark") if args.only
                 else list(BENCHMARKS))
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json: directory of {args.json} does not exist")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        loop_name, bench_name, n, core = argv[1:5]
        run_child(loop_name, bench_name, int(n), int(core) if int(core) >= 0 else None)
    args = parse_args(argv)
    sizes = {b: BENCHMARKS[b][1] // (10 if args.quick else 1) for b in args.only}
    status = {name: loop_status(name) for name in args.loops}
    present = [name for name in args.loops if status[name] is not None]
    core = pick_core()

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": f"{platform.python_version()} ({platform.python_implementation()}, "
                  f"{platform.machine()}, {platform.system()} {platform.release()})",
        "loops": ", ".join(f"{name} {status[name] or 'not installed'}"
                           for name in args.loops),
        "pinning": (f"every child pinned to core {core} of {os.cpu_count()} "
                    "(threadsafe producer thread unpinned)") if core is not None
                   else "no CPU pinning available",
        "mode": f"{'quick' if args.quick else 'full'}, repeat={args.repeat}, "
                f"child timeout {CHILD_TIMEOUT:.0f}s",
    }
    print("# tokioloop micro-benchmarks\n")
    print("\n".join(f"- {key}: {value}" for key, value in meta.items()))
    print("\nCPU µs/op = process CPU time (all threads) per op: the headline. "
          "CPU spread = (max-min)/median over repeats. "
          "Ratios < 1.0 mean faster/cheaper than the reference.\n", flush=True)

    samples = {b: {name: [] for name in present} for b in args.only}
    raw = []
    total, done = args.repeat * len(args.only) * len(present), 0
    for r in range(args.repeat):
        shift = r % max(len(present), 1)
        order = present[shift:] + present[:shift]  # rotate to spread drift
        for b in args.only:
            for name in order:
                done += 1
                s = run_sample(name, b, sizes[b], core)
                print(f"[{done}/{total}] repeat {r + 1} {b} {name}: "
                      + (s.get("error") or f"{s['cpu'] * 1e6 / s['ops']:.3f} µs/op"),
                      file=sys.stderr, flush=True)
                samples[b][name].append(s)
                raw.append({"loop": name, "bench": b, "repeat": r, "n": sizes[b], **s})

    medians = {b: {name: summarize(samples[b][name]) for name in present}
               for b in args.only}
    for b in args.only:
        print(render(b, sizes[b], args.loops, medians[b]), flush=True)
    print(render_summary(
        [(b, summary_costs(medians[b], args.loops)) for b in args.only], args.loops,
        lambda us: f"{us:.3f} µs/op",
        "Median CPU per op of the fastest loop, and every other loop's as a multiple of "
        "it (1.25x = 25% more CPU per op). "
        + (f"\"within noise\": the gap is smaller than the CPU spread of one of the two "
           f"loops over the {args.repeat} repeats, so this run can't tell them apart"
           if args.repeat > 1 else "One repeat has no spread, so nothing is marked "
           "\"within noise\"; run more repeats to know what is")
        + (" (the short --quick runs are noisy: decide on a full run)." if args.quick
           else ".")), flush=True)

    meta.update(core=core, repeat=args.repeat, sizes=sizes, loop_versions=status,
                python_version=platform.python_version(), quick=args.quick)
    path = args.json or default_json_path("micro", args.quick)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "samples": raw, "medians": medians}, f, indent=1)
    print(f"raw samples and medians written to {shown_path(path)}; "
          "chart them with: python benches/chart.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
