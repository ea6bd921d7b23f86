#!/usr/bin/env python3
"""Instructions per operation for asyncio event loops, counted by callgrind.

Runs each workload of micro.py (asyncio, uvloop, rloop, tokioloop) in a child
under `valgrind --tool=callgrind` and reports how many instructions the loop
executes per operation. Unlike wall or CPU time, instruction counts barely move
when neighbours on a shared machine compete for the cores, so small
differences between loops become visible. rsloop is not run: it hangs under
valgrind (its io_uring reactor and dispatcher thread), so its cells say so.

Every (loop, workload) pair is run twice, in two fresh children: once with N
and once with a small N0. Both pay the same interpreter start-up, imports and
loop creation, so

    instr/op = (Ir(N) - Ir(N0)) / (N - N0)

is the marginal cost of one op. Ir counts user-space instructions of all
threads of the child (callgrind runs them one at a time); time spent in the
kernel (syscalls) is not counted.

With --split (the default), the same two runs also say where the instructions
were spent: callgrind's profile gives each ELF object's self cost, and the
same differencing per object splits instr/op into CPython (the interpreter and
the stdlib's extension modules), the loop's own native code (its extension
module) and libc + other. The report ends with a summary: per workload, the
loop with the fewest instructions per op and every other one as a multiple.

Usage:
    python benches/instructions.py [--quick] [--loops asyncio,uvloop,rloop,rsloop,tokioloop]
                                   [--only NAME,...] [--json PATH] [--jobs 2]
                                   [--no-split]
"""

import argparse
import concurrent.futures
import contextlib
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
import sysconfig
import tempfile
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
    "sleep_1ms": 500,
    "future_pingpong": 20_000,
    "threadsafe": 50_000,
    "tcp_pingpong": 10_000,
    "streams_pingpong": 5_000,
}
N0_DIVISOR = 100  # N0 = max(N // N0_DIVISOR, N0_MIN)
N0_MIN = 100
CHILD_ENV = {
    "PYTHONHASHSEED": "0",  # same str hashes (and set orders) in every child
    "PYTHONDONTWRITEBYTECODE": "1",  # no child pays for writing a .pyc
}

assert set(SIZES) == set(micro.BENCHMARKS), "SIZES must cover micro.BENCHMARKS"
NOT_UNDER_VALGRIND = {  # loop -> why it is not run at all (it would hang until the timeout)
    "rsloop": "not measurable under valgrind",  # io_uring + a dispatcher thread: it hangs
}
# Reproducibility of a count: two full runs agreed within 0.4% on every cell but
# asyncio threadsafe (3%, callgrind's coarse thread switching). The summary calls a
# gap smaller than this "within noise".
INSTR_NOISE = {"threadsafe": 0.03}
INSTR_NOISE_DEFAULT = 0.01
# Where a split puts an ELF object's instructions, in the report's column order.
KINDS = ("cpython", "native", "other")
KIND_LABELS = {"cpython": "CPython", "native": "the loop's native code",
               "other": "libc + other"}


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


def self_cost_by_object(path):
    """{ELF object: instructions executed in its own code} from a callgrind out file.

    A cost line ("POSITION IR", positions relative or not) is charged to the object
    of the last ``ob=``. The line after ``calls=`` is the inclusive cost of that
    call, already counted in the callee's own lines, so it is skipped. Object names
    may be compressed: ``ob=(n) name`` (or ``cob=(n) name``) defines n, a later
    ``ob=(n)`` refers to it; ob and cob share the numbering."""
    names, totals = {}, {}
    obj, skip, npos = "???", False, 1
    with open(path, errors="replace") as f:
        for line in f:
            first = line[:1]
            if first.isdigit() or first in "+-*":
                if skip:
                    skip = False
                    continue
                fields = line.split()
                if len(fields) > npos:  # no cost given means 0
                    totals[obj] = totals.get(obj, 0) + int(fields[npos])
            elif line.startswith(("ob=", "cob=")):
                spec = line.split("=", 1)[1].strip()
                if spec.startswith("("):
                    key, _, name = spec.partition(")")
                    name = name.strip()
                    if name:
                        names[key] = name
                    else:
                        name = names.get(key, "???")
                else:
                    name = spec
                if first == "o":
                    obj = name
            elif line.startswith("calls="):
                skip = True
            elif line.startswith("positions:"):
                npos = len(line.split()) - 1  # "line", or "instr line"
    return totals


PYTHON_OBJECT = re.compile(r"(lib)?python\d[\d.]*[a-z]*(\.so[\d.]*)?$")


def native_dirs(loop_name):
    """Folders whose shared objects are the loop's own native code: its package's, and
    an auditwheel "<package>.libs" beside it. None for asyncio: its C parts
    (_asyncio, select...) are stdlib extension modules, which count as CPython."""
    module, dist = micro.LOOPS[loop_name]
    if dist is None:
        return ()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return ()
    dirs = [os.path.realpath(d) for d in (spec.submodule_search_locations or ())] if spec else []
    return tuple(dirs + [d + ".libs" for d in dirs])


def object_kind(path, loop_dirs, stdlib=os.path.realpath(sysconfig.get_path("stdlib"))):
    """"native" (the loop's extension), "cpython" (the interpreter binary, libpython,
    the stdlib's extension modules) or "other" (libc, ld.so, valgrind's preload...)."""
    real = os.path.realpath(path) if path.startswith("/") else path
    if any(real.startswith(d + os.sep) for d in loop_dirs):
        return "native"
    if PYTHON_OBJECT.match(os.path.basename(real)):
        return "cpython"
    if real.startswith(stdlib + os.sep) and not {"site-packages", "dist-packages"} & set(
            real.split(os.sep)):  # lib-dynload: _asyncio, select, _contextvars...
        return "cpython"
    return "other"


def run_counted(valgrind, loop_name, bench_name, n, split):
    """One child under callgrind: {"ir", "ops", "seconds"} (and with ``split``,
    "objects": {ELF object: self instructions}) or {"error"}."""
    fd, out_file = tempfile.mkstemp(prefix="tokioloop-callgrind-")
    os.close(fd)
    cmd = [valgrind, "--tool=callgrind",
           f"--callgrind-out-file={out_file if split else '/dev/null'}", "--dump-instr=no",
           real_python(), os.path.abspath(__file__), "--child",
           loop_name, bench_name, str(n)]
    t0 = time.perf_counter()
    objects, split_error = None, None
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=CHILD_TIMEOUT, env={**os.environ, **CHILD_ENV})
        except subprocess.TimeoutExpired:
            return {"error": f"timeout after {CHILD_TIMEOUT:.0f}s"}
        seconds = time.perf_counter() - t0
        if split:
            try:
                objects = self_cost_by_object(out_file)
            except (OSError, ValueError) as exc:
                split_error = f"profile unreadable: {exc}"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out_file)
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
    result.update(ir=ir, seconds=round(seconds, 1))
    if objects is not None and sum(objects.values()) != ir:
        split_error = f"profile total {sum(objects.values()):,} != Collected {ir:,}"
    if split_error:  # the split is left out; the total stands
        result["split_error"] = split_error
    elif objects is not None:
        result["objects"] = objects
    return result


def per_op(big, small, loop_dirs):
    """instr/op from the N and N0 runs (and its split by kind of object), or {"error"}."""
    for run in (big, small):
        if "error" in run:
            return {"error": run["error"]}
    ops = big["ops"] - small["ops"]
    result = {"instr_per_op": (big["ir"] - small["ir"]) / ops}
    if "objects" in big and "objects" in small:
        kinds = dict.fromkeys(KINDS, 0)
        for run, sign in ((big, 1), (small, -1)):
            for path, ir in run["objects"].items():
                kinds[object_kind(path, loop_dirs)] += sign * ir
        result["split"] = {kind: ir / ops for kind, ir in kinds.items()}
    return result


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


def result_cell(status, result):
    """A loop's cell text when it has no count: why not; else None."""
    if status is None:
        return "not installed"
    if "skipped" in result:
        return result["skipped"]
    if "error" in result:
        return "error: " + result["error"]
    return None


def render(benches, loops, status, sizes, n0s, results):
    """One compact markdown table: instr/op per workload and loop."""
    cand = micro.CANDIDATE
    peers = [p for p in micro.PEERS if p in loops]
    head = ["workload", "N / N0"] + list(loops)
    if cand in loops and peers:
        head.append(f"{cand} / best of {','.join(peers)}")
    rows = ["| " + " | ".join(head) + " |",
            "|---|---:|" + "---:|" * (len(head) - 2)]
    for b in benches:
        cells = [b, f"{sizes[b]:,} / {n0s[b]:,}"]
        for name in loops:
            res = results[b].get(name, {})
            cells.append(result_cell(status[name], res) or fmt_count(res["instr_per_op"]))
        got = {name: results[b][name]["instr_per_op"] for name in loops
               if "instr_per_op" in results[b].get(name, {})}
        best = min(((got[p], p) for p in peers if p in got), default=None)
        if cand in loops and peers:
            cells.append(f"{got[cand] / best[0]:.2f}" if cand in got and best else "-")
        rows.append("| " + " | ".join(micro.md_escape(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def render_split(benches, loops, status, results):
    """instr/op split by kind of ELF object: CPython, the loop's native code, the rest."""
    rows = ["## Where the instructions go, per op", "",
            "Self cost of each ELF object in callgrind's profile, differenced like the "
            "total: (at N - at N0) / (N - N0). **CPython**: the interpreter (python, "
            "libpython) and the stdlib's extension modules, which for asyncio includes its "
            "C accelerator `_asyncio`. **The loop's native code**: the loop's own extension "
            "module(s), what the loop itself costs (asyncio has none); the share of the "
            "total in brackets. **libc + other**: libc, the dynamic linker, everything "
            "else. The Python code of the workload itself runs in CPython for every loop.",
            "", "| workload | loop | CPython | the loop's native code | libc + other | total |",
            "|---|---|---:|---:|---:|---:|"]
    missing = {}
    for b in benches:
        for name in loops:
            res = results[b].get(name, {})
            if "split" not in res:
                why = result_cell(status[name], res) or "no profile"
                missing.setdefault(name, why)
                continue
            split = res["split"]
            total = sum(split.values())
            native = (f"{fmt_count(split['native'])} ({100 * split['native'] / total:.0f}%)"
                      if name != "asyncio" else "-")
            rows.append(f"| {b} | {name} | {fmt_count(split['cpython'])} | {native} | "
                        f"{fmt_count(split['other'])} | {fmt_count(total)} |")
    if missing:
        rows += ["", "Not in this table: " + "; ".join(
            f"{name} ({micro.md_escape(why)})" for name, why in missing.items()) + "."]
    return "\n".join(rows) + "\n"


def summary_costs(bench, loops, status, results):
    """One workload's instr/op as the costs ``micro.render_summary`` takes."""
    noise = INSTR_NOISE.get(bench, INSTR_NOISE_DEFAULT)
    costs = {}
    for name in loops:
        res = results[bench].get(name, {})
        why = result_cell(status[name], res)
        costs[name] = (res["instr_per_op"], noise) if why is None else \
            ("error" if why.startswith("error") else why)
    return costs


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="halve every N")
    parser.add_argument("--loops", default=",".join(micro.LOOPS),
                        help="comma-separated loops (default: all)")
    parser.add_argument("--only", help="comma-separated workloads (default: all)")
    parser.add_argument("--json", metavar="PATH",
                        help="where to write raw counts + results "
                             "(default benches/results/instructions[-quick]-DATE-TIME.json)")
    parser.add_argument("--split", action=argparse.BooleanOptionalAction, default=True,
                        help="split instr/op into CPython / the loop's native code / "
                             "libc + other, from the same runs' profiles (default: on)")
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

    counted = [name for name in present if name not in NOT_UNDER_VALGRIND]
    jobs = [(b, name, n) for b in args.only for name in counted
            for n in (sizes[b], n0s[b])]
    runs = {}
    t_start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_counted, valgrind, name, b, n, args.split): (b, name, n)
                   for b, name, n in jobs}
        for done, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            b, name, n = futures[fut]
            runs[b, name, n] = r = fut.result()
            print(f"[{done}/{len(jobs)}] {b} {name} N={n}: "
                  + (r.get("error") or f"Ir={r['ir']:,} ({r['seconds']:.0f}s)")
                  + (f"; no split: {r['split_error']}" if "split_error" in r else ""),
                  file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t_start

    loop_dirs = {name: native_dirs(name) for name in counted}
    results = {b: {name: per_op(runs[b, name, sizes[b]], runs[b, name, n0s[b]],
                                loop_dirs[name]) for name in counted} for b in args.only}
    for b in args.only:
        for name in present:
            if name in NOT_UNDER_VALGRIND:
                results[b][name] = {"skipped": NOT_UNDER_VALGRIND[name]}
    print(render(args.only, args.loops, status, sizes, n0s, results))
    print(f"{len(jobs)} callgrind runs in {elapsed / 60:.1f} min.\n", flush=True)
    if args.split:
        print(render_split(args.only, args.loops, status, results), flush=True)
    print(micro.render_summary(
        [(b, summary_costs(b, args.loops, status, results)) for b in args.only], args.loops,
        lambda count: f"{fmt_count(count)} instr/op",
        "Instructions per op of the loop with the fewest (\"fastest\" here), and every "
        "other loop's as a multiple of it. \"within noise\": the gap is smaller than a count's "
        f"reproducibility ({100 * INSTR_NOISE_DEFAULT:.0f}%, threadsafe "
        f"{100 * INSTR_NOISE['threadsafe']:.0f}%). Instructions are not time: kernel work, "
        "cache misses and threads running side by side are not in them."), flush=True)
    if stamp and extension_stamp(micro.CANDIDATE) != stamp:
        meta["warning"] = (f"{micro.CANDIDATE} was rebuilt during the run: its "
                           "children may have measured different builds")
        print(f"\n**WARNING: {meta['warning']}; re-run.**", flush=True)

    meta.update(sizes=sizes, n0=n0s, loop_versions=status, elapsed_s=round(elapsed),
                python_version=platform.python_version(), quick=args.quick,
                split_kinds=KIND_LABELS if args.split else None)
    raw = [{"loop": name, "bench": b, "n": n, **runs[b, name, n]} for b, name, n in jobs]
    path = args.json or micro.default_json_path("instructions", args.quick)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "runs": raw, "results": results}, f, indent=1)
    print(f"raw counts and results written to {micro.shown_path(path)}; "
          "chart them with: python benches/chart.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
