"""Ctrl+C under load: random-time SIGINT trials against a child running ``asyncio.Runner``.

Contract
--------
The parent spawns a child (this file with ``--child``) that runs ``asyncio.Runner(loop_factory=...)``
sessions over one workload, and sends it exactly one SIGINT per trial at a random moment. The child
writes one JSON line per session saying what it saw, with ``CLOCK_MONOTONIC`` timestamps (the clock
is system-wide, so the parent's send time and the child's times are comparable):

* ``cancel``: when ``main()`` saw ``CancelledError``;
* ``exit``: when ``KeyboardInterrupt`` had left the Runner (after ``Runner.close()``);
* ``finally``: whether ``main()``'s ``finally`` ran; ``where``: where KeyboardInterrupt came out
  (``run``, ``close``, ``early`` = before ``main()`` started, or absent).

Shapes:

* ``in-process``: one child runs many Runner sessions; per trial the parent waits for ``READY``
  (the workload is running), sleeps U(0, ``--max-delay``) and sends SIGINT.
* ``fresh``: one child per trial, one session; the parent sends SIGINT at U(0, 1.25 x the median
  spawn-to-READY time seen so far), so some signals land in interpreter start-up, ``import``,
  loop creation, Runner set-up or workload set-up, and the rest in the running workload.

Workloads (``--workload``): ``idle`` (a long sleep), ``busy`` (10k ready callbacks every turn),
``tcp`` (echo at full rate over 4 connections), ``tls`` (back-to-back TLS handshakes, 4 clients),
``executor`` (``run_in_executor`` of 20 ms blocking sleeps), ``subprocess`` (spawn and wait for
short-lived children), ``sendall`` (a 64 MiB ``sock_sendall`` to a reader thread that drains
slowly). ``--load N`` busy processes (default 2, one per core here) spin for the whole run.

A trial is a **miss** when (1) the child did not exit the Runner within ``--deadline`` (1 s) plus
the longest single callback the child measured, after the signal; (2) it crashed: killed by a
signal other than an early SIGINT, or stderr shows ``Fatal Python error``, ``PanicException``,
``panicked at``, ``SystemError`` or ``Segmentation fault``; (3) the signal was swallowed: no
KeyboardInterrupt came out although ``main()`` had started; (4) ``main()`` started but its
``finally`` did not run; (5) the exit status or the child's report was unexpected (an exception
other than KeyboardInterrupt, a traceback on stderr, no report). KeyboardInterrupt surfacing from
``Runner.close()`` is not a miss when (2)-(4) hold: asyncio has the same window. A signal that lands
before ``main()`` started (import, loop creation) must still end the child with KeyboardInterrupt.

Counted and printed apart, never misses, because they are CPython's and asyncio has them too:
* start-up: a SIGINT during interpreter initialisation ("Fatal Python error: init_...", "failed to
  set __main__.__loader__", a traceback of frozen bootstrap frames ending in KeyboardInterrupt) is
  the expected early outcome; one CPython reports and then drops (an importlib module-lock weakref
  callback, zipimport's argv[0] check) leaves the child running: if a second SIGINT then ends the
  session normally, the trial counts under "dropped by CPython's start-up";
* "shared-with-asyncio races": a reader/writer callback that saw its future pending, did the
  syscall, then found it cancelled by Runner's SIGINT handler, so set_result raised
  InvalidStateError, which the loop logged (see ``_SHARED_RACE``);
* "Runner's SIGINT window": ``Runner.run()`` installs its SIGINT handler, then sets
  ``_interrupt_count = 0``. A SIGINT handled between the two (CPython runs pending handlers right
  after the ``signal.signal()`` call returns) cancels the main task and has its count erased, so
  ``run()`` raises CancelledError instead of KeyboardInterrupt and ``main()`` never starts
  (``runner_race``; ``test_ctrlc.py`` shows asyncio does the same). Counted, not a miss;
* "CPython-logged errors": a stderr traceback whose frames are all the stdlib's (seen: asyncio's
  ``BaseEventLoop.__del__`` raising AttributeError on a loop whose ``__init__`` the signal cut
  short). A frame in tokioloop, uvloop, site-packages or this harness makes it a miss.

A hung child (no report ``HANG_TIMEOUT`` s after the signal) is diagnosed before it is killed:
its state and CPU use (parked or spinning), its epoll registrations, native stacks (gdb, when
installed; ``CTRLC_GDB=0`` skips), whether a second SIGINT releases it, a SIGUSR2 probe of the
signal plumbing (SIGINT's Python handler, the wakeup fd, the loop's self-pipe, its tasks: an
answer means the loop still wakes for signals) and faulthandler's Python stacks.
``CTRLC_READY_PROBE=1`` also reports the wakeup fd at each READY (it swaps the fd out and back).

The figure line::

    reliability figure: ctrlc LOOP WORKLOAD: M/N misses (in-process A, fresh B), exit latency
    p50 X ms p99 Y ms max Z ms, cancel latency p50 ...

Latency is *reported*; the only bound on it is the miss deadline above (1 s: Ctrl+C that takes a
second under full load is what a user calls ignored; asyncio's own p99 here is tens of ms).

Usage::

    python tests/reliability/ctrlc.py --help
    # CI form (what test_ctrlc.py runs per loop and workload):
    python tests/reliability/ctrlc.py --loop tokioloop --workload all --trials 40 --fresh 8
    # long form (issue 20): 1000 trials per workload and loop, asyncio and uvloop alongside
    python tests/reliability/ctrlc.py --loop tokioloop,asyncio,uvloop --workload all \\
        --trials 1000 --fresh 100

Exit status 0 when every loop scored 0 misses, 1 otherwise. Only 127.0.0.1 is used.
"""

import argparse
import json
import os
import random
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

WORKLOADS = ("idle", "busy", "tcp", "tls", "executor", "subprocess", "sendall")
LOOPS = ("tokioloop", "asyncio", "uvloop")
CRASH_MARKERS = ("Fatal Python error", "PanicException", "panicked at", "SystemError",
                 "Segmentation fault", "core dumped")
# Read the wakeup fd at READY (by swapping it out and back): off by default, since with it
# the tokioloop idle hang found on 2026-12-07 no longer showed (0/3000 against ~1.5 %).
READY_PROBE = os.environ.get("CTRLC_READY_PROBE") == "1"
HANG_TIMEOUT = 15.0  # after this the child is declared hung, its stacks dumped, and killed
READY_TIMEOUT = 60.0


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# --------------------------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------------------------

_state = {"phase": "start"}


def _emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _loop_factory(kind):
    if kind == "tokioloop":
        import tokioloop
        return tokioloop.new_event_loop
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    import asyncio
    return asyncio.new_event_loop


class _Busy:
    """10k callbacks ready on every turn; each re-schedules itself. One of them (``spin``) burns
    about 1 ms of CPU so that 'the longest callback' is a real, measured figure."""

    def __init__(self, loop, width=10_000):
        self.loop = loop
        self.width = width
        self.stopped = False
        self.maxcb = 0.0
        self.turns = 0

    def start(self):
        for _ in range(self.width - 1):
            self.loop.call_soon(self.tick)
        self.loop.call_soon(self.spin)

    def tick(self):
        if not self.stopped:
            self.loop.call_soon(self.tick)

    def spin(self):
        t0 = time.perf_counter()
        end = t0 + 0.001
        while time.perf_counter() < end:
            pass
        self.turns += 1
        self.maxcb = max(self.maxcb, time.perf_counter() - t0)
        if not self.stopped:
            self.loop.call_soon(self.spin)


async def _workload(name, certdir, ready, cleanups):
    """Start ``name``, call ``ready()`` once it runs, then await forever (until cancelled).
    ``cleanups`` collects callables/coroutines main's finally runs to stop it."""
    import asyncio
    import socket
    import threading

    loop = asyncio.get_running_loop()
    if name == "idle":
        ready()
        await asyncio.sleep(3600)
    elif name == "busy":
        busy = _Busy(loop)
        cleanups.append(lambda: setattr(busy, "stopped", True))
        _state["busy"] = busy
        busy.start()
        await asyncio.sleep(0)
        ready()
        await loop.create_future()
    elif name == "tcp":
        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data)

        class Pump(asyncio.Protocol):
            chunk = b"x" * 65536

            def connection_made(self, transport):
                self.transport = transport
                transport.write(self.chunk * 4)

            def data_received(self, data):
                self.transport.write(data)

        server = await loop.create_server(Echo, "127.0.0.1", 0)
        cleanups.append(server.close)
        port = server.sockets[0].getsockname()[1]
        for _ in range(4):
            tr, _ = await loop.create_connection(Pump, "127.0.0.1", port)
            cleanups.append(tr.abort)
        ready()
        await loop.create_future()
    elif name == "tls":
        import ssl
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(os.path.join(certdir, "cert.pem"), os.path.join(certdir, "key.pem"))
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(os.path.join(certdir, "cert.pem"))

        async def handle(reader, writer):
            try:
                writer.write(await reader.readexactly(1))
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
        cleanups.append(server.close)
        port = server.sockets[0].getsockname()[1]

        async def client():
            while True:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=cctx, server_hostname="127.0.0.1")
                try:
                    writer.write(b"!")
                    assert await reader.readexactly(1) == b"!"
                finally:
                    writer.transport.abort()

        tasks = [asyncio.ensure_future(client()) for _ in range(4)]
        cleanups.extend(t.cancel for t in tasks)
        ready()
        await asyncio.gather(*tasks)
    elif name == "executor":
        ready()
        while True:
            await loop.run_in_executor(None, time.sleep, 0.02)
    elif name == "subprocess":
        ready()
        while True:
            proc = await asyncio.create_subprocess_exec("/bin/sleep", "0.03")
            cleanups.append(proc.wait)  # cleanups run last-first: kill, then wait
            cleanups.append(lambda p=proc: p.returncode is None and p.kill())
            await proc.wait()
            del cleanups[-2:]
    elif name == "sendall":
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        wsock = socket.socket()
        wsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        wsock.connect(lsock.getsockname())
        rsock, _ = lsock.accept()
        lsock.close()
        rsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        wsock.setblocking(False)

        def slow_reader():
            try:
                while rsock.recv(16384):
                    time.sleep(0.001)
            except OSError:
                pass

        reader = threading.Thread(target=slow_reader, daemon=True)
        reader.start()

        def stop():
            # Shut the reader's side down (not just close ours: a loop may still hold the
            # writer's fd), so its recv returns at once whatever the loop did with wsock.
            try:
                rsock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            reader.join(5)
            rsock.close()
            wsock.close()

        cleanups.append(stop)
        payload = b"s" * (64 << 20)
        ready()
        while True:
            await loop.sock_sendall(wsock, payload)
    else:
        raise ValueError(name)


def _session(index, kind, workload, certdir):
    import asyncio
    rec = {"i": index, "main_started": False, "ready": False, "cancel": None,
           "finally": False, "where": None, "error": None}

    async def main():
        rec["main_started"] = True
        cleanups = []

        def ready():
            rec["ready"] = True
            # For a hang's diagnosis: the wakeup fd CPython writes signal numbers to, and the
            # loop's self-pipe ends where it has them (tokioloop, asyncio). Read before the
            # parent may signal, so swapping the wakeup fd out and back races nothing.
            if not READY_PROBE:
                _emit({"ready": index})
                return
            wakeup = signal.set_wakeup_fd(-1)
            signal.set_wakeup_fd(wakeup)
            loop = asyncio.get_running_loop()
            pipe = [getattr(getattr(loop, name, None), "fileno", lambda: None)()
                    for name in ("_ssock", "_csock")]
            _emit({"ready": index, "wakeup_fd": wakeup, "self_pipe": pipe})

        try:
            await _workload(workload, certdir, ready, cleanups)
        except asyncio.CancelledError:
            rec["cancel"] = now()
            raise
        finally:
            for step in reversed(cleanups):
                res = step()
                if asyncio.iscoroutine(res):
                    await res
            rec["finally"] = True

    _state["phase"] = "runner"
    factory = _loop_factory(kind)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            _state["phase"] = "run"
            try:
                runner.run(main())
            except KeyboardInterrupt:
                rec["where"] = "run" if rec["main_started"] else "early"
            _state["phase"] = "close"
    except KeyboardInterrupt:
        rec["where"] = rec["where"] or ("close" if _state["phase"] == "close" else "early")
    except BaseException as exc:  # reported, then the parent counts a miss (or runner_race)
        rec["error"] = repr(exc)
        rec["error_phase"] = _state["phase"]
    rec["exit"] = now()
    busy = _state.pop("busy", None)
    rec["maxcb"] = busy.maxcb if busy else 0.0
    return rec


def _probe(signum, frame):
    """SIGUSR2 (sent only to a hung child): report the signal plumbing. That this runs at all
    says the loop still wakes for signals; what it says tells why SIGINT did nothing."""
    import asyncio
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    loop = asyncio._get_running_loop()
    info = {"sigint_handler": repr(signal.getsignal(signal.SIGINT)), "wakeup_fd": wakeup,
            "loop": repr(loop), "phase": _state["phase"]}
    if loop is not None:
        info["self_pipe"] = [getattr(getattr(loop, n, None), "fileno", lambda: None)()
                             for n in ("_ssock", "_csock")]
        info["tasks"] = [repr(t) + f" cancelling={t.cancelling()}"
                         for t in asyncio.all_tasks(loop)]
    _emit({"probe": info})


def child_main(args):
    import faulthandler
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGUSR2, _probe)
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        # A harness error, never the loop's: the parent failed to give us a catchable SIGINT.
        _emit({"harness_error": f"SIGINT handler at start: {signal.getsignal(signal.SIGINT)!r}"})
        return
    rec = None
    try:
        _state["phase"] = "import"
        import asyncio  # noqa: F401  (timed in the window the fresh shape aims at)
        _loop_factory(args.loop)
        _emit({"started": True})
        for index in range(args.sessions):
            rec = None
            rec = _session(index, args.loop, args.workload, args.certdir)
            _emit({"result": rec})
    except KeyboardInterrupt:
        _emit({"result": {"i": -1, "where": "early", "phase": _state["phase"], "exit": now(),
                          "main_started": False, "finally": False, "cancel": None,
                          "error": None, "maxcb": 0.0}})
    _emit({"done": True})


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------

def make_cert(directory):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj",
         "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        cwd=directory, check=True, capture_output=True, timeout=60)


# Spin until the parent is gone (so a killed run leaves no spinner behind).
_SPIN = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(200_000):
        pass
"""


class CpuLoad:
    """``n`` processes spinning in a Python loop for as long as the context lasts."""

    def __init__(self, n):
        self.n = n
        self.procs = []

    def __enter__(self):
        for _ in range(self.n):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-c", _SPIN, str(os.getpid())], stdin=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()
        self.procs = []


def sigint_catchable_by_children():
    """Make sure children start with SIGINT at its default disposition.

    A process started in the background by a shell without job control (``cmd &`` in a script,
    nohup, some CI runners) inherits SIGINT *ignored*; exec keeps an ignored signal ignored, so
    every child would too, CPython would not install ``default_int_handler`` in it, Runner would
    install no handler, and every trial would "hang" whatever the loop. (The first long runs hit
    exactly this.) Restoring Python's default handler here makes exec reset SIGINT to SIG_DFL in
    the children. Main thread only, which is where the harness and pytest run."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Child:
    """One child process and a line reader over its stdout (stderr goes to a temp file)."""

    def __init__(self, loop, workload, sessions, certdir):
        sigint_catchable_by_children()
        self.err = tempfile.TemporaryFile()
        self.spawned = now()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", "--loop", loop,
             "--workload", workload, "--sessions", str(sessions), "--certdir", certdir],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err,
            env=_child_env())
        self.buf = b""
        self.last_ready = {}
        self.released = None  # a hung child's answer to a second SIGINT (dump_and_kill)

    def line(self, timeout):
        """The next stdout line as a dict; None on timeout; {"eof": True} at EOF."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return {"eof": True}
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = json.loads(raw)
            if "ready" in msg:
                self.last_ready = msg
            return msg
        except ValueError:
            return {"garbage": raw.decode(errors="replace")}

    def finish(self, timeout=HANG_TIMEOUT):
        """Wait for exit (killing after ``timeout``); return (returncode, stderr text, killed)."""
        killed = False
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            killed = True
            self.dump_and_kill()
        self.proc.stdout.close()
        self.err.seek(0)
        text = self.err.read().decode(errors="replace")
        self.err.close()
        return self.proc.returncode, text, killed

    def dump_and_kill(self):
        """A hung child: say what it was doing, then kill it. Returns the diagnosis: process
        state and CPU used over 0.5 s (parked or spinning), the native stacks (gdb, if
        installed), whether a second SIGINT released it, and Python stacks (faulthandler,
        in the child's stderr)."""
        notes = []
        pid = self.proc.pid
        try:
            before = _cpu_ticks(pid)
            time.sleep(0.5)
            state, after = _proc_state(pid), _cpu_ticks(pid)
            notes.append(f"state {state}, {after - before} CPU ticks in 0.5 s")
        except OSError:
            pass
        notes.append(f"READY seen: {bool(self.last_ready)}")
        if READY_PROBE:
            notes.append(f"at READY: wakeup fd {self.last_ready.get('wakeup_fd')}, self-pipe "
                         f"(read, write) {self.last_ready.get('self_pipe')}")
        notes.append("epoll registrations: " + _epoll_fds(pid))
        stacks = None
        if os.environ.get("CTRLC_GDB", "1") != "0" and shutil.which("gdb"):
            try:
                out = subprocess.run(
                    ["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "thread apply all bt 25"],
                    capture_output=True, text=True, timeout=60).stdout
                keep = [ln for ln in out.splitlines() if ln.startswith(("#", "Thread"))]
                stacks = "native stacks:\n" + "\n".join(ln[:160] for ln in keep[:60])
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:
            self.proc.send_signal(signal.SIGINT)
            msg = self.line(3.0)
            self.released = msg
            notes.append(f"second SIGINT -> {msg}")
            if msg is None:
                self.proc.send_signal(signal.SIGUSR2)
                notes.append(f"SIGUSR2 probe -> {self.line(3.0)}")
            self.proc.send_signal(signal.SIGUSR1)  # faulthandler: all stacks to stderr
            time.sleep(0.5)
        except ProcessLookupError:
            pass
        self.proc.kill()
        self.proc.wait()
        if stacks:
            notes.append(stacks)
        return "; ".join(notes)


def _cpu_ticks(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _proc_state(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def _epoll_fds(pid):
    """Each epoll fd of ``pid`` and the fds registered in it, with their event masks."""
    out = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") != "anon_inode:[eventpoll]":
                    continue
                with open(f"/proc/{pid}/fdinfo/{name}") as f:
                    regs = [" ".join(ln.split()[:4]) for ln in f if ln.startswith("tfd:")]
                out.append(f"epfd {name}: " + ", ".join(regs))
            except OSError:
                continue
    except OSError:
        pass
    return "; ".join(out) or "none found"


def _child_env():
    env = dict(os.environ)
    for var in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONWARNINGS"):
        env.pop(var, None)
    return env


# CPython's own start-up: a SIGINT while the interpreter initialises (``site``, the standard
# streams) is fatal by design ("Fatal Python error: init_...", exit status 1), before any code of
# ours or of the loop under test has run.
_STARTUP_FATAL = "Fatal Python error: init_"  # init_import_site, init_sys_streams, ...


# A race asyncio shares (CPython's selector loop has it in _sock_connect_cb, _sock_recv, ...): a
# reader/writer callback checks ``fut.done()``, does the syscall, then ``fut.set_result()``; when
# SIGINT arrives in between, Runner's handler cancels main and with it ``fut``, and set_result
# raises InvalidStateError, which the loop logs ("Exception in callback"). Counted and reported
# separately ("shared races"), not a miss: the same trials on asyncio can log it too.
# The TLS layer has the same shape (asyncio's sslproto ``_wakeup_waiter`` checks
# ``waiter.cancelled()`` then sets the result; tokioloop's _tls.py copies it): a SIGINT between the
# two makes the transport report "Fatal error: protocol.buffer_updated() call failed." instead.
_SHARED_RACE = re.compile(
    r"(?:Exception in callback [^\n]*\nhandle: [^\n]*\n"
    r"|Fatal error: protocol\.[^\n]*\nprotocol: [^\n]*\ntransport: [^\n]*\n)"
    r"Traceback \(most recent call last\):\n"
    r"(?:[ \t][^\n]*\n)*asyncio\.exceptions\.InvalidStateError: invalid state\n?")


# CPython itself drops some start-up KeyboardInterrupts: raised inside an import's module-lock
# weakref callback it is "unraisable" ("Exception ignored in: <function
# _get_module_lock.<locals>.cb ...>"); raised while the interpreter checks whether argv[0] is a
# zip ("Failed checking if argv[0] is an import path entry") it is printed and the script runs
# anyway. Only the fresh shape, whose signals land in start-up, meets these; the child then waits
# for a signal that was consumed. Counted and reported ("lost in CPython's start-up"), not a miss,
# when a second SIGINT ends the session normally and every traceback frame on stderr is CPython's
# frozen bootstrap code (``cpython_dropped``).
def cpython_dropped(err):
    """True if child stderr ``err`` shows only a KeyboardInterrupt CPython's frozen start-up
    code reported and dropped (faulthandler's dump, which follows, is ignored)."""
    text = err.split("Current thread 0x")[0].split("\nThread 0x")[0]
    frames = [ln for ln in text.splitlines() if ln.startswith("  File ")]
    return (bool(frames) and all(ln.startswith("  File \"<frozen ") for ln in frames)
            and any(ln.startswith("KeyboardInterrupt") for ln in text.splitlines())
            and not any(m in text for m in CRASH_MARKERS))


def stderr_problems(text, early_sigint_ok=False):
    """What in child stderr makes a miss: crash markers or any traceback. With
    ``early_sigint_ok`` (the child had not started our code), a traceback ending in
    KeyboardInterrupt is the expected outcome, and so is CPython's start-up fatal error."""
    lines = text.rstrip().splitlines()
    ends_in_kbi = bool(lines) and lines[-1].startswith("KeyboardInterrupt")
    if early_sigint_ok and ends_in_kbi and (lines[0].startswith(_STARTUP_FATAL) or all(
            ln.startswith(("  File \"<frozen ", "  File \"<string>\"", "    "))
            for ln in lines if ln.startswith(" "))):
        # Start-up: CPython says its initialisation failed ("Fatal Python error: init_...",
        # whatever site's .pth files were running), or every frame is CPython's frozen
        # bootstrap or a .pth line ("<string>"): "failed to set __main__.__loader__".
        # The signal came before any of our code.
        return [m for m in CRASH_MARKERS if m in "\n".join(
            ln for ln in lines if not ln.startswith(_STARTUP_FATAL))]
    problems = [m for m in CRASH_MARKERS if m in text]
    if "Traceback" in text and not (early_sigint_ok and ends_in_kbi) and not stdlib_only(text):
        problems.append("traceback")
    return problems


_STDLIB = sysconfig.get_paths()["stdlib"]


def stdlib_only(text):
    """True if every traceback frame in ``text`` is CPython's own (stdlib, frozen, ``<string>``):
    an error the stdlib itself logged, e.g. asyncio's ``BaseEventLoop.__del__`` tripping over a
    loop whose ``__init__`` a KeyboardInterrupt cut short (AttributeError: no
    ``_signal_handlers``). Counted under "CPython-logged errors", not a miss: the stdlib loop is
    the oracle, and frames in tokioloop, uvloop or this harness still make a miss."""
    frames = [ln for ln in text.splitlines() if ln.startswith("  File ")]
    return bool(frames) and all(
        ln.startswith(("  File \"<frozen ", "  File \"<string>\"", f"  File \"{_STDLIB}/"))
        and "site-packages" not in ln for ln in frames)


class Tally:
    def __init__(self, loop, workload):
        self.loop = loop
        self.workload = workload
        self.trials = {"in-process": 0, "fresh": 0}
        self.misses = []          # (shape, reason, detail)
        self.exit_lat = []
        self.cancel_lat = []
        self.where = {}
        self.maxcb = 0.0
        self.shared_races = []  # logged stderr blocks of the race asyncio shares
        self.cpython_lost = 0  # fresh trials whose SIGINT CPython's start-up dropped
        self.cpython_logged = 0  # children whose stderr held stdlib-only tracebacks
        self.runner_races = 0  # reports of asyncio.Runner's own SIGINT window (runner_race)

    def strip_shared(self, err):
        """Take the shared-race blocks out of child stderr ``err`` (counted); return the rest.
        Also counts stderr tracebacks made of stdlib frames only (``stdlib_only``)."""
        self.shared_races.extend(_SHARED_RACE.findall(err))
        rest = _SHARED_RACE.sub("", err)
        head = rest.split("Current thread 0x")[0]
        if ("Traceback" in head and stdlib_only(head) and not any(
                ln.startswith("KeyboardInterrupt") for ln in head.splitlines())):
            self.cpython_logged += 1  # (an early KeyboardInterrupt traceback is no error)
        return rest

    def add(self, shape, t_sig, rec, reason=None, detail=""):
        self.trials[shape] += 1
        if rec is not None:
            where = rec.get("where") or "none"
            self.where[where] = self.where.get(where, 0) + 1
            if rec.get("exit") is not None and t_sig is not None:
                self.exit_lat.append(rec["exit"] - t_sig)
            if rec.get("cancel") is not None and t_sig is not None:
                self.cancel_lat.append(rec["cancel"] - t_sig)
            self.maxcb = max(self.maxcb, rec.get("maxcb") or 0.0)
            self.runner_races += runner_race(rec)
        if reason:
            self.misses.append((shape, reason, detail))

    def add_child_problem(self, shape, reason, detail):
        """A problem seen only when a child ended (stderr, exit status): one miss, no trial."""
        self.misses.append((shape, reason, detail))

    @property
    def total(self):
        return sum(self.trials.values())

    def figure(self):
        def pct(values):
            if not values:
                return "n/a"
            s = sorted(values)
            p50 = statistics.median(s) * 1e3
            p99 = s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))] * 1e3
            return f"p50 {p50:.1f} ms p99 {p99:.1f} ms max {s[-1] * 1e3:.1f} ms"
        where = ", ".join(f"{k} {v}" for k, v in sorted(self.where.items()))
        return (f"reliability figure: ctrlc {self.loop} {self.workload}: "
                f"{len(self.misses)}/{self.total} misses "
                f"(in-process {self.trials['in-process']}, fresh {self.trials['fresh']}), "
                f"exit latency {pct(self.exit_lat)}, cancel latency {pct(self.cancel_lat)}; "
                f"KeyboardInterrupt from: {where}; "
                f"shared-with-asyncio races logged: {len(self.shared_races)}; "
                f"signals dropped by CPython's start-up: {self.cpython_lost}; "
                f"CPython-logged errors: {self.cpython_logged}; "
                f"Runner's SIGINT window: {self.runner_races}")


def runner_race(rec):
    """True if the child's report is asyncio.Runner's own SIGINT window (see the docstring):
    CancelledError out of ``run()`` before ``main()`` ever started."""
    return (bool(rec.get("error")) and rec["error"].startswith("CancelledError(")
            and rec.get("error_phase") == "run" and not rec.get("main_started"))


def classify(rec, t_sig, deadline, maxcb):
    """The miss reason for one trial's child report, or None."""
    if rec.get("error"):
        if runner_race(rec):
            return None  # counted by Tally.add
        return "unexpected exception", f"{rec['error']}; report {json.dumps(rec)}"
    started = rec.get("main_started")
    if started and not rec.get("finally"):
        return "finally not run", ""
    if not rec.get("where"):
        return "swallowed", "no KeyboardInterrupt"
    if rec.get("exit") is not None and rec["exit"] - t_sig > deadline + maxcb:
        return "slow exit", f"{(rec['exit'] - t_sig) * 1e3:.0f} ms"
    return None


def run_in_process(tally, trials, sessions, max_delay, deadline, certdir, rng, log):
    done = 0
    while done < trials:
        batch = min(sessions, trials - done)
        child = Child(tally.loop, tally.workload, batch, certdir)
        first = child.line(READY_TIMEOUT)
        if first and "harness_error" in first:
            child.finish()
            raise RuntimeError(f"ctrlc harness: {first['harness_error']}")
        if not first or first.get("started") is not True:
            rc, err, _ = child.finish()
            tally.add("in-process", None, None, "child failed to start",
                      f"{first} rc={rc} {err[-400:]}")
            done += 1
            continue
        alive = True
        for _ in range(batch):
            msg = child.line(READY_TIMEOUT)
            if not msg or "ready" not in msg:
                tally.add("in-process", None, None, "no READY", f"{msg}")
                done += 1
                alive = False
                break
            time.sleep(rng.uniform(0, max_delay))
            t_sig = now()
            child.proc.send_signal(signal.SIGINT)
            msg = child.line(HANG_TIMEOUT)
            done += 1
            if msg is None:
                diagnosis = child.dump_and_kill()
                tally.add("in-process", t_sig, None, "no exit (hang)",
                          f"no report within {HANG_TIMEOUT} s; {diagnosis}")
                log(f"  miss: {tally.loop} {tally.workload} in-process: hang: {diagnosis}")
                alive = False
                break
            if "result" not in msg:
                tally.add("in-process", t_sig, None, "no report", f"{msg}")
                alive = False
                break
            rec = msg["result"]
            reason = classify(rec, t_sig, deadline, rec.get("maxcb") or 0.0)
            if not reason and rec.get("where") == "early":
                reason = ("swallowed", "main did not start although READY was printed")
            tally.add("in-process", t_sig, rec, *(reason or (None,)))
            if reason:
                log(f"  miss: {tally.loop} {tally.workload} in-process: {reason}")
        if alive:
            msg = child.line(HANG_TIMEOUT)
            if not msg or not msg.get("done"):
                tally.add_child_problem("in-process", "no DONE", f"{msg}")
        rc, err, killed = child.finish()
        err = tally.strip_shared(err)
        problems = stderr_problems(err)
        if rc != 0 and not killed and alive:
            tally.add_child_problem("in-process", "exit status", f"rc={rc} {err[-600:]}")
        elif problems:
            tally.add_child_problem("in-process", "crash/stderr: " + ",".join(problems),
                                    err[-1500:])
        if killed or problems or rc != 0:
            log(f"  child ended badly: rc={rc} killed={killed} stderr tail:\n{err[-1500:]}")


def run_fresh(tally, trials, deadline, certdir, rng, log):
    ready_times = []
    for n in range(trials):
        # The first trial fires right after READY and measures spawn-to-READY; later ones fire
        # at U(0, 1.5 x the median of that), so about a third land in the running workload.
        horizon = 1.5 * statistics.median(ready_times) if ready_times else READY_TIMEOUT
        delay = rng.uniform(0, horizon) if ready_times else READY_TIMEOUT
        child = Child(tally.loop, tally.workload, 1, certdir)
        target = child.spawned + delay
        # Read whatever the child says until the moment to fire, noting READY's time.
        seen = []
        while True:
            left = target - now()
            if left <= 0:
                break
            msg = child.line(left)
            if msg is None:
                break
            seen.append(msg)
            if "ready" in msg:
                ready_times.append(now() - child.spawned)
                if not n:
                    break
            if "eof" in msg:
                break
        t_sig = now()
        try:
            child.proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
        rec = None
        reason = None
        while True:
            msg = child.line(HANG_TIMEOUT)
            if msg is None:
                diagnosis = child.dump_and_kill()
                reason = ("no exit (hang)", f"no report within {HANG_TIMEOUT} s; {diagnosis}")
                break
            seen.append(msg)
            if "ready" in msg and not any("ready" in m for m in seen[:-1]):
                ready_times.append(now() - child.spawned)
            if "result" in msg:
                rec = msg["result"]
            if "eof" in msg or "done" in msg:
                break
        rc, err, killed = child.finish()
        err = tally.strip_shared(err)
        if (reason and reason[0].startswith("no exit") and child.released
                and "result" in child.released and cpython_dropped(err)):
            # The first SIGINT was dropped by CPython before our code ran; the second one
            # (sent by the diagnosis) ended the session normally.
            tally.cpython_lost += 1
            log(f"  note: {tally.loop} {tally.workload} fresh: SIGINT dropped by CPython's "
                f"start-up; a second SIGINT ended the session normally:\n{err[:600]}")
            tally.add("fresh", t_sig, None)
            continue
        if reason and reason[0].startswith("no exit"):
            reason = (reason[0], f"{reason[1]}\nmessages: {seen}\nchild stderr:\n{err[-3000:]}")
        got_ready = any("ready" in m for m in seen)
        if reason is None and not killed:
            if rec is None:
                # No report: only a SIGINT before the child's Python code could catch it is fine.
                if got_ready:
                    reason = ("no report", f"rc={rc}")
                elif rc not in (-signal.SIGINT, 1, 130):
                    reason = ("exit status", f"rc={rc}")
                elif stderr_problems(err, early_sigint_ok=True):
                    reason = ("crash/stderr", err[-1500:])
                elif rc == 1 and "KeyboardInterrupt" not in err:
                    reason = ("exit status", f"rc=1 without KeyboardInterrupt: {err[-600:]}")
                if reason is None:
                    rec = {"where": "early", "exit": None, "maxcb": 0.0}
            else:
                reason = classify(rec, t_sig, deadline, rec.get("maxcb") or 0.0)
                if reason is None and rc != 0:
                    reason = ("exit status", f"rc={rc}")
                problems = stderr_problems(err)
                if reason is None and problems:
                    reason = ("crash/stderr: " + ",".join(problems), err[-1500:])
        elif reason is None:
            reason = ("no exit (hang)", "child did not exit")
        tally.add("fresh", t_sig, rec, *(reason or (None,)))
        if reason:
            log(f"  miss: {tally.loop} {tally.workload} fresh: {reason[0]} {reason[1][:8000]}")


def run_trials(loop, workload, trials, fresh, *, sessions=100, max_delay=0.1, deadline=1.0,
               seed=None, certdir=None, log=print):
    """Run ``trials`` in-process and ``fresh`` fresh-process trials; return the Tally.
    The caller provides the CPU load (``CpuLoad``) and, for ``tls``, ``certdir`` (``make_cert``)."""
    rng = random.Random(seed)
    tally = Tally(loop, workload)
    if trials:
        run_in_process(tally, trials, sessions, max_delay, deadline, certdir or "", rng, log)
    if fresh:
        run_fresh(tally, fresh, deadline, certdir or "", rng, log)
    return tally


def parse(argv):
    p = argparse.ArgumentParser(
        description="Random-time SIGINT trials against asyncio.Runner under CPU load "
                    "(issue 20 item 5). Prints one 'reliability figure:' line per loop and "
                    "workload; exit status 1 if any trial missed.")
    p.add_argument("--loop", default="tokioloop",
                   help="comma-separated: " + ",".join(LOOPS) + " (default tokioloop)")
    p.add_argument("--workload", default="all",
                   help="comma-separated: " + ",".join(WORKLOADS) + ", or all (default)")
    p.add_argument("--trials", type=int, default=100,
                   help="in-process trials per loop and workload (default 100)")
    p.add_argument("--fresh", type=int, default=None,
                   help="fresh-process trials per loop and workload (default trials/10)")
    p.add_argument("--sessions", type=int, default=100,
                   help="Runner sessions per in-process child (default 100)")
    p.add_argument("--max-delay", type=float, default=0.1,
                   help="in-process: SIGINT at U(0, this) s after READY (default 0.1)")
    p.add_argument("--deadline", type=float, default=1.0,
                   help="miss if the Runner is not left this many s (+ the longest callback) "
                        "after SIGINT (default 1.0)")
    p.add_argument("--load", type=int, default=2, help="busy processes (default 2)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--certdir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    args.loops = [x for x in args.loop.split(",") if x]
    args.workloads = list(WORKLOADS) if args.workload == "all" else args.workload.split(",")
    for x in args.loops:
        if x not in LOOPS:
            p.error(f"unknown loop {x!r}")
    for x in args.workloads:
        if x not in WORKLOADS:
            p.error(f"unknown workload {x!r}")
    if args.fresh is None:
        args.fresh = max(1, args.trials // 10)
    return args


def main(argv=None):
    args = parse(argv)
    if args.child:
        child_main(args)
        return 0
    if sys.version_info < (3, 11):
        print("ctrlc: asyncio.Runner(loop_factory=...) needs Python 3.11+", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"ctrlc: seed {seed}, load {args.load}, loops {args.loops}, workloads "
          f"{args.workloads}, {args.trials} in-process + {args.fresh} fresh trials each",
          flush=True)
    bad = 0
    with tempfile.TemporaryDirectory() as certdir, CpuLoad(args.load):
        make_cert(certdir)
        for workload in args.workloads:
            for loop in args.loops:
                tally = run_trials(loop, workload, args.trials, args.fresh,
                                   sessions=args.sessions, max_delay=args.max_delay,
                                   deadline=args.deadline, seed=seed, certdir=certdir,
                                   log=lambda s: print(s, flush=True))
                print(tally.figure(), flush=True)
                for shape, reason, detail in tally.misses[:5]:
                    print(f"  {shape}: {reason}: {detail[:300]}", flush=True)
                bad += bool(tally.misses)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
