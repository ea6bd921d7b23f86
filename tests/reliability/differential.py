"""Differential fuzzing: the same random sequence of loop operations on asyncio and tokioloop.

Contract
--------
A Hypothesis ``RuleBasedStateMachine`` (``LoopDifferential``) holds two *worlds*, one per loop
kind: a fresh stdlib loop (the oracle) and a fresh tokioloop loop, each with its own sockets,
handles, tasks and transports. Every rule applies the same operation, with the same drawn
arguments, to both worlds; the machine then compares what each world observed:

* return values of the operation itself (``cancel()``, ``remove_reader()``, transport methods,
  ``run_until_complete`` results, exceptions as type + args);
* after every step that runs the loop, each trace channel: the order of callbacks, task steps and
  timer callbacks (one channel, since the ready queue is FIFO on both), the contextvar value each
  callback saw, exception-handler calls (normalised message, exception type + args, context keys),
  exceptions that left ``run_*`` (KeyboardInterrupt, SystemExit), reader/writer events and the
  bytes read, protocol events per transport, task outcomes, subprocess results;
* data as concatenated byte streams (never chunking), and at drain points the exact totals.

Never compared: times, reprs, ``data_received`` chunking, how many bytes the kernel accepted
before a drain point, and whether ``pause_writing`` happened at all (that depends on how a loop
chunks its sends). ``pause_writing``/``resume_writing`` must strictly alternate on each loop, and
after a full drain a transport is not paused: those are checked per world.

Determinism: both loops get a virtual clock by assigning ``loop.time`` on the instance (honoured by
call_later/call_at and the due check on both loops). The loop is only ever run one iteration at a
time with ``stop()`` queued (so it never parks on a timer), and timers become due only when a rule
moves the virtual clock. Timers that could tie get order-insensitive treatment: ties are allowed
only for record-only timers, and runs of equal deadlines are sorted (asyncio's heap order among equal
deadlines is unspecified). Socketpairs are AF_UNIX, whose buffers and readiness are synchronous.

CI form (``test_differential.py``): ``derandomize=True`` (fixed seed), 200 examples x 40 steps,
``deadline=None``; about 15 s per CPython version. Long form, 20k random sequences::

    python tests/reliability/differential.py --examples 20000 --steps 40 --random

It runs as batches of ``--batch`` (1000) sequences, each in a fresh process, because one
Hypothesis run's memory grows with the examples it has seen (GBs by 5000); about 1 minute per
1000 sequences on an idle 2-core VM. A batch stops at its first divergence and prints
Hypothesis's shrunk sequence; ``--database DIR`` keeps it for the next run. The pytest wrapper
runs one unbatched process: ``TOKIOLOOP_FUZZ_EXAMPLES`` (keep it <= 2000 there) and
``TOKIOLOOP_FUZZ_RANDOM=1``. Output: one line
``reliability figure: differential <python>: N sequences x S steps (T sequences, O operations
run incl. shrinking), D divergences``.

Known differences from asyncio are listed in ``ALLOWED`` with their reason. Left out by design,
because the stdlib is no oracle there: transport methods other than ``is_closing()`` once the
transport is closing (asyncio's selector transport dereferences the loop it dropped after
connection_lost: AttributeError on None), and the loops' internal ready counts (asyncio keeps its
self-pipe reader and cancelled handles queued; tokioloop queues reader/writer dispatches).

Connections are opened with ``create_connection(sock=)`` or ``connect_accepted_socket``; the
peer is the other end of an AF_UNIX socketpair that sends, reads slowly, drains, shuts down its
write side, or closes with unread bytes queued (which resets the connection).
"""

import argparse
import asyncio
import collections
import contextvars
import ctypes  # at import: on Debian's 3.14 the first ctypes import keeps libffi's fd open
import socket
import sys
import threading

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

CV = contextvars.ContextVar("differential_cv")
BASE = 1000.0
KINDS = ("asyncio", "tokioloop")

# Allowed divergences: name -> reason. Each is applied where the trace is normalised (the code
# cites the name). An entry needs a reason that makes the difference no defect: an order or value
# asyncio itself leaves unspecified, not a behaviour tokioloop ought to share.
# (None at present: tokioloop now runs an fd's reader before its writer in one iteration, as
# asyncio does, so the io channel is compared in order; tests/test_io_order.py pins that.)
ALLOWED = {}

# Counters for the figure line.
STATS = {"sequences": 0, "steps": 0, "divergences": 0}


class CustomBase(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit: asyncio's Handle hands it
    to the exception handler rather than letting it escape."""


class _NotAFile:
    """An object that is no file, with a repr that does not change between the two worlds."""

    def __repr__(self):
        return "<not a file>"


_NOT_A_FILE = _NotAFile()


def make_loop(kind):
    if kind == "asyncio":
        return asyncio.new_event_loop()
    import tokioloop

    return tokioloop.new_event_loop()


# Known tokioloop defects, masked so that long runs can look past them. Each has an
# xfail(strict=True) regression test in test_differential.py; when the fix lands that test
# XPASSes (a failure), and its entry here goes.
KNOWN_DEFECTS = {
    # (none open: test_differential.py's regression tests cover the ones found and fixed)
}


def exc_key(exc):
    if exc is None:
        return None
    args = tuple(KNOWN_DEFECTS.get(a, a) if isinstance(a, str) else a for a in exc.args)
    return (type(exc).__name__, tuple(repr(a) for a in args))


_MESSAGE_PREFIXES = (
    "Exception in callback",
    "Task exception was never retrieved",
    "Future exception was never retrieved",
    "Task was destroyed but it is pending",
    "Fatal read error",
    "Fatal write error",
    "Fatal error",
)


def message_key(message):
    for prefix in _MESSAGE_PREFIXES:
        if message.startswith(prefix):
            return prefix
    return message


def ready_count(loop):
    if isinstance(loop, asyncio.BaseEventLoop):
        # Not the self-pipe's reader: an internal handle with no tokioloop counterpart.
        own = getattr(loop, "_read_from_self", None)
        return sum(1 for h in loop._ready if not h.cancelled() and h._callback != own)
    return loop._debug_counts()["ready"]


def timer_count(loop):
    """Pending, non-cancelled timers (the same count tests/conftest.py uses for leaks)."""
    if isinstance(loop, asyncio.BaseEventLoop):
        return sum(1 for h in loop._scheduled if not h.cancelled())
    return loop._debug_counts()["timers"]


class Proto(asyncio.Protocol):
    def __init__(self, world, cid, eof_keeps_open):
        self.world = world
        self.cid = cid
        self.eof_keeps_open = eof_keeps_open
        self.received = bytearray()
        self.flow = []  # "p"/"r": pause_writing/resume_writing, per-world invariant only
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.world.ev("proto", self.cid, "made", CV.get(None))

    def data_received(self, data):
        self.received += data

    def eof_received(self):
        self.world.ev("proto", self.cid, "eof", len(self.received))
        return self.eof_keeps_open

    def connection_lost(self, exc):
        self.world.ev("proto", self.cid, "lost", exc_key(exc), len(self.received))

    def pause_writing(self):
        self.flow.append("p")

    def resume_writing(self):
        self.flow.append("r")


class SubProto(asyncio.SubprocessProtocol):
    def __init__(self, done):
        self.out = bytearray()
        self.done = done
        self.events = []

    def pipe_data_received(self, fd, data):
        if fd == 1:
            self.out += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_lost", fd, exc_key(exc)))

    def process_exited(self):
        self.events.append(("exited",))
        if not self.done.done():
            self.done.set_result(None)


class World:
    """One loop kind with everything the operations touch."""

    def __init__(self, kind):
        self.kind = kind
        self.loop = make_loop(kind)
        self.now = BASE
        self.loop.time = self._time
        self.loop.set_exception_handler(self._handler)
        self.channels = collections.defaultdict(list)
        self.handles = []
        self.contexts = []
        self.tasks = []  # (tid, task, recorded?)
        self.reported = set()
        self.rsock, self.rpeer = socket.socketpair()
        self.rsock.setblocking(False)
        self.rpeer.setblocking(False)
        self.rdata = bytearray()
        self.rpeer_shut = False
        self.conns = []  # dicts: cid, peer, proto, transport, written, peer_got, peer_closed
        self.pending_conns = []

    # -- recording -------------------------------------------------------------------------
    def _time(self):
        return self.now

    def ev(self, channel, *item):
        self.channels[channel].append(item)

    def _handler(self, loop, context):
        exc = context.get("exception")
        self.ev(
            "handler",
            message_key(context.get("message", "")),
            exc_key(exc),
            tuple(sorted(k for k in context if k not in ("source_traceback", "asyncgen"))),
        )

    def size(self):
        return sum(len(v) for v in self.channels.values()) + len(self.rdata) + sum(
            len(c["proto"].received) + len(c["proto"].flow) for c in self.conns
        )

    # -- callbacks ---------------------------------------------------------------------------
    def cb(self, cid, action, when_key):
        self.ev("cb", cid, CV.get(None), when_key)
        if action == "raise":
            raise ValueError(cid)
        if action == "raise_base":
            raise CustomBase(cid)
        if action == "keyboard":
            raise KeyboardInterrupt(cid)
        if action == "exit":
            raise SystemExit(cid)
        if action == "nested":
            self.loop.call_soon(self.cb, f"{cid}.n", "record", None)
        elif action == "stop":
            self.loop.stop()
        elif action == "set_var":
            CV.set(f"set:{cid}")
        elif action == "nested_run":
            # Re-entering a running loop: RuntimeError, which goes to the exception handler.
            coro = asyncio.sleep(0)
            try:
                self.loop.run_until_complete(coro)
            finally:
                coro.close()
        elif action == "close_running":
            self.loop.close()
        elif action == "cancel_first":
            for h in self.handles:
                if not h.cancelled():
                    self.ev("cb_cancel", cid, h.cancel())
                    break

    def context_for(self, ctx_index):
        if ctx_index is None:
            return None
        while len(self.contexts) <= ctx_index:
            ctx = contextvars.copy_context()
            ctx.run(CV.set, f"ctx:{len(self.contexts)}")
            self.contexts.append(ctx)
        return self.contexts[ctx_index]

    def call_soon(self, cid, action, ctx_index, threadsafe):
        ctx = self.context_for(ctx_index)
        meth = self.loop.call_soon_threadsafe if threadsafe else self.loop.call_soon
        self.handles.append(meth(self.cb, cid, action, None, context=ctx))

    def call_from_thread(self, cids, ctx_index):
        ctx = self.context_for(ctx_index)

        def target():
            for cid in cids:
                self.loop.call_soon_threadsafe(self.cb, cid, "record", None, context=ctx)

        t = threading.Thread(target=target)
        t.start()
        t.join()

    def call_at(self, cid, action, offset, ctx_index, later):
        ctx = self.context_for(ctx_index)
        if later:
            h = self.loop.call_later(offset, self.cb, cid, action, round(self.now + offset, 9),
                                     context=ctx)
        else:
            h = self.loop.call_at(BASE + offset, self.cb, cid, action, round(BASE + offset, 9),
                                  context=ctx)
        self.handles.append(h)
        return h.when() - BASE

    def misuse(self, op):
        """An API call asyncio rejects; returns the exception as type + args."""
        loop = self.loop

        async def coroutine_function():
            pass

        calls = {
            "call_soon_none": lambda: loop.call_soon(None),
            "call_soon_coro_fn": lambda: loop.call_soon(coroutine_function),
            "call_soon_threadsafe_int": lambda: loop.call_soon_threadsafe(1),
            "call_later_str": lambda: loop.call_later("1", print),
            "call_at_none": lambda: loop.call_at(None, print),
            "add_reader_neg": lambda: loop.add_reader(-1, print),
            "add_reader_str": lambda: loop.add_reader("x", print),
            "remove_writer_obj": lambda: loop.remove_writer(_NOT_A_FILE),
            "run_forever_nested_ok": lambda: loop.is_running(),
            "create_task_non_coro": lambda: loop.create_task(1),
            "run_until_complete_int": lambda: loop.run_until_complete(1),
        }
        try:
            result = calls[op]()
        except BaseException as exc:  # noqa: B902
            return ("raised", exc_key(exc))
        if hasattr(result, "cancel") and hasattr(result, "cancelled"):
            result.cancel()
            return "handle"
        return ("ok", result)

    def cancel(self, index):
        if not self.handles:
            return None
        h = self.handles[index % len(self.handles)]
        before = h.cancelled()
        r = h.cancel()
        return (before, r, h.cancelled())

    def stop(self):
        self.loop.stop()

    def advance(self, delta):
        self.now += delta

    # -- running -----------------------------------------------------------------------------
    def run_once(self):
        self.loop.call_soon(self.loop.stop)
        try:
            self.loop.run_forever()
        except BaseException as exc:  # noqa: B902 - KeyboardInterrupt/SystemExit are the point
            self.ev("run", "run_forever", exc_key(exc))
        self.collect()

    def settle(self, max_iterations=2000):
        """Run single iterations until three in a row change nothing and nothing is ready. A loop
        that never gets quiet (a busy reader, a callback storm) shows as ``not quiet``."""
        quiet = 0
        for _ in range(max_iterations):
            before = self.size()
            self.run_once()
            if self.size() == before and ready_count(self.loop) == 0:
                quiet += 1
                if quiet >= 3:
                    return True
            else:
                quiet = 0
        self.ev("run", "not quiet")
        return False

    def collect(self):
        for tid, task in self.tasks:
            if tid in self.reported or not task.done():
                continue
            self.reported.add(tid)
            if task.cancelled():
                self.ev("tasks", tid, "cancelled")
            elif task.exception() is not None:
                self.ev("tasks", tid, "raised", exc_key(task.exception()))
            else:
                self.ev("tasks", tid, "result", task.result())
        still = []
        for cid, task, peer, proto in self.pending_conns:
            if not task.done():
                still.append((cid, task, peer, proto))
                continue
            if task.cancelled() or task.exception() is not None:
                exc = None if task.cancelled() else task.exception()
                self.ev("proto", cid, "open_failed", exc_key(exc))
                peer.close()
                continue
            transport, _ = task.result()
            self.conns.append({"cid": cid, "peer": peer, "proto": proto, "transport": transport,
                               "written": bytearray(), "peer_got": bytearray(),
                               "peer_closed": False, "eof_written": False})
        self.pending_conns = still

    async def coro(self, tid, steps, sleep, outcome):
        self.ev("cb", f"task{tid}:start", CV.get(None), None)
        try:
            for i in range(steps):
                await asyncio.sleep(0)
                self.ev("cb", f"task{tid}:step{i}", CV.get(None), None)
            if sleep:
                await asyncio.sleep(sleep)
                self.ev("cb", f"task{tid}:woke", CV.get(None), None)
        except asyncio.CancelledError:
            self.ev("cb", f"task{tid}:cancelled", CV.get(None), None)
            raise
        if outcome == "raise":
            raise ValueError(tid)
        if outcome == "keyboard":
            raise KeyboardInterrupt(tid)
        return tid

    def create_task(self, tid, steps, sleep, outcome, ctx_index):
        ctx = self.context_for(ctx_index)
        if ctx is None:
            task = self.loop.create_task(self.coro(tid, steps, sleep, outcome))
        else:
            task = ctx.run(self.loop.create_task, self.coro(tid, steps, sleep, outcome))
        self.tasks.append((tid, task))

    def cancel_task(self, index):
        if not self.tasks:
            return None
        tid, task = self.tasks[index % len(self.tasks)]
        return (tid, task.done(), task.cancel())

    def run_until_complete(self, tid, steps, outcome):
        task = self.loop.create_task(self.coro(tid, steps, 0, outcome))
        self.tasks.append((tid, task))
        try:
            r = ("ok", self.loop.run_until_complete(task))
        except BaseException as exc:  # noqa: B902
            r = ("raised", exc_key(exc))
        self.collect()
        return r

    # -- readers and writers on a socketpair -------------------------------------------------
    def _on_read(self, n):
        try:
            data = self.rsock.recv(n)
        except BlockingIOError:
            self.ev("io", "spurious_read")
            return
        if data:
            self.rdata += data
        else:
            self.ev("io", "eof", len(self.rdata), self.loop.remove_reader(self.rsock))

    def _on_write(self, tag):
        self.ev("io", "writable", tag, CV.get(None), self.loop.remove_writer(self.rsock))

    def add_reader(self, n):
        self.loop.add_reader(self.rsock, self._on_read, n)

    def remove_reader(self):
        return self.loop.remove_reader(self.rsock)

    def add_writer(self, tag, ctx_index):
        ctx = self.context_for(ctx_index)
        if ctx is None:
            self.loop.add_writer(self.rsock, self._on_write, tag)
        else:
            ctx.run(self.loop.add_writer, self.rsock, self._on_write, tag)

    def remove_writer(self):
        return self.loop.remove_writer(self.rsock)

    def reader_peer_send(self, data):
        if self.rpeer_shut:
            return "shut"
        self.rpeer.send(data)
        return len(data)

    def reader_peer_shut(self):
        if not self.rpeer_shut:
            self.rpeer_shut = True
            self.rpeer.shutdown(socket.SHUT_WR)

    # -- transports ---------------------------------------------------------------------------
    def open_conn(self, cid, eof_keeps_open, small_buffers, accepted=False):
        sock, peer = socket.socketpair()
        peer.setblocking(False)
        if small_buffers:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        proto = Proto(self, cid, eof_keeps_open)
        opener = self.loop.connect_accepted_socket if accepted else self.loop.create_connection
        task = self.loop.create_task(opener(lambda: proto, sock=sock))
        self.pending_conns.append((cid, task, peer, proto))

    def conn(self, index):
        if not self.conns:
            return None
        return self.conns[index % len(self.conns)]

    def transport_op(self, index, op, arg):
        c = self.conn(index)
        if c is None:
            return None
        t = c["transport"]
        if t.is_closing() and op != "is_closing":
            # After close()/abort()/connection_lost the stdlib transport is no oracle: several
            # methods there dereference the loop it already dropped (AttributeError on None).
            return (c["cid"], op, "skipped: closing")
        try:
            if op == "write":
                t.write(arg)
                if not t.is_closing() and not c["eof_written"]:
                    c["written"] += arg
                r = None
            elif op == "writelines":
                t.writelines(arg)
                if not t.is_closing() and not c["eof_written"]:
                    c["written"] += b"".join(arg)
                r = None
            elif op == "write_eof":
                r = t.can_write_eof()
                t.write_eof()
                c["eof_written"] = True
            elif op == "pause_reading":
                r = t.pause_reading()
            elif op == "resume_reading":
                r = t.resume_reading()
            elif op == "is_reading":
                r = t.is_reading()
            elif op == "limits":
                t.set_write_buffer_limits(high=arg)
                r = t.get_write_buffer_limits()
            elif op == "close":
                r = t.close()
            elif op == "abort":
                r = t.abort()
            elif op == "is_closing":
                r = t.is_closing()
            else:
                raise AssertionError(op)
        except BaseException as exc:  # noqa: B902
            r = ("raised", exc_key(exc))
        return (c["cid"], op, r, t.is_closing())

    def peer_op(self, index, op, arg):
        c = self.conn(index)
        if c is None or c["peer_closed"]:
            return None
        peer = c["peer"]
        try:
            if op == "send":
                r = peer.send(arg)
            elif op == "recv":
                got = peer.recv(arg)
                c["peer_got"] += got
                r = "eof" if not got else "data"
            elif op == "shut_wr":
                r = peer.shutdown(socket.SHUT_WR)
            elif op == "close":
                # With unread bytes queued, closing an AF_UNIX end makes the other end's reads
                # fail with ECONNRESET: the resetting peer.
                c["peer_closed"] = True
                peer.close()
                r = None
            else:
                raise AssertionError(op)
        except BlockingIOError:
            r = "eagain"
        except OSError as exc:
            r = ("oserror", exc.errno)
        return r

    def peer_unread(self, index):
        c = self.conn(index)
        if c is None or c["peer_closed"]:
            return False
        try:
            return bool(c["peer"].recv(1, socket.MSG_PEEK))
        except (BlockingIOError, OSError):
            return False

    def drain(self, index):
        """Peer reads everything the transport will ever send (until quiet); returns totals."""
        c = self.conn(index)
        if c is None or c["peer_closed"]:
            return None
        peer = c["peer"]
        eof = False
        for _ in range(10000):
            progressed = False
            while True:
                try:
                    got = peer.recv(65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    self.ev("proto", c["cid"], "peer_recv_error", exc.errno)
                    eof = True
                    break
                if not got:
                    eof = True
                    break
                c["peer_got"] += got
                progressed = True
            before = self.size()
            self.run_once()
            if not progressed and self.size() == before and ready_count(self.loop) == 0:
                break
        self.settle()
        t = c["transport"]
        paused = bool(c["proto"].flow) and c["proto"].flow[-1] == "p"
        return (c["cid"], len(c["peer_got"]), eof, t.get_write_buffer_size(), paused)

    # -- subprocess ---------------------------------------------------------------------------
    def subprocess(self, data, kill):
        """``cat`` with stdin written then closed (or killed): exit status and stdout."""
        done = self.loop.create_future()
        proto_box = []

        async def go():
            transport, proto = await self.loop.subprocess_exec(
                lambda: SubProto(done), "cat",
                stdin=-1, stdout=-1, stderr=asyncio.subprocess.DEVNULL)
            proto_box.append(proto)
            stdin = transport.get_pipe_transport(0)
            if kill:
                transport.kill()
            else:
                stdin.write(data)
                stdin.close()
            await done
            # Let the pipes report their close (they may trail process_exited).
            for _ in range(50):
                if sum(1 for e in proto.events if e[0] == "pipe_lost") >= 2:
                    break
                await asyncio.sleep(0)
            rc = transport.get_returncode()
            transport.close()
            return rc, bytes(proto.out) if not kill else None

        guard = threading.Timer(20, lambda: self.loop.call_soon_threadsafe(done.cancel))
        guard.start()
        try:
            r = ("ok", self.loop.run_until_complete(go()))
        except BaseException as exc:  # noqa: B902
            r = ("raised", exc_key(exc))
        finally:
            guard.cancel()
        self.collect()
        return r

    # -- teardown -----------------------------------------------------------------------------
    def finish(self):
        for _, task in self.tasks:
            task.cancel()
        for _, task, _, _ in self.pending_conns:
            task.cancel()
        self.settle()
        for c in self.conns:
            if not c["transport"].is_closing():
                c["transport"].abort()
        self.settle()

    def close(self):
        loop = self.loop
        try:
            if not loop.is_closed():
                for c in self.conns:
                    if not c["transport"].is_closing():
                        c["transport"].abort()
                for _, task in self.tasks:
                    task.cancel()
                for _ in range(5):
                    try:
                        self.run_once()
                    except BaseException:  # noqa: B902
                        pass
                loop.close()
        finally:
            # Break the loop <-> world cycles (patched time, handler) so the loop is freed now:
            # tokioloop's close() leaves its runtime's fds open until the loop object goes (see
            # test_differential.py::test_close_releases_the_loops_fds).
            try:
                del loop.time
            except AttributeError:
                pass
            loop.set_exception_handler(None)
            self.channels.clear()
            self.handles.clear()
            self.tasks.clear()
            self.rsock.close()
            self.rpeer.close()
            for c in self.conns:
                c["peer"].close()
            for _, _, peer, _ in self.pending_conns:
                peer.close()


def normalise_cb(events):
    """Sort runs of timer callbacks with equal deadlines (asyncio's order among ties is
    unspecified); everything else keeps its order."""
    out = []
    i = 0
    while i < len(events):
        e = events[i]
        if e[2] is None:
            out.append(e)
            i += 1
            continue
        j = i
        while j < len(events) and events[j][2] == e[2]:
            j += 1
        out.extend(sorted(events[i:j], key=repr))
        i = j
    return out


def snapshot(world):
    ch = {k: list(v) for k, v in world.channels.items()}
    ch["cb"] = normalise_cb(ch.get("cb", []))
    ch["reader_bytes"] = [bytes(world.rdata)]
    # Not the ready count: tokioloop's _debug_counts()["ready"] also counts queued entries
    # that are not user handles (a reader/writer dispatch whose handle was cancelled after it
    # was queued), which asyncio leaves as cancelled handles; it is no public behaviour.
    ch["state"] = [(world.loop.is_running(), world.loop.is_closed(), timer_count(world.loop))]
    ch["conn_in"] = [(c["cid"], bytes(c["proto"].received)) for c in world.conns]
    return {k: v for k, v in ch.items() if v}


class Divergence(AssertionError):
    pass


def short(value, limit=400):
    """A bounded description: byte strings as length + digest of where they differ."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes, head {bytes(value[:16])!r}, tail {bytes(value[-16:])!r}>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i, x, y
    return min(len(a), len(b)), a[len(b):len(b) + 1], b[len(a):len(a) + 1]


_CID = st.integers(0, 10**6)
ACTIONS = st.sampled_from(
    ["record"] * 6 + ["raise", "raise_base", "keyboard", "exit", "nested", "stop", "set_var",
                      "cancel_first", "nested_run", "close_running"]
)
TIMER_ACTIONS = st.sampled_from(["record"] * 4 + ["raise", "set_var", "nested"])
CTX = st.one_of(st.none(), st.integers(0, 2))
SIZES = st.sampled_from([0, 1, 5, 1024, 70000, 300000])


def payload(size, tag):
    """Distinct, position-dependent bytes so a reordering or loss shows in the stream."""
    unit = bytes((tag + i) % 251 for i in range(251))
    return (unit * (size // 251 + 1))[:size]


DATA = st.builds(payload, SIZES, st.integers(0, 250))


class LoopDifferential(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.worlds = [World(kind) for kind in KINDS]
        self.seq = 0
        self.log = []
        STATS["sequences"] += 1

    def _next(self):
        self.seq += 1
        return self.seq

    def both(self, name, *args):
        results = [getattr(w, name)(*args) for w in self.worlds]
        self.log.append((name, args, results[0]))
        STATS["steps"] += 1
        if results[0] != results[1]:
            self.diverge(f"{name}{args!r} returned", results[0], results[1])
        return results[0]

    def diverge(self, what, std, tok):
        STATS["divergences"] += 1
        raise Divergence(f"{what}: asyncio {short(std)} != tokioloop {short(tok)}")

    def compare(self):
        a, b = (snapshot(w) for w in self.worlds)
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key, []), b.get(key, [])
            if x != y:
                i, ex, ey = first_difference(x, y)
                self.diverge(f"channel {key!r} at event {i}", ex, ey)
        for w in self.worlds:
            for c in w.conns:
                flow = "".join(c["proto"].flow)
                if "pp" in flow or "rr" in flow or flow.startswith("r"):
                    raise AssertionError(f"{w.kind}: pause/resume not alternating: {flow}")
                if not bytes(c["written"]).startswith(bytes(c["peer_got"])):
                    raise AssertionError(f"{w.kind}: peer of {c['cid']} got bytes never written")

    # -- scheduling -----------------------------------------------------------------------------
    @rule(action=ACTIONS, ctx=CTX, threadsafe=st.booleans())
    def call_soon(self, action, ctx, threadsafe):
        self.both("call_soon", f"s{self._next()}", action, ctx, threadsafe)

    @rule(n=st.integers(1, 5), ctx=CTX)
    def call_from_thread(self, n, ctx):
        cids = [f"t{self._next()}" for _ in range(n)]
        self.both("call_from_thread", cids, ctx)

    @rule(action=TIMER_ACTIONS, k=st.integers(0, 6), ctx=CTX, later=st.booleans())
    def call_at(self, action, k, ctx, later):
        seq = self._next()
        # Only record-only timers may tie; others get a unique deadline.
        offset = float(k) if action == "record" else k + seq * 1e-4
        self.both("call_at", f"at{seq}", action, offset, ctx, later)

    @rule(op=st.sampled_from(["call_soon_none", "call_soon_coro_fn", "call_soon_threadsafe_int",
                              "call_later_str", "call_at_none", "add_reader_neg",
                              "add_reader_str", "remove_writer_obj", "create_task_non_coro",
                              "run_until_complete_int"]))
    def misuse(self, op):
        self.both("misuse", op)

    @rule(index=st.integers(0, 50))
    def cancel(self, index):
        self.both("cancel", index)

    @rule()
    def stop(self):
        self.both("stop")

    # -- running --------------------------------------------------------------------------------
    @rule()
    def run_once(self):
        self.both("run_once")
        self.compare()

    @rule(delta=st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0]))
    def settle(self, delta):
        # Most checkpoints also move the virtual clock, so timers and sleeps come due often.
        if delta:
            self.both("advance", delta)
        self.both("settle")
        self.compare()

    @rule(delta=st.sampled_from([0.0, 0.5, 1.0, 1.00005, 2.0, 3.0, 10.0]))
    def advance(self, delta):
        self.both("advance", delta)
        self.both("settle")
        self.compare()

    @rule(steps=st.integers(0, 3), sleep=st.sampled_from([0, 0.5, 1.0, 4.0]),
          outcome=st.sampled_from(["return", "return", "raise", "keyboard"]), ctx=CTX)
    def create_task(self, steps, sleep, outcome, ctx):
        tid = self._next()
        self.both("create_task", tid, steps, sleep and sleep + tid * 1e-4, outcome, ctx)

    @rule(index=st.integers(0, 50))
    def cancel_task(self, index):
        self.both("cancel_task", index)

    @rule(steps=st.integers(0, 3), outcome=st.sampled_from(["return", "raise", "keyboard"]))
    def run_until_complete(self, steps, outcome):
        self.both("run_until_complete", self._next(), steps, outcome)
        self.compare()

    # -- readers and writers ----------------------------------------------------------------------
    @rule(n=st.sampled_from([7, 100, 4096]))
    def add_reader(self, n):
        self.both("add_reader", n)

    @rule()
    def remove_reader(self):
        self.both("remove_reader")

    @rule(ctx=CTX)
    def add_writer(self, ctx):
        self.both("add_writer", f"w{self._next()}", ctx)

    @rule()
    def remove_writer(self):
        self.both("remove_writer")

    @rule(data=st.sampled_from([b"a", b"hello", bytes(range(256)) * 16]))
    def reader_peer_send(self, data):
        self.both("reader_peer_send", data)

    @rule()
    def reader_peer_shut(self):
        self.both("reader_peer_shut")

    # -- transports -------------------------------------------------------------------------------
    @precondition(lambda self: len(self.worlds[0].conns) + len(self.worlds[0].pending_conns) < 3)
    @rule(eof_keeps_open=st.booleans(), small=st.booleans(), accepted=st.booleans())
    def open_conn(self, eof_keeps_open, small, accepted):
        self.both("open_conn", f"c{self._next()}", eof_keeps_open, small, accepted)
        self.both("settle")
        self.compare()

    @rule(index=st.integers(0, 5), data=DATA)
    def t_write(self, index, data):
        self.both("transport_op", index, "write", data)

    @rule(index=st.integers(0, 5), parts=st.lists(DATA, max_size=3))
    def t_writelines(self, index, parts):
        self.both("transport_op", index, "writelines", parts)

    @rule(index=st.integers(0, 5),
          op=st.sampled_from(["write_eof", "pause_reading", "resume_reading", "is_reading",
                              "close", "abort", "is_closing"]))
    def t_op(self, index, op):
        self.both("transport_op", index, op, None)

    @rule(index=st.integers(0, 5), high=st.sampled_from([0, 1, 1024, 65536, 1 << 20]))
    def t_limits(self, index, high):
        self.both("transport_op", index, "limits", high)

    @rule(index=st.integers(0, 5), data=st.sampled_from([b"p", b"peerdata" * 100]))
    def peer_send(self, index, data):
        self.both("peer_op", index, "send", data)

    @rule(index=st.integers(0, 5), n=st.sampled_from([1, 100, 1000]))
    def peer_recv(self, index, n):
        # Slow reader. How much is available depends on how the loop chunked its sends, so only
        # the prefix relation is checked (in compare); the result is not compared.
        for w in self.worlds:
            w.peer_op(index, "recv", n)
        STATS["steps"] += 1

    @rule(index=st.integers(0, 5), op=st.sampled_from(["shut_wr", "close"]))
    def peer_shut(self, index, op):
        if op == "close":
            # Resetting peer: only when both peers are at the same point of the stream, else
            # whether unread bytes remain (reset vs clean EOF) depends on send chunking.
            self.both("drain", index)
        self.both("peer_op", index, op, None)

    @rule(index=st.integers(0, 5))
    def peer_reset(self, index):
        """Close the peer with unread bytes queued: the transport's next read fails with
        ECONNRESET (AF_UNIX). Only when both worlds' peers hold unread bytes; else skipped, since
        how much has arrived depends on send chunking."""
        self.both("settle")
        pending = [w.peer_unread(index) for w in self.worlds]
        STATS["steps"] += 1
        if all(pending):
            self.both("peer_op", index, "close", None)
            self.both("settle")
            self.compare()

    @rule(index=st.integers(0, 5))
    def drain(self, index):
        self.both("drain", index)
        self.compare()

    # -- subprocess -----------------------------------------------------------------------------
    @precondition(lambda self: self.subprocesses < 2)
    @rule(data=st.sampled_from([b"", b"line\n", bytes(range(256)) * 64]), kill=st.booleans())
    def subprocess(self, data, kill):
        self.subprocesses += 1
        self.both("settle")
        self.both("subprocess", data, kill)
        self.compare()

    subprocesses = 0

    def teardown(self):
        try:
            for w in self.worlds:
                w.finish()
            self.compare()
        finally:
            for w in self.worlds:
                w.close()
            if STATS["sequences"] % 50 == 0:
                release_free_memory()


def release_free_memory():
    """Hand glibc's free heap back to the OS. The 300 kB payloads fragment the heap, and RSS
    grew ~0.4 MiB per sequence on either loop (malloc in-use stayed flat: no leak), which a
    20k-sequence run cannot afford."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run(examples, steps, derandomize, database=None):
    """Run the machine; returns (passed, error). Prints the figure line."""
    STATS.update(sequences=0, steps=0, divergences=0)
    cfg = settings(
        max_examples=examples,
        stateful_step_count=steps,
        derandomize=derandomize,
        deadline=None,
        database=database,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    error = None
    try:
        run_state_machine_as_test(LoopDifferential, settings=cfg)
    except Exception as exc:  # noqa: BLE001 - reported, then re-raised by the caller
        import traceback

        error = exc
        error.report = traceback.format_exc()
    divergences = 1 if error is not None else 0
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    line = (
        f"reliability figure: differential {ver}: {examples} sequences x {steps} steps "
        f"({STATS['sequences']} sequences, {STATS['steps']} operations run incl. shrinking), "
        f"{divergences} divergences"
    )
    return line, error


def run_batches(args):
    """The long form: fresh child processes of ``args.batch`` random sequences each, until
    ``args.examples`` have run or one batch diverges; prints the summed figure line."""
    import re
    import subprocess

    done = sequences = operations = 0
    failed = None
    while done < args.examples and failed is None:
        n = min(args.batch, args.examples - done)
        cmd = [sys.executable, __file__, "--examples", str(n), "--steps", str(args.steps),
               "--random", "--batch", str(n)]
        if args.database:
            cmd += ["--database", args.database]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        m = re.search(r"\((\d+) sequences, (\d+) operations", proc.stdout)
        if m:
            sequences += int(m.group(1))
            operations += int(m.group(2))
        if proc.returncode != 0:
            failed = proc.stdout[-20000:] + proc.stderr[-5000:]
        done += n
        print(f"batch done: {done}/{args.examples} sequences, {operations} operations, "
              f"{'divergence' if failed else 'no divergence'}", file=sys.stderr, flush=True)
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    print(
        f"reliability figure: differential {ver}: {done} sequences x {args.steps} steps "
        f"({sequences} sequences, {operations} operations run incl. shrinking, batches of "
        f"{args.batch}), {1 if failed else 0} divergences",
        flush=True,
    )
    if failed:
        print(failed, flush=True)
        return 1
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--random", action="store_true", help="random seed (default: derandomize)")
    p.add_argument("--database", metavar="DIR",
                   help="Hypothesis example database (keeps shrunk failures between runs)")
    p.add_argument("--batch", type=int, default=1000,
                   help="with --random, run at most this many sequences per child process "
                        "(Hypothesis's memory grows with the examples one run has seen)")
    args = p.parse_args(argv)
    if args.random and args.examples > args.batch:
        return run_batches(args)
    database = None
    if args.database:
        from hypothesis.database import DirectoryBasedExampleDatabase

        database = DirectoryBasedExampleDatabase(args.database)
    line, error = run(args.examples, args.steps, derandomize=not args.random, database=database)
    print(line, flush=True)
    if error is not None:
        print(f"divergence (shrunk):\n{error.report}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
