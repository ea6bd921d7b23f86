#!/usr/bin/env python3
"""TLS server benchmark for asyncio event loops: asyncio, uvloop, tokioloop, and a
pure-Rust tokio + OpenSSL server as the machine's ceiling (rloop has no TLS).

Three sections, every server a fresh process pinned to core 0 with its load
pinned to core 1, TLS 1.3 with OpenSSL's default cipher suites and a
throwaway self-signed certificate made with the `openssl` CLI:

  echo    echo server over TLS, as an asyncio.Protocol (create_server(ssl=))
          and as a streams server (start_server(ssl=); read, write, drain),
          1/10/100 KiB messages, loaded by benches/echo_load's echo_client
          --tls: 10 connections, one request in flight each.
  https   benches/http.py's httptools Protocol server (fixed 78-byte
          keep-alive response) over TLS, loaded by `wrk -t1 -c10` on an
          https:// URL.
  memory  server RSS growth per 1000 idle TLS connections (handshaken, one
          64-byte echo each, then idle), between a 100-connection base and
          100 + 1000 connections, held by echo_client --hold.

Headline: the server's CPU time per request (all its threads, from
/proc/<pid>/task/*/schedstat over the measured window); also requests/s and
client-side p50/p99 latency. Medians over repeats; loops interleaved and
rotated across repeats; ratios against uvloop.

Needs: cargo, libssl-dev and pkg-config (for echo_client's TLS build), the
openssl CLI, and wrk for the https section (apt-get install -y wrk).

Usage:
    python benches/tls.py [--quick] [--loops asyncio,uvloop,tokioloop,rust]
                          [--sections echo,https,memory] [--styles protocol,streams]
                          [--sizes 1,10,100] [--repeat N] [--duration S] [--json PATH]
"""

import asyncio
import importlib.util
import json
import os
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.realpath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import echo  # noqa: E402  (EchoProtocol, streams_echo)
import netbench as nb  # noqa: E402
import tls_report as report  # noqa: E402


def load_http_bench():
    """benches/http.py under another name: "http" would shadow the stdlib package."""
    spec = importlib.util.spec_from_file_location("http_bench", os.path.join(HERE, "http.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SECTIONS = ("echo", "https", "memory")
STYLES = ("protocol", "streams")
SIZES_KIB = (1, 10, 100)
TLS_LOOPS = ("asyncio", "uvloop", "tokioloop", nb.RUST)  # rloop: no TLS
CONNS = 10
HOLD_BASE, HOLD_CONNS, HOLD_MSG = 100, 1000, 64
SETTLE_S = 0.3  # pause before reading RSS once the held connections are up
TLS_TARGET = os.path.join(nb.ECHO_LOAD, "target", "tls")  # apart from echo.py's build


def tls_binary(name):
    return os.path.join(TLS_TARGET, "release", name)


# ---- Server side (child): python tls.py --serve LOOP KIND ADDR CERT KEY ----

def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    return ctx


async def start(loop, kind, addr, cert, key, step):
    step[0] = "ssl context"
    ctx = server_context(cert, key)
    host, port = addr.rsplit(":", 1)
    if kind == "streams":
        step[0] = "asyncio.start_server(ssl=)"
        server = await asyncio.start_server(echo.streams_echo, host, int(port), ssl=ctx,
                                            backlog=1024)
    else:  # protocol (echo and memory) or http
        factory = echo.EchoProtocol if kind == "protocol" else load_http_bench().HttpProtocol
        step[0] = "loop.create_server(ssl=)"
        server = await loop.create_server(factory, host, int(port), ssl=ctx, backlog=1024)
    nb.SERVING.append(server)
    name = server.sockets[0].getsockname()
    return f"{name[0]}:{name[1]}"


def serve(loop_name, kind, addr, cert, key):
    imports = ("httptools",) if kind == "http" else ()
    nb.serve_child(loop_name, lambda loop, step: start(loop, kind, addr, cert, key, step),
                   imports=imports)


# ---- Parent side: set-up ----

def raise_fd_limit():
    """1100 held connections need more than a 1024-descriptor soft limit (children inherit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = HOLD_BASE + HOLD_CONNS + 200
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want * 2, hard), hard))


def build_tls_tools(build):
    """cargo build --release --features tls into target/tls: error text or None."""
    bins = [tls_binary("echo_client"), tls_binary("echo_server")]
    cargo = shutil.which("cargo")
    if not build or cargo is None:
        if all(os.path.exists(b) for b in bins):
            return None
        return ("benches/echo_load (TLS build) is missing and "
                + ("--no-build was given" if not build else "cargo is not on PATH"))
    cmd = [cargo, "build", "--release", "--quiet", "--features", "tls", "--target-dir", TLS_TARGET,
           "--manifest-path", os.path.join(nb.ECHO_LOAD, "Cargo.toml")]
    if not all(os.path.exists(b) for b in bins):
        nb.log(f"building the TLS load generator: {' '.join(cmd)}")
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode == 0:
        return None
    if "openssl" in proc.stderr.lower() or "pkg-config" in proc.stderr.lower():
        return ("cargo build --features tls failed to find OpenSSL: "
                "apt-get install -y libssl-dev pkg-config")
    return "cargo build failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]


def make_certificate(tmpdir):
    """A self-signed EC P-256 certificate for localhost: (cert, key) paths, or an error."""
    if shutil.which("openssl") is None:
        return "the openssl CLI is missing: apt-get install -y openssl"
    cert, key = os.path.join(tmpdir, "cert.pem"), os.path.join(tmpdir, "key.pem")
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-days", "2", "-subj", "/CN=localhost",
           "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return "openssl req failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return cert, key


# ---- Parent side: one sample per section ----

def server_cmd_for(loop_name, kind, cert, key):
    def server_cmd(tmpdir):
        if loop_name == nb.RUST:
            return [tls_binary("echo_server"), "--tcp", "127.0.0.1:0", "--watch-stdin",
                    "--tls-cert", cert, "--tls-key", key] + (["--http"] if kind == "http" else [])
        return [sys.executable, os.path.abspath(__file__), "--serve",
                loop_name, kind, "127.0.0.1:0", cert, key]
    return server_cmd


def echo_sample(loop_name, style, kib, args, ctx):
    def load(server, addr):
        client = [tls_binary("echo_client"), "--tcp", addr, "--tls", "--conns", str(CONNS),
                  "--size", str(kib * 1024), "--warmup", str(args.warmup),
                  "--duration", str(args.duration)]
        return nb.run_marked_client(client, ctx["cores"][1], server.proc.pid,
                                    args.warmup + args.duration + nb.CLIENT_GRACE)
    return nb.run_sample("tokioloop-tls-", server_cmd_for(loop_name, style, *ctx["cert"]),
                         ctx["cores"][0], load)


def https_sample(loop_name, args, ctx):
    def load(server, addr):
        if args.warmup > 0:  # wrk takes whole seconds only: warm up with echo_client
            client = [tls_binary("echo_client"), "--tcp", addr, "--tls", "--http",
                      "--conns", str(CONNS), "--warmup", "0", "--duration", str(args.warmup)]
            nb.run_marked_client(client, ctx["cores"][1], server.proc.pid,
                                 args.warmup + nb.CLIENT_GRACE)
        return ctx["http"].run_wrk(addr, CONNS, args.duration, ctx["cores"][1],
                                   server.proc.pid, scheme="https")
    return nb.run_sample("tokioloop-tls-", server_cmd_for(loop_name, "http", *ctx["cert"]),
                         ctx["cores"][0], load)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    raise nb.SampleError("no VmRSS in /proc/<pid>/status")


def hold_load(core, server_pid, addr):
    """echo_client --hold BASE,N: RSS and CPU of the server at BASE and at BASE + N."""
    cmd = [tls_binary("echo_client"), "--tcp", addr, "--tls", "--size", str(HOLD_MSG),
           "--hold", f"{HOLD_BASE},{HOLD_CONNS}"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=nb.pinned(core))
    lines, marks = nb.Lines(proc), []
    try:
        for want in (HOLD_BASE, HOLD_BASE + HOLD_CONNS):
            line = lines.readline(60)
            if line is None or not line.startswith("held "):
                if line and line.startswith("{"):
                    raise nb.SampleError("client: " + json.loads(line).get("error", line))
                raise nb.SampleError(f"client said {line!r} instead of 'held {want}'")
            time.sleep(SETTLE_S)
            cpu = nb.cpu_ns(server_pid)
            if cpu is None:
                raise nb.SampleError("server gone while connections were held")
            marks.append((rss_kib(server_pid), cpu))
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        result = json.loads(lines.readline(10) or "{}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
    (rss0, cpu0), (rss1, cpu1) = marks
    return {"rss_base_kib": rss0, "rss_held_kib": rss1,
            "rss_kib_per_1000": (rss1 - rss0) * 1000 / HOLD_CONNS,
            "server_cpu_us_per_conn": (cpu1 - cpu0) / 1e3 / HOLD_CONNS,
            "tls": result.get("tls")}


def memory_sample(loop_name, args, ctx):
    return nb.run_sample(
        "tokioloop-tls-", server_cmd_for(loop_name, "protocol", *ctx["cert"]), ctx["cores"][0],
        lambda server, addr: hold_load(ctx["cores"][1], server.proc.pid, addr))


# ---- Command line and main ----

def parse_args(argv):
    opts = nb.Options(__doc__, "tls", "cell", full=(3, 2.0, 0.5), quick=(1, 0.6, 0.2),
                      duration_note="; wrk rounds up to whole s")
    opts.parser.set_defaults(loops=",".join(TLS_LOOPS))
    opts.parser.add_argument("--sections", default=",".join(SECTIONS))
    opts.parser.add_argument("--styles", default=",".join(STYLES))
    opts.parser.add_argument("--sizes", default=",".join(map(str, SIZES_KIB)),
                             help="echo message sizes in KiB (default 1,10,100)")
    args = opts.parse(argv)
    if "rloop" in args.loops:
        nb.log("rloop has no TLS support: left out")
        args.loops = [n for n in args.loops if n != "rloop"]
        if not args.loops:
            opts.parser.error("no loop with TLS left in --loops")
    args.sections = nb.csv_arg(opts.parser, args.sections, SECTIONS, "section")
    args.styles = nb.csv_arg(opts.parser, args.styles, STYLES, "style")
    try:
        args.sizes = [int(v) for v in dict.fromkeys(args.sizes.split(",")) if v.strip()]
    except ValueError:
        opts.parser.error("--sizes: integers (KiB), comma-separated")
    if not args.sizes or min(args.sizes) < 1:
        opts.parser.error("--sizes: at least one size >= 1 KiB")
    return args


def check_https_tools(args):
    """The https section needs wrk and httptools; without them it is skipped with a note."""
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk (apt-get install -y wrk)")
    if importlib.util.find_spec("httptools") is None:
        missing.append("httptools (pip install httptools)")
    if missing and "https" in args.sections:
        args.sections = [s for s in args.sections if s != "https"]
        return "https section skipped: missing " + ", ".join(missing)
    return None


def make_plan(args, present):
    """[(repeat, loop, key, style targets)]: loops interleaved per cell, rotated per repeat.
    The rust server has no styles: it runs once per size and fills every style's row."""
    plan = []
    for r in range(args.repeat):
        if "echo" in args.sections:
            for kib in args.sizes:
                for i, st in enumerate(args.styles):
                    for name in nb.rotation(present, r):
                        if name == nb.RUST and i > 0:
                            continue
                        targets = args.styles if name == nb.RUST else [st]
                        plan.append((r, name, ("echo", st, kib),
                                     [("echo", t, kib) for t in targets]))
        for section in ("https", "memory"):
            if section in args.sections:
                for name in nb.rotation(present, r):
                    plan.append((r, name, (section,), [(section,)]))
    return plan


def run_one(key, name, args, ctx):
    if key[0] == "echo":
        return echo_sample(name, key[1], key[2], args, ctx)
    if key[0] == "https":
        return https_sample(name, args, ctx)
    return memory_sample(name, args, ctx)


def progress(key, s):
    if not report.ok(s) or key[0] != "memory":
        return nb.sample_line(s)
    return (f"RSS +{s['rss_kib_per_1000'] / 1024:6.1f} MiB per 1000 conns "
            f"(base {s['rss_base_kib'] / 1024:.1f} MiB), "
            f"{s['server_cpu_us_per_conn']:.0f} µs CPU per new conn")


def main(argv=None):
    args = nb.serve_or_parse(argv, serve, parse_args)
    raise_fd_limit()
    error = build_tls_tools(not args.no_build)
    tmp = tempfile.mkdtemp(prefix="tokioloop-tls-cert-")
    try:
        cert = error or make_certificate(tmp)
        if isinstance(cert, str):
            print(f"error: {cert}", file=sys.stderr)
            return 1
        skipped = check_https_tools(args)
        if skipped:
            nb.log(skipped)
        cores = nb.pick_cores()
        versions = nb.loop_versions(args.loops)
        present = [n for n in args.loops if versions[n] != "not installed"]
        ctx = {"cores": cores, "cert": cert,
               "http": load_http_bench() if "https" in args.sections else None}
        meta, header = nb.meta_header("tokioloop TLS benchmark", args, {
            "tls": f"TLS 1.3 only, default cipher suites, self-signed EC P-256 certificate; "
                   f"Python ssl: {ssl.OPENSSL_VERSION}",
            "pinning": f"server on core {cores[0]}, client on core {cores[1]}",
            "sections": ", ".join(args.sections) + (f" ({skipped})" if skipped else ""),
            "load": f"echo: echo_client --tls, {CONNS} connections, 1 request in flight each, "
                    f"sizes {', '.join(f'{k} KiB' for k in args.sizes)}; https: wrk -t1 "
                    f"-c{CONNS}; memory: echo_client --hold {HOLD_BASE},{HOLD_CONNS}",
        })
        print(header)
        print("rloop has no TLS and is not measured. The rust column is a pure-Rust tokio + "
              "OpenSSL server (no styles: one figure in both style rows). Cells: median over "
              "repeats; * = some repeats failed.\n", flush=True)

        plan = make_plan(args, present)
        keys = list(dict.fromkeys(t for _, _, _, targets in plan for t in targets))
        samples = {k: {n: [] for n in present} for k in keys}
        raw, seen_tls, t0 = [], set(), time.monotonic()
        for i, (r, name, key, targets) in enumerate(plan, 1):
            s = dict(run_one(key, name, args, ctx), repeat=r)
            nb.log(f"[{i}/{len(plan)} {time.monotonic() - t0:5.0f}s] r{r + 1} {name:9} "
                   f"{report.row_label(key):22}: " + progress(key, s))
            if s.get("tls"):
                seen_tls.add(s["tls"])
            for t in targets:
                samples[t][name].append(s)
            raw.append({"loop": name, "cell": list(key), **s})

        med = {k: {n: (report.summarize_memory(v) if k[0] == "memory" else nb.summarize(v))
                   for n, v in samples[k].items()} for k in keys}
        for k in med:
            for n in args.loops:
                med[k].setdefault(n, {"error": "not installed"})
        print(report.render(args, med, samples, CONNS, (HOLD_BASE, HOLD_CONNS, HOLD_MSG)),
              flush=True)
        negotiated = ", ".join(sorted(seen_tls)) or "unknown"
        print(f"Negotiated (as echo_client saw it): {negotiated}.\n")
        meta.update(cores=cores, repeat=args.repeat, duration=args.duration,
                    warmup=args.warmup, conns=CONNS, sizes_kib=args.sizes,
                    negotiated=negotiated, loop_versions=versions,
                    elapsed_s=round(time.monotonic() - t0, 1))
        medians = [{"cell": list(k), "loop": n, **m} for k, row in med.items()
                   for n, m in row.items()]
        nb.save(args.json, meta, raw, medians)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
