"""Syscall faults (issue 20 item 4, research 2c): EINTR injected into the loop's system calls, and
signals delivered during them, with strace. The workload's unfaulted run is the oracle.

Contract
--------
A child process (this file with ``--child LOOP``) runs one workload on one loop, ``ROUNDS``
times: a TCP echo (``start_server`` + 4 ``open_connection`` clients each sending 128 KiB of
seeded random bytes in uneven chunks, ``write_eof``, reading the echo to EOF, digests compared),
subprocesses (a Python child reversing 64 KiB of stdin; one exiting with status 3; one whose
stdout is read line by line), DNS (``getaddrinfo('localhost')`` and a numeric one), timers (five
``call_later`` of different delays: their order) and a ``sock_connect``/``sock_accept``/
``sock_sendall``/``sock_recv`` pair. It prints one JSON report: every result, every exception
the application saw (with its errno), every exception handler call, and, with ``--signals``, the
number of SIGUSR1 handler runs.

The parent runs the child once unfaulted (the oracle), then once per syscall group of ``GROUPS``
under ``strace -f -qq -b execve -p PID -e trace=GROUP -e inject=GROUP:error=EINTR:when=W``
(``W`` = ``2+7`` in CI). strace attaches after the child's start-up (the dynamic loader does
not retry EINTR, CPython and the loop must) and detaches from the workload's own subprocesses at
their ``execve``; the child waits until every one of its threads is traced before it starts.
PEP 475: an EINTR is invisible, so the faulted report must equal the unfaulted one; an EINTR
(``InterruptedError``, errno 4) reaching the application, ``connection_lost`` or the exception
handler is a defect, and so is a crash or a hang (``CHILD_TIMEOUT``). EAGAIN is never injected:
the reactor is edge-triggered, and a spurious EAGAIN is a fault the kernel never makes.

Signals (``--signals``): the same groups with ``inject=GROUP:signal=SIGUSR1`` (the call runs, then
SIGUSR1 arrives), with ``loop.add_signal_handler(SIGUSR1, counter)`` installed and a thread
``pthread_kill``-ing the main thread at ~1 kHz while the workload runs: no EINTR surfaces, the
data is intact (the report equals the unfaulted one), and the handler ran.

A group counts as *injected* when strace's log shows at least one fault delivered (an
``(INJECTED)`` return or a ``SI_KERNEL`` SIGUSR1). connect() under an injected EINTR is a special
case: strace does not run the call at all, where a real EINTR leaves the connection proceeding,
so the report is compared to the stdlib loop's under the same injection, not to the unfaulted
run (see ``ORACLE_IS_STDLIB``): both loops then see one client's connection fail with ENOTCONN
(the kernel never returns EINTR from a non-blocking connect). glibc's /etc/hosts reader does not
retry EINTR either (``GLIBC_HOSTS_EINTR``), and the stdlib's child watcher waits in one thread
per child (``FIRST_CALL``).

One-call reproducers (``--repro``, ``run_repro``): a single injected EINTR on one chosen call
(a write-pipe transport's write(), call_soon_threadsafe's wake-up, sock_sendall's send(),
sock_recv's recv()), for the wrapper's plain regression tests.

Figure::

    reliability figure: faults-sys tokioloop: N/M syscall groups injected (EINTR), N/M with
    SIGUSR1 (H handler runs), R faulted runs, F failed (groups left out as known defects)

Usage::

    python tests/reliability/faults_sys.py --help
    # CI form (what test_faults_sys.py runs), both loops:
    python tests/reliability/faults_sys.py --loop asyncio,tokioloop
    # long form: a when= sweep, signals too
    python tests/reliability/faults_sys.py --loop asyncio,tokioloop --signals \\
        --when 1+2,2+3,2+7,5+11,13+17

Exit status 0 when every run matched its oracle, 1 otherwise. Only 127.0.0.1 is used.
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ADDR = "127.0.0.1"
ROUNDS = 1  # with --signals, more: rounds go on while the killer thread runs
CHILD_TIMEOUT = 20.0  # a workload run takes ~1 s, under strace too
ECHO_CLIENTS = 4
ECHO_BYTES = 128 * 1024

# Syscall groups: what the loops (CPython's and tokioloop's native I/O through glibc) call.
GROUPS = {
    "epoll_wait": "epoll_wait,epoll_pwait,epoll_pwait2",
    "recvfrom/read": "recvfrom,recvmsg,read",
    "sendto/write/writev": "sendto,sendmsg,write,writev",
    "accept4": "accept4,accept",
    "connect": "connect",
    "wait4/waitid": "wait4,waitid",
}
# Groups whose calls come once per thread (the stdlib's child watcher waits for each child in a
# thread of its own), where strace's per-thread count never reaches 2: their faults start at the
# first call (``A+B`` becomes ``1+B``).
FIRST_CALL = {"wait4/waitid"}
# A SIGUSR1 makes the loop write its wake-up fd and read it back: with signal injection on
# these groups at nearly every call, each signal causes the next one (a storm that livelocks any
# loop, asyncio's first). Such sweeps are not run.
SELF_FEEDING = {"recvfrom/read", "sendto/write/writev"}


def _step(when):
    """The period of a strace when= expression (``A+B`` -> B; ``A`` -> a large number)."""
    parts = when.split("+")
    return int(parts[1]) if len(parts) > 1 and parts[1] else (1 << 30 if len(parts) == 1 else 1)


# Groups where strace's injection is not what the kernel does (the call is skipped instead of
# interrupted), so the stdlib loop under the same injection is the oracle instead.
ORACLE_IS_STDLIB = {"connect"}
# glibc's files backend (/etc/hosts) does not retry a read() that failed with EINTR: getaddrinfo
# then says EAI_NONAME, whichever loop called it (checked on both, same answer); accepted for
# the ``localhost`` lookup under the read group only. The numeric lookup must still succeed.
GLIBC_HOSTS_EINTR = ["gaierror", socket.EAI_NONAME]


def loop_factory(kind):
    if kind == "asyncio":
        return asyncio.new_event_loop
    if kind == "tokioloop":
        import tokioloop
        return tokioloop.new_event_loop
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    raise ValueError(kind)


def describe(exc):
    """An exception as the report holds it: class and errno (never the message's text)."""
    return [type(exc).__name__, getattr(exc, "errno", None)]


# -- the child ------------------------------------------------------------------------------------


REVERSE = "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1])"
LINES = "import sys\nfor i in range(50): print('line', i, flush=True)"


async def workload(seen):
    loop = asyncio.get_running_loop()
    report = {}

    order = []
    for i, delay in enumerate((0.04, 0.01, 0.03, 0.0, 0.06)):
        loop.call_later(delay, order.append, i)

    async def handle(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
        except Exception as exc:
            seen.append(["server"] + describe(exc))

    server = await asyncio.start_server(handle, ADDR, 0)
    port = server.sockets[0].getsockname()[1]

    async def client(i):
        rng = random.Random(i)
        payload = rng.randbytes(ECHO_BYTES)
        reader, writer = await asyncio.open_connection(ADDR, port)

        async def send():
            pos = 0
            while pos < len(payload):
                step = rng.randrange(1, 32768)
                writer.write(payload[pos:pos + step])
                pos += step
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        try:
            got = await reader.read(-1)
        finally:
            if not sender.done():
                sender.cancel()
            # the sender's own error (if any) is the same fault: retrieve it, report the read's
            await asyncio.gather(sender, return_exceptions=True)
        await sender
        writer.close()
        await writer.wait_closed()
        return [len(got), hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()]

    results = await asyncio.gather(*(client(i) for i in range(ECHO_CLIENTS)),
                                   return_exceptions=True)
    report["echo"] = [describe(r) if isinstance(r, BaseException) else r for r in results]
    server.close()
    await server.wait_closed()

    procs = []
    try:
        blob = random.Random(7).randbytes(64 * 1024)
        p = await asyncio.create_subprocess_exec(sys.executable, "-c", REVERSE,
                                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await p.communicate(blob)
        procs.append(["reverse", p.returncode, out == blob[::-1]])
        p = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
        procs.append(["exit3", await p.wait()])
        p = await asyncio.create_subprocess_exec(sys.executable, "-c", LINES,
                                                 stdout=subprocess.PIPE)
        lines = [line async for line in p.stdout]
        procs.append(["lines", await p.wait(), len(lines), lines[-1].decode() if lines else ""])
    except Exception as exc:
        procs.append(describe(exc))
    report["subprocess"] = procs

    try:
        infos = await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
        report["dns"] = sorted({i[4][0] for i in infos})
    except Exception as exc:
        report["dns"] = describe(exc)
    try:
        numeric = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        report["dns_numeric"] = [i[4] for i in numeric]
    except Exception as exc:
        report["dns_numeric"] = describe(exc)

    try:
        with socket.socket() as lsock:
            lsock.bind((ADDR, 0))
            lsock.listen(1)
            lsock.setblocking(False)
            csock = socket.socket()
            csock.setblocking(False)
            with csock:
                accepting = asyncio.ensure_future(loop.sock_accept(lsock))
                await loop.sock_connect(csock, lsock.getsockname())
                conn, _ = await accepting
                with conn:
                    await loop.sock_sendall(csock, b"x" * 100000)
                    csock.shutdown(socket.SHUT_WR)
                    got = 0
                    while True:
                        data = await loop.sock_recv(conn, 65536)
                        if not data:
                            break
                        got += len(data)
        report["sock"] = got
    except Exception as exc:
        report["sock"] = describe(exc)

    await asyncio.sleep(0.08)
    report["timers"] = order
    return report


def traced():
    """True when every thread of this process has a tracer."""
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                status = f.read()
        except OSError:
            continue
        if re.search(r"^TracerPid:\s+0$", status, re.M):
            return False
    return True


def child_main(kind, wait_trace, signals):
    factory = loop_factory(kind)
    loop = factory()
    seen = []  # exceptions the application saw outside the workload's own records
    errors = []
    loop.set_exception_handler(
        lambda _l, ctx: errors.append([ctx.get("message", "")]
                                      + (describe(ctx["exception"]) if ctx.get("exception")
                                         else [])))
    count = [0]
    if signals:
        loop.add_signal_handler(signal.SIGUSR1, lambda: count.__setitem__(0, count[0] + 1))
    # The idna codec (getaddrinfo encodes str hosts with it) loads unicodedata through the
    # dynamic loader, which does not retry EINTR: load it before the trace.
    "localhost".encode("idna")
    # One round before tracing: warm imports, the executor and tokio's threads, so the trace
    # starts on a running loop (and the threads exist when strace attaches).
    loop.run_until_complete(asyncio.sleep(0))
    print("READY", flush=True)
    if wait_trace:
        deadline = time.monotonic() + 20
        while not traced():
            if time.monotonic() > deadline:
                print(json.dumps({"fatal": "never traced"}), flush=True)
                return 2
            time.sleep(0.01)
    stop = threading.Event()
    killer = None
    if signals:
        main_id = threading.main_thread().ident

        def kill():
            end = time.monotonic() + 1.0
            while not stop.is_set() and time.monotonic() < end:
                signal.pthread_kill(main_id, signal.SIGUSR1)
                time.sleep(0.001)

        killer = threading.Thread(target=kill, daemon=True)
        killer.start()
    reports = []
    try:
        # with --signals, rounds go on while the killer thread runs (its second), at most 10
        while len(reports) < ROUNDS or (killer is not None and killer.is_alive()
                                        and len(reports) < 10):
            try:
                reports.append(loop.run_until_complete(workload(seen)))
            except Exception as exc:
                reports.append({"raised": describe(exc)})
        if signals:
            stop.set()
            killer.join()
            loop.run_until_complete(asyncio.sleep(0.05))
            loop.remove_signal_handler(signal.SIGUSR1)
            # strace goes on injecting SIGUSR1 until the exit: its default action would kill
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    finally:
        loop.close()
    print(json.dumps({"reports": reports, "seen": seen, "errors": errors,
                      "signals": count[0]}), flush=True)
    return 0


# -- small reproducers (one fault, one call) ------------------------------------------------------


def wait_traced(timeout=20):
    deadline = time.monotonic() + timeout
    while not traced():
        if time.monotonic() > deadline:
            raise SystemExit("never traced")
        time.sleep(0.01)


def repro_child(kind, case):
    """Print READY, wait for strace, do the one call the injection hits, print the outcome.

    ``pipe-write``: two writes to a write-pipe transport; the parent fails the second
    ``write()`` with EINTR. Prints how many of the 200 bytes reached the pipe's reader within 2 s.
    ``wake``: a thread calls ``call_soon_threadsafe`` while the loop sleeps; the parent fails the
    wake-up's write with EINTR. Prints whether the callback ran and what run_until_complete raised.
    """
    loop = loop_factory(kind)()
    loop.run_until_complete(asyncio.sleep(0))
    if case == "pipe-write":
        r, w = os.pipe()
        os.set_blocking(r, False)
        transport, _ = loop.run_until_complete(
            loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb")))
        loop.run_until_complete(asyncio.sleep(0.01))
        print("READY", flush=True)
        wait_traced()
        transport.write(b"a" * 100)
        transport.write(b"b" * 100)  # this write() gets EINTR

        async def drain():
            got = b""
            deadline = loop.time() + 2
            while len(got) < 200 and loop.time() < deadline:
                await asyncio.sleep(0.01)
                try:
                    got += os.read(r, 1000)
                except BlockingIOError:
                    pass
            return got

        got = loop.run_until_complete(drain())
        result = {"received": len(got), "buffered": transport.get_write_buffer_size()}
        transport.close()
    elif case in ("sock-sendall", "sock-recv"):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        print("READY", flush=True)
        wait_traced()

        async def exchange():
            if case == "sock-sendall":  # its send() gets EINTR
                await asyncio.wait_for(loop.sock_sendall(a, b"s" * 1000), 2)
                return len(await asyncio.wait_for(loop.sock_recv(b, 4096), 2))
            b.send(b"r" * 1000)  # already queued when sock_recv's recv() gets EINTR
            return len(await asyncio.wait_for(loop.sock_recv(a, 4096), 2))

        try:
            result = {"received": loop.run_until_complete(exchange())}
        except BaseException as exc:
            result = {"raised": type(exc).__name__}
        a.close()
        b.close()
    else:
        print("READY", flush=True)
        wait_traced()
        ran = []

        def poke():
            time.sleep(0.2)
            loop.call_soon_threadsafe(ran.append, 1)

        thread = threading.Thread(target=poke)
        thread.start()
        try:
            loop.run_until_complete(asyncio.sleep(1.0))
            raised = None
        except BaseException as exc:  # PanicException is a BaseException
            raised = type(exc).__name__
        thread.join()
        result = {"ran": bool(ran), "raised": raised}
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    print(json.dumps(result), flush=True)
    return 0


def run_repro(kind, case, calls, when="1", timeout=30):
    """Run ``repro_child`` under ``strace -e inject=CALLS:error=EINTR:when=WHEN``; its JSON
    (with ``injected``: how many calls strace failed) and its stderr."""
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", kind,
                              "--repro", case], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = tempfile.NamedTemporaryFile("r", prefix="faults-sys-repro-", suffix=".strace")
    try:
        assert child.stdout.readline().strip() == b"READY"
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", log.name, "-e", f"trace={calls}",
             "-e", f"inject={calls}:error=EINTR:when={when}", "-p", str(child.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out, err = child.communicate(timeout=timeout)
        tracer.wait(10)
        injected = log.read().count("(INJECTED)")
    finally:
        log.close()
        if child.poll() is None:
            child.kill()
            child.communicate()
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    if result is not None:
        result["injected"] = injected
    return result, err.decode(errors="replace")


# -- the parent -----------------------------------------------------------------------------------


def strace_ok():
    """None when strace can trace here, else the reason it cannot."""
    if shutil.which("strace") is None:
        return "strace is not installed"
    try:
        proc = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "true"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"strace failed: {exc!r}"
    if proc.returncode != 0:
        return f"strace -f true failed (ptrace not permitted?): {proc.stderr.decode()[-300:]}"
    return None


class Run:
    def __init__(self, kind, group, fault, when):
        self.kind, self.group, self.fault, self.when = kind, group, fault, when
        self.result = None  # the child's JSON
        self.problems = []
        self.injected = 0
        self.stderr = ""


def run_child(kind, group=None, fault="eintr", when="2+7", timeout=CHILD_TIMEOUT):
    """Run the workload child of ``kind``, under strace for ``group`` when given."""
    run = Run(kind, group, fault, when)
    signals = fault == "signal"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind]
    if group:
        cmd.append("--wait-trace")
    if signals:
        cmd.append("--signals")
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    tracer = None
    with tempfile.NamedTemporaryFile("r", prefix="faults-sys-", suffix=".strace") as log:
        try:
            line = child.stdout.readline()
            if line.strip() != b"READY":
                run.problems.append(f"child did not start: {line!r}")
            elif group:
                calls = GROUPS[group]
                if group in FIRST_CALL and "+" in when:
                    when = "1+" + when.split("+", 1)[1]
                inject = (f"{calls}:error=EINTR:when={when}" if not signals
                          else f"{calls}:signal=SIGUSR1:when={when}")
                tracer = subprocess.Popen(
                    ["strace", "-f", "-qq", "-b", "execve", "-o", log.name,
                     "-e", f"trace={calls}", "-e", f"inject={inject}", "-p", str(child.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
            run.problems.append(f"hang: no report in {timeout:.0f} s")
        finally:
            if tracer is not None:
                try:
                    tracer.wait(10)
                except subprocess.TimeoutExpired:
                    tracer.kill()
                    tracer.wait()
        if tracer is not None:
            text = log.read()
            run.injected = (text.count("(INJECTED)") if not signals
                            else len(re.findall(r"SIGUSR1 \{si_signo=SIGUSR1, si_code=SI_KERNEL",
                                                text)))
    run.stderr = err.decode(errors="replace")
    if child.returncode not in (0, None):
        run.problems.append(f"child exit status {child.returncode}")
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
    if lines:
        run.result = json.loads(lines[-1])
    elif not run.problems:
        run.problems.append("no report")
    for marker in ("Traceback", "Fatal Python error", "panicked", "PanicException",
                   "Interrupted system call", "InterruptedError"):
        if marker in run.stderr:
            run.problems.append(f"stderr shows {marker!r}: {run.stderr[-1500:]}")
            break
    return run


def surfaced(result):
    """EINTRs that reached the application or the exception handler."""
    hits = []

    def walk(node, path):
        if isinstance(node, list):
            if len(node) >= 2 and node[0] == "InterruptedError" or (
                    len(node) >= 2 and isinstance(node[0], str) and node[1] == 4):
                hits.append(path)
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
        elif isinstance(node, dict):
            for key, item in node.items():
                walk(item, f"{path}.{key}")

    walk(result, "")
    return hits


def judge(run, oracle):
    """Problems of ``run`` against the report ``oracle`` (a child JSON)."""
    problems = list(run.problems)
    res = run.result
    if res is None:
        return problems
    if "fatal" in res:
        return problems + [res["fatal"]]
    hits = surfaced(res)
    if hits:
        problems.append(f"EINTR surfaced at {hits}")
    if res["errors"]:
        problems.append(f"exception handler called: {res['errors'][:3]}")
    if res["seen"] != oracle["seen"]:
        problems.append(f"application saw {res['seen'][:3]}, oracle {oracle['seen'][:3]}")
    want = oracle["reports"][0]  # every round of the unfaulted run is the same
    for i, got in enumerate(res["reports"]):
        got = dict(got)
        if run.group == "recvfrom/read" and got.get("dns") == GLIBC_HOSTS_EINTR:
            got["dns"] = want.get("dns")  # glibc's, on every loop (see GLIBC_HOSTS_EINTR)
        if run.group in ORACLE_IS_STDLIB and "echo" in got and "echo" in want:
            # which client's connect() the injection hit depends on the loop's call order
            got["echo"] = sorted(got["echo"], key=repr)
            want = dict(want, echo=sorted(want["echo"], key=repr))
        if got != want:
            diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
                    if got.get(k) != want.get(k)}
            problems.append(f"round {i} differs from the oracle: {diff}")
    if run.fault == "signal" and res["signals"] == 0:
        problems.append("the SIGUSR1 handler never ran")
    return problems


class Tally:
    def __init__(self, kind):
        self.kind = kind
        self.runs = 0
        self.groups = {}  # (fault, group) -> injected any
        self.failures = []  # (fault, group, when, problems)
        self.signals = 0
        self.notes = []

    def figure(self):
        def part(fault):
            keys = [k for k in self.groups if k[0] == fault]
            hit = sum(1 for k in keys if self.groups[k])
            return hit, len(keys)
        eintr = part("eintr")
        sig = part("signal")
        text = (f"reliability figure: faults-sys {self.kind}: {eintr[0]}/{eintr[1]} syscall "
                f"groups injected (EINTR)")
        if sig[1]:
            text += f", {sig[0]}/{sig[1]} with SIGUSR1 ({self.signals} handler runs)"
        text += f", {self.runs} faulted runs, {len(self.failures)} failed"
        if self.notes:
            text += " (" + "; ".join(self.notes) + ")"
        return text


def campaign(kinds, whens, signals, groups=None, log=print, skip=(), timeout=CHILD_TIMEOUT):
    """Run every group x when (x fault) for each loop; returns {kind: Tally}. ``skip`` holds
    (kind, fault, group) triples left out (a known defect run on its own)."""
    groups = list(groups or GROUPS)
    faults = ["eintr"] + (["signal"] if signals else [])
    tallies = {}
    baselines = {}
    for kind in kinds:
        t = tallies[kind] = Tally(kind)
        base = run_child(kind)
        problems = judge(base, base.result) if base.result else base.problems
        if problems:
            raise AssertionError(f"unfaulted {kind} run failed: {problems}\n{base.stderr[-2000:]}")
        baselines[kind] = base.result
    faulted = {}
    for kind in kinds:
        t = tallies[kind]
        for fault in faults:
            for group in groups:
                if (kind, fault, group) in skip:
                    t.notes.append(f"{fault} {group} left out (known defect)")
                    continue
                for when in whens:
                    if fault == "signal" and group in SELF_FEEDING and _step(when) < 3:
                        t.notes.append(f"signal {group} when={when} not run (feeds itself)")
                        continue
                    run = run_child(kind, group, fault, when, timeout=timeout)
                    faulted[(kind, fault, group, when)] = run
                    t.runs += 1
                    t.groups[(fault, group)] = t.groups.get((fault, group), False) or bool(
                        run.injected)
                    if run.result and fault == "signal":
                        t.signals += run.result.get("signals", 0)
                    oracle = baselines[kind]
                    if group in ORACLE_IS_STDLIB and fault == "eintr":
                        stdlib = faulted.get(("asyncio", fault, group, when))
                        if stdlib is None:
                            stdlib = run_child("asyncio", group, fault, when, timeout=timeout)
                        if stdlib is run:  # the stdlib loop itself: its own oracle
                            problems = [p for p in run.problems if not p.startswith("hang")
                                        and not p.startswith("child exit status -9")]
                            if run.result:
                                problems += judge(run, run.result)
                            if len(problems) < len(run.problems):
                                t.notes.append(f"stdlib hangs under {fault} {group} "
                                               f"when={when} (strace skips the call)")
                        elif stdlib.result is None:
                            # the stdlib had no report (it hung): the same outcome is no defect
                            same = [p.split(":")[0] for p in run.problems] == [
                                p.split(":")[0] for p in stdlib.problems]
                            problems = [] if same else run.problems + [
                                f"the stdlib under the same injection: {stdlib.problems}"]
                            if same and run.problems:
                                t.notes.append(f"hangs as the stdlib does under {fault} "
                                               f"{group} when={when}")
                        else:
                            problems = judge(run, stdlib.result)
                    else:
                        problems = judge(run, oracle)
                    log(f"faults-sys {kind} {fault} {group} when={when}: "
                        f"{run.injected} injected, "
                        + ("ok" if not problems else "FAIL: " + "; ".join(problems)[:2000]))
                    if problems:
                        t.failures.append((fault, group, when, problems))
    return tallies


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loop", default="asyncio,tokioloop", help="loops, comma-separated")
    ap.add_argument("--when", default="2+7",
                    help="strace when= expressions, comma-separated (never 1+1: failing every "
                         "call livelocks any retry loop, as the kernel never does)")
    ap.add_argument("--signals", action="store_true", help="also inject SIGUSR1")
    ap.add_argument("--group", default="",
                    help=f"groups, ';'-separated (default all): {'; '.join(GROUPS)}")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--wait-trace", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repro", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child and args.repro:
        return repro_child(args.child, args.repro)
    if args.child:
        return child_main(args.child, args.wait_trace, args.signals)
    reason = strace_ok()
    if reason:
        print(f"faults-sys: skipped: {reason}")
        return 0
    groups = [g for g in args.group.split(";") if g] or None
    tallies = campaign([k for k in args.loop.split(",") if k], args.when.split(","),
                       args.signals, groups)
    for t in tallies.values():
        print(t.figure())
    return 1 if any(t.failures for t in tallies.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
