#!/usr/bin/env python3
"""Echo-server benchmark for asyncio event loops: asyncio, uvloop, rloop, rsloop,
tokioloop, and a pure-Rust tokio server as the machine's ceiling.

Server styles (all echo every byte back):
  protocol  asyncio.Protocol, transport.write(data) in data_received
  streams   start_server / start_unix_server; reader.read(256 KiB), write, drain
  sock      sock_accept, then a sock_recv(256 KiB) / sock_sendall loop per connection
over TCP (127.0.0.1) and Unix sockets, at 1, 10 and 100 KiB messages, loaded by
benches/echo_load's echo_client: 10 connections, each one request at a time.

Each sample is a fresh server process pinned to core 0 and a client pinned to
core 1. Reported per cell, as medians over the repeats: requests/s, p50/p99
latency (client side) and the server's CPU time per request (all its threads,
from /proc/<pid>/task/*/schedstat over the measured window), the steadiest
figure on a shared machine. Ratios are against the best of uvloop, rloop and
rsloop; the report ends with a summary (the cheapest loop per cell, the others
as multiples of it). Under rsloop, asyncio.start_server is rsloop's own (importing
rsloop replaces it), so its TCP streams rows run rsloop's native streams.

Usage:
    python benches/echo.py [--quick] [--loops asyncio,uvloop,rloop,rsloop,tokioloop,rust]
                           [--styles protocol,streams,sock] [--transports tcp,unix]
                           [--sizes 1,10,100] [--repeat N] [--duration S] [--json PATH]
"""

import asyncio
import os
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import netbench as nb  # noqa: E402

STYLES = ("protocol", "streams", "sock")
TRANSPORTS = ("tcp", "unix")
SIZES_KIB = (1, 10, 100)
READ_SIZE = 256 * 1024
CONNS = 10


# ---- Server side (child process): python echo.py --serve LOOP STYLE TRANSPORT ADDR ----

def set_nodelay(sock):
    """TCP_NODELAY on a TCP socket (asyncio and uvloop set it already; be sure)."""
    try:
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        set_nodelay(transport.get_extra_info("socket"))

    def data_received(self, data):
        self.transport.write(data)


async def streams_echo(reader, writer):
    set_nodelay(writer.get_extra_info("socket"))
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def sock_echo(loop, conn):
    with conn:
        try:
            while True:
                data = await loop.sock_recv(conn, READ_SIZE)
                if not data:
                    break
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass


async def sock_serve(loop, lsock):
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        set_nodelay(conn)
        task = loop.create_task(sock_echo(loop, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def listening_socket(transport, addr):
    if transport == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        host, port = addr.rsplit(":", 1)
        sock.bind((host, int(port)))
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(addr)
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def start(loop, style, transport, addr, step):
    """Start serving; returns the address the client should use. ``step[0]``
    names the API being called, for the error message if it fails."""
    if style == "sock":
        step[0] = "socket set-up"
        lsock = listening_socket(transport, addr)
        step[0] = "loop.sock_accept"
        task = loop.create_task(sock_serve(loop, lsock))
        nb.SERVING.append(task)
        await asyncio.sleep(0)  # let the accept task start (and fail early)
        if task.done():
            task.result()
        name = lsock.getsockname()
    elif transport == "tcp":
        host, port = addr.rsplit(":", 1)
        if style == "protocol":
            step[0] = "loop.create_server"
            server = await loop.create_server(EchoProtocol, host, int(port), backlog=128)
        else:
            step[0] = "asyncio.start_server"
            server = await asyncio.start_server(streams_echo, host, int(port), backlog=128)
        name = server.sockets[0].getsockname()
        nb.SERVING.append(server)
    else:
        if style == "protocol":
            step[0] = "loop.create_unix_server"
            server = await loop.create_unix_server(EchoProtocol, addr, backlog=128)
        else:
            step[0] = "asyncio.start_unix_server"
            server = await asyncio.start_unix_server(streams_echo, addr, backlog=128)
        name = addr
        nb.SERVING.append(server)
    return f"{name[0]}:{name[1]}" if transport == "tcp" else name


def serve(loop_name, style, transport, addr):
    nb.serve_child(loop_name, lambda loop, step: start(loop, style, transport, addr, step))


# ---- Parent side ----

def run_sample(loop_name, style, transport, kib, args, cores):
    """One sample: a fresh server, one client run. Never raises."""
    def server_cmd(tmpdir):
        addr = "127.0.0.1:0" if transport == "tcp" else os.path.join(tmpdir, "echo.sock")
        if loop_name == nb.RUST:
            return [nb.binary("echo_server"), f"--{transport}", addr, "--watch-stdin"]
        return [sys.executable, os.path.abspath(__file__), "--serve",
                loop_name, style, transport, addr]

    def load(server, bound):
        client = [nb.binary("echo_client"), f"--{transport}", bound,
                  "--conns", str(CONNS), "--size", str(kib * 1024),
                  "--warmup", str(args.warmup), "--duration", str(args.duration)]
        return nb.run_marked_client(client, cores[1], server.proc.pid,
                                    args.warmup + args.duration + nb.CLIENT_GRACE)

    return nb.run_sample("tokioloop-echo-", server_cmd, cores[0], load)


def cells(args):
    """Table rows, in order: (style, transport, KiB)."""
    return [(st, tr, kib) for st in args.styles for tr in args.transports for kib in args.sizes]


def render(args, med):
    """Markdown tables: rows are (style, transport, size), columns are loops."""
    loops = args.loops
    out = []

    def table(title, note, cell, ratio=None):
        """``cell(m, loop)`` is a cell's text; ``ratio`` = (key, lower_is_better)
        adds the tokioloop x best peer column."""
        ratio = ratio if nb.CANDIDATE in loops else None
        rows = [f"### {title}", "", note, "",
                "| style | transport | size | " + " | ".join(loops)
                + (" | tokioloop x best peer |" if ratio else " |"),
                "|---|---|---:|" + "---:|" * len(loops) + ("---:|" if ratio else "")]
        for st, tr, kib in cells(args):
            row = med[(st, tr, kib)]
            vals = [cell(row.get(name), name) for name in loops]
            line = f"| {st} | {tr} | {kib} KiB | " + " | ".join(nb.md_escape(v) for v in vals)
            if ratio:
                best = nb.best_peer(row, *ratio)
                ours = row.get(nb.CANDIDATE, {}).get(ratio[0])
                line += " | " + (f"{ours / best[0]:.2f} ({best[1]})" if best and ours else "-")
            rows.append(line + " |")
        out.append("\n".join(rows) + "\n")

    table("Server CPU µs per request (median) - the headline, lower is better",
          "Server CPU time (all its threads) over the measured window / requests completed.",
          nb.figure_cell("server_cpu_us_per_req", lambda v: f"{v:.2f}"),
          ratio=("server_cpu_us_per_req", True))
    note = nb.spread_note([med[c] for c in cells(args)], loops, "request", "cells")
    if note:
        out.append(note)
    table("Throughput, requests/s (median) - higher is better",
          f"{CONNS} connections, one request in flight each; MB/s = req/s x size.",
          nb.figure_cell("rps", lambda v: f"{v:,.0f}"), ratio=("rps", False))
    table("Latency p50 / p99, µs (median over repeats)",
          "Client side: from writing a message to reading its last echoed byte.", nb.latency_cell)
    table("Server / client core busy % (median)",
          "CPU time / wall time of the window, per process. A server well under 100% "
          "is not the bottleneck (the client or the kernel is): compare CPU/request "
          "there, not req/s.", nb.busy_cell)
    return "\n".join(out)


def parse_args(argv):
    opts = nb.Options(__doc__, "echo", "cell", full=(3, 2.0, 0.5), quick=(1, 0.8, 0.2))
    opts.parser.add_argument("--styles", default=",".join(STYLES))
    opts.parser.add_argument("--transports", default=",".join(TRANSPORTS))
    opts.parser.add_argument("--sizes", default=",".join(map(str, SIZES_KIB)),
                             help="message sizes in KiB (default 1,10,100)")
    args = opts.parse(argv)
    args.styles = nb.csv_arg(opts.parser, args.styles, STYLES, "style")
    args.transports = nb.csv_arg(opts.parser, args.transports, TRANSPORTS, "transport")
    try:
        args.sizes = [int(s) for s in dict.fromkeys(args.sizes.split(",")) if s.strip()]
    except ValueError:
        opts.parser.error("--sizes: integers (KiB), comma-separated")
    if not args.sizes or min(args.sizes) < 1:
        opts.parser.error("--sizes: at least one size >= 1 KiB")
    return args


def main(argv=None):
    args = nb.serve_or_parse(argv, serve, parse_args)
    prepared = nb.prepare(args)
    if prepared is None:
        return 1
    cores, versions, present = prepared

    meta, header = nb.meta_header("tokioloop echo benchmark", args, {
        "pinning": f"server on core {cores[0]}, client (echo_client) on core {cores[1]}",
        "load": f"{CONNS} connections, 1 request in flight each; sizes "
                + ", ".join(f"{k} KiB" for k in args.sizes),
    })
    print(header)
    print("The rust column is one pure-Rust tokio echo server (no styles): the same "
          "figure in every style's rows. Cells: median over repeats; * = some repeats "
          "failed; n/a = the loop lacks the feature.\n", flush=True)

    plan = []  # (repeat, loop, style, transport, kib)
    for r in range(args.repeat):
        for tr in args.transports:
            for kib in args.sizes:
                for i, st in enumerate(args.styles):
                    for name in nb.rotation(present, r):
                        if name == nb.RUST and i > 0:
                            continue  # style-less: measured once per (transport, size)
                        plan.append((r, name, st, tr, kib))
    samples = {c: {n: [] for n in present} for c in cells(args)}
    raw = []
    t0 = time.monotonic()
    for k, (r, name, st, tr, kib) in enumerate(plan, 1):
        s = run_sample(name, st, tr, kib, args, cores)
        style_label = "-" if name == nb.RUST else st
        nb.log(f"[{k}/{len(plan)} {time.monotonic() - t0:5.0f}s] r{r + 1} {name:9} "
               f"{style_label:8} {tr:4} {kib:3} KiB: " + nb.sample_line(s))
        targets = args.styles if name == nb.RUST else [st]
        for target in targets:
            samples[(target, tr, kib)][name].append(s)
        raw.append({"repeat": r, "loop": name, "style": style_label, "transport": tr,
                    "size_kib": kib, **s})

    med = {c: {n: nb.summarize(samples[c][n]) for n in present} for c in cells(args)}
    for c in med:
        for n in args.loops:
            if n not in present:
                med[c][n] = {"error": "not installed"}
    print(render(args, med), flush=True)
    print(nb.render_summary([(f"{st} {tr} {kib} KiB", med[(st, tr, kib)])
                             for st, tr, kib in cells(args)], args.loops, args.repeat),
          flush=True)

    meta.update(cores=cores, repeat=args.repeat, duration=args.duration,
                warmup=args.warmup, conns=CONNS, sizes_kib=args.sizes,
                loop_versions=versions, elapsed_s=round(time.monotonic() - t0, 1))
    medians = [{"style": st, "transport": tr, "size_kib": kib, "loop": n, **m}
               for (st, tr, kib), row in med.items() for n, m in row.items()]
    nb.save(args.json, meta, raw, medians)
    return 0


if __name__ == "__main__":
    sys.exit(main())
