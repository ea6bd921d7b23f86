"""3.14's task introspection sees through the loop as it does through asyncio's own.

``asyncio.capture_call_graph()`` / ``format_call_graph()`` / ``print_call_graph()`` walk a
task's coroutine chain down to what it awaits, and ``python -m asyncio ps|pstree PID`` reads
the same from another process. A task suspended inside a loop method (``sock_recv``, a TLS
handshake, ``getaddrinfo``, a subprocess wait, ``run_in_executor``) must show the same graph on
both loops. The loops' own frames below the public method differ (they are each loop's
implementation: ``BaseEventLoop._connect_sock`` here, ``NetSupport._net_connect_one`` there),
so a run of loop-internal frames is compared as one entry, named by the method the caller
awaited; every other frame (the test's, ``asyncio.streams``', ``asyncio.subprocess``') is
compared as it is.
"""

import asyncio
import io
import os
import re
import socket
import ssl
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import child_env, import_tokioloop

pytestmark = pytest.mark.skipif(
    not hasattr(asyncio, "capture_call_graph"), reason="this Python's asyncio has no call graphs (3.14+)"
)

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)
# Where asyncio's loop implementation lives (what tokioloop replaces); the rest of asyncio
# (streams, subprocess, tasks, base_subprocess) runs on both loops.
_STDLIB_LOOP_FILES = {
    os.path.join(_ASYNCIO_DIR, name)
    for name in ("base_events.py", "selector_events.py", "unix_events.py", "sslproto.py")
}


def _loop_internal(filename):
    if filename in _STDLIB_LOOP_FILES:
        return True
    package = os.path.dirname(import_tokioloop().__file__)
    return os.path.dirname(filename) == package


def shape(task):
    """The task's call stack, innermost first: ``("loop", method)`` for a run of loop frames
    (the outermost one's name), else the frame's qualified name."""
    graph = asyncio.capture_call_graph(task)
    entries = []
    for entry in graph.call_stack:
        code = entry.frame.f_code
        if _loop_internal(code.co_filename):
            if entries and entries[-1][0] == "loop":
                entries[-1] = ("loop", code.co_name)
            else:
                entries.append(("loop", code.co_name))
        else:
            entries.append(code.co_qualname)
    return entries


def awaiters(task):
    graph = asyncio.capture_call_graph(task)
    return [entry.future.get_name() for entry in graph.awaited_by]


async def until(predicate):
    """Yield to the loop until ``predicate()`` holds (bounded, so a broken case fails)."""
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never reached")


def test_sock_recv(loop, sockets):
    a, b = sockets(*socket.socketpair())
    a.setblocking(False)

    async def reader():
        return await loop.sock_recv(a, 10)

    async def main():
        task = asyncio.create_task(reader(), name="reader")
        await asyncio.sleep(0)
        found = shape(task)
        text = io.StringIO()
        asyncio.print_call_graph(task, file=text)
        b.send(b"x")
        await task
        return found, text.getvalue()

    found, printed = loop.run_until_complete(main())
    assert found == [("loop", "sock_recv"), "test_sock_recv.<locals>.reader"]
    assert printed.splitlines()[0].startswith("* Task(name='reader', id=0x")
    assert "in async test_sock_recv.<locals>.reader()" in printed
    assert re.search(r"in async \w+\.sock_recv\(\)", printed)


def test_awaited_by_chain(loop, sockets):
    a, b = sockets(*socket.socketpair())
    a.setblocking(False)

    async def reader():
        return await loop.sock_recv(a, 10)

    async def parent():
        return await asyncio.create_task(reader(), name="child")

    async def main():
        outer = asyncio.create_task(parent(), name="parent")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        child = next(t for t in asyncio.all_tasks() if t.get_name() == "child")
        found = (shape(child), awaiters(child), shape(outer))
        b.send(b"x")
        await outer
        return found

    child_shape, child_awaiters, parent_shape = loop.run_until_complete(main())
    assert child_shape == [("loop", "sock_recv"), "test_awaited_by_chain.<locals>.reader"]
    assert child_awaiters == ["parent"]
    assert parent_shape == ["test_awaited_by_chain.<locals>.parent"]


def test_tls_handshake(loop, sockets):
    # A listener nobody accepts: the kernel completes the TCP connect, the ClientHello sits in
    # the backlog and no answer ever comes, so the client waits in its handshake.
    listener = sockets(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    async def client():
        await asyncio.open_connection(*listener.getsockname(), ssl=ctx)

    def hello_sent():
        listener.setblocking(False)
        try:
            peer, _ = listener.accept()
        except BlockingIOError:
            return False
        sockets(peer)
        peer.settimeout(10)
        return bool(peer.recv(1, socket.MSG_PEEK))

    async def main():
        task = asyncio.create_task(client())
        await until(hello_sent)
        found = shape(task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return found

    found = loop.run_until_complete(main())
    assert found == [("loop", "create_connection"), "open_connection",
                     "test_tls_handshake.<locals>.client"]


def test_getaddrinfo(loop):
    async def lookup():
        return await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)

    async def main():
        # Usually the task's first step has run up to its wait for the answer when we look
        # (an answer only queues its wake-up); under load the stdlib's answer has been seen
        # finished, so a lookup caught done is tried again.
        for _ in range(50):
            task = asyncio.create_task(lookup())
            await asyncio.sleep(0)
            found = None if task.done() else shape(task)
            await task
            if found:
                return found
        raise AssertionError("every lookup was over before it could be looked at")

    assert loop.run_until_complete(main()) == [("loop", "getaddrinfo"), "test_getaddrinfo.<locals>.lookup"]


def test_subprocess_wait(loop):
    waiting = []

    async def run_child():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdin.read()", stdin=subprocess.PIPE)
        waiting.append(proc)
        return await proc.wait()

    async def main():
        task = asyncio.create_task(run_child())
        await until(lambda: waiting)
        found = shape(task)
        waiting[0].stdin.close()
        assert await task == 0
        return found

    found = loop.run_until_complete(main())
    # Both loops' process transports are asyncio's BaseSubprocessTransport.
    assert found == ["BaseSubprocessTransport._wait", "Process.wait",
                     "test_subprocess_wait.<locals>.run_child"]


def test_run_in_executor(loop):
    release = threading.Event()

    async def offload():
        return await loop.run_in_executor(None, release.wait, 10)

    async def main():
        task = asyncio.create_task(offload())
        await asyncio.sleep(0)
        found = shape(task)
        release.set()
        assert await task is True
        return found

    assert loop.run_until_complete(main()) == ["test_run_in_executor.<locals>.offload"]


# -- python -m asyncio ps / pstree PID ------------------------------------------------------

PROGRAM = textwrap.dedent('''
    import asyncio, socket, sys

    async def reader(sock):
        await asyncio.get_running_loop().sock_recv(sock, 10)

    async def worker(sock):
        await asyncio.create_task(reader(sock), name="reader")

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        async with asyncio.TaskGroup() as group:
            group.create_task(worker(a), name="worker")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            b.send(b"x")
        a.close()
        b.close()

    if sys.argv[1] == "tokioloop":
        import tokioloop
        factory = tokioloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    asyncio.run(main(), loop_factory=factory)
''')


def _loop_frames(text):
    """Loop-internal names in ps/pstree output, reduced to the method name."""
    return re.sub(r"\b(?:\w+\.)?(sock_recv)\b", r"LOOP.\1", text)


@pytest.fixture
def target(loop_kind, tmp_path):
    """A running program whose tasks wait in the loop under test; stopped at teardown."""
    script = tmp_path / "target.py"
    script.write_text(PROGRAM)
    proc = subprocess.Popen([sys.executable, str(script), loop_kind], env=child_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.communicate("\n", timeout=30)
    assert proc.returncode == 0


def _asyncio_tool(command, pid):
    result = subprocess.run([sys.executable, "-m", "asyncio", command, str(pid)],
                            env=child_env(), capture_output=True, text=True, timeout=60)
    refused = re.search(r"[Pp]ermission|ptrace|Operation not permitted", result.stderr + result.stdout)
    if result.returncode != 0 and refused:
        pytest.skip(f"the kernel refuses to let python -m asyncio {command} read the process: "
                    f"{result.stderr.strip() or result.stdout.strip()}")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_asyncio_ps(loop_kind, target):
    rows = _asyncio_tool("ps", target.pid).splitlines()
    table = {}
    for row in rows[2:]:
        cells = re.split(r"\s{2,}", row.strip())
        # tid, task id, name, coroutine stack, [awaiter chain, awaiter name], awaiter id
        table[cells[2]] = [_loop_frames(c) for c in cells[3:-1]]
    assert table == {
        "Task-1": ["main"],
        "worker": ["worker", "main", "Task-1"],
        "reader": ["LOOP.sock_recv -> reader", "worker", "worker"],
    }


def test_asyncio_pstree(loop_kind, target):
    text = _asyncio_tool("pstree", target.pid)
    lines = [re.sub(r"\s+\S+:\d+$", "", _loop_frames(line)).rstrip() for line in text.splitlines()]
    assert lines == [
        "└── (T) Task-1",
        "    └──  main",
        "        └── (T) worker",
        "            └──  worker",
        "                └── (T) reader",
        "                    └──  reader",
        "                        └──  LOOP.sock_recv",
    ]
