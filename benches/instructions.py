#!/usr/bin/env python3
"""Instructions per operation for asyncio event loops, counted by callgrind.

Runs each workload of micro.py (asyncio, uvloop, rloop, tokioloop) in a child
under `valgrind --tool=callgrind` and reports how many instructions the loop
executes per operation. Unlike wall or CPU time, instruction counts barely move
when neighbours on a shared machine compete for the cores, so small
differences between loops become visible.

Every (loop, workload) pair is run twice, in two fresh children: once with N
and once with a small N0. Both pay the same interpreter start-up, imports and
loop creation, so

    instr/op = (Ir(N) - Ir(N0)) / (N - N0)

is the marginal cost of one op. Ir counts user-space instructions of all
threads of the child (callgrind runs them one at a time); time spent in the
kernel (syscalls) is not counted.

Usage:
    python benches/instructions.py [--quick] [--loops asyncio,uvloop,rloop,tokioloop]
                                   [--only NAME,...] [--json PATH] [--jobs 2]
"""

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import micro  # noqa: E402  (the workloads, loop names and versions live there)

CHILD_TIMEOUT = 900.0  # seconds, per valgrind child
SIZES = {  # N for the full run; callgrind is ~50x slower than native
    "call_soon": 50_000,
    "call_later": 20_000,
    "timer_cancel": 20_000,
    "gather": 10_000,
    "sleep0": 50_000,
    "future_pingpong": 20_000,
    "threadsafe": 50_000,
}
N0_DIVISOR = 100  # N0 = max(N // N0_DIVISOR, N0_MIN)
N0_MIN = 100
CHILD_ENV = {
    "PYTHONHASHSEED": "0",  # same str hashes (and set orders) in every child
    "PYTHONDONTWRITEBYTECODE": "1",  # no child pays for writing a .pyc
}

assert set(SIZES) == set(micro.BENCHMARKS), "SIZES must cover micro.BENCHMARKS"


# ---- Child side: run one workload once, print one JSON line. ----

def run_child(loop_name, bench_name, n):
    micro.child_main(loop_name, bench_name, n, lambda loop, func, n: {"ops": func(loop, n)})


# ---- Parent side. ----

def real_python():
    """The interpreter to run under valgrind. valgrind can't run a pyenv shell shim, so a bare
    interpreter is resolved to its binary; a virtual environment's own python (a symlink to a
    binary) is kept as it is: resolving it would leave the venv, and the children could not
    import the loops installed there."""
    if sys.prefix != sys.base_prefix:
        return os.path.abspath(sys.executable)
    return os.path.realpath(sys.executable)


def valgrind_version():
    """`valgrind --version`, or exit with a clear message if unusable."""
    exe = shutil.which("valgrind")
    if exe is None:
        sys.exit("error: valgrind not found on PATH. Install it "
                 "(Debian/Ubuntu: apt-get install -y valgrind) and retry.")
    version = subprocess.run([exe, "--version"], capture_output=True,
                             text=True).stdout.strip()
    probe = subprocess.run(
        [exe, "--tool=callgrind", "--callgrind-out-file=/dev/null", real_python(),
         "-c", "pass"], capture_output=True, text=True)
    if probe.returncode != 0 or parse_ir(probe.stderr) is None:
        tail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"error: `valgrind --tool=callgrind` does not work here "
                 f"(exit status {probe.returncode}: {tail})")
    return exe, version or "unknown version"


def parse_ir(stderr):
    """Total instructions from callgrind's summary on stderr, or None."""
    for pattern in (r"^==\d+==\s+Collected\s*:\s*(\d+)",
                    r"^==\d+==\s+I\s+refs:\s+([\d,]+)"):
        found = re.findall(pattern, stderr, re.MULTILINE)
        if found:
            return int(found[-1].replace(",", ""))
    return None


def run_counted(valgrind, loop_name, bench_name, n):
    """One child under callgrind: {"ir", "ops", "seconds"} or {"error"}."""
    cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null",
           real_python(), os.path.abspath(__file__), "--child",
           loop_name, bench_name, str(n)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT, env={**os.environ, **CHILD_ENV})
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {CHILD_TIMEOUT:.0f}s"}
    seconds = time.perf_counter() - t0
    result = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                pass
            break
    ir = parse_ir(proc.stderr)
    if result is None or ir is None:
        rc = proc.returncode
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        own = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("==")]
        what = "no result" if result is None else "no callgrind summary"
        return {"error": f"child {how}, {what}: {(own or ['no output'])[-1]}"[:200]}
    if "error" in result:
        return result
    return {**result, "ir": ir, "seconds": round(seconds, 1)}


def per_op(big, small):
    """instr/op from the N and N0 runs, or {"error"}."""
    for run in (big, small):
        if "error" in run:
            return {"error": run["error"]}
    return {"instr_per_op": (big["ir"] - small["ir"]) / (big["ops"] - small["ops"])}


def extension_stamp(module):
    """(path, mtime) of the newest compiled extension in module's package.

    tokioloop is often rebuilt in place while a long run is going; comparing
    this stamp before and after tells whether every child saw the same build.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    found = []
    for folder in spec.submodule_search_locations:
        for entry in os.scandir(folder):
            if entry.name.endswith((".so", ".pyd")):
                found.append((entry.stat().st_mtime, entry.path))
    if not found:
        return None
    mtime, path = max(found)
    return path, mtime


def fmt_stamp(stamp):
    when = datetime.datetime.fromtimestamp(stamp[1]).astimezone()
    return f"{os.path.basename(stamp[0])} built {when.isoformat(timespec='seconds')}"


def fmt_count(x):
    return f"{x:,.0f}"


def render(benches, loops, status, sizes, n0s, results):
    """One compact markdown table + one verdict line per workload."""
    cand = micro.CANDIDATE
    peers = [p for p in micro.PEERS if p in loops]
    head = ["workload", "N / N0"] + list(loops)
    if cand in loops and peers:
        head.append(f"{cand} / best of {','.join(peers)}")
    rows = ["| " + " | ".join(head) + " |",
            "|---|---:|" + "---:|" * (len(head) - 2)]
    verdicts = []
    for b in benches:
        cells = [b, f"{sizes[b]:,} / {n0s[b]:,}"]
        for name in loops:
            if status[name] is None:
                cells.append("not installed")
            elif "error" in results[b][name]:
                cells.append("error: " + results[b][name]["error"])
            else:
                cells.append(fmt_count(results[b][name]["instr_per_op"]))
        got = {name: results[b][name]["instr_per_op"] for name in loops
               if status[name] is not None and "instr_per_op" in results[b][name]}
        best = min(((got[p], p) for p in peers if p in got), default=None)
        if cand in loops and peers:
            cells.append(f"{got[cand] / best[0]:.2f}" if cand in got and best else "-")
            if status[cand] is None:
                line = "not installed"
            elif cand not in got:
                line = "**FAIL** (error)"
            elif best is None:
                line = "n/a (no peer measured)"
            else:
                ratio = got[cand] / best[0]
                line = (f"**{'PASS' if ratio <= 1.0 else 'FAIL'}**: "
                        f"{fmt_count(got[cand])} vs {best[1]} {fmt_count(best[0])} "
                        f"instr/op (x{ratio:.2f})")
            verdicts.append(f"- {b}: {line}")
        cells = [c.replace("|", "\\|").replace("\n", " ") for c in cells]
        rows.append("| " + " | ".join(cells) + " |")
    out = "\n".join(rows) + "\n"
    if verdicts:
        out += f"\n{cand} verdict (PASS if instr/op <= best peer):\n\n"
        out += "\n".join(verdicts) + "\n"
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="halve every N")
    parser.add_argument("--loops", default=",".join(micro.LOOPS),
                        help="comma-separated loops (default: all)")
    parser.add_argument("--only", help="comma-separated workloads (default: all)")
    parser.add_argument("--json", metavar="PATH", help="write raw counts + results")
    parser.add_argument("--jobs", type=int, default=2,
                        help="children run in parallel (default 2; counts are "
                             "unaffected by contention)")
    args = parser.parse_args(argv)

    args.loops = micro.csv_arg(parser, args.loops, micro.LOOPS, "loop")
    args.only = micro.csv_arg(parser, args.only, SIZES, "workload") if args.only else list(SIZES)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json: directory of {args.json} does not exist")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        run_child(argv[1], argv[2], int(argv[3]))
    args = parse_args(argv)
    valgrind, vg_version = valgrind_version()
    sizes = {b: SIZES[b] // (2 if args.quick else 1) for b in args.only}
    n0s = {b: max(sizes[b] // N0_DIVISOR, N0_MIN) for b in args.only}
    status = {name: micro.loop_status(name) for name in args.loops}
    present = [name for name in args.loops if status[name] is not None]
    stamp = extension_stamp(micro.CANDIDATE) if micro.CANDIDATE in present else None

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": f"{platform.python_version()} ({platform.python_implementation()}, "
                  f"{platform.machine()}, {platform.system()} {platform.release()}), "
                  f"{real_python()}",
        "loops": ", ".join(f"{name} {status[name] or 'not installed'}"
                           for name in args.loops),
        "valgrind": f"{vg_version}, --tool=callgrind",
        f"{micro.CANDIDATE} extension": fmt_stamp(stamp) if stamp else "-",
        "mode": f"{'quick' if args.quick else 'full'}, N0 = max(N/{N0_DIVISOR}, "
                f"{N0_MIN}), {args.jobs} children at a time, "
                f"PYTHONHASHSEED={CHILD_ENV['PYTHONHASHSEED']}",
    }
    print("# tokioloop instructions per op (callgrind)\n")
    print("\n".join(f"- {key}: {value}" for key, value in meta.items()))
    print("\ninstr/op = (Ir(N) - Ir(N0)) / (N - N0): user-space instructions of "
          "all threads per op, start-up cancelled out. Kernel time is not "
          "counted. Lower is better.\n", flush=True)

    jobs = [(b, name, n) for b in args.only for name in present
            for n in (sizes[b], n0s[b])]
    runs = {}
    t_start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_counted, valgrind, name, b, n): (b, name, n)
                   for b, name, n in jobs}
        for done, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            b, name, n = futures[fut]
            runs[b, name, n] = r = fut.result()
            print(f"[{done}/{len(jobs)}] {b} {name} N={n}: "
                  + (r.get("error") or f"Ir={r['ir']:,} ({r['seconds']:.0f}s)"),
                  file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t_start

    results = {b: {name: per_op(runs[b, name, sizes[b]], runs[b, name, n0s[b]])
                   for name in present} for b in args.only}
    print(render(args.only, args.loops, status, sizes, n0s, results))
    print(f"{len(jobs)} callgrind runs in {elapsed / 60:.1f} min.", flush=True)
    if stamp and extension_stamp(micro.CANDIDATE) != stamp:
        meta["warning"] = (f"{micro.CANDIDATE} was rebuilt during the run: its "
                           "children may have measured different builds")
        print(f"\n**WARNING: {meta['warning']}; re-run.**", flush=True)

    if args.json:
        meta.update(sizes=sizes, n0=n0s, loop_versions=status, elapsed_s=round(elapsed))
        raw = [{"loop": name, "bench": b, "n": n, **runs[b, name, n]}
               for b, name, n in jobs]
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "runs": raw, "results": results}, f, indent=1)
        print(f"raw counts and results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
