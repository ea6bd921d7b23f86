"""TLS faults (issue 20 item 4, research 2c): a peer vanishing at every TLS record boundary, and
malformed TLS sent to a loop's TLS server. The stdlib loop is the oracle.

Contract
--------
Each loop under test runs in a thread of its own (``LoopThread``: ``run_forever``, work handed
over with ``run_coroutine_threadsafe``), with a TLS server (``start_server(ssl=...)``, a handler
that echoes one line, reads to EOF and closes) and an exception handler that records what it is
given. The harness's own peers are blocking ``ssl`` sockets and a byte relay in threads; only
127.0.0.1 is used, and every blocking call has a timeout.

Cuts (``run_cuts``). A relay (``Relay``) sits between the loop and a blocking TLS peer, parses
the TLS record headers (type, version, length) flowing each way and forwards whole records. A cut
``(direction, k, j, mode)`` lets ``k`` records through in ``direction`` (``up``: from the side
that connected, ``down``: towards it), then ``j`` bytes of record ``k``, and closes both of its
sockets: ``fin`` (shutdown of both write sides, then whatever arrives is read and dropped until
each side closes: a plain close() with bytes unread would send a RST) or ``rst`` (SO_LINGER
{1, 0}). Roles: ``client`` (the loop runs
``open_connection(ssl=..., ssl_handshake_timeout=5)``, writes a line, reads it back, closes)
and ``server`` (a blocking client talks to the loop's TLS server through the relay). The cuts
are every record boundary of a reference run in both directions (``j = 0``), plus ``--random``
seeded offsets inside records, each with both modes; the record boundaries cover the handshake,
the data and the close_notify exchange. The outcome of a cut is what the application saw: the
step where an exception came out and its class (or ``ok``), the server handler's result and the
exception handler's calls (message, exception class); the blocking peer's own view is not part
of it (it sees the relay's cut, whatever the loop did). The application pauses ``SETTLE`` after
each step, so a cut has reached the loop before the next step (see ``SETTLE``).
A cut passes when tokioloop's outcome equals the stdlib's, both finished within the harness
timeout (``ssl_handshake_timeout`` bounds a handshake), and the loop's server then completes a
clean TLS echo (it keeps accepting). Outcomes that depend on a race (the stdlib itself gives
two answers for the same cut) are retried: a cut diverges when, after ``RETRIES`` runs of
each loop, no tokioloop outcome is among the stdlib's.

Malformed input (``run_malformed``). A ClientHello captured from ``ssl.SSLObject`` (afresh
each run: its random and key share differ, its layout does not) is mutated
(Hypothesis: bit flips, truncation, record or handshake length set to 0, 0xFFFF or a random
value, bytes inserted or deleted, or arbitrary bytes), sent on a plain socket to each loop's TLS
server, then the write side is shut (FIN) and the answer read to EOF (bounded). Fixed cases
too: a record of 2^14 + 2049 bytes, length 0xFFFF, plaintext ``GET / HTTP/1.1``, data after a
close_notify and a ragged EOF (both after a real handshake and one echoed line, driven by a
MemoryBIO client). The outcome is the answer (record types, alert level and description of
plaintext alerts), how the connection ended (EOF, reset, timeout), whether the loop's server
finished with the connection, the handler's result and the exception handler's calls. Equal to
the stdlib's, no crash, no hang, and the server alive after (a clean echo every 50 inputs and
at the end).

Figure::

    reliability figure: faults-tls tokioloop: N/M cuts, K malformed inputs, D divergences, H hangs

Usage::

    python tests/reliability/faults_tls.py --help
    # CI form (what test_faults_tls.py runs): every boundary, 2 random offsets, 100 mutations
    python tests/reliability/faults_tls.py --random 2 --examples 100
    # long form: 40 random offsets per role, 10k mutations with a random seed (~2 min)
    python tests/reliability/faults_tls.py --random 40 --examples 10000 --seed random
    # uvloop judged too (pip install uvloop first)
    python tests/reliability/faults_tls.py --loop tokioloop,uvloop --random 40 --examples 10000

Exit status 0 when tokioloop matched the stdlib everywhere, 1 otherwise.
"""

import argparse
import asyncio
import os
import random
import select
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

ADDR = "127.0.0.1"
HANDSHAKE_TIMEOUT = 5.0
STEP_TIMEOUT = 8.0  # any single step of a flow; > HANDSHAKE_TIMEOUT so the loop's own fires first
RETRIES = 4
# Pause of the application after each step, so that a cut the relay already made has reached the
# loop before the next step: the outcome is then what the loop reports for that peer state, not
# which of the loop's ready callbacks and its I/O poll ran first (an order that differs between
# loops and with the machine's load, and that the contract does not fix).
SETTLE = 0.02
LINE = b"tokioloop faults-tls ping\n"


def loop_factory(kind):
    """``kind`` may carry a label after '#' ('asyncio#self': a second stdlib loop, judged against
    the first to show the harness itself is deterministic)."""
    kind = kind.split("#")[0]
    if kind == "asyncio":
        return asyncio.new_event_loop
    if kind == "tokioloop":
        import tokioloop
        return tokioloop.new_event_loop
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    raise ValueError(kind)


def name(exc):
    return type(exc).__name__


def linger_rst(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def hard_close(sock, mode):
    try:
        if mode == "rst":
            linger_rst(sock)
        sock.close()
    except OSError:
        pass


# -- the loop under test, in a thread ---------------------------------------------------------


class LoopThread:
    """A loop of ``kind`` running forever in a thread, with a TLS echo server. ``run(coro_fn)``
    runs a coroutine there and returns its result (bounded)."""

    def __init__(self, kind, server_ctx):
        self.kind = kind
        self.loop = loop_factory(kind)()
        self.errors = []  # (message, exception class) given to the exception handler
        self.handled = []  # one entry per handler call: its outcome
        self.accepted = 0
        self.running = 0  # handlers not finished
        self.loop.set_exception_handler(self._on_error)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name=f"loop-{kind}")
        self.thread.start()
        self.server = self.run(lambda: self._start(server_ctx))
        self.port = self.server.sockets[0].getsockname()[1]

    def _on_error(self, loop, context):
        exc = context.get("exception")
        self.errors.append((context.get("message"), name(exc) if exc else None))

    async def _start(self, ctx):
        loop = asyncio.get_running_loop()

        def factory():
            self.accepted += 1
            reader = asyncio.StreamReader(limit=2 ** 16)
            return asyncio.StreamReaderProtocol(reader, self._handle)

        return await loop.create_server(factory, ADDR, 0, ssl=ctx,
                                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT)

    async def _handle(self, reader, writer):
        self.running += 1
        try:
            await self._serve(reader, writer)
        finally:
            self.running -= 1

    async def _serve(self, reader, writer):
        step = "read"
        try:
            line = await asyncio.wait_for(reader.readline(), STEP_TIMEOUT)
            if not line.endswith(b"\n"):
                self.handled.append(("short", len(line)))
                writer.close()
                return
            await asyncio.sleep(SETTLE)
            step = "write"
            writer.write(line)
            await writer.drain()
            await asyncio.sleep(SETTLE)
            step = "eof"
            rest = await asyncio.wait_for(reader.read(), STEP_TIMEOUT)
            step = "close"
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), STEP_TIMEOUT)
            self.handled.append(("ok", len(rest)))
        except Exception as exc:
            self.handled.append((step, name(exc)))
            writer.close()

    def run(self, coro_fn, timeout=STEP_TIMEOUT * 4):
        async def wrapper():
            return await coro_fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def active(self):
        """(connections accepted, connections the server still holds or handles), read on
        the loop."""
        async def probe():
            srv = self.server
            if hasattr(srv, "_active_count"):
                held = srv._active_count
            else:
                held = len(srv._clients)
            return self.accepted, held + self.running
        return self.run(probe, 5)

    def settle(self, accepted, timeout=STEP_TIMEOUT + 2):
        """Wait until the server accepted ``accepted`` connections and holds none; False when
        that did not happen in ``timeout`` (a hang)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got, held = self.active()
            if got >= accepted and held == 0:
                return True
            time.sleep(0.003)
        return False

    def take(self):
        """The handler outcomes and exception handler calls since the last take()."""
        async def grab():
            await asyncio.sleep(0)
            h, e = list(self.handled), list(self.errors)
            self.handled.clear()
            self.errors.clear()
            return h, e
        return self.run(grab, 5)

    def close(self):
        async def shut():
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), 5)
        try:
            self.run(shut, 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


def clean_echo(port, client_ctx):
    """A full TLS exchange with the loop's server: the proof it still accepts and serves."""
    with socket.create_connection((ADDR, port), timeout=STEP_TIMEOUT) as raw:
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(LINE)
            got = b""
            while not got.endswith(b"\n"):
                chunk = tls.recv(1024)
                if not chunk:
                    break
                got += chunk
            tls.unwrap()
    return got == LINE


# -- the relay ------------------------------------------------------------------------------------


class Relay:
    """Accepts one connection, connects to ``upstream``, forwards whole TLS records both ways and
    applies ``cut`` = (direction, k, j, mode) or None. Records the record types seen each way."""

    def __init__(self, upstream, cut):
        self.upstream = upstream
        self.cut = cut
        self.listener = socket.socket()
        self.listener.bind((ADDR, 0))
        self.listener.listen(4)
        self.listener.settimeout(STEP_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.records = {"up": [], "down": []}
        self.cut_done = False
        self.error = None
        self.thread = threading.Thread(target=self._main, daemon=True, name="relay")
        self.thread.start()

    def _main(self):
        try:
            self._relay()
        except Exception as exc:  # reported by join()
            self.error = exc
        finally:
            self.listener.close()

    def _relay(self):
        down, _ = self.listener.accept()
        up = socket.create_connection(self.upstream, timeout=STEP_TIMEOUT)
        socks = {down: ("up", up), up: ("down", down)}
        bufs = {"up": bytearray(), "down": bytearray()}
        open_dirs = {"up", "down"}
        deadline = time.monotonic() + STEP_TIMEOUT * 3
        try:
            while open_dirs and time.monotonic() < deadline:
                readable, _, _ = select.select([s for s, (d, _) in socks.items()
                                                if d in open_dirs], [], [], 0.5)
                for sock in readable:
                    direction, dest = socks[sock]
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    buf = bufs[direction]
                    buf += data
                    if self._forward(direction, buf, dest, final=not data):
                        self._cut(down, up, self.cut[3])
                        return
                    if not data:
                        open_dirs.discard(direction)
                        try:
                            dest.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
        finally:
            down.close()
            up.close()

    def _cut(self, down, up, mode):
        """``rst``: close both with SO_LINGER {1, 0}. ``fin``: shut both write sides (a FIN
        even with unread bytes queued, which a plain close() would turn into a RST), then read
        and discard until each side closes (bounded), so the FIN stays a FIN."""
        self.cut_done = True
        if mode == "rst":
            hard_close(down, "rst")
            hard_close(up, "rst")
            return
        socks = []
        for sock in (down, up):
            try:
                sock.shutdown(socket.SHUT_WR)
                socks.append(sock)
            except OSError:
                pass
        deadline = time.monotonic() + STEP_TIMEOUT
        while socks and time.monotonic() < deadline:
            readable, _, _ = select.select(socks, [], [], 0.5)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    socks.remove(sock)

    def _forward(self, direction, buf, dest, final):
        """Send the whole records of ``buf``; True when the cut point is reached."""
        cut = self.cut
        while len(buf) >= 5:
            size = 5 + int.from_bytes(buf[3:5], "big")
            if len(buf) < size:
                break
            count = len(self.records[direction])
            if cut and cut[0] == direction and cut[1] == count:
                self._send(dest, bytes(buf[:cut[2]]))
                return True
            self.records[direction].append((buf[0], size))
            self._send(dest, bytes(buf[:size]))
            del buf[:size]
        if final and buf:
            self._send(dest, bytes(buf))
            buf.clear()
        return False

    @staticmethod
    def _send(dest, data):
        try:
            dest.sendall(data)
        except OSError:
            pass

    def join(self):
        self.thread.join(STEP_TIMEOUT * 4)
        if self.thread.is_alive():
            raise AssertionError("relay thread still running")
        try:
            self.listener.close()
        except OSError:
            pass


# -- one cut ------------------------------------------------------------------------------------


def blocking_server(listener, ctx, result):
    """The upstream TLS server of the client role: echo one line, read to EOF, close_notify."""
    try:
        conn, _ = listener.accept()
        conn.settimeout(STEP_TIMEOUT)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            line = b""
            while not line.endswith(b"\n"):
                chunk = tls.recv(1024)
                if not chunk:
                    break
                line += chunk
            tls.sendall(line)
            while tls.recv(1024):
                pass
            tls.unwrap()
        result.append("ok")
    except Exception as exc:
        result.append(name(exc))


def blocking_client(port, ctx, result):
    """The downstream TLS client of the server role: send a line, read it back, close_notify."""
    try:
        with socket.create_connection((ADDR, port), timeout=STEP_TIMEOUT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(LINE)
                got = b""
                while not got.endswith(b"\n"):
                    chunk = tls.recv(1024)
                    if not chunk:
                        break
                    got += chunk
                tls.unwrap()
        result.append("ok" if got == LINE else "short")
    except Exception as exc:
        result.append(name(exc))


async def loop_client(port, ctx):
    """The loop as TLS client: returns (step, exception class) or ('ok', None)."""
    step = "connect"
    try:
        reader, writer = await open_connection_bounded(port, ctx)
    except Exception as exc:
        return step, name(exc)
    try:
        await asyncio.sleep(SETTLE)
        step = "write"
        writer.write(LINE)
        await writer.drain()
        await asyncio.sleep(SETTLE)
        step = "read"
        line = await asyncio.wait_for(reader.readline(), STEP_TIMEOUT)
        if line != LINE:
            step = "short"
            raise EOFError(len(line))
    except Exception as exc:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), STEP_TIMEOUT)
        except Exception as exc2:
            return step, name(exc), "close", name(exc2)
        return step, name(exc)
    step = "close"
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), STEP_TIMEOUT)
    except Exception as exc:
        return step, name(exc)
    return "ok", None


async def open_connection_bounded(port, ctx):
    return await asyncio.wait_for(
        asyncio.open_connection(ADDR, port, ssl=ctx, server_hostname="localhost",
                                ssl_handshake_timeout=HANDSHAKE_TIMEOUT),
        STEP_TIMEOUT)


def run_cut(lt, role, cut, ctxs):
    """One cut against the loop of ``lt``; returns (outcome, relay's records, hung)."""
    server_ctx, client_ctx = ctxs
    peer = []
    hung = False
    if role == "client":
        listener = socket.socket()
        listener.bind((ADDR, 0))
        listener.listen(1)
        listener.settimeout(STEP_TIMEOUT)
        backend = threading.Thread(target=blocking_server, args=(listener, server_ctx, peer),
                                   daemon=True)
        backend.start()
        relay = Relay(listener.getsockname(), cut)
        try:
            seen = lt.run(lambda: loop_client(relay.port, client_ctx))
        except TimeoutError:
            seen, hung = ("hang",), True
        relay.join()
        listener.close()  # unblocks the backend if the relay never connected
        backend.join(STEP_TIMEOUT * 2)
        handled, errors = lt.take()
    else:
        base, _ = lt.active()
        relay = Relay((ADDR, lt.port), cut)
        client = threading.Thread(target=blocking_client, args=(relay.port, client_ctx, peer),
                                  daemon=True)
        client.start()
        client.join(STEP_TIMEOUT * 3)
        relay.join()
        if not lt.settle(base + 1):
            hung = True
        handled, errors = lt.take()
        seen = tuple(handled[0]) if handled else ("no handler",)
        handled = []
    # The blocking peer's own view (kept in ``peer``) is not compared: it sits behind the relay,
    # so it sees the relay's cut at whatever moment its thread reached, whichever the loop.
    outcome = (seen, tuple(handled), tuple(errors))
    return outcome, relay.records, hung


# -- the cut campaign ---------------------------------------------------------------------------


def make_contexts(certdir):
    import _tls
    certs = _tls.make_certs(certdir)
    return _tls.server_context(certs), _tls.client_context(certs)


def cut_plan(records, n_random, rng):
    """Every boundary each way (j = 0), and ``n_random`` offsets inside records, both modes."""
    plan = []
    for direction in ("up", "down"):
        for k in range(len(records[direction])):
            plan.append((direction, k, 0))
    inner = [(d, k, size) for d in ("up", "down")
             for k, (_, size) in enumerate(records[d]) if size > 1]
    for _ in range(n_random):
        d, k, size = rng.choice(inner)
        plan.append((d, k, rng.randrange(1, size)))
    return [(d, k, j, mode) for d, k, j in plan for mode in ("fin", "rst")]


class Tally:
    def __init__(self, kind):
        self.kind = kind
        self.cuts = 0
        self.passed = 0
        self.malformed = 0
        self.hangs = 0
        self.divergences = []  # (what, tokioloop outcomes, stdlib outcomes)
        self.dead = 0  # server failed its clean echo

    def figure(self):
        label = self.kind.split("#")[0] + (" (vs a second stdlib loop)"
                                           if self.kind.startswith("asyncio") else "")
        return (f"reliability figure: faults-tls {label}: {self.passed}/{self.cuts} cuts, "
                f"{self.malformed} malformed inputs, {len(self.divergences)} divergences, "
                f"{self.hangs} hangs, server dead {self.dead} times")


def run_cuts(kinds, n_random, seed, ctxs, tally_for, log=print):
    """Cut campaign: ``kinds[0]`` is the oracle (the stdlib loop), the rest are judged."""
    rng = random.Random(seed)
    server_ctx, client_ctx = ctxs
    threads = {kind: LoopThread(kind, server_ctx) for kind in kinds}
    try:
        for role in ("client", "server"):
            ref_out, records, _ = run_cut(threads[kinds[0]], role, None, ctxs)
            if ref_out[0][0] != "ok":
                raise AssertionError(f"uncut reference run failed ({role}): {ref_out}")
            for kind in kinds[1:]:
                out, recs, _ = run_cut(threads[kind], role, None, ctxs)
                types = {d: [t for t, _ in recs[d]] for d in recs}
                ref_types = {d: [t for t, _ in records[d]] for d in records}
                if out != ref_out or types != ref_types:
                    tally_for[kind].divergences.append(
                        (f"{role} uncut", [(out, types)], [(ref_out, ref_types)]))
            plan = cut_plan(records, n_random, rng)
            log(f"faults-tls: {role} role, {len(records['up'])} records up, "
                f"{len(records['down'])} down, {len(plan)} cuts")
            for cut in plan:
                outs = {k: [] for k in kinds}
                for attempt in range(RETRIES):
                    for kind in kinds:
                        out, _, hung = run_cut(threads[kind], role, cut, ctxs)
                        outs[kind].append(out)
                        if hung and attempt == 0 and kind != kinds[0]:
                            tally_for[kind].hangs += 1
                    if all(outs[k][-1] == outs[kinds[0]][-1] for k in kinds[1:]):
                        break
                for kind in kinds[1:]:
                    t = tally_for[kind]
                    t.cuts += 1
                    if set(outs[kind]) & set(outs[kinds[0]]):
                        t.passed += 1
                    else:
                        t.divergences.append((f"{role} cut {cut}", outs[kind], outs[kinds[0]]))
                        log(f"DIVERGENCE {kind} {role} cut {cut}:\n  {kind}: {outs[kind]}\n"
                            f"  {kinds[0]}: {outs[kinds[0]]}")
                for kind in kinds:
                    if not clean_echo(threads[kind].port, client_ctx):
                        if kind not in tally_for:
                            raise AssertionError(f"the oracle's ({kind}) server stopped serving")
                        tally_for[kind].dead += 1
                    threads[kind].take()
    finally:
        for lt in threads.values():
            lt.close()


# -- malformed input ------------------------------------------------------------------------------


def capture_client_hello(client_ctx):
    """The first flight of a TLS client: one ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def mutate(hello, how):
    """Apply one mutation description (drawn by ``mutations()``) to ``hello``."""
    op, args = how
    data = bytearray(hello)
    if op == "flip":
        for pos, mask in args:
            data[pos % len(data)] ^= mask
    elif op == "truncate":
        data = data[:args]
    elif op == "reclen":
        data[3:5] = args.to_bytes(2, "big")
    elif op == "hslen":
        data[6:9] = args.to_bytes(3, "big")
    elif op == "insert":
        pos, blob = args
        data[pos:pos] = blob
    elif op == "delete":
        pos, count = args
        del data[pos:pos + count]
    elif op == "raw":
        data = bytearray(args)
    return bytes(data)


def mutations(hello):
    from hypothesis import strategies as st
    n = len(hello)
    lengths = st.one_of(st.sampled_from([0, 1, 0xFFFF, 2 ** 14, 2 ** 14 + 2049, n - 5]),
                        st.integers(0, 0xFFFF))
    return st.one_of(
        st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, n - 1),
                                                      st.integers(1, 255)),
                                            min_size=1, max_size=8).map(tuple)),
        st.tuples(st.just("truncate"), st.integers(0, n - 1)),
        st.tuples(st.just("reclen"), lengths),
        st.tuples(st.just("hslen"), st.one_of(lengths, st.integers(0, 2 ** 24 - 1))),
        st.tuples(st.just("insert"), st.tuples(st.integers(0, n),
                                               st.binary(min_size=1, max_size=64))),
        st.tuples(st.just("delete"), st.tuples(st.integers(0, n - 1), st.integers(1, 64))),
        st.tuples(st.just("raw"), st.binary(max_size=300)),
    )


def parse_answer(data):
    """Record types of the answer; plaintext alerts with their level and description."""
    out = []
    pos = 0
    while pos + 5 <= len(data):
        rtype = data[pos]
        size = int.from_bytes(data[pos + 3:pos + 5], "big")
        body = data[pos + 5:pos + 5 + size]
        if rtype == 21 and size == 2:
            out.append(("alert", body[0], body[1]))
        else:
            out.append(rtype)
        pos += 5 + size
    if pos != len(data):
        out.append(("partial", len(data) - pos))
    return tuple(out)


def read_answer(sock):
    data = b""
    end = "eof"
    sock.settimeout(STEP_TIMEOUT)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        end = "reset"
    except TimeoutError:
        end = "timeout"
    except OSError as exc:
        end = name(exc)
    return data, end


def send_raw(port, payload):
    """Send ``payload``, FIN, read the answer to EOF."""
    with socket.create_connection((ADDR, port), timeout=STEP_TIMEOUT) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            return (), f"send {name(exc)}"
        data, end = read_answer(sock)
    return parse_answer(data), end


class BioClient:
    """A TLS client driven by hand over a plain socket (``ssl.SSLObject`` and MemoryBIOs), so a
    test can send raw bytes after a close_notify or cut without one."""

    def __init__(self, port, ctx):
        self.sock = socket.create_connection((ADDR, port), timeout=STEP_TIMEOUT)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")

    def _flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _pump(self, fn):
        while True:
            try:
                result = fn()
            except ssl.SSLWantReadError:
                self._flush()
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.inc.write_eof()
                else:
                    self.inc.write(chunk)
                continue
            self._flush()
            return result

    def handshake(self):
        self._pump(self.obj.do_handshake)

    def echo(self, line):
        self.obj.write(line)
        self._flush()
        got = b""
        while not got.endswith(b"\n"):
            chunk = self._pump(lambda: self.obj.read(1024))
            if not chunk:
                break
            got += chunk
        return got

    def close_notify(self):
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._flush()

    def close(self):
        self.sock.close()


def after_handshake(port, ctx, case):
    """'data after close_notify' and 'ragged EOF': a real handshake and echo first."""
    c = BioClient(port, ctx)
    try:
        c.handshake()
        if c.echo(LINE) != LINE:
            return ("echo failed",)
        if case == "after_close_notify":
            # close_notify and, in the same segment, one more (bogus) application data record
            try:
                c.obj.unwrap()
            except ssl.SSLWantReadError:
                pass
            notify = c.out.read()
            try:
                c.sock.sendall(notify + b"\x17\x03\x03\x00\x20" + b"\xa5" * 32)
                c.sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                return ("send", name(exc), exc.errno)
        else:  # ragged EOF: FIN with no close_notify
            c.sock.shutdown(socket.SHUT_WR)
        data, end = read_answer(c.sock)
        # what came back is encrypted: only its record types are compared
        return (tuple(r if isinstance(r, int) else r[0] for r in parse_answer(data)), end)
    finally:
        c.close()


def fixed_inputs(hello):
    oversize = b"\x16\x03\x01" + (2 ** 14 + 2049).to_bytes(2, "big") + bytes(2 ** 14 + 2049)
    return [
        ("hello intact", hello),
        ("record length 0xFFFF", hello[:3] + b"\xff\xff" + hello[5:]),
        ("record length 0xFFFF, full body", b"\x16\x03\x01\xff\xff" + bytes(0xFFFF)),
        ("record of 2^14+2049", oversize),
        ("oversize after hello", hello + oversize),
        ("plaintext HTTP", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        ("empty", b""),
        ("alert record", b"\x15\x03\x03\x00\x02\x02\x28"),
        ("change cipher spec first", b"\x14\x03\x03\x00\x01\x01" + hello),
        ("application data first", b"\x17\x03\x03\x00\x10" + bytes(16)),
        ("SSLv2 style hello", b"\x80\x2e\x01\x03\x01" + bytes(0x29)),
        ("hello twice", hello + hello),
    ]


class Servers:
    """One LoopThread per kind; ``outcome(kind, fn)`` runs ``fn(port)`` against it and adds the
    server's side (finished, handler outcomes, exception handler calls)."""

    def __init__(self, kinds, server_ctx):
        self.threads = {kind: LoopThread(kind, server_ctx) for kind in kinds}

    def outcome(self, kind, fn):
        lt = self.threads[kind]
        base, _ = lt.active()
        client = fn(lt.port)
        settled = lt.settle(base + 1)
        handled, errors = lt.take()
        return (client, settled, tuple(handled), tuple(errors))

    def close(self):
        for lt in self.threads.values():
            lt.close()


def compare(servers, kinds, what, fn, tally_for, log):
    outs = {k: [] for k in kinds}
    for _ in range(RETRIES):
        for kind in kinds:
            outs[kind].append(servers.outcome(kind, fn))
        if all(outs[k][-1] == outs[kinds[0]][-1] for k in kinds[1:]):
            break
    for kind in kinds[1:]:
        t = tally_for[kind]
        t.malformed += 1
        if any(not o[1] for o in outs[kind]) and all(o[1] for o in outs[kinds[0]]):
            t.hangs += 1
        if not set(outs[kind]) & set(outs[kinds[0]]):
            t.divergences.append((what, outs[kind], outs[kinds[0]]))
            log(f"DIVERGENCE {kind} malformed {what}:\n  {kind}: {outs[kind]}\n"
                f"  {kinds[0]}: {outs[kinds[0]]}")


def check_alive(servers, client_ctx, tally_for):
    for kind, lt in servers.threads.items():
        if not clean_echo(lt.port, client_ctx):
            if kind in tally_for:
                tally_for[kind].dead += 1
            else:
                raise AssertionError(f"the oracle's ({kind}) server stopped serving")
        lt.take()


def run_malformed(kinds, examples, seed, ctxs, tally_for, log=print):
    """Fixed cases, then ``examples`` Hypothesis mutations (``seed`` None: derandomized)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    server_ctx, client_ctx = ctxs
    hello = capture_client_hello(client_ctx)
    servers = Servers(kinds, server_ctx)
    try:
        for what, payload in fixed_inputs(hello):
            compare(servers, kinds, what, lambda port, p=payload: send_raw(port, p),
                    tally_for, log)
        for case in ("after_close_notify", "ragged_eof"):
            compare(servers, kinds, case,
                    lambda port, c=case: after_handshake(port, client_ctx, c), tally_for, log)
        check_alive(servers, client_ctx, tally_for)
        count = [0]

        @settings(max_examples=examples, derandomize=seed is None, database=None,
                  deadline=None, suppress_health_check=list(HealthCheck))
        @given(mutations(hello))
        def one(how):
            payload = mutate(hello, how)
            compare(servers, kinds, f"mutation {how!r}"[:300],
                    lambda port: send_raw(port, payload), tally_for, log)
            count[0] += 1
            if count[0] % 50 == 0:
                check_alive(servers, client_ctx, tally_for)

        if seed is not None:
            one = hseed(seed)(one)
        if examples:
            one()
        check_alive(servers, client_ctx, tally_for)
    finally:
        servers.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loop", default="tokioloop",
                    help="loops judged against the stdlib, comma-separated (tokioloop, uvloop, or "
                         "asyncio: a second stdlib loop, to check the harness)")
    ap.add_argument("--random", type=int, default=2,
                    help="random in-record offsets per role (each in both modes)")
    ap.add_argument("--examples", type=int, default=100, help="Hypothesis mutations")
    ap.add_argument("--seed", default="20204",
                    help="seed of the offsets and of Hypothesis ('random' for a fresh one); "
                         "the CI form derandomizes Hypothesis")
    ap.add_argument("--skip-cuts", action="store_true")
    ap.add_argument("--skip-malformed", action="store_true")
    args = ap.parse_args(argv)
    seed = random.randrange(1 << 32) if args.seed == "random" else int(args.seed)
    # the stdlib judged against itself runs as a second loop of its own
    judged = [("asyncio#self" if k == "asyncio" else k) for k in args.loop.split(",") if k]
    kinds = ["asyncio", *judged]
    tallies = {k: Tally(k) for k in judged}
    with tempfile.TemporaryDirectory() as certdir:
        ctxs = make_contexts(certdir)
        if not args.skip_cuts:
            run_cuts(kinds, args.random, seed, ctxs, tallies)
        if not args.skip_malformed:
            run_malformed(kinds, args.examples, None if args.seed != "random" else seed,
                          ctxs, tallies)
    for t in tallies.values():
        print(f"{t.figure()} [seed {seed}]")
    bad = any(t.divergences or t.hangs or t.dead for t in tallies.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
