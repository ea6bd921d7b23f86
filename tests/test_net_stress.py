"""Randomized (seeded) stress tests of the stream transports and the ``sock_*`` coroutines.

Every test runs on stdlib asyncio (the oracle) and on tokioloop, with the same seed, and
asserts only what asyncio guarantees:

* ``test_tcp_protocol_echo_stress``: 100 concurrent echo exchanges over ``create_server`` and
  ``create_connection``; server side is a ``Protocol`` or a ``BufferedProtocol`` (with random
  ``get_buffer`` sizes), either side pauses and resumes reading at random points (the server
  also on ``pause_writing``), and either side may ``close()`` or ``abort()`` mid-stream.
  Completed exchanges get exactly their bytes back; cut ones get a prefix of them.
* ``test_unix_streams_echo_stress``: the same mix over ``start_unix_server`` and
  ``open_unix_connection`` with small stream limits, ``drain()`` after every write and slow
  readers on either side.
* ``test_sock_recv_sendall_stress``: 50 socketpairs, ``sock_sendall`` of large payloads
  against ``sock_recv`` loops; some receivers (or senders) are cancelled mid-way and their
  socket closed, some receivers are cancelled and replaced by a new ``sock_recv`` loop on the
  same socket (at most one ``recv`` worth of data may be lost there, as with asyncio).

All three check that every protocol sees exactly one ``connection_lost``, that the exception
handler is not called (but for the ENOTCONN of a deferred ``write_eof``, which asyncio reports
too: see ``check_no_handler_calls``), and that the number of open fds returns to where it
started. The
``loop`` fixture's teardown checks for leaked handles, readers and writers. The seed can be
changed with ``TOKIOLOOP_STRESS_SEED`` to explore (each test runs ``TOKIOLOOP_STRESS_ROUNDS``
rounds, 3 by default, with seeds ``SEED + 1000 * round``).
"""

import asyncio
import errno
import hashlib
import math
import os
import random
import socket
import struct
import tempfile

import pytest
from _stdlib import skip_stdlib_bug

DEADLINE = 20.0  # a hang fails the test instead of stalling the run
CLOSE_GRACE = 0.3  # how long a mid-stream close() may take to flush before it is aborted
SEED = int(os.environ.get("TOKIOLOOP_STRESS_SEED", "20240611"))
ROUNDS = int(os.environ.get("TOKIOLOOP_STRESS_ROUNDS", "3"))  # seeds SEED, SEED+1000, ...
rounds = pytest.mark.parametrize("round_", range(ROUNDS))
KiB = 1024
RESETS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


# -- shared helpers ------------------------------------------------------------------------


def fd_count():
    return len(os.listdir("/proc/self/fd"))


async def wait_fds(baseline, what):
    """The fd count comes back to ``baseline`` (closing may finish a turn or two late)."""
    for _ in range(100):
        if fd_count() <= baseline:
            break
        await asyncio.sleep(0.01)
    now = fd_count()
    assert now == baseline, f"{what}: {now - baseline} fd(s) leaked ({now} open, {baseline} before)"


def log_uniform(rng, lo, hi):
    """An int in [lo, hi], uniform in log scale: small and large sizes both show up."""
    return min(hi, max(lo, int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))))


def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]


def check_no_handler_calls(exc_contexts, allow_enotcon=False):
    """The exception handler was not called, except (with ``allow_enotcon``) for what
    asyncio reports too: a write_eof() deferred until the write buffer drains, whose
    shutdown(SHUT_WR) then meets ENOTCONN because the peer has reset the connection."""
    shown = []
    for c in exc_contexts:
        exc = c.get("exception")
        if allow_enotcon and isinstance(exc, OSError) and exc.errno == errno.ENOTCONN:
            print("allowed handler call:", c.get("message"), repr(exc))
            continue
        shown.append((c.get("message"), repr(exc)))
    assert not shown, f"exception handler called: {shown}"
    exc_contexts.clear()


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, DEADLINE))


HEADER = struct.Struct("!I")  # each client first sends its index, echoed like the rest


def make_plans(seed, n, max_size):
    rng = random.Random(seed)
    plans = []
    for i in range(n):
        if rng.random() < 0.5:
            size = log_uniform(rng, 1, max_size)
        else:
            size = rng.randint(1, max_size)
        total = HEADER.size + size
        plan = {
            "idx": i,
            "seed": rng.getrandbits(32),
            "payload": HEADER.pack(i) + rng.randbytes(size),
            "client": rng.choices(["full", "close", "abort"], [6, 2, 2])[0],
            "server": rng.choices(["echo", "close", "abort"], [14, 3, 3])[0],
            # where the cut happens: bytes written (client) or received (server)
            "client_cut": rng.randint(HEADER.size, total),
            "server_cut": rng.randint(HEADER.size, total),
            "client_pause": rng.random() < 0.4,
            "server_pause": rng.random() < 0.4,
            "slow_client": rng.random() < 0.3,
            "slow_server": rng.random() < 0.3,
            "limit": rng.choice([1024, 4 * KiB, 64 * KiB]),
            # tiny kernel buffers: partial sends and a busy transport write queue
            "small_bufs": rng.random() < 0.3,
            "high_water": rng.choice([None, None, 0, 1, 1024, 256 * KiB]),
        }
        plans.append(plan)
    return plans


def shrink_buffers(sock, rcvbuf=False):
    # (a small SO_RCVBUF on TCP stalls on zero-window probes: slow, not harder)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * KiB)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KiB)


def write_piece(tr, piece, rng):
    """Write ``piece`` as bytes, a bytearray changed right after (the transport must have
    copied it), a memoryview, or through writelines."""
    how = rng.randrange(4)
    if how == 0:
        tr.write(bytes(piece))
    elif how == 1:
        buf = bytearray(piece)
        tr.write(buf)
        buf[:] = bytes(len(buf))
    elif how == 2:
        tr.write(piece)
    else:
        cuts = sorted(rng.randint(0, len(piece)) for _ in range(rng.randint(0, 3)))
        bounds = [0, *cuts, len(piece)]
        tr.writelines([piece[x:y] for x, y in zip(bounds, bounds[1:])])


def set_limits(tr, plan):
    if plan["high_water"] is not None:
        tr.set_write_buffer_limits(high=plan["high_water"])
        low, high = tr.get_write_buffer_limits()
        assert high == plan["high_water"] and low == high // 4


def check_flow(tr, what):
    """asyncio's flow-control contract: pause_writing once the buffer is above the high-water
    mark, resume_writing once it is at or below the low-water mark."""
    size = tr.get_write_buffer_size()
    low, high = tr.get_write_buffer_limits()
    if what == "pause":
        assert size > high, (what, size, low, high)
    else:
        assert size <= low, (what, size, low, high)


def completes(plan):
    return plan["client"] == "full" and plan["server"] == "echo"


# -- 1. TCP, protocols ---------------------------------------------------------------------

N_TCP = 100
MAX_TCP = 300 * KiB


class RandomPauser:
    """pause_reading/resume_reading at random points, for several reasons at once; the
    resume timers are cancelled at connection_lost so none outlives the connection."""

    def _pauser_init(self, loop, rng, enabled):
        self.loop = loop
        self.rng = rng
        self.pause_enabled = enabled
        self.pause_reasons = set()
        self.timers = set()
        self.pauses = 0

    def _pause(self, reason):
        tr = self.transport
        if tr.is_closing():
            return
        if not self.pause_reasons:
            tr.pause_reading()
            assert not tr.is_reading()
            self.pauses += 1
        self.pause_reasons.add(reason)

    def _resume(self, reason, timer=None):
        if timer is not None:
            self.timers.discard(timer)
        if reason not in self.pause_reasons:
            return
        self.pause_reasons.discard(reason)
        tr = self.transport
        if not self.pause_reasons and not tr.is_closing():
            tr.resume_reading()
            assert tr.is_reading()

    def _maybe_random_pause(self):
        if not self.pause_enabled or "random" in self.pause_reasons:
            return
        if self.rng.random() < 0.3:
            self._pause("random")
            if "random" in self.pause_reasons:
                holder = []
                timer = self.loop.call_later(
                    self.rng.uniform(0, 0.004), lambda: self._resume("random", holder[0])
                )
                holder.append(timer)
                self.timers.add(timer)

    def _cancel_timers(self):
        for t in self.timers:
            t.cancel()
        self.timers.clear()


class ServerSide(RandomPauser):
    """Echo server logic shared by the plain and the buffered protocol."""

    def __init__(self, ctx):
        self.ctx = ctx
        ctx["servers"].append(self)
        self.transport = None
        self.plan = None
        self.head = bytearray()
        self.received = 0
        self.lost_calls = 0
        self.lost_exc = "not called"
        self.eof = False
        self.cut_done = False
        self.lost = ctx["loop"].create_future()
        self._pauser_init(ctx["loop"], random.Random(), False)

    def connection_made(self, transport):
        self.transport = transport

    def _got(self, data):
        assert self.lost_calls == 0, "data after connection_lost"
        assert not self.cut_done, "data after close()/abort()"
        if self.plan is None:
            self.head += bytes(data[: HEADER.size - len(self.head)])
            if len(self.head) == HEADER.size:
                (idx,) = HEADER.unpack(self.head)
                self.plan = self.ctx["plans"][idx]
                assert self.ctx["server_by_idx"].setdefault(idx, self) is self
                self.rng = random.Random(self.plan["seed"] ^ 0x5EED)
                self.pause_enabled = self.plan["server_pause"]
                if self.plan["small_bufs"]:
                    shrink_buffers(self.transport.get_extra_info("socket"))
                set_limits(self.transport, self.plan)
        self.transport.write(data)
        if type(data) is memoryview:  # a buffered protocol's own buffer: reused at once
            data[:] = bytes(len(data))
        self.received += len(data)
        plan = self.plan
        if plan is not None and plan["server"] != "echo" and self.received >= plan["server_cut"]:
            self.cut_done = True
            if plan["server"] == "close":
                self.transport.close()
            else:
                self.transport.abort()
            return
        if plan is not None:
            self._maybe_random_pause()

    def pause_writing(self):
        check_flow(self.transport, "pause")
        self._pause("flow")

    def resume_writing(self):
        check_flow(self.transport, "resume")
        self._resume("flow")

    def eof_received(self):
        assert not self.eof
        self.eof = True
        return None  # close once the echo is flushed

    def connection_lost(self, exc):
        self.lost_calls += 1
        self.lost_exc = exc
        self._cancel_timers()
        if not self.lost.done():
            self.lost.set_result(exc)


class EchoServer(ServerSide, asyncio.Protocol):
    def data_received(self, data):
        assert type(data) is bytes
        self._got(data)


class BufferedEchoServer(ServerSide, asyncio.BufferedProtocol):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.buf = None
        self.sizes = random.Random(len(ctx["servers"]))

    def get_buffer(self, sizehint):
        if self.buf is None or self.sizes.random() < 0.5:  # else: the same buffer again
            self.buf = bytearray(self.sizes.choice([1, 333, 4 * KiB, 64 * KiB, 256 * KiB]))
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buf)
        if self.sizes.random() < 0.5:
            self._got(bytes(self.buf[:nbytes]))
        else:
            # echo straight from the buffer, then scribble over it (see _got)
            view = memoryview(self.buf)[:nbytes]
            self._got(view)
            view.release()


class Client(RandomPauser, asyncio.Protocol):
    def __init__(self, loop, plan):
        self.plan = plan
        self.transport = None
        self.data = bytearray()
        self.eof = False
        self.lost_calls = 0
        self.lost_exc = "not called"
        self.lost = loop.create_future()
        self.can_write = None
        self.aborted_close = False
        self._pauser_init(loop, random.Random(plan["seed"]), plan["client_pause"])

    def connection_made(self, transport):
        self.transport = transport
        if self.plan["small_bufs"]:
            shrink_buffers(transport.get_extra_info("socket"))
        set_limits(transport, self.plan)

    def data_received(self, data):
        assert self.lost_calls == 0, "data after connection_lost"
        assert not self.eof, "data after EOF"
        self.data += data
        self._maybe_random_pause()

    def eof_received(self):
        assert not self.eof
        self.eof = True
        return None

    def pause_writing(self):
        check_flow(self.transport, "pause")
        assert self.can_write is None
        self.can_write = self.loop.create_future()

    def resume_writing(self):
        check_flow(self.transport, "resume")
        assert self.can_write is not None
        self.can_write.set_result(None)
        self.can_write = None

    def connection_lost(self, exc):
        self.lost_calls += 1
        self.lost_exc = exc
        self._cancel_timers()
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_result(None)
        if not self.lost.done():
            self.lost.set_result(exc)


async def tcp_client(loop, port, plan):
    rng = random.Random(plan["seed"] + 1)
    tr, proto = await loop.create_connection(lambda: Client(loop, plan), "127.0.0.1", port)
    payload = memoryview(plan["payload"])
    end = len(payload) if plan["client"] == "full" else plan["client_cut"]
    pos = 0
    while pos < end and not tr.is_closing():
        n = log_uniform(rng, 1, 128 * KiB)
        write_piece(tr, payload[pos : min(end, pos + n)], rng)
        pos = min(end, pos + n)
        if proto.can_write is not None:
            await proto.can_write
        elif rng.random() < 0.3:
            await asyncio.sleep(0)
    proto.eof_error = None
    if plan["client"] == "full":
        try:
            tr.write_eof()
        except OSError as exc:
            # asyncio too: shutdown() raises ENOTCONN when a reset has come in unnoticed
            assert exc.errno == errno.ENOTCONN, exc
            proto.eof_error = exc
    elif plan["client"] == "close":
        tr.close()
        # close() stops reading and waits to flush; if the server, its own writes backed up,
        # has stopped reading too (it pauses on pause_writing), that never happens: abort
        await asyncio.wait([proto.lost], timeout=CLOSE_GRACE)
        if not proto.lost.done():
            proto.aborted_close = True
            tr.abort()
    elif not proto.lost.done():
        # (abort() after connection_lost raises AttributeError when that came from a close()
        # that had to flush first, on asyncio 3.11 as on tokioloop: _conn_lost is never set)
        tr.abort()
    await proto.lost
    return tr, proto


@rounds
def test_tcp_protocol_echo_stress(loop, exc_contexts, round_, loop_kind):
    skip_stdlib_bug(loop_kind, "write_buffers_uncopied")
    plans = make_plans(SEED + 1000 * round_, N_TCP, MAX_TCP)
    ctx = {"loop": loop, "plans": plans, "servers": [], "server_by_idx": {}}

    def factory():
        # decided by accept order: both kinds see every client/server mode combination
        return (BufferedEchoServer if len(ctx["servers"]) % 2 else EchoServer)(ctx)

    async def main():
        baseline = fd_count()
        server = await loop.create_server(factory, "127.0.0.1", 0, backlog=256)
        port = server.sockets[0].getsockname()[1]
        results = await asyncio.gather(*(tcp_client(loop, port, p) for p in plans))
        # every accepted connection is lost too
        while len(ctx["servers"]) < N_TCP:
            await asyncio.sleep(0.01)
        await asyncio.gather(*(s.lost for s in ctx["servers"]))
        server.close()
        await server.wait_closed()
        for _ in range(5):  # a second connection_lost would show up here
            await asyncio.sleep(0.01)

        completed = 0
        for plan, (tr, proto) in zip(plans, results):
            i = plan["idx"]
            assert proto.lost_calls == 1, (i, proto.lost_calls)
            assert tr.is_closing()
            got = bytes(proto.data)
            expected = plan["payload"]
            srv = ctx["server_by_idx"].get(i)
            if completes(plan):
                completed += 1
                assert proto.lost_exc is None and proto.eof_error is None, (
                    i, proto.lost_exc, proto.eof_error)
                assert proto.eof, (i, len(got), len(expected))
                assert len(got) == len(expected), (i, type(srv).__name__, len(got), len(expected))
                assert digest(got) == digest(expected), i
                assert srv is not None and srv.lost_exc is None, (i, srv and srv.lost_exc)
                assert srv.received == len(expected)
            else:
                assert got == expected[: len(got)], f"client {i}: echo is not a prefix"
                assert proto.lost_exc is None or isinstance(proto.lost_exc, RESETS), (
                    i, proto.lost_exc)
        assert completed >= 10, completed
        assert len(ctx["servers"]) == N_TCP
        assert {type(s) for s in ctx["servers"]} == {EchoServer, BufferedEchoServer}
        for s in ctx["servers"]:
            assert s.lost_calls == 1, s.lost_calls
            assert s.lost_exc is None or isinstance(s.lost_exc, RESETS), s.lost_exc
        assert sum(s.pauses for s in ctx["servers"]) > 0
        assert sum(p.pauses for _, p in results) > 0
        await wait_fds(baseline, "tcp")

    run(loop, main())
    check_no_handler_calls(exc_contexts, allow_enotcon=True)


# -- 2. Unix sockets, streams --------------------------------------------------------------

N_UNIX = 80
MAX_UNIX = 300 * KiB


def count_connection_lost(writer, counts):
    """Count the connection_lost calls the stream's protocol gets (one expected)."""
    proto = writer.transport.get_protocol()
    calls = [0]
    counts.append(calls)
    orig = proto.connection_lost

    def connection_lost(exc):
        calls[0] += 1
        orig(exc)

    proto.connection_lost = connection_lost


def unix_path(tmp_path):
    path = str(tmp_path / "s.sock")
    if len(path) < 100:
        return path, None
    d = tempfile.mkdtemp(prefix="tlstress")
    return os.path.join(d, "s.sock"), d


async def unix_server_side(plans, stats, reader, writer):
    """Echo with drain() after every write; slow reading for some plans."""
    outcome = None
    try:
        head = await reader.readexactly(HEADER.size)
        (idx,) = HEADER.unpack(head)
        plan = plans[idx]
        rng = random.Random(plan["seed"] ^ 0xABC)
        stats["by_idx"][idx] = stats["by_idx"].get(idx, 0) + 1
        count_connection_lost(writer, stats["lost_counts"])
        if plan["small_bufs"]:
            shrink_buffers(writer.get_extra_info("socket"), rcvbuf=True)
        set_limits(writer.transport, plan)
        writer.write(head)
        received = HEADER.size
        cut = plan["server"] != "echo" and received >= plan["server_cut"]
        while not cut:
            if plan["slow_server"] and rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0, 0.002))
            chunk = await reader.read(rng.choice([1, 1000, 16 * KiB, 256 * KiB]))
            if not chunk:
                break
            writer.write(chunk)
            received += len(chunk)
            await writer.drain()
            cut = plan["server"] != "echo" and received >= plan["server_cut"]
        if cut and plan["server"] == "abort":
            writer.transport.abort()
        else:
            writer.close()
        await writer.wait_closed()
        outcome = "ok"
    except RESETS + (asyncio.IncompleteReadError,) as exc:
        outcome = type(exc).__name__
    except BaseException as exc:  # reported by the test; never left to the loop's handler
        stats["unexpected"].append(repr(exc))
    if outcome != "ok":
        # Retrieve the close future's exception ourselves. Left to StreamReaderProtocol's
        # __del__, it is logged as "never retrieved" whenever the garbage collector happens to
        # finalize the future first (the reset's traceback holds this frame, hence the writer
        # and protocol, in a cycle with it): seen on tokioloop, possible on asyncio alike.
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    stats["done"] += 1
    stats["outcomes"].append(outcome)


async def unix_client(path, plan, lost_counts):
    rng = random.Random(plan["seed"] + 7)
    reader, writer = await asyncio.open_unix_connection(path, limit=plan["limit"])
    count_connection_lost(writer, lost_counts)
    if plan["small_bufs"]:
        shrink_buffers(writer.get_extra_info("socket"), rcvbuf=True)
    set_limits(writer.transport, plan)
    payload = plan["payload"]
    got = bytearray()
    errors = []

    async def receive():
        try:
            while True:
                if plan["slow_client"] and rng.random() < 0.5:
                    await asyncio.sleep(rng.uniform(0, 0.002))
                chunk = await reader.read(rng.choice([1, 1000, 16 * KiB, 256 * KiB]))
                if not chunk:
                    return True
                got.extend(chunk)
        except RESETS as exc:
            errors.append(exc)
            return False

    receiving = asyncio.ensure_future(receive())
    end = len(payload) if plan["client"] == "full" else plan["client_cut"]
    pos = 0
    try:
        while pos < end:
            n = log_uniform(rng, 1, 128 * KiB)
            writer.write(payload[pos : min(end, pos + n)])
            pos = min(end, pos + n)
            await writer.drain()
        if plan["client"] == "full":
            writer.write_eof()
        elif plan["client"] == "close":
            writer.close()
            # as in the TCP test: a close() that cannot flush (both sides' writes backed up,
            # neither reading) would wait forever
            closed = asyncio.ensure_future(writer.wait_closed())
            await asyncio.wait([closed], timeout=CLOSE_GRACE)
            if not closed.done():
                writer.transport.abort()
            try:
                await closed
            except RESETS as exc:
                errors.append(exc)
        else:
            writer.transport.abort()
    except RESETS as exc:
        errors.append(exc)
    eof = await receiving
    writer.close()
    try:
        await writer.wait_closed()
    except RESETS as exc:
        errors.append(exc)
    return bytes(got), eof, errors


@rounds
def test_unix_streams_echo_stress(loop, exc_contexts, tmp_path, round_):
    plans = make_plans(SEED + 1000 * round_ + 1, N_UNIX, MAX_UNIX)
    stats = {"done": 0, "by_idx": {}, "unexpected": [], "outcomes": [], "lost_counts": []}
    path, tmpdir = unix_path(tmp_path)

    async def main():
        baseline = fd_count()
        server = await asyncio.start_unix_server(
            lambda r, w: unix_server_side(plans, stats, r, w), path, limit=16 * KiB
        )
        client_lost = []
        results = await asyncio.gather(*(unix_client(path, p, client_lost) for p in plans))
        while stats["done"] < N_UNIX:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        assert not stats["unexpected"], stats["unexpected"]
        completed = 0
        for plan, (got, eof, errors) in zip(plans, results):
            i = plan["idx"]
            expected = plan["payload"]
            if completes(plan):
                completed += 1
                assert not errors, (i, errors)
                assert eof, i
                assert len(got) == len(expected), (i, len(got), len(expected))
                assert digest(got) == digest(expected), i
            else:
                assert got == expected[: len(got)], f"client {i}: echo is not a prefix"
        assert completed >= 10, completed
        assert all(v == 1 for v in stats["by_idx"].values())
        await asyncio.sleep(0.02)
        assert len(client_lost) == N_UNIX
        assert [c[0] for c in client_lost] == [1] * N_UNIX, "connection_lost calls (clients)"
        # a server connection reset before its header came has no counter
        assert [c[0] for c in stats["lost_counts"]] == [1] * len(stats["lost_counts"])
        await wait_fds(baseline, "unix")

    try:
        run(loop, main())
    finally:
        if os.path.exists(path):
            os.unlink(path)
        if tmpdir:
            os.rmdir(tmpdir)
    check_no_handler_calls(exc_contexts)


# -- 3. sock_recv / sock_sendall -----------------------------------------------------------

N_PAIRS = 50
MAX_SOCK = 2048 * KiB


def recv_size(rng):
    return 1 if rng.random() < 0.01 else rng.choice([512, 4 * KiB, 64 * KiB, 256 * KiB])


class Receiver:
    """A sock_recv loop that keeps what it got, so a cancelled one leaves its data behind."""

    def __init__(self, loop, sock, rng, threshold=None):
        self.loop = loop
        self.sock = sock
        self.rng = rng
        self.got = bytearray()
        self.max_n = 0
        self.eof = False
        self.reached = loop.create_future()  # set once ``threshold`` bytes have come
        self.threshold = threshold

    async def run(self):
        while True:
            n = recv_size(self.rng)
            self.max_n = max(self.max_n, n)
            chunk = await self.loop.sock_recv(self.sock, n)
            assert len(chunk) <= n
            if not chunk:
                self.eof = True
                break
            self.got += chunk
            if (
                self.threshold is not None
                and len(self.got) >= self.threshold
                and not self.reached.done()
            ):
                self.reached.set_result(None)
        if not self.reached.done():
            self.reached.set_result(None)
        return bytes(self.got)


async def sender(loop, sock, data, rng):
    """sock_sendall in random pieces, then SHUT_WR; returns None or the reset it met."""
    pos = 0
    try:
        while pos < len(data):
            n = log_uniform(rng, 1, 1024 * KiB)
            await loop.sock_sendall(sock, data[pos : pos + n])
            pos += n
        sock.shutdown(socket.SHUT_WR)
    except RESETS as exc:
        return exc
    return None


async def wait_cancelled(task):
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False  # it had finished already


async def pair_scenario(loop, kind, a, b, rng):
    """One socketpair: ``a`` sends, ``b`` receives. Returns a short description."""
    size = log_uniform(rng, 16 * KiB, MAX_SOCK)
    data = rng.randbytes(size)
    srng = random.Random(rng.getrandbits(32))
    rrng = random.Random(rng.getrandbits(32))

    if kind == "plain":
        recv = Receiver(loop, b, rrng)
        exc, got = await asyncio.gather(sender(loop, a, data, srng), recv.run())
        assert exc is None, exc
        assert recv.eof
        assert len(got) == size and digest(got) == digest(data), (len(got), size)
        return kind

    if kind == "idle_cancel":
        # Cancel a sock_recv that is blocked with nothing in flight: no data can be lost, and
        # a new sock_recv on the same socket must get exactly the rest.
        split = rng.randint(1, size - 1)
        first = Receiver(loop, b, rrng)
        task = asyncio.ensure_future(first.run())
        await loop.sock_sendall(a, data[:split])
        while len(first.got) < split:
            await asyncio.sleep(0.001)
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
        assert await wait_cancelled(task)
        assert bytes(first.got) == data[:split]
        second = Receiver(loop, b, rrng)
        exc, rest = await asyncio.gather(sender(loop, a, data[split:], srng), second.run())
        assert exc is None, exc
        assert second.eof
        assert len(rest) == size - split and rest == data[split:], (len(rest), size - split)
        return kind

    if kind == "timeouts":
        # sock_recv under wait_for with tiny timeouts (a common idiom): a recv whose result
        # raced its timeout is lost (asyncio too), but what comes is in order, never twice.
        stask = asyncio.ensure_future(sender(loop, a, data, srng))
        chunks = []
        timeouts = 0
        max_n = 0
        while True:
            n = recv_size(rrng)
            max_n = max(max_n, n)
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(b, n), rrng.uniform(0, 0.002))
            except asyncio.TimeoutError:
                timeouts += 1
                continue
            if not chunk:
                break
            chunks.append(chunk)
        assert await stask is None
        pos = 0
        for chunk in chunks:
            at = data.find(chunk, pos)
            assert at >= 0, "a chunk out of order or received twice"
            pos = at + len(chunk)
        lost = size - sum(map(len, chunks))
        assert 0 <= lost <= timeouts * max_n, (lost, timeouts, max_n)
        return kind

    threshold = rng.randint(0, size - 1)
    recv = Receiver(loop, b, rrng, threshold)
    rtask = asyncio.ensure_future(recv.run())
    stask = asyncio.ensure_future(sender(loop, a, data, srng))
    await recv.reached
    for _ in range(rng.randint(0, 4)):
        await asyncio.sleep(0)

    if kind == "cancel_close":
        await wait_cancelled(rtask)
        b.close()
        exc = await stask
        assert exc is None or isinstance(exc, RESETS), exc
        got = bytes(recv.got)
        assert got == data[: len(got)]
        return kind

    if kind == "cancel_resume":
        # Cancelled with data flowing: at most the one recv that raced the cancellation is lost.
        cancelled = await wait_cancelled(rtask)
        before = bytes(recv.got)
        second = Receiver(loop, b, rrng)
        after = await second.run()
        exc = await stask
        assert exc is None, exc
        assert second.eof
        assert data.startswith(before), "bytes before the cancel are not a prefix"
        assert data.endswith(after), "bytes after the cancel are not a suffix"
        lost = size - len(before) - len(after)
        assert 0 <= lost <= (recv.max_n if cancelled else 0), (lost, recv.max_n, cancelled)
        return kind

    if kind == "cancel_sender":
        await wait_cancelled(stask)
        a.close()
        got = await rtask
        assert recv.eof
        assert got == data[: len(got)]
        return kind

    raise AssertionError(kind)


@rounds
def test_sock_recv_sendall_stress(loop, exc_contexts, sockets, round_):
    rng = random.Random(SEED + 1000 * round_ + 2)
    kinds = rng.choices(
        ["plain", "idle_cancel", "cancel_close", "cancel_resume", "cancel_sender", "timeouts"],
        [4, 2, 2, 2, 1, 2],
        k=N_PAIRS,
    )
    seeds = [rng.getrandbits(32) for _ in range(N_PAIRS)]

    async def main():
        baseline = fd_count()
        pairs = []
        for _ in range(N_PAIRS):
            a, b = sockets(*socket.socketpair())
            a.setblocking(False)
            b.setblocking(False)
            if rng.random() < 0.3:
                shrink_buffers(a, rcvbuf=True)
                shrink_buffers(b, rcvbuf=True)
            pairs.append((a, b))
        done = await asyncio.gather(
            *(
                pair_scenario(loop, kind, a, b, random.Random(seed))
                for kind, (a, b), seed in zip(kinds, pairs, seeds)
            )
        )
        assert sorted(done) == sorted(kinds)
        for a, b in pairs:
            a.close()
            b.close()
        await wait_fds(baseline, "socketpairs")

    run(loop, main())
    check_no_handler_calls(exc_contexts)
