#!/usr/bin/env python3
"""HTTP/1.1 keep-alive benchmark for asyncio event loops: asyncio, uvloop, rloop,
rsloop, tokioloop, and a pure-Rust tokio server as the machine's ceiling.

The server is an asyncio.Protocol that parses requests with httptools and
answers each one with the same small fixed response (keep-alive), over TCP on
127.0.0.1. The load is `wrk -t1 -c10` (Debian package `wrk`), or, when wrk is
missing or --client echo_client is given, benches/echo_load's echo_client in
--http mode (one GET at a time per connection, response read by
Content-Length).

Like echo.py: a fresh server process per sample pinned to core 0, the client
pinned to core 1; reported as medians over repeats: requests/s, p50/p99
latency (from the client) and the server's CPU time per request (all its
threads, /proc/<pid>/task/*/schedstat over the measured window). Ratios are
against the best of uvloop, rloop and rsloop; the report ends with a summary
(the cheapest loop, the others as multiples of it).

Usage:
    python benches/http.py [--quick] [--loops asyncio,uvloop,rloop,rsloop,tokioloop,rust]
                           [--client wrk|echo_client] [--repeat N] [--duration S]
                           [--conns N] [--json PATH]
"""

import asyncio
import math
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.realpath(__file__))
# This file's name would shadow the stdlib's `http` package for anything that
# imports it (http.client, http.HTTPStatus...): keep benches/ last on sys.path.
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != HERE] + [HERE]

import netbench as nb  # noqa: E402

BODY = b"Hello, World!"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))  # same bytes as echo_server --http
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
CLIENTS = ("wrk", "echo_client")


# ---- Server side (child process): python http.py --serve LOOP ADDR ----

class HttpProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1: one fixed response per parsed request."""

    def __init__(self):
        import httptools
        self.parser = httptools.HttpRequestParser(self)
        self.parse_error = httptools.HttpParserError
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except self.parse_error:
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def on_message_complete(self):  # httptools callback
        self.transport.write(RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def start(loop, addr, step):
    host, port = addr.rsplit(":", 1)
    step[0] = "loop.create_server"
    server = await loop.create_server(HttpProtocol, host, int(port), backlog=128)
    name = server.sockets[0].getsockname()
    return f"{name[0]}:{name[1]}"


def serve(loop_name, addr):
    # httptools is imported first: if it is missing, the error says so.
    nb.serve_child(loop_name, lambda loop, step: start(loop, addr, step), imports=("httptools",))


# ---- wrk ----

WRK_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def parse_wrk(out):
    """requests, seconds, p50/p99 µs, errors from `wrk --latency` output."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out)
    if not m:
        raise nb.SampleError("wrk: no summary line: " + nb.short(" ".join(out.split()), 150))
    res = {"requests": int(m.group(1)),
           "seconds": float(m.group(2)) * WRK_UNITS[m.group(3)] / 1e6}
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
        if not m:
            raise nb.SampleError(f"wrk: no {pct}% latency line (was --latency given?)")
        res[key] = float(m.group(1)) * WRK_UNITS[m.group(2)]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(map(int, m.groups())) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(m.group(1)) if m else 0
    if bad or errors > res["requests"] // 1000:
        raise nb.SampleError(f"wrk: {bad} non-2xx responses, {errors} socket errors")
    return res


def run_wrk(addr, conns, duration, core, server_pid, scheme="http"):
    """One wrk run (pinned); server CPU over its lifetime, wrk's own CPU by wait4.
    ``scheme="https"`` makes wrk speak TLS (benches/tls.py)."""
    secs = max(1, math.ceil(duration))  # wrk takes whole seconds
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency", f"{scheme}://{addr}/"]
    srv0, t0 = nb.cpu_ns(server_pid), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=nb.pinned(core))
    out, deadline = b"", time.monotonic() + secs + nb.CLIENT_GRACE
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise nb.SampleError(f"wrk: timeout after {secs + nb.CLIENT_GRACE:.0f}s")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        srv1 = nb.cpu_ns(server_pid)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise nb.SampleError(f"wrk exit status {proc.returncode}: "
                             + nb.short(" ".join(text.split()), 150))
    if srv0 is None or srv1 is None:
        raise nb.SampleError("server gone during the measured window")
    res = parse_wrk(text)
    srv = srv1 - srv0
    res.update(rps=res["requests"] / res["seconds"],
               server_cpu_s=srv / 1e9,
               server_cpu_us_per_req=srv / 1e3 / res["requests"],
               server_busy=srv / 1e9 / wall,
               client_busy=(usage.ru_utime + usage.ru_stime) / wall)
    return res


# ---- Parent side ----

def run_sample(loop_name, args, cores):
    """One sample: a fresh server, a warm-up, one measured client run. Never raises."""
    def server_cmd(tmpdir):
        if loop_name == nb.RUST:
            return [nb.binary("echo_server"), "--http", "--tcp", "127.0.0.1:0", "--watch-stdin"]
        return [sys.executable, os.path.abspath(__file__), "--serve", loop_name, "127.0.0.1:0"]

    def load(server, addr):
        client = [nb.binary("echo_client"), "--http", "--tcp", addr, "--conns", str(args.conns)]
        if args.client == "wrk":
            if args.warmup > 0:  # echo_client takes fractions of a second, wrk doesn't
                nb.run_marked_client(client + ["--warmup", "0", "--duration", str(args.warmup)],
                                     cores[1], server.proc.pid, args.warmup + nb.CLIENT_GRACE)
            return run_wrk(addr, args.conns, args.duration, cores[1], server.proc.pid)
        return nb.run_marked_client(
            client + ["--warmup", str(args.warmup), "--duration", str(args.duration)],
            cores[1], server.proc.pid, args.warmup + args.duration + nb.CLIENT_GRACE)

    return nb.run_sample("tokioloop-http-", server_cmd, cores[0], load)


def render(args, med):
    loops = args.loops
    ratio = lambda x, ref: f"{x / ref:.2f}" if x and ref else "-"  # noqa: E731
    best_cpu = nb.best_peer(med, "server_cpu_us_per_req", True)
    best_rps = nb.best_peer(med, "rps", False)
    rows = ["### HTTP/1.1 keep-alive, httptools Protocol server (medians)", "",
            "| loop | req/s | p50 µs | p99 µs | server CPU µs/req | CPU spread "
            "| server / client busy | req/s x best peer | CPU/req x best peer |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in loops:
        m = med.get(name)
        if m is None or "rps" not in m:
            cell = nb.fmt_cell(m, "rps", str, name)
            rows.append(f"| {name} | {nb.md_escape(cell)} |" + " - |" * 8)
            continue
        cli = m.get("client_busy")
        cells = [f"{m['rps']:,.0f}", f"{m['p50_us']:.0f}", f"{m['p99_us']:.0f}",
                 f"{m['server_cpu_us_per_req']:.2f}", "-" if m["cpu_spread"] is None else f"{100 * m['cpu_spread']:.0f}%",
                 f"{100 * m['server_busy']:.0f}% / " + ("-" if cli is None else f"{100 * cli:.0f}%"),
                 ratio(m["rps"], best_rps[0] if best_rps else None),
                 ratio(m["server_cpu_us_per_req"], best_cpu[0] if best_cpu else None)]
        note = f" ({m['failed']} failed: {nb.short(m['first_error'], 80)})" if m["failed"] else ""
        rows.append(f"| {name}{nb.md_escape(note)} | " + " | ".join(cells) + " |")
    if best_cpu:
        rows += ["", f"Best peer: {best_cpu[1]} on CPU/request, "
                 f"{best_rps[1]} on req/s (higher req/s ratio and lower CPU ratio are better)."]
    return "\n".join(rows) + "\n"


def parse_args(argv):
    opts = nb.Options(__doc__, "http", "loop", full=(3, 3.0, 0.5), quick=(1, 1.0, 0.3),
                      duration_note="; wrk rounds up to whole s")
    opts.parser.add_argument("--client", choices=CLIENTS,
                             help="load generator (default: wrk if installed, else echo_client)")
    opts.parser.add_argument("--conns", type=int, default=10, help="connections (default 10)")
    args = opts.parse(argv)
    if args.conns < 1:
        opts.parser.error("--conns >= 1")
    return args


def main(argv=None):
    args = nb.serve_or_parse(argv, serve, parse_args)
    if args.client is None:
        args.client = "wrk" if shutil.which("wrk") else "echo_client"
        if args.client != "wrk":
            nb.log("wrk not found (apt-get install -y wrk): using echo_client --http instead")
    elif args.client == "wrk" and not shutil.which("wrk"):
        print("error: wrk not found (apt-get install -y wrk), or use --client echo_client",
              file=sys.stderr)
        return 1
    try:
        import httptools
        httptools_version = httptools.__version__
    except ImportError:
        print("error: httptools is not installed (pip install httptools, or "
              "pip install '.[bench]')", file=sys.stderr)
        return 1
    prepared = nb.prepare(args)
    if prepared is None:
        return 1
    cores, versions, present = prepared
    if args.client == "wrk":
        wrk_secs = max(1, math.ceil(args.duration))
        load = f"wrk -t1 -c{args.conns} -d{wrk_secs}s --latency (after an echo_client warm-up)"
    else:
        load = f"echo_client --http, {args.conns} connections, 1 request in flight each"
    meta, header = nb.meta_header("tokioloop HTTP benchmark", args, {
        "server": f"asyncio.Protocol + httptools {httptools_version}, fixed "
                  f"{len(RESPONSE)}-byte keep-alive response; rust: echo_server --http",
        "load": load,
        "pinning": f"server on core {cores[0]}, client on core {cores[1]}",
    })
    print(header, flush=True)

    samples = {n: [] for n in present}
    raw = []
    t0 = time.monotonic()
    total = args.repeat * len(present)
    for r in range(args.repeat):
        for name in nb.rotation(present, r):
            s = run_sample(name, args, cores)
            nb.log(f"[{len(raw) + 1}/{total} {time.monotonic() - t0:4.0f}s] r{r + 1} {name:9}: "
                   + nb.sample_line(s))
            samples[name].append(s)
            raw.append({"repeat": r, "loop": name, **s})

    med = {n: nb.summarize(samples[n]) for n in present}
    for n in args.loops:
        med.setdefault(n, {"error": "not installed"})
    print(render(args, med), flush=True)
    print(nb.render_summary([("HTTP keep-alive", med)], args.loops, args.repeat), flush=True)
    meta.update(cores=cores, repeat=args.repeat, duration=args.duration, warmup=args.warmup,
                conns=args.conns, client=args.client, loop_versions=versions,
                elapsed_s=round(time.monotonic() - t0, 1))
    nb.save(args.json, meta, raw, [{"loop": n, **m} for n, m in med.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
