"""Shared harness of the network benchmarks (echo.py and http.py).

One sample = one fresh server process pinned to the server core, loaded by
one client process pinned to the client core. The client (benches/echo_load's
``echo_client``, or ``wrk`` for HTTP) prints "start" and "end" around its
measured window; at each marker the parent reads the CPU time of every thread
of the server (and of the client) from /proc/<pid>/task/*/schedstat. The
server's CPU time over the window divided by the requests completed in it is
"server CPU per request", the steadiest figure on a shared machine.

A sample never raises: whatever goes wrong (a server that can't start, a
feature the loop lacks, a crash, a stall, a timeout) comes back as a dict with
"error" (or "unsupported") so the run goes on.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import micro  # noqa: E402  (loop names, versions, make_loop live there)

ECHO_LOAD = os.path.join(HERE, "echo_load")
RELEASE = os.path.join(ECHO_LOAD, "target", "release")
PEERS = micro.PEERS  # ("uvloop", "rloop", "rsloop"): "best peer" is the best of these
CANDIDATE = micro.CANDIDATE
RUST = "rust"
PY_LOOPS = list(micro.LOOPS)  # asyncio, uvloop, rloop, rsloop, tokioloop
ALL_LOOPS = PY_LOOPS + [RUST]
SERVING = []  # in a server child: its server, transport or accept task, kept alive here
              # (not as an attribute of the loop: rsloop's loop takes none)
SERVER_START_TIMEOUT = 20.0  # seconds until the server prints "ready"
CLIENT_GRACE = 30.0  # seconds past warm-up + duration before the client is killed


class SampleError(Exception):
    """A sample failed; the message becomes the cell's "error: ..." text."""


# ---- The Rust tools (benches/echo_load) ----

def binary(name):
    return os.path.join(RELEASE, name)


def ensure_built(build=True):
    """Run ``cargo build --release`` on benches/echo_load (a no-op taking a
    fraction of a second when it is up to date). Returns an error string, or
    None when the binaries are ready."""
    bins = [binary("echo_client"), binary("echo_server")]
    have = all(os.path.exists(b) for b in bins)
    cargo = shutil.which("cargo")
    if not build or cargo is None:
        if have:
            return None
        return ("benches/echo_load is not built and "
                + ("--no-build was given" if not build else "cargo is not on PATH"))
    cmd = [cargo, "build", "--release", "--quiet",
           "--manifest-path", os.path.join(ECHO_LOAD, "Cargo.toml")]
    if not have:
        log(f"building the load generator: {' '.join(cmd)}")
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return "cargo build failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


# ---- CPU time and pinning ----

def cpu_ns(pid):
    """ns on CPU of all live threads of ``pid`` (first field of each
    /proc/<pid>/task/<tid>/schedstat), or None if the process is gone."""
    total, seen = 0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
                seen = True
        except (OSError, ValueError, IndexError):
            pass  # the thread ended in between
    return total if seen else None


def pick_cores():
    """(server core, client core): 0 and 1 when there are two cores to use."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:
        return (0, 1) if {0, 1} <= set(allowed) else (allowed[0], allowed[1])
    return allowed[0], allowed[0]


def pinned(core):
    """preexec_fn that pins the child before it execs (so every thread it
    starts later inherits the pinning)."""
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


# ---- Child processes ----

class Lines:
    """Line reader over a child's stdout pipe, with a timeout per line."""

    def __init__(self, proc):
        self.proc, self.fd, self.buf = proc, proc.stdout.fileno(), b""

    def readline(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SampleError(f"timeout after {timeout:.0f}s waiting for output")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None  # EOF
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()


def stderr_tail(path, limit=200):
    try:
        with open(path, errors="replace") as f:
            lines = [ln for ln in f.read().strip().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


class Server:
    """A server child: started pinned, waits for its "ready ADDR" line.

    Its stdin is a pipe the child watches (Python servers and echo_server
    --watch-stdin exit on EOF), so it can't outlive this process. The child
    may instead print a JSON line {"error": ..., "unsupported": bool} and exit.
    """

    def __init__(self, cmd, core, errfile):
        self.errfile = errfile
        self.err = open(errfile, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, preexec_fn=pinned(core))
        self.lines = Lines(self.proc)
        self.addr = None

    def wait_ready(self):
        line = self.lines.readline(SERVER_START_TIMEOUT)
        if line is None:
            raise SampleError(self.died_message("before it was ready"))
        if line.startswith("ready "):
            self.addr = line[6:]
            return self.addr
        try:
            info = json.loads(line)
        except ValueError:
            raise SampleError(f"server said {line[:150]!r}") from None
        if info.get("unsupported"):
            raise Unsupported(info.get("error", "unsupported"))
        raise SampleError(info.get("error", line)[:200])

    def died_message(self, when=""):
        try:
            rc = self.proc.wait(timeout=2)  # it closed stdout: probably exiting
        except subprocess.TimeoutExpired:
            return " ".join(["server stopped answering", when]).strip()
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        tail = stderr_tail(self.errfile)
        return " ".join(["server", how, when]).strip() + (f": {tail}" if tail else "")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.err):
            try:
                f.close()
            except OSError:
                pass


class Unsupported(SampleError):
    """The loop lacks a feature this cell needs (e.g. rloop's Unix servers)."""


def run_marked_client(cmd, core, server_pid, timeout):
    """Run echo_client (pinned), snapshot CPU times at its "start" and "end"
    lines, and return its JSON merged with the CPU figures."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=pinned(core))
    lines, snaps = Lines(proc), {}
    deadline = time.monotonic() + timeout
    try:
        while True:
            line = lines.readline(max(deadline - time.monotonic(), 0.01))
            if line is None:
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise SampleError("client exited without a result"
                                  + (f": {err[-1][:150]}" if err else ""))
            if line in ("start", "end"):
                snaps[line] = (cpu_ns(server_pid), cpu_ns(proc.pid), time.perf_counter())
            elif line.startswith("{"):
                result = json.loads(line)
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if "error" in result:
        raise SampleError("client: " + result["error"])
    if set(snaps) != {"start", "end"} or None in (snaps["start"][0], snaps["end"][0]):
        raise SampleError("server gone during the measured window")
    result.update(window_cpu(snaps["start"], snaps["end"], result["requests"]))
    return result


def window_cpu(start, end, requests):
    srv = end[0] - start[0]
    cli = None if None in (start[1], end[1]) else end[1] - start[1]
    wall = end[2] - start[2]
    return {
        "server_cpu_s": srv / 1e9,
        "server_cpu_us_per_req": srv / 1e3 / requests,
        "server_busy": srv / 1e9 / wall,
        "client_busy": None if cli is None else cli / 1e9 / wall,
    }


def run_sample(tmp_prefix, server_cmd, core, load):
    """One sample: a fresh server from ``server_cmd(tmpdir)`` (pinned to
    ``core``; tmpdir is a fresh directory for its socket and stderr), then
    ``load(server, addr)``, which runs the client(s) and returns the result.
    Never raises: a failure comes back as {"error": ...} or {"unsupported": ...}."""
    tmpdir = tempfile.mkdtemp(prefix=tmp_prefix)
    server = None
    try:
        server = Server(server_cmd(tmpdir), core, os.path.join(tmpdir, "server.err"))
        result = load(server, server.wait_ready())
        if server.proc.poll() is not None:
            raise SampleError(server.died_message("during the run"))
        return result
    except Unsupported as exc:
        return {"unsupported": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failed cell must not stop the run
        msg = str(exc) if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"
        if server is not None and server.proc.poll() is not None and "server" not in msg:
            msg = server.died_message() + f" ({msg})"
        return {"error": msg[:200]}
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)


def sample_line(s):
    """A sample's figures (or its error) for the progress log."""
    if "unsupported" in s:
        return f"n/a: {s['unsupported']}"
    return s.get("error") or (
        f"{s['rps']:9,.0f} req/s  p50 {s['p50_us']:6.0f} µs  p99 {s['p99_us']:6.0f} µs  "
        f"server {s['server_cpu_us_per_req']:6.2f} µs/req ({100 * s['server_busy']:.0f}% busy)")


# ---- Aggregation and formatting ----

METRICS = ("rps", "mb_s", "p50_us", "p99_us", "server_cpu_us_per_req", "server_busy",
           "client_busy")


def summarize(samples):
    """Medians over the successful samples of one cell, or the first error."""
    ok = [s for s in samples if "error" not in s and "unsupported" not in s]
    if not ok:
        na = [s["unsupported"] for s in samples if "unsupported" in s]
        if na:
            return {"unsupported": na[0]}
        errors = [s["error"] for s in samples if "error" in s]
        return {"error": errors[0] if errors else "no samples", "failed": len(errors)}
    med = {}
    for key in METRICS:
        vals = [s[key] for s in ok if s.get(key) is not None]
        med[key] = statistics.median(vals) if vals else None
    cpu = [s["server_cpu_us_per_req"] for s in ok]
    med["cpu_spread"] = ((max(cpu) - min(cpu)) / statistics.median(cpu)
                         if len(cpu) > 1 else None)
    med["requests"] = statistics.median(s["requests"] for s in ok)
    med["samples"] = len(ok)
    med["failed"] = len(samples) - len(ok)
    if med["failed"]:
        med["first_error"] = next(s.get("error") for s in samples if "error" in s)
    return med


def best_peer(cells, key, lower_is_better):
    vals = [(cells[p][key], p) for p in PEERS
            if cells.get(p, {}).get(key) is not None]
    if not vals:
        return None
    return min(vals) if lower_is_better else max(vals)


def fmt_cell(m, key, fmt, loop_name):
    """One table cell: the value, "n/a", "error: ...", or "-"."""
    if m is None:
        return "-"
    if "unsupported" in m:
        # A peer lacking a feature is n/a; tokioloop lacking one is a to-do.
        if loop_name == CANDIDATE:
            return "error: " + m["unsupported"]
        return f"n/a ({m['unsupported'].split(':')[0]})"
    if "error" in m:
        return "error: " + m["error"]
    v = m.get(key)
    if v is None:
        return "-"
    return fmt(v) + ("*" if m.get("failed") else "")


def render_summary(rows, loops, repeat, unit="request"):
    """micro.py's summary over server CPU per request (or per ``unit``): ``rows`` is a
    list of (label, {loop: medians}); the rust server is a ceiling, not a loop, and is
    left out."""
    loops = [name for name in loops if name != RUST]
    costs = []
    for label, cells in rows:
        row = {}
        for name in loops:
            m = cells.get(name) or {"error": "not installed"}
            if m.get("error") == "not installed":
                row[name] = "not installed"
            elif "unsupported" in m:
                row[name] = "n/a"
            elif m.get("server_cpu_us_per_req") is None:
                row[name] = "error"
            else:
                row[name] = (m["server_cpu_us_per_req"], m.get("cpu_spread"))
        costs.append((label, row))
    noise = ("\"within noise\": the gap is smaller than the CPU spread of one of the two "
             "loops over the repeats." if repeat > 1 else
             "One repeat has no spread, so nothing is marked \"within noise\": take gaps "
             "under ~30% as noise on this machine.")
    return micro.render_summary(
        costs, loops, lambda us: f"{us:.2f} µs/{unit}",
        f"Server CPU per {unit} of the cheapest loop, and every other loop's as a multiple "
        "of it (the rust ceiling is not ranked). " + noise)


def figure_cell(key, fmt):
    """A cell function ``(medians, loop) -> text`` showing ``fmt(medians[key])``."""
    return lambda m, name: short(fmt_cell(m, key, fmt, name))


def latency_cell(m, name):
    """"p50 / p99" in µs, or what fmt_cell says when there is none."""
    if m is not None and m.get("p50_us") is not None:
        return f"{m['p50_us']:.0f} / {m['p99_us']:.0f}"
    return figure_cell("p50_us", str)(m, name)


def busy_cell(m, name):
    """Server / client core busy %, or what fmt_cell says when there is none."""
    if m is None or m.get("server_busy") is None:
        return figure_cell("server_busy", str)(m, name)
    cli = m.get("client_busy")
    return f"{100 * m['server_busy']:.0f} / " + ("-" if cli is None else f"{100 * cli:.0f}")


def spread_note(rows, loops, unit, over):
    """The line under a CPU table: each loop's CPU spread, the median over ``rows`` (dicts of
    loop -> medians), or None if no loop has one."""
    spreads = []
    for name in loops:
        vals = [row[name]["cpu_spread"] for row in rows
                if row.get(name, {}).get("cpu_spread") is not None]
        if vals:
            spreads.append(f"{name} {100 * statistics.median(vals):.0f}%")
    if not spreads:
        return None
    return (f"CPU/{unit} spread, (max - min) / median over the repeats, median over the "
            f"{over}: " + ", ".join(spreads) + ". Differences smaller than that are noise.\n")


def md_escape(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def short(s, n=60):
    s = str(s)
    return s if len(s) <= n else s[:n - 1] + "…"


def loop_versions(loops):
    out = {}
    for name in loops:
        if name == RUST:
            out[name] = "tokio current-thread (benches/echo_load)"
        else:
            out[name] = micro.loop_status(name) or "not installed"
    return out


def meta_header(title, args, extra):
    """The run's description (date, Python, loops, then ``extra``, then the
    mode): as a dict for the JSON and as the Markdown header."""
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": f"{platform.python_version()} ({platform.machine()}, "
                  f"{platform.system()} {platform.release()})",
        "loops": ", ".join(f"{k} {v}" for k, v in loop_versions(args.loops).items()),
    }
    meta.update(extra)
    meta["mode"] = (f"{'quick' if args.quick else 'full'}: repeat={args.repeat}, "
                    f"warm-up {args.warmup:g}s + measured {args.duration:g}s per sample")
    text = f"# {title}\n\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n"
    return meta, text


def write_json(path, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


csv_arg = micro.csv_arg  # echo.py and http.py use it as nb.csv_arg
default_json_path = micro.default_json_path


# ---- Command line and the run's set-up ----

class Options:
    """The command line echo.py and http.py share: --quick and --loops, then
    the script's own options (add them to ``.parser``), then --repeat,
    --duration, --warmup, --json and --no-build (added by ``parse``).
    ``full`` and ``quick`` are the (repeat, duration, warmup) defaults of a
    full and of a --quick run; ``per`` is what a repeat is a sample of."""

    def __init__(self, doc, prefix, per, full, quick, duration_note=""):
        self.prefix, self.per, self.full, self.quick = prefix, per, full, quick
        self.duration_note = duration_note
        self.parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
        self.parser.add_argument("--quick", action="store_true",
                                 help=f"1 repeat of {quick[1]:g} s after {quick[2]:g} s "
                                      "warm-up (a smoke test)")
        self.parser.add_argument("--loops", default=",".join(ALL_LOOPS),
                                 help="comma-separated, from: " + ",".join(ALL_LOOPS))

    def parse(self, argv):
        parser, (rep, dur, warm), (q_rep, q_dur, q_warm) = self.parser, self.full, self.quick
        parser.add_argument("--repeat", type=int,
                            help=f"samples per {self.per} (default {rep}, quick {q_rep})")
        parser.add_argument("--duration", type=float,
                            help=f"measured seconds per sample (default {dur:g}, "
                                 f"quick {q_dur:g}{self.duration_note})")
        parser.add_argument("--warmup", type=float,
                            help=f"warm-up seconds per sample (default {warm:g}, quick {q_warm:g})")
        parser.add_argument("--json", metavar="PATH",
                            help="where to write the JSON "
                                 f"(default benches/results/{self.prefix}-*.json)")
        parser.add_argument("--no-build", action="store_true",
                            help="don't (re)build benches/echo_load")
        args = parser.parse_args(argv)
        args.loops = csv_arg(parser, args.loops, ALL_LOOPS, "loop")
        for key, default in zip(("repeat", "duration", "warmup"),
                                self.quick if args.quick else self.full):
            if getattr(args, key) is None:
                setattr(args, key, default)
        if args.repeat < 1 or args.duration <= 0 or args.warmup < 0:
            parser.error("--repeat >= 1, --duration > 0, --warmup >= 0")
        if args.json is None:
            args.json = default_json_path(self.prefix, args.quick)
        return args


def serve_or_parse(argv, serve, parse_args):
    """``--serve ARG...`` (the harness starting a server child) runs
    ``serve(*ARGs)``, which never returns; any other command line is parsed."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(*argv[1:])
    return parse_args(argv)


def prepare(args):
    """Build the load generator, pick the cores, see which loops are installed:
    (cores, versions, installed loops), or None once the error is printed."""
    build_error = ensure_built(not args.no_build)
    if build_error:
        print(f"error: {build_error}", file=sys.stderr)
        return None
    cores = pick_cores()
    versions = loop_versions(args.loops)
    return cores, versions, [n for n in args.loops if versions[n] != "not installed"]


def rotation(names, r):
    """The loops' order in repeat ``r``: rotated one place per repeat, to spread drift."""
    shift = r % max(len(names), 1)
    return names[shift:] + names[:shift]


def save(path, meta, samples, medians):
    write_json(path, {"meta": meta, "samples": samples, "medians": medians})
    print(f"raw samples and medians written to {micro.shown_path(path)}")


# ---- Server side (the child process) ----

def watch_stdin_and_exit():
    """In a server child: exit as soon as the parent's pipe on stdin closes."""
    import threading

    def watch():
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def serve_child(loop_name, start, imports=()):
    """Body of a server child; never returns. Imports ``imports`` (so a missing
    module is reported as such), makes the loop, runs ``start(loop, step)``
    (a coroutine that starts serving and returns the address for the client),
    prints "ready ADDR", and serves until the parent goes away. ``step[0]``
    names what is being done, for the error message: a failure before "ready"
    is printed as one JSON line {"error": ..., "unsupported": bool} instead.
    """
    watch_stdin_and_exit()
    step = [None]
    try:
        for module in imports:
            step[0] = f"import {module}"
            __import__(module)
        step[0] = "loop creation"
        loop = micro.make_loop(loop_name)
        asyncio.set_event_loop(loop)
        bound = loop.run_until_complete(start(loop, step))
    except BaseException as exc:
        unsupported = isinstance(exc, (NotImplementedError, AttributeError))
        msg = f"{step[0]}: {type(exc).__name__}: {exc}".strip().rstrip(":")
        print(json.dumps({"error": msg[:200], "unsupported": unsupported}), flush=True)
        os._exit(0)
    print(f"ready {bound}", flush=True)
    try:
        loop.run_forever()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)
