"""tokioloop-only: the package's own entry points and its not-yet-built methods.

Every test here is marked ``tokioloop_only``: these are tokioloop's API, with no stdlib loop
to compare against (the stdlib counterparts are exercised on both loops elsewhere).
"""

import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import warnings

import pytest
from _stdlib import requires_runner

from conftest import child_env, import_tokioloop, tokioloop_only


@pytest.fixture
def tokioloop_mod(loop_kind):
    assert loop_kind == "tokioloop"
    return import_tokioloop()


@tokioloop_only
def test_loop_class(tokioloop_mod):
    lp = tokioloop_mod.new_event_loop()
    try:
        assert isinstance(lp, tokioloop_mod.Loop)
        assert isinstance(lp, asyncio.AbstractEventLoop)
        counts = lp._debug_counts()
        assert {k: counts[k] for k in ("ready", "timers", "readers", "writers")} == {
            "ready": 0, "timers": 0, "readers": 0, "writers": 0}
    finally:
        lp.close()


@tokioloop_only
def test_run_returns_value_and_closes(tokioloop_mod):
    seen = {}

    async def main(x):
        lp = asyncio.get_running_loop()
        seen["loop"] = lp
        seen["debug"] = lp.get_debug()
        await asyncio.sleep(0)
        return x + 1

    assert tokioloop_mod.run(main(41)) == 42
    assert isinstance(seen["loop"], tokioloop_mod.Loop)
    assert seen["loop"].is_closed()
    assert seen["debug"] is False


@tokioloop_only
def test_run_debug(tokioloop_mod):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert tokioloop_mod.run(main(), debug=True) is True


@tokioloop_only
def test_run_propagates_exception(tokioloop_mod):
    async def main():
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        tokioloop_mod.run(main())


@tokioloop_only
def test_run_refused_inside_running_loop(tokioloop_mod):
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError):
                tokioloop_mod.run(coro)
        finally:
            coro.close()
        return "ok"

    # Like asyncio.run, refuse up front: no loop made, no coroutine left un-awaited.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tokioloop_mod.run(main()) == "ok"
        gc.collect()
    assert not [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


@requires_runner
@tokioloop_only
def test_runner_with_tokioloop_factory(tokioloop_mod):
    async def main():
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=tokioloop_mod.new_event_loop) as runner:
        assert issubclass(runner.run(main()), tokioloop_mod.Loop)
        lp = runner.get_loop()
    assert lp.is_closed()


@tokioloop_only
def test_policy_makes_tokioloop_loops(tokioloop_mod):
    saved = asyncio.get_event_loop_policy()
    try:
        asyncio.set_event_loop_policy(tokioloop_mod.EventLoopPolicy())
        lp = asyncio.new_event_loop()
        try:
            assert isinstance(lp, tokioloop_mod.Loop)
        finally:
            lp.close()

        async def main():
            return asyncio.get_running_loop()

        ran_on = asyncio.run(main())
        assert isinstance(ran_on, tokioloop_mod.Loop)
    finally:
        asyncio.set_event_loop_policy(saved)
    lp = asyncio.new_event_loop()
    try:
        assert not isinstance(lp, tokioloop_mod.Loop)
    finally:
        lp.close()


@tokioloop_only
def test_install(tokioloop_mod):
    saved = asyncio.get_event_loop_policy()
    try:
        tokioloop_mod.install()
        assert isinstance(asyncio.get_event_loop_policy(), tokioloop_mod.EventLoopPolicy)
        lp = asyncio.new_event_loop()
        try:
            assert isinstance(lp, tokioloop_mod.Loop)
        finally:
            lp.close()
    finally:
        asyncio.set_event_loop_policy(saved)


SCRIPT = r'''
import asyncio, json, sys, warnings

async def main():
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    fresh = asyncio.new_event_loop()
    fresh_module = type(fresh).__module__
    fresh.close()

print(json.dumps({
    "argv": sys.argv,
    "name": __name__,
    "run_module": asyncio.run(main()),
    "new_event_loop_module": fresh_module,
}))
'''


@tokioloop_only
@pytest.mark.timeout(60)
def test_python_m_tokioloop(tokioloop_mod, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "tokioloop", str(script), "a", "b"],
        capture_output=True, text=True, timeout=30, env=child_env(), cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["argv"] == [str(script), "a", "b"]
    assert data["name"] == "__main__"
    assert data["run_module"].startswith("tokioloop")
    assert data["new_event_loop_module"].startswith("tokioloop")


@tokioloop_only
@pytest.mark.timeout(60)
def test_python_m_tokioloop_script_exit_code(tokioloop_mod, tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import sys\nsys.exit(3)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tokioloop", str(script)],
        capture_output=True, text=True, timeout=30, env=child_env(),
    )
    assert proc.returncode == 3, proc.stderr


# Methods of AbstractEventLoop that tokioloop may not have built yet. Each entry makes the
# arguments for one call; a method the loop does implement is skipped (never half-tested).

NETWORK_METHODS = [
    "getaddrinfo", "getnameinfo", "create_connection", "create_server", "sendfile",
    "start_tls", "create_unix_connection", "create_unix_server", "connect_accepted_socket",
    "create_datagram_endpoint", "connect_read_pipe", "connect_write_pipe", "subprocess_shell",
    "subprocess_exec", "sock_recv", "sock_recv_into", "sock_recvfrom", "sock_recvfrom_into",
    "sock_sendall", "sock_sendto", "sock_connect", "sock_accept", "sock_sendfile",
]


class _Resources:
    """Sockets, pipes and files for the calls, all closed afterwards."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self._closers = []

    def keep(self, obj, closer=None):
        self._closers.append(closer or obj.close)
        return obj

    def stream_pair(self, data=b""):
        a, b = socket.socketpair()
        self.keep(a)
        self.keep(b)
        a.setblocking(False)
        b.setblocking(False)
        if data:
            b.send(data)
        return a, b

    def dgram_pair(self, data=b""):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.keep(a)
        self.keep(b)
        a.setblocking(False)
        b.setblocking(False)
        if data:
            b.send(data)
        return a, b

    def listener(self):
        srv = self.keep(socket.socket())
        srv.bind(("127.0.0.1", 0))
        srv.listen(5)
        srv.setblocking(False)
        return srv

    def close(self):
        for closer in reversed(self._closers):
            try:
                closer()
            except OSError:
                pass


def _call_args(name, res):
    proto = asyncio.Protocol
    if name == "getaddrinfo":
        return ("127.0.0.1", 80), {"type": socket.SOCK_STREAM}
    if name == "getnameinfo":
        return (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV), {}
    if name == "create_connection":
        srv = res.listener()
        return (proto,) + srv.getsockname(), {}
    if name == "create_server":
        return (proto, "127.0.0.1", 0), {}
    if name in ("sendfile", "start_tls"):
        return (object(), object()), {}
    if name == "create_unix_connection":
        return (proto, str(res.tmp_path / "missing.sock")), {}
    if name == "create_unix_server":
        return (proto, str(res.tmp_path / "server.sock")), {}
    if name == "connect_accepted_socket":
        a, _ = res.stream_pair()
        return (proto, a), {}
    if name == "create_datagram_endpoint":
        return (asyncio.DatagramProtocol,), {"local_addr": ("127.0.0.1", 0)}
    if name in ("connect_read_pipe", "connect_write_pipe"):
        r, w = os.pipe()
        rf = res.keep(os.fdopen(r, "rb", buffering=0))
        wf = res.keep(os.fdopen(w, "wb", buffering=0))
        return (proto, rf if name == "connect_read_pipe" else wf), {}
    if name == "subprocess_shell":
        return (asyncio.SubprocessProtocol, "exit 0"), {}
    if name == "subprocess_exec":
        return (asyncio.SubprocessProtocol, sys.executable, "-c", "pass"), {}
    if name == "sock_recv":
        a, _ = res.stream_pair(b"data")
        return (a, 10), {}
    if name == "sock_recv_into":
        a, _ = res.stream_pair(b"data")
        return (a, bytearray(10)), {}
    if name == "sock_recvfrom":
        a, _ = res.dgram_pair(b"data")
        return (a, 10), {}
    if name == "sock_recvfrom_into":
        a, _ = res.dgram_pair(b"data")
        return (a, bytearray(10)), {}
    if name == "sock_sendall":
        a, _ = res.stream_pair()
        return (a, b"x"), {}
    if name == "sock_sendto":
        sock = res.keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sock.setblocking(False)
        target = res.keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        target.bind(("127.0.0.1", 0))
        return (sock, b"x", target.getsockname()), {}
    if name == "sock_connect":
        srv = res.listener()
        sock = res.keep(socket.socket())
        sock.setblocking(False)
        return (sock, srv.getsockname()), {}
    if name == "sock_accept":
        srv = res.listener()
        client = res.keep(socket.socket())
        client.connect(srv.getsockname())
        return (srv,), {}
    if name == "sock_sendfile":
        path = res.tmp_path / "payload.bin"
        path.write_bytes(b"payload")
        f = res.keep(open(path, "rb"))
        a, _ = res.stream_pair()
        return (a, f), {}
    raise AssertionError(name)


def _dispose(result, res):
    """Close whatever an implemented method handed back."""
    items = result if isinstance(result, tuple) else (result,)
    for item in items:
        if isinstance(item, socket.socket):
            res.keep(item)
        elif hasattr(item, "close") and callable(item.close):
            try:
                item.close()
            except Exception:
                pass


@tokioloop_only
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", NETWORK_METHODS)
def test_unbuilt_method_raises_not_implemented(loop, tmp_path, name):
    res = _Resources(tmp_path)
    try:
        args, kwargs = _call_args(name, res)

        async def call():
            result = getattr(loop, name)(*args, **kwargs)
            if asyncio.iscoroutine(result) or asyncio.isfuture(result):
                result = await asyncio.wait_for(result, 10)
            return result

        try:
            result = loop.run_until_complete(call())
        except NotImplementedError as exc:
            assert name in str(exc), f"message does not name the method: {exc!r}"
            return
        except BaseException as exc:  # implemented, failing on our placeholder arguments
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            pytest.skip(f"loop.{name} is implemented (raised {type(exc).__name__})")
        _dispose(result, res)
        loop.run_until_complete(asyncio.sleep(0.01))
        pytest.skip(f"loop.{name} is implemented")
    finally:
        res.close()
