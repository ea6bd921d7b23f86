#!/usr/bin/env python3
"""Subprocess and pipe benchmarks for asyncio event loops: asyncio, uvloop, rloop,
tokioloop (and rsloop when it is importable).

Workloads (benches/subproc_work.py): spawn-and-wait of /bin/true (sequential, 20
concurrent, and sequential from a parent holding a resident 500 MiB heap);
communicate() of 10 MiB through cat; exit-notification latency; a line-by-line
reader over `seq 200000`; connect_read_pipe draining 1 GiB from a dd child and
connect_write_pipe pushing 1 GiB into `cat > /dev/null`.

Every (loop, workload, repeat) sample runs in a fresh process pinned to one core
(the children it spawns inherit the pinning, so the whole tree shares that core);
loops are interleaved within a repeat and rotated from one repeat to the next.
The table gives medians over repeats: the rate (children/s, MiB/s, lines/s) and
the CPU time per unit of the sample process (all threads) plus its reaped
children, from getrusage. A loop that raises NotImplementedError shows as "not
implemented"; any other failure as "error: ..."; the run goes on either way.

The name is not subprocess.py on purpose: benches/ is sys.path[0] of every bench
script, and a benches/subprocess.py would shadow the stdlib module for all of them.

Usage:
    python benches/subproc.py [--quick] [--loops asyncio,uvloop,rloop,tokioloop]
                              [--only spawn_seq,...] [--repeat N] [--heap-mib 500]
                              [--json PATH]
"""

import argparse
import collections
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.realpath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import micro  # noqa: E402  (csv_arg, pick_core)
import subproc_work as work  # noqa: E402

CHILD_TIMEOUT = 120.0  # seconds per sample process
CANDIDATE = "tokioloop"

LOOPS = {  # name -> (module, distribution)
    "asyncio": ("asyncio", None),
    "uvloop": ("uvloop", "uvloop"),
    "rloop": ("rloop", "rloop"),
    "tokioloop": ("tokioloop", "tokioloop"),
    "rsloop": ("rsloop", "rsloop"),
}
DEFAULT_LOOPS = ("asyncio", "uvloop", "rloop", "tokioloop", "rsloop")

# func(loop, n, ctx) runs n rounds; full / quick: n of a full / --quick run; warm: n
# of the warm-up; unit: what `units` counts; rate: label of units/s; cpu: (label,
# per-unit scale); heap: the sample holds a --heap-mib heap; latency: the exit
# latency table; size: what n means, for the table's title.
Spec = collections.namedtuple("Spec",
                              "func full quick warm unit rate cpu heap latency size")
PER_CHILD = ("µs/child", 1e6)
PER_MIB = ("µs/MiB", 1e6)
WORKLOADS = {
    "spawn_seq": Spec(work.spawn_seq, 1000, 200, 20, "child", "children/s", PER_CHILD,
                      False, False, "{:,} children of /bin/true, one at a time"),
    "spawn_conc20": Spec(work.spawn_concurrent, 2000, 400, 40, "child", "children/s",
                         PER_CHILD, False, False,
                         "{:,} children of /bin/true, 20 at a time"),
    "spawn_heap": Spec(work.spawn_seq, 300, 100, 5, "child", "children/s", PER_CHILD,
                       True, False, "{:,} children of /bin/true, one at a time"),
    "communicate_10m": Spec(work.communicate_cat, 10, 3, 1, "MiB", "MiB/s", PER_MIB,
                            False, False, "{} x communicate() of 10 MiB through cat"),
    "exit_latency": Spec(work.exit_latency, 500, 100, 10, "child", "children/s",
                         PER_CHILD, False, True, "{:,} children, one at a time"),
    "readline": Spec(work.readline_chatty, 5, 1, 1, "line", "lines/s", ("ns/line", 1e9),
                     False, False, "{} x `seq 200000` read line by line"),
    "read_pipe": Spec(work.read_pipe, 1024, 256, 16, "MiB", "MiB/s", PER_MIB,
                      False, False, "{:,} MiB from dd through connect_read_pipe"),
    "write_pipe": Spec(work.write_pipe, 1024, 256, 16, "MiB", "MiB/s", PER_MIB,
                       False, False, "{:,} MiB through connect_write_pipe into cat"),
}


def make_loop(name):
    if name == "asyncio":
        import asyncio
        return asyncio.new_event_loop()
    return __import__(LOOPS[name][0]).new_event_loop()


def loop_status(name):
    """Version string, or None when the loop's module can't be imported."""
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


# ---- The exit-stamp helper ----

def stamp_helper(tmpdir):
    """(argv, description) of the child that prints CLOCK_MONOTONIC and exits: the
    compiled benches/exit_stamp.c, or a python -S -I one-liner without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    src, exe = os.path.join(HERE, "exit_stamp.c"), os.path.join(tmpdir, "exit_stamp")
    if cc:
        for flags in (["-static"], []):
            proc = subprocess.run([cc, "-O2", *flags, "-o", exe, src],
                                  capture_output=True)
            if proc.returncode == 0:
                return [exe], f"benches/exit_stamp.c ({' '.join(['cc -O2', *flags])})"
    code = ("import os,time;os.write(1,b'%d\\n'%time.clock_gettime_ns("
            "time.CLOCK_MONOTONIC));os._exit(0)")
    exe = os.path.realpath(sys.executable)
    return [exe, "-S", "-I", "-c", code], "python -S -I one-liner (no C compiler found)"


# ---- Running one sample ----

def run_sample(loop_name, wname, n, core, heap_mib, ctx):
    spec = WORKLOADS[wname]
    cmd = [sys.executable, os.path.abspath(__file__), "--child", loop_name, wname, str(n),
           "-1" if core is None else str(core), str(heap_mib if spec.heap else 0),
           json.dumps(ctx)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the sample and whatever it spawned
        proc.communicate()
        return {"error": f"timeout after {CHILD_TIMEOUT:.0f}s"}
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    rc = proc.returncode
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
    tail = (err.strip().splitlines() or ["no output"])[-1]
    return {"error": f"child {how}: {tail}"[:200]}


def child_main(argv):
    loop_name, wname, n, core, heap_mib, ctx = argv
    spec, n = WORKLOADS[wname], int(n)
    work.run_sample(lambda: make_loop(loop_name), spec.func, n,
                    min(spec.warm, n), None if int(core) < 0 else int(core),
                    int(heap_mib), json.loads(ctx))


# ---- Aggregation ----

def pct(values, q):
    """The q-quantile by rank (nearest rank, no interpolation)."""
    s = sorted(values)
    return s[max(math.ceil(q * len(s)) - 1, 0)]


def figures(sample, spec):
    """The per-sample numbers the tables use."""
    units, scale = sample["units"], spec.cpu[1]
    f = {"rate": units / sample["wall"],
         "cpu": scale * (sample["cpu_self"] + sample["cpu_children"]) / units,
         "cpu_self": scale * sample["cpu_self"] / units}
    if "rss_mib" in sample:
        f["rss_mib"] = sample["rss_mib"]
    if spec.latency:
        f.update(exited_p50=pct(sample["lat_exited_us"], 0.5),
                 wait_p50=pct(sample["lat_wait_us"], 0.5),
                 wait_p99=pct(sample["lat_wait_us"], 0.99))
    return f


def summarize(samples, spec):
    ok = [figures(s, spec) for s in samples if "error" not in s]
    errors = [s for s in samples if "error" in s]
    if not ok:
        if not errors:
            return {"error": "no samples"}
        first = errors[0]
        return {"error": first["error"], "not_implemented": first.get("not_implemented"),
                "failed": len(errors)}
    med = {k: statistics.median(f[k] for f in ok) for k in ok[0]}
    key = "wait_p50" if spec.latency else "cpu"
    vals = [f[key] for f in ok]
    med["spread"] = (max(vals) - min(vals)) / statistics.median(vals) if len(ok) > 1 else None
    med.update(samples=len(ok), failed=len(errors),
               first_error=errors[0]["error"] if errors else None)
    return med


def headline(spec):
    """(key, lower is better) pairs the verdict checks."""
    if spec.latency:
        return [("wait_p50", True)]
    return [("rate", False), ("cpu", True)]


def best_peer(med, key, lower):
    vals = [(m[key], name) for name, m in med.items()
            if name != CANDIDATE and key in m]
    if not vals:
        return None
    return min(vals) if lower else max(vals)


def paired(by_loop, spec, key, lower):
    """Per repeat: tokioloop's figure over the best peer's in that same repeat."""
    out = []
    for r, cand in enumerate(by_loop.get(CANDIDATE, [])):
        if "error" in cand:
            continue
        peers = [figures(s[r], spec)[key] for name, s in by_loop.items()
                 if name != CANDIDATE and len(s) > r and "error" not in s[r]]
        if peers:
            best = min(peers) if lower else max(peers)
            out.append(figures(cand, spec)[key] / best)
    return out


# ---- Rendering ----

def cell_error(m):
    if m.get("not_implemented"):
        return "not implemented: " + m["error"].split(": ", 1)[-1]
    return "error: " + m["error"]


def ratio(x, ref):
    return f"{x / ref:.2f}" if ref else "-"


def render(wname, n, spec, loops, med, by_loop):
    uv = med.get("uvloop", {})
    if spec.latency:
        header = ("| loop | to process_exited p50 µs | to wait() p50 µs | to wait() p99 µs "
                  "| p50 spread | p50 x best peer | p50 vs uvloop | CPU µs/child | notes |")
        best = best_peer(med, "wait_p50", True)
    else:
        header = (f"| loop | {spec.rate} | rate x best peer | rate vs uvloop "
                  f"| CPU {spec.cpu[0]} (proc+children) | of which the loop's process "
                  "| CPU spread | CPU x best peer | CPU vs uvloop | notes |")
        best_rate, best_cpu = best_peer(med, "rate", False), best_peer(med, "cpu", True)
    rss = max((m.get("rss_mib", 0) for m in med.values()), default=0)
    rss = f", sample process VmRSS {rss:,.0f} MiB" if rss else ""
    rows = [f"### {wname} ({spec.size.format(n)}{rss})", "", header,
            "|---|" + "---:|" * (header.count("|") - 3) + "---|"]
    for name in loops:
        m = med.get(name)
        if m is None:
            cells = ["not installed"]
        elif "error" in m:
            cells = [cell_error(m)]
        elif spec.latency:
            cells = [f"{m['exited_p50']:.0f}", f"{m['wait_p50']:.0f}", f"{m['wait_p99']:.0f}",
                     f"{100 * m['spread']:.0f}%" if m["spread"] is not None else "-",
                     ratio(m["wait_p50"], best[0] if best else None),
                     ratio(m["wait_p50"], uv.get("wait_p50")), f"{m['cpu']:.0f}"]
        else:
            prec = 0 if m["rate"] >= 100 else 1
            cells = [f"{m['rate']:,.{prec}f}",
                     ratio(m["rate"], best_rate[0] if best_rate else None),
                     ratio(m["rate"], uv.get("rate")),
                     f"{m['cpu']:,.0f}" if m["cpu"] >= 100 else f"{m['cpu']:.1f}",
                     f"{m['cpu_self']:,.0f}" if m["cpu_self"] >= 100 else f"{m['cpu_self']:.1f}",
                     f"{100 * m['spread']:.0f}%" if m["spread"] is not None else "-",
                     ratio(m["cpu"], best_cpu[0] if best_cpu else None),
                     ratio(m["cpu"], uv.get("cpu"))]
        if m is not None and "error" not in m:
            cells.append(f"{m['failed']} failed: {m['first_error']}" if m["failed"] else "")
        cells += [""] * (header.count("|") - 2 - len(cells))
        cells = [c.replace("|", "\\|").replace("\n", " ") for c in cells]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    if CANDIDATE in loops:
        rows += ["", verdict(spec, med, by_loop)]
    return "\n".join(rows) + "\n"


def verdict(spec, med, by_loop):
    """Is tokioloop ahead of the best other loop on every headline figure?"""
    cand = med.get(CANDIDATE)
    if cand is None:
        return f"**{CANDIDATE}: not installed.**"
    if "error" in cand:
        what = "not implemented" if cand.get("not_implemented") else "FAIL (error)"
        return f"**{CANDIDATE}: {what}.**"
    parts, ok = [], True
    for key, lower in headline(spec):
        best = best_peer(med, key, lower)
        if best is None:
            return f"**{CANDIDATE}: n/a (no other loop measured).**"
        x = cand[key] / best[0]
        ok &= x <= 1 if lower else x >= 1
        pr = paired(by_loop, spec, key, lower)
        parts.append(f"{key} x{x:.2f} of best ({best[1]})"
                     + (f", paired x{statistics.median(pr):.2f} "
                        f"(x{min(pr):.2f}..x{max(pr):.2f})" if len(pr) > 1 else ""))
    return (f"**{CANDIDATE}: {'PASS' if ok else 'FAIL'}** — " + "; ".join(parts)
            + (f"; WARNING: {cand['failed']} sample(s) failed." if cand["failed"] else "."))


# ---- Command line ----

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller n (see benches/README.md) and repeat=3 unless given")
    parser.add_argument("--loops", default=",".join(DEFAULT_LOOPS),
                        help="comma-separated loops (default: all; missing ones are listed "
                             "as not installed, except rsloop, which is skipped)")
    parser.add_argument("--only", help="comma-separated workloads (default: all)")
    parser.add_argument("--repeat", type=int, help="samples per (loop, workload); "
                                                   "default 5, quick 3")
    parser.add_argument("--heap-mib", type=int, default=500,
                        help="resident heap of the spawn_heap parent (default 500)")
    parser.add_argument("--json", metavar="PATH", help="write raw samples + medians")
    args = parser.parse_args(argv)
    explicit = args.loops != parser.get_default("loops")
    args.loops = micro.csv_arg(parser, args.loops, LOOPS, "loop")
    if not explicit and loop_status("rsloop") is None:
        args.loops.remove("rsloop")  # optional peer: only listed when asked for or present
    args.only = (micro.csv_arg(parser, args.only, WORKLOADS, "workload") if args.only
                 else list(WORKLOADS))
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.repeat < 1 or args.heap_mib < 0:
        parser.error("--repeat must be >= 1 and --heap-mib >= 0")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json: directory of {args.json} does not exist")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1:])  # never returns
    args = parse_args(argv)
    status = {name: loop_status(name) for name in args.loops}
    present = [name for name in args.loops if status[name] is not None]
    sizes = {w: getattr(WORKLOADS[w], "quick" if args.quick else "full") for w in args.only}
    core = micro.pick_core()
    tmpdir = tempfile.mkdtemp(prefix="subproc-bench-")
    try:
        helper, helper_desc = stamp_helper(tmpdir)
        ctx = {"stamp_helper": helper, "tmpdir": tmpdir}
        meta = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": f"{platform.python_version()} ({platform.machine()}, "
                      f"{platform.system()} {platform.release()})",
            "loops": ", ".join(f"{name} {status[name] or 'not installed'}"
                               for name in args.loops),
            "pinning": (f"each sample process and all its children pinned to core {core} "
                        f"of {os.cpu_count()}") if core is not None else "no CPU pinning",
            "mode": f"{'quick' if args.quick else 'full'}, repeat={args.repeat}, "
                    f"heap {args.heap_mib} MiB for spawn_heap, exit stamp: {helper_desc}",
        }
        print("# tokioloop subprocess and pipe benchmarks\n")
        print("\n".join(f"- {k}: {v}" for k, v in meta.items()))
        print("\nCPU = user+sys time of the sample process (all threads) plus its reaped "
              "children, per unit; medians over repeats. Peers = every loop but "
              "tokioloop. Rate ratios > 1 and CPU/latency ratios < 1 are better.\n",
              flush=True)
        samples, raw = run_all(args, present, sizes, core, ctx)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    medians = {w: {name: summarize(samples[w][name], WORKLOADS[w]) for name in present}
               for w in args.only}
    for w in args.only:
        print(render(w, sizes[w], WORKLOADS[w], args.loops, medians[w], samples[w]),
              flush=True)
    if args.json:
        meta.update(core=core, repeat=args.repeat, sizes=sizes, loop_versions=status)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "samples": raw, "medians": medians}, f, indent=1)
        print(f"raw samples and medians written to {args.json}")
    return 0


def run_all(args, present, sizes, core, ctx):
    """Every sample, loops interleaved and rotated per repeat. A (loop, workload) that
    raised NotImplementedError or timed out is not tried again in later repeats."""
    samples = {w: {name: [] for name in present} for w in args.only}
    raw, skip = [], set()
    total, done = args.repeat * len(args.only) * len(present), 0
    for r in range(args.repeat):
        shift = r % max(len(present), 1)
        order = present[shift:] + present[:shift]
        for w in args.only:
            spec = WORKLOADS[w]
            for name in order:
                done += 1
                if (name, w) in skip:
                    continue
                s = run_sample(name, w, sizes[w], core, args.heap_mib, ctx)
                if s.get("not_implemented") or s.get("error", "").startswith("timeout"):
                    skip.add((name, w))
                samples[w][name].append(s)
                raw.append({"loop": name, "workload": w, "repeat": r, "n": sizes[w], **s})
                print(f"[{done}/{total}] repeat {r + 1} {w} {name}: " + progress(s, spec),
                      file=sys.stderr, flush=True)
    return samples, raw


def progress(s, spec):
    if "error" in s:
        return s["error"]
    f = figures(s, spec)
    text = f"{f['rate']:,.1f} {spec.rate}, CPU {f['cpu']:,.1f} {spec.cpu[0]}"
    if spec.latency:
        text += f", exit->wait() p50 {f['wait_p50']:.0f} µs p99 {f['wait_p99']:.0f} µs"
    return text


if __name__ == "__main__":
    sys.exit(main())
