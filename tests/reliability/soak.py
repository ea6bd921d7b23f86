"""Soak: one process serves a mixed load for N minutes with the loop under test on both ends,
and must hold it: nothing lost, nothing left behind, memory flat, throughput kept.

Contract
--------
``python tests/reliability/soak.py --minutes N --loop tokioloop,asyncio`` runs one child process
per loop (side by side unless ``--sequential``), each with its own seeded load (``--seed``;
printed, same for all loops), and prints for each a ``reliability figure:`` line and, for
tokioloop, the verdict against the pass criteria below, with asyncio's run as the oracle. The
exit status is 0 when every loop asked for passed, except that asyncio and uvloop only report:
they are the yardstick, not the subject (their verdicts are printed all the same).

The load, per second at ``--scale 1`` (all on 127.0.0.1, every unit bounded by ``UNIT_TIMEOUT``):
  * TCP: ``TCP_CONNS`` persistent echo connections, each echoing a random 1 B - 64 KiB message
    twice a second; 20 churn connections a second (one echo, then a random graceful close,
    abort, or close without a word).  Every echo is compared by hash.
  * TLS: ``TLS_CONNS`` persistent echo connections (one echo a second each); 5 new handshakes
    a second, one in five aborted mid-way by the client (a ClientHello cut short or followed by
    a reset or a FIN: the server must clean up).
  * UDP: 4 clients ping-pong 25-datagram batches with sequence numbers (2000 datagrams a second).
  * Subprocesses: 2 ``cat`` a second fed 64 KiB and checked; one in ten killed mid-way (status
    must be -SIGKILL).
  * Timers: 1000 a second, 30 % cancelled (before their time, by an earlier timer); each one
    that fires checks ``loop.time() >= handle.when()``, a cancelled one firing is lost, and one
    that never fires is lost.
  * Two threads each call ``call_soon_threadsafe`` 500 times a second; each thread's calls must
    arrive all and in order.
  * 10 ``getaddrinfo("localhost")`` a second, compared to ``socket.getaddrinfo``'s answer.
  * A 1 MiB ``loop.sendfile`` every 10 s to a server that returns the digest.

Samples (every ``SAMPLE_EVERY`` s, and at each checkpoint): RSS (``/proc/self/status``),
malloc in use (glibc ``mallinfo2``: ``uordblks + hblkhd``; the Rust heap and CPython's large
objects; ``MALLOC_ARENA_MAX=2`` is set for the children), open fds, native threads
(``/proc/self/task``), children and zombies, ``len(gc.get_objects())``, ops done.

Quiescent checkpoints: the first at the end of warm-up (20 % of the run, at least 60 s; a third
of runs under 2 minutes), then every ``--checkpoint-every`` seconds of load. At a checkpoint
new work stops, every unit in flight finishes, the threads' calls drain, garbage is
collected, and the fd / thread / child counts are compared with the first checkpoint's,
waiting up to ``SETTLE`` s for them to come back (tokio's blocking pool, which runs
tokioloop's getaddrinfo, keeps an idle thread 10 s). Checkpoint pauses are not load time.

Pass (issue 20 item 2): at every checkpoint fds, native threads and children equal the first
checkpoint's, and no zombie; malloc growth after warm-up < 64 KiB per 100k ops (the Theil-Sen
slope over the checkpoints, see ``malloc_slope``); RSS growth after warm-up <= 5 % and
<= asyncio's growth on the same harness + 2 MiB; the last window's throughput >= 90 % of the
first post-warm-up window's; lost == 0; no exception-handler call of a kind asyncio did not
make on the same harness; no load kind unsupported.

Forms:
    # CI (tests/reliability/test_soak.py): tokioloop 3 min beside asyncio 3 min
    python tests/reliability/soak.py --minutes 3 --checkpoint-every 30 --loop tokioloop,asyncio
    # long form (needs `pip install uvloop`):
    python tests/reliability/soak.py --minutes 60 --loop tokioloop,asyncio,uvloop

The child writes its result as JSON to the file the parent names (``--result-file``); ``run_loops`` and
``verdict`` are what the pytest wrapper imports.
"""

import argparse
import asyncio
import collections
import ctypes
import ctypes.util
import gc
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

UNIT_TIMEOUT = 30.0  # a unit of work not done in this long is lost (hung)
SAMPLE_EVERY = 5.0
SETTLE = 13.0  # seconds a checkpoint waits for counts to return (tokio's keep-alive is 10 s)
TCP_CONNS = 50
TLS_CONNS = 10
KIB = 1024
MIB = 1024 * KIB

MALLOC_BUDGET = 64 * KIB  # per 100k ops
RSS_FRACTION = 0.05
RSS_SLACK = 2 * MIB
THROUGHPUT_FLOOR = 0.90
KINDS = ("tcp", "tcp-churn", "tls", "tls-handshake", "udp", "subprocess", "timers",
         "threadsafe", "getaddrinfo", "sendfile")


# -- process counters ------------------------------------------------------------------------


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    fn.argtypes = []
    return fn


_MALLINFO2 = _mallinfo2()


def malloc_in_use():
    """Bytes glibc's malloc has handed out and not had back (None without mallinfo2)."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
    return None


def fd_count():
    return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor


def thread_count():
    return len(os.listdir("/proc/self/task"))


def children():
    """(children, zombies) of this process, from /proc."""
    import _proc
    kids = _proc.child_pids()
    zombies = 0
    for pid in kids:
        try:
            if _proc.proc_stat(pid)[0] == "Z":
                zombies += 1
        except OSError:
            pass
    return len(kids), zombies


# -- the load ----------------------------------------------------------------------------------


class Lost(Exception):
    """A unit's outcome was wrong: data, status, order, or it never came."""


def digest(data):
    return hashlib.blake2b(data, digest_size=16).digest()


class EchoServer(asyncio.Protocol):
    """Writes back whatever it receives; closes when the peer half-closes."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False  # close


class DigestServer(asyncio.Protocol):
    """Hashes what it receives until EOF, then answers the digest and closes."""

    def connection_made(self, transport):
        self.transport = transport
        self.hash = hashlib.blake2b(digest_size=16)

    def data_received(self, data):
        self.hash.update(data)

    def eof_received(self):
        self.transport.write(self.hash.digest())
        self.transport.close()
        return True


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self, soak):
        self.soak = soak
        self.waiting = {}  # seq -> (payload digest, future)

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        seq = int.from_bytes(data[:8], "big")
        entry = self.waiting.pop(seq, None)
        if entry is None:
            self.soak.lose("udp", f"unexpected or duplicate datagram seq {seq}")
            return
        want, fut = entry
        if digest(data) != want:
            self.soak.lose("udp", f"datagram {seq} corrupted")
        if not fut.done():
            fut.set_result(None)

    def error_received(self, exc):
        self.soak.lose("udp", f"error_received {exc!r}")


class Soak:
    def __init__(self, loop, seed, scale, certs_dir, data_file, kinds=KINDS):
        self.loop = loop
        self.kinds = set(kinds)
        self.rng = random.Random(seed)
        self.scale = scale
        self.ops = collections.Counter()
        self.lost = collections.Counter()
        self.lost_examples = []
        self.handler_calls = collections.Counter()
        self.unsupported = {}
        self.inflight = 0
        self.gate = asyncio.Event()
        self.done = False
        self.tasks = []
        self.pool = os.urandom(MIB + 64 * KIB)
        self.certs_dir = certs_dir
        self.data_file = data_file
        with open(data_file, "rb") as f:
            self.data_digest = digest(f.read())
        # threadsafe callers
        self.ts_gate = threading.Event()
        self.ts_stop = threading.Event()
        self.ts_lock = threading.Lock()
        self.ts_sent = [0, 0]
        self.ts_seen = [0, 0]
        self.ts_threads = []

    # bookkeeping

    def lose(self, kind, what):
        self.lost[kind] += 1
        if len(self.lost_examples) < 20:
            self.lost_examples.append(f"{kind}: {what}")

    def handler(self, loop, context):
        exc = context.get("exception")
        message = re.sub(r" at 0x[0-9a-f]+", "", str(context.get("message")))
        key = f"{message} [{type(exc).__name__ if exc else '-'}]"
        self.handler_calls[key] += 1

    def payload(self, lo=1, hi=64 * KIB):
        # log-uniform size: small messages dominate, 64 KiB ones still come
        size = int(round(lo * (hi / lo) ** self.rng.random()))
        start = self.rng.randrange(0, len(self.pool) - size)
        return self.pool[start:start + size]

    def driver(self, kind, period, unit, *args):
        """Run ``unit(*args)`` every ``period`` s of load (scaled), one at a time."""
        if kind not in self.kinds:
            return
        async def run():
            period_s = period / self.scale
            await asyncio.sleep(self.rng.random() * period_s)  # spread the drivers out
            next_at = self.loop.time()
            while True:
                await self.gate.wait()
                if self.done:
                    return
                self.inflight += 1
                try:
                    await asyncio.wait_for(unit(*args), UNIT_TIMEOUT)
                except asyncio.TimeoutError:
                    self.lose(kind, f"unit did not finish within {UNIT_TIMEOUT} s")
                except Lost as exc:
                    self.lose(kind, str(exc))
                except NotImplementedError as exc:
                    # uvloop has no loop.sendfile: the kind is reported unsupported, not lost
                    self.unsupported[kind] = f"NotImplementedError: {exc}"
                    return
                except Exception as exc:
                    self.lose(kind, f"{type(exc).__name__}: {exc}")
                finally:
                    self.inflight -= 1
                now = self.loop.time()
                next_at += period_s
                if next_at < now - period_s or not self.gate.is_set():
                    next_at = now  # behind by more than a period, or paused: don't catch up
                if next_at > now:
                    await asyncio.sleep(next_at - now)
        self.tasks.append(self.loop.create_task(run()))

    # setup

    async def start(self):
        loop = self.loop
        loop.set_exception_handler(self.handler)
        self.tls_server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls_server_ctx.load_cert_chain(os.path.join(self.certs_dir, "server.pem"),
                                            os.path.join(self.certs_dir, "server.key"))
        # No TLS 1.3 session tickets: OpenSSL's server session cache would otherwise keep
        # growing with every handshake (up to 20k sessions), on any loop: harness memory.
        self.tls_server_ctx.num_tickets = 0
        self.tls_client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.tls_client_ctx.load_verify_locations(os.path.join(self.certs_dir, "ca.pem"))

        self.tcp_server = await loop.create_server(EchoServer, "127.0.0.1", 0)
        self.tcp_port = self.tcp_server.sockets[0].getsockname()[1]
        self.tls_server = await loop.create_server(EchoServer, "127.0.0.1", 0,
                                                  ssl=self.tls_server_ctx)
        self.tls_port = self.tls_server.sockets[0].getsockname()[1]
        self.sf_server = await loop.create_server(DigestServer, "127.0.0.1", 0)
        self.sf_port = self.sf_server.sockets[0].getsockname()[1]
        self.udp_server, _ = await loop.create_datagram_endpoint(
            UdpEcho, local_addr=("127.0.0.1", 0))
        self.udp_addr = self.udp_server.get_extra_info("sockname")
        self.dns_expected = sorted(
            ai[4] for ai in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM))

        # A default executor with all its threads started, so its size is fixed from here on
        # (asyncio's getaddrinfo runs there; a ThreadPoolExecutor only ever grows).
        from concurrent.futures import ThreadPoolExecutor
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="soak-exec")
        loop.set_default_executor(self.executor)
        barrier = threading.Barrier(4)
        await asyncio.gather(*(loop.run_in_executor(None, barrier.wait, 10) for _ in range(4)))

        tcp = [await asyncio.open_connection("127.0.0.1", self.tcp_port)
               for _ in range(max(1, int(TCP_CONNS * min(self.scale, 1))))]
        tls = [await asyncio.open_connection("127.0.0.1", self.tls_port, ssl=self.tls_client_ctx,
                                             server_hostname="localhost")
               for _ in range(max(1, int(TLS_CONNS * min(self.scale, 1))))]
        self.persistent = tcp + tls
        for i, (r, w) in enumerate(tcp):
            self.driver("tcp", 0.5 * len(tcp) / TCP_CONNS * 1.0, self.echo, r, w, "tcp")
        for r, w in tls:
            self.driver("tls", 1.0 * len(tls) / TLS_CONNS, self.echo, r, w, "tls")
        for _ in range(4):
            self.driver("tcp-churn", 0.2, self.churn)
        for _ in range(2):
            self.driver("tls-handshake", 0.4, self.tls_handshake)
        self.udp_clients = []
        for _ in range(4):
            t, p = await loop.create_datagram_endpoint(
                lambda: UdpClient(self), remote_addr=self.udp_addr)
            self.udp_clients.append((t, p))
            self.driver("udp", 0.05, self.udp_batch, t, p)
        self.udp_seq = 0
        for _ in range(2):
            self.driver("subprocess", 1.0, self.subprocess)
        for _ in range(2):
            self.driver("timers", 0.02, self.timers)
        self.driver("getaddrinfo", 0.1, self.getaddrinfo)
        self.driver("sendfile", 10.0, self.sendfile)
        for tid in range(2 if "threadsafe" in self.kinds else 0):
            t = threading.Thread(target=self.ts_thread, args=(tid,), name=f"soak-ts{tid}")
            t.start()
            self.ts_threads.append(t)

    # units

    async def echo(self, reader, writer, kind):
        data = self.payload()
        writer.write(data)
        await writer.drain()
        got = await reader.readexactly(len(data))
        if digest(got) != digest(data):
            raise Lost(f"echo of {len(data)} B came back different")
        self.ops[kind] += 1

    async def churn(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.tcp_port)
        how = self.rng.choice(("close", "abort", "silent", "abort-pending"))
        try:
            if how != "silent":
                data = self.payload(1, 16 * KIB)
                writer.write(data)
                await writer.drain()
                if how == "abort-pending":
                    writer.transport.abort()  # with the echo still unread: a reset
                    self.ops["tcp-churn"] += 1
                    return
                got = await reader.readexactly(len(data))
                if got != data:
                    raise Lost(f"churn echo of {len(data)} B came back different")
            if how == "abort":
                writer.transport.abort()
            else:
                writer.close()
            self.ops["tcp-churn"] += 1
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def tls_handshake(self):
        if self.rng.random() < 0.2:
            await self.tls_abort()
            return
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.tls_port, ssl=self.tls_client_ctx, server_hostname="localhost")
        try:
            data = self.payload(1, 4 * KIB)
            writer.write(data)
            got = await reader.readexactly(len(data))
            if got != data:
                raise Lost("TLS echo after handshake came back different")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError, ssl.SSLError):
                pass
        self.ops["tls-handshake"] += 1

    async def tls_abort(self):
        """A client that gives up mid-handshake: part of a ClientHello, or all of it and maybe
        some of the answer, then a reset or a FIN."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.tls_client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.tls_port)
        try:
            how = self.rng.choice(("partial", "full", "answered"))
            if how == "partial":
                writer.write(hello[:self.rng.randrange(1, len(hello))])
            else:
                writer.write(hello)
            await writer.drain()
            if how == "answered":
                await reader.read(1)
            if self.rng.random() < 0.5:
                writer.transport.abort()
            else:
                writer.close()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self.ops["tls-aborted"] += 1

    async def udp_batch(self, transport, proto):
        futs = []
        for _ in range(25):
            self.udp_seq += 1
            seq = self.udp_seq
            data = seq.to_bytes(8, "big") + self.payload(1, 1024)
            fut = self.loop.create_future()
            proto.waiting[seq] = (digest(data), fut)
            futs.append(fut)
            transport.sendto(data)
        done, pending = await asyncio.wait(futs, timeout=5.0)
        if pending:
            missing = [s for s, (_, f) in proto.waiting.items() if f in pending]
            for s in missing:
                proto.waiting.pop(s, None)
            raise Lost(f"{len(pending)} of 25 datagrams never answered (seqs {missing[:5]})")
        self.ops["udp"] += 25

    async def subprocess(self):
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            if self.rng.random() < 0.1:
                try:
                    proc.stdin.write(self.pool[:4096])
                    await proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                proc.kill()
                await proc.stdout.read()
                proc.stdin.close()
                rc = await proc.wait()
                if rc != -signal.SIGKILL:
                    raise Lost(f"killed cat exited {rc}")
                self.ops["subprocess-killed"] += 1
                return
            start = self.rng.randrange(0, len(self.pool) - 64 * KIB)
            data = self.pool[start:start + 64 * KIB]
            out, _ = await proc.communicate(data)
            if proc.returncode != 0 or digest(out) != digest(data):
                raise Lost(f"cat returned {proc.returncode} with {len(out)} B of {len(data)}")
            self.ops["subprocess"] += 1
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def timers(self):
        loop = self.loop
        done = loop.create_future()
        state = {"left": 0}
        early = []

        def fired(handle_box, idx):
            h, when = handle_box
            if h is None or h.cancelled():
                self.lose("timers", f"timer {idx} ran after cancel()")
                return
            # The loop's own deadline where the handle has one (uvloop turns call_later(0)
            # into a plain Handle: then the deadline asked for, which is no later).
            when = h.when() if hasattr(h, "when") else when
            now = loop.time()
            if now < when:
                early.append(when - now)
            state["left"] -= 1
            if state["left"] == 0 and not done.done():
                done.set_result(None)

        boxes = []
        for idx in range(20):
            box = [None, None]
            delay = self.rng.random() * 0.1
            if self.rng.random() < 0.5:
                box[1] = loop.time() + delay
                box[0] = loop.call_later(delay, fired, box, idx)
            else:
                box[1] = loop.time() + delay
                box[0] = loop.call_at(box[1], fired, box, idx)
            boxes.append((box, delay))
        for box, delay in boxes:
            r = self.rng.random()
            if r < 0.15:
                box[0].cancel()
            elif r < 0.3:
                loop.call_later(delay / 2, box[0].cancel)  # an earlier timer cancels it
            else:
                state["left"] += 1
        if state["left"]:
            try:
                await asyncio.wait_for(done, 10.0)
            except asyncio.TimeoutError:
                raise Lost(f"{state['left']} timers never fired") from None
        await asyncio.sleep(0.11)  # a cancelled one may not fire late either
        if early:
            raise Lost(f"{len(early)} timers fired early (by up to {max(early):.3g} s)")
        self.ops["timers"] += 20

    def ts_thread(self, tid):
        rate = 500 * self.scale
        burst = 25
        period = burst / rate
        while not self.ts_stop.is_set():
            if not self.ts_gate.wait(0.05):
                continue
            with self.ts_lock:
                if not self.ts_gate.is_set():
                    continue
                for _ in range(burst):
                    self.loop.call_soon_threadsafe(self.ts_arrived, tid, self.ts_sent[tid])
                    self.ts_sent[tid] += 1
            time.sleep(period)

    def ts_arrived(self, tid, seq):
        if seq != self.ts_seen[tid]:
            self.lose("threadsafe", f"thread {tid}: call {seq} arrived, expected "
                                    f"{self.ts_seen[tid]}")
        self.ts_seen[tid] = seq + 1
        self.ops["threadsafe"] += 1

    async def getaddrinfo(self):
        infos = await self.loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
        got = sorted(ai[4] for ai in infos)
        if got != self.dns_expected:
            raise Lost(f"getaddrinfo('localhost') gave {got}, socket's {self.dns_expected}")
        self.ops["getaddrinfo"] += 1

    async def sendfile(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.sf_port)
        try:
            with open(self.data_file, "rb") as f:
                sent = await self.loop.sendfile(writer.transport, f)
            writer.write_eof()
            answer = await reader.read()
            if sent != MIB or answer != self.data_digest:
                raise Lost(f"sendfile sent {sent} B, server's digest "
                           f"{'matches' if answer == self.data_digest else 'differs'}")
            self.ops["sendfile"] += 1
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    # checkpoints

    async def quiesce(self):
        self.gate.clear()
        self.ts_gate.clear()
        await self.loop.run_in_executor(None, self.ts_lock.acquire)
        self.ts_lock.release()
        deadline = self.loop.time() + UNIT_TIMEOUT + 5
        while self.inflight and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.inflight:
            self.lose("checkpoint", f"{self.inflight} units still running")
        deadline = self.loop.time() + 10
        while self.ts_seen != self.ts_sent and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.ts_seen != self.ts_sent:
            self.lose("threadsafe", f"calls sent {self.ts_sent}, arrived {self.ts_seen}")
            self.ts_seen = list(self.ts_sent)
        await asyncio.sleep(0.05)  # closes scheduled by the last units

    def resume(self):
        self.gate.set()
        self.ts_gate.set()

    async def stop(self):
        self.done = True
        self.gate.set()
        self.ts_stop.set()
        self.ts_gate.set()
        for t in self.ts_threads:
            await self.loop.run_in_executor(None, t.join, 10)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for _, w in self.persistent:
            w.close()
        for _, w in self.persistent:
            try:
                await w.wait_closed()
            except (ConnectionError, OSError, ssl.SSLError):
                pass
        for t, _ in self.udp_clients:
            t.close()
        self.udp_server.close()
        for srv in (self.tcp_server, self.tls_server, self.sf_server):
            srv.close()
            await srv.wait_closed()
        await self.loop.shutdown_default_executor()


def sample(soak, load_s):
    kids, zombies = children()
    return {
        "t": round(load_s, 2), "rss": rss_bytes(), "malloc": malloc_in_use(),
        "fds": fd_count(), "threads": thread_count(), "children": kids, "zombies": zombies,
        "gc_objects": len(gc.get_objects()), "ops": sum(soak.ops.values()),
        # what the persistent connections' StreamReader buffers hold allocated (a bytearray
        # keeps its capacity): harness memory that depends on how the loop chunks its reads
        "reader_buffers": sum(sys.getsizeof(getattr(r, "_buffer", b""))
                              for r, _ in soak.persistent),
        "lost": sum(soak.lost.values()),
    }


def type_counts():
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


async def checkpoint(soak, load_s, reference, log):
    await soak.quiesce()
    gc.collect()
    wanted = None if reference is None else (reference["fds"], reference["threads"], 0, 0)
    deadline = time.monotonic() + SETTLE
    stable = (None, 0.0)
    while True:
        s = sample(soak, load_s)
        now = (s["fds"], s["threads"], s["children"], s["zombies"])
        if wanted is None:
            # The first checkpoint: wait until nothing transient is left (no child, and the
            # fd and thread counts unchanged for 11 s, past tokio's blocking-pool keep-alive).
            if s["children"] == 0 and s["zombies"] == 0:
                if stable[0] != now:
                    stable = (now, time.monotonic())
                elif time.monotonic() - stable[1] >= 11:
                    break
        elif now == wanted:
            break
        if time.monotonic() > deadline + (20 if wanted is None else 0):
            break
        await asyncio.sleep(0.25)
        gc.collect()
    s["checkpoint"] = True
    s["malloc"] = malloc_in_use()
    s["rss"] = rss_bytes()
    log(f"checkpoint at {load_s:.0f} s: {s}")
    return s


async def soak_main(loop, args, certs_dir, data_file, log):
    soak = Soak(loop, args.seed, args.scale, certs_dir, data_file, args.kinds.split(","))
    before = {"fds": fd_count(), "threads": thread_count()}
    await soak.start()
    total = args.minutes * 60
    warmup = max(60.0, 0.2 * total) if total >= 120 else total / 3
    marks = [warmup]
    while marks[-1] + args.checkpoint_every <= total - 1e-6:
        marks.append(marks[-1] + args.checkpoint_every)
    if marks[-1] < total - 1e-6:
        marks.append(total)
    checkpoints, samples, windows = [], [], []
    load_s, ops_at_mark = 0.0, 0
    first_types = None
    soak.resume()
    for mark in marks:
        while load_s < mark - 1e-6:
            step = min(SAMPLE_EVERY, mark - load_s)
            await asyncio.sleep(step)
            load_s += step
            samples.append(sample(soak, load_s))
        ops_now = sum(soak.ops.values())
        windows.append({"until": mark, "ops": ops_now - ops_at_mark,
                        "seconds": mark - (windows[-1]["until"] if windows else 0.0)})
        ops_at_mark = ops_now
        cp = await checkpoint(soak, load_s, checkpoints[0] if checkpoints else None, log)
        if first_types is None:
            first_types = type_counts()
        checkpoints.append(cp)
        soak.resume()
    last_types = type_counts()
    await soak.stop()
    gc.collect()
    growth = last_types.copy()
    growth.subtract(first_types)
    after = {"fds": fd_count(), "threads": thread_count()}
    return {
        "loop": args.loop, "seed": args.seed, "minutes": args.minutes, "scale": args.scale,
        "python": sys.version.split()[0], "warmup_s": warmup,
        "ops": dict(soak.ops), "lost": dict(soak.lost), "lost_examples": soak.lost_examples,
        "handler_calls": dict(soak.handler_calls), "unsupported": soak.unsupported,
        "checkpoints": checkpoints,
        "samples": samples, "windows": windows,
        "gc_type_growth": growth.most_common(10),
        "before": before, "after_teardown": after,
    }


def child_main(args):
    log = lambda msg: print(f"[soak {args.loop}] {msg}", file=sys.stderr, flush=True)  # noqa
    if args.loop == "tokioloop":
        import tokioloop
        loop = tokioloop.new_event_loop()
    elif args.loop == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    import _tls
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        certs = _tls.make_certs(tmp)
        data_file = os.path.join(tmp, "payload.bin")
        with open(data_file, "wb") as f:
            f.write(random.Random(args.seed).randbytes(MIB))
        log(f"seed {args.seed}, {args.minutes} min, scale {args.scale}")
        try:
            result = loop.run_until_complete(soak_main(loop, args, certs.dir, data_file, log))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    # To a file the parent named: a 60-minute run's result is a line of more than 64 KiB, and
    # one such line, read back from the child's stdout pipe, once came back cut at 64 KiB.
    with open(args.result_file, "w") as f:
        json.dump(result, f)


# -- evaluation ------------------------------------------------------------------------------


def _growth(result, key):
    cps = result["checkpoints"]
    return cps[-1][key] - cps[0][key]


def malloc_slope(result):
    """Malloc growth in bytes per 100k ops after warm-up: the Theil-Sen estimate (median of the
    slopes between every pair of checkpoints), so a one-off step (a buffer or cache reaching
    its working size just after warm-up) does not pass for a trend, while steady growth (a
    leak) still shows at its full rate. None without mallinfo2 or with under 2 checkpoints."""
    cps = [c for c in result["checkpoints"] if c["malloc"] is not None]
    slopes = sorted((b["malloc"] - a["malloc"]) / (b["ops"] - a["ops"]) * 100_000
                    for i, a in enumerate(cps) for b in cps[i + 1:] if b["ops"] > a["ops"])
    if not slopes:
        return None
    mid = len(slopes) // 2
    return slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2


def verdict(result, oracle=None):
    """The pass criteria's failures for ``result`` (empty: passed); ``oracle`` is asyncio's
    result on the same harness (RSS and exception-handler comparison), if there is one."""
    fails = []
    lost = sum(result["lost"].values())
    if lost:
        fails.append(f"lost {lost}: {result['lost']} e.g. {result['lost_examples'][:5]}")
    if result.get("unsupported"):
        fails.append(f"load kinds unsupported: {result['unsupported']}")
    cps = result["checkpoints"]
    ref = cps[0]
    for cp in cps[1:]:
        for key in ("fds", "threads", "children"):
            if cp[key] != ref[key]:
                fails.append(f"{key} {cp[key]} at {cp['t']:.0f} s, {ref[key]} at the first "
                             "checkpoint")
        if cp["zombies"]:
            fails.append(f"{cp['zombies']} zombies at {cp['t']:.0f} s")
    per100k = malloc_slope(result)
    if per100k is not None:
        if per100k >= MALLOC_BUDGET:
            fails.append(f"malloc grew {per100k / KIB:.1f} KiB per 100k ops (budget "
                         f"{MALLOC_BUDGET // KIB} KiB)")
    rss = _growth(result, "rss")
    if rss > RSS_FRACTION * ref["rss"]:
        fails.append(f"RSS grew {rss / MIB:.1f} MiB, over {RSS_FRACTION:.0%} of "
                     f"{ref['rss'] / MIB:.1f} MiB")
    if oracle is not None:
        limit = max(_growth(oracle, "rss"), 0) + RSS_SLACK
        if rss > limit:
            theirs = _growth(oracle, "rss") / MIB
            fails.append(f"RSS grew {rss / MIB:.2f} MiB, asyncio's {theirs:.2f} MiB + 2 MiB "
                         "allowed")
        extra = set(result["handler_calls"]) - set(oracle["handler_calls"])
        if extra:
            fails.append(f"exception-handler calls asyncio did not make: {sorted(extra)}")
    win = result["windows"]
    if len(win) >= 3:
        first, last = win[1], win[-1]
        r_first, r_last = first["ops"] / first["seconds"], last["ops"] / last["seconds"]
        if r_last < THROUGHPUT_FLOOR * r_first:
            fails.append(f"throughput {r_last:.0f} ops/s in the last window, {r_first:.0f} in "
                         "the first after warm-up")
    return fails


def figure(result, oracle=None):
    cps = result["checkpoints"]
    ref, end = cps[0], cps[-1]
    ops = sum(result["ops"].values())
    after_ops = end["ops"] - ref["ops"]
    slope = malloc_slope(result)
    malloc = (f"malloc {slope / KIB:+.1f} KiB/100k ops (Theil-Sen; first to last "
              f"{_growth(result, 'malloc') / KIB:+.0f} KiB over {after_ops} ops)"
              if slope is not None else "malloc n/a")
    rss = _growth(result, "rss")
    win = result["windows"]
    rate = [w["ops"] / w["seconds"] for w in win]
    thr = (f"throughput last/first {rate[-1] / rate[1]:.0%}"
           if len(win) >= 3 and rate[1] else "throughput n/a")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(result["ops"].items()))
    return (f"reliability figure: soak {result['loop']} {result['minutes']:g} min (py "
            f"{result['python']}, seed {result['seed']}): {ops} ops ({kinds}); "
            f"lost {sum(result['lost'].values())}; "
            f"Δfd {max(abs(c['fds'] - ref['fds']) for c in cps)} "
            f"Δthreads {max(abs(c['threads'] - ref['threads']) for c in cps)} "
            f"children {max(c['children'] for c in cps[1:] or cps)} over {len(cps)} checkpoints; "
            f"RSS {rss / ref['rss']:+.1%} ({rss / MIB:+.2f} MiB of {ref['rss'] / MIB:.1f}); "
            f"{malloc}; {thr}; gc objects {end['gc_objects'] - ref['gc_objects']:+d}; "
            f"handler calls {sum(result['handler_calls'].values())}"
            + (f"; unsupported: {', '.join(result['unsupported'])}"
               if result.get("unsupported") else ""))


def run_loops(loops, minutes, seed, *, scale=1.0, checkpoint_every=60.0, sequential=False,
              timeout=None, kinds=KINDS):
    """Run the soak for each loop in its own child process; return {loop: result}."""
    env = dict(os.environ, MALLOC_ARENA_MAX="2", PYTHONUNBUFFERED="1")
    procs = {}
    results = {}

    result_dir = tempfile.mkdtemp(prefix="soak-results-")

    def result_file(kind):
        return os.path.join(result_dir, f"{kind}.json")

    def start(kind):
        argv = [sys.executable, os.path.abspath(__file__), "--child", "--loop", kind,
                "--minutes", str(minutes), "--seed", str(seed), "--scale", str(scale),
                "--checkpoint-every", str(checkpoint_every), "--kinds", ",".join(kinds),
                "--result-file", result_file(kind)]
        return subprocess.Popen(argv, env=env)

    def finish(kind, proc):
        limit = timeout or (minutes * 60 * 2 + 300)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"soak child for {kind} did not finish within {limit} s")
        if proc.returncode != 0 or not os.path.exists(result_file(kind)):
            raise RuntimeError(f"soak child for {kind} failed (status {proc.returncode})")
        with open(result_file(kind)) as f:
            results[kind] = json.load(f)

    try:
        if sequential:
            for kind in loops:
                finish(kind, start(kind))
        else:
            for kind in loops:
                procs[kind] = start(kind)
            try:
                for kind, proc in procs.items():
                    finish(kind, proc)
            finally:
                for proc in procs.values():
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--loop", default="tokioloop,asyncio",
                   help="comma-separated: tokioloop, asyncio, uvloop (default %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--scale", type=float, default=1.0, help="load multiplier (default 1)")
    p.add_argument("--checkpoint-every", type=float, default=60.0,
                   help="seconds of load between quiescent checkpoints after warm-up")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="comma-separated load kinds to run, for narrowing a finding down "
                        "(default: all of them)")
    p.add_argument("--sequential", action="store_true", help="one loop after the other")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    if args.child:
        child_main(args)
        return 0
    loops = [k.strip() for k in args.loop.split(",") if k.strip()]
    print(f"soak: seed {args.seed}, {args.minutes:g} min, loops {loops}", flush=True)
    results = run_loops(loops, args.minutes, args.seed, scale=args.scale,
                        checkpoint_every=args.checkpoint_every, sequential=args.sequential,
                        kinds=args.kinds.split(","))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    oracle = results.get("asyncio")
    status = 0
    for kind, res in results.items():
        print(figure(res, oracle))
        fails = verdict(res, oracle if kind != "asyncio" else None)
        print(f"soak verdict {kind}: " + ("pass" if not fails else "FAIL: " + "; ".join(fails)))
        if fails and kind == "tokioloop":
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
