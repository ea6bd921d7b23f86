"""Memory-safety smoke (issue 20 item 6): one script that drives every native path of the loop
once, small and deterministic, so a memory checker (valgrind memcheck, ASAN) sees each piece of
Rust and each pyo3 seam at least once at a cost of a few seconds of native time.

Contract: ``run(kind)`` runs each step of ``STEPS`` in order on one fresh loop of ``kind``
("tokioloop", or "asyncio", the oracle that proves the script itself is right), each step
asserting its own outcome; then it closes the loop and returns the names of the steps run. Any
failure raises. Traffic stays on 127.0.0.1 and Unix sockets in a temporary directory; every
wait is bounded by ``TIMEOUT`` (generous: valgrind runs this 20-50 times slower). Child processes
are the running interpreter with ``-c`` (valgrind does not follow them: ``--trace-children`` is
off) and ``/bin/sh``. TLS uses the project's test certificates (``tests/_tls.py``, the
``openssl`` command). The process ends with exit status 0 and the line ``smoke: ok ...``.

    python tests/reliability/memsafety/smoke.py --loop tokioloop
    PYTHONMALLOC=malloc valgrind --error-exitcode=1 --leak-check=full \\
        --errors-for-leak-kinds=definite --fair-sched=yes \\
        --suppressions=tests/reliability/memsafety/valgrind-python.supp \\
        python tests/reliability/memsafety/smoke.py --loop tokioloop

(``memsafety.py valgrind`` runs the second command and prints its figure.)
"""

import argparse
import asyncio
import gc
import os
import signal
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(os.path.dirname(HERE))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

TIMEOUT = 120.0
HOST = "127.0.0.1"
DATA = bytes(range(256)) * 256  # 64 KiB, every byte value: several reads and writes each way

STEPS = []


def step(fn):
    STEPS.append(fn)
    return fn


def bounded(coro):
    return asyncio.wait_for(coro, TIMEOUT)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.close()


async def _echo_roundtrip(reader, writer, payload=DATA):
    writer.write(payload[: len(payload) // 2])
    writer.writelines([payload[len(payload) // 2:]])
    await writer.drain()
    got = await bounded(reader.readexactly(len(payload)))
    assert got == payload
    writer.close()
    await writer.wait_closed()


# -- scheduling ----------------------------------------------------------------------------


@step
async def callbacks(env):
    loop = asyncio.get_running_loop()
    seen = []
    done = loop.create_future()
    loop.call_soon(seen.append, "soon")
    loop.call_soon(seen.append, "ctx", context=None)
    loop.call_later(0.001, seen.append, "later")
    loop.call_at(loop.time() + 0.002, seen.append, "at")
    loop.call_later(3600, seen.append, "never").cancel()
    loop.call_soon(seen.append, "cancelled").cancel()
    threading.Thread(target=loop.call_soon_threadsafe, args=(done.set_result, "thread")).start()
    assert await bounded(done) == "thread"
    await asyncio.sleep(0.01)
    assert set(seen) == {"soon", "ctx", "later", "at"}, seen


@step
async def futures(env):
    loop = asyncio.get_running_loop()
    calls = []
    ok, bad, gone = loop.create_future(), loop.create_future(), loop.create_future()
    for fut in (ok, bad, gone):
        fut.add_done_callback(calls.append)
    ok.set_result(1)
    bad.set_exception(ValueError("x"))
    assert gone.remove_done_callback(calls.append) == 1
    gone.cancel()
    await asyncio.sleep(0)
    assert ok.result() == 1 and isinstance(bad.exception(), ValueError) and gone.cancelled()
    assert calls == [ok, bad]


@step
async def tasks(env):
    async def child(n):
        await asyncio.sleep(0)
        return n * 2

    assert await asyncio.gather(*(child(i) for i in range(20))) == [i * 2 for i in range(20)]
    sleeper = asyncio.ensure_future(asyncio.sleep(3600))
    await asyncio.sleep(0)
    sleeper.cancel()
    try:
        await sleeper
    except asyncio.CancelledError:
        pass
    try:
        await asyncio.wait_for(asyncio.sleep(3600), 0.01)
    except asyncio.TimeoutError:
        pass
    else:
        raise AssertionError("wait_for did not time out")

    async def agen():
        yield 1
        yield 2

    assert [x async for x in agen()] == [1, 2]


@step
async def readers_writers(env):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        readable, writable = loop.create_future(), loop.create_future()
        loop.add_reader(a, lambda: readable.done() or readable.set_result(a.recv(10)))
        loop.add_writer(b, lambda: writable.done() or writable.set_result(True))
        await bounded(writable)
        assert loop.remove_writer(b)
        b.send(b"ping")
        assert await bounded(readable) == b"ping"
        assert loop.remove_reader(a)
    finally:
        a.close()
        b.close()


# -- sockets -------------------------------------------------------------------------------


@step
async def sock_methods(env):
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind((HOST, 0))
    lsock.listen()
    lsock.setblocking(False)
    client = socket.socket()
    client.setblocking(False)
    try:
        accepted = asyncio.ensure_future(loop.sock_accept(lsock))
        await bounded(loop.sock_connect(client, lsock.getsockname()))
        conn, _ = await bounded(accepted)
        conn.setblocking(False)
        with conn:
            sent = asyncio.ensure_future(loop.sock_sendall(client, DATA))
            got = bytearray()
            while len(got) < len(DATA) // 2:
                got += await bounded(loop.sock_recv(conn, 65536))
            buf = bytearray(65536)
            while len(got) < len(DATA):
                n = await bounded(loop.sock_recv_into(conn, buf))
                got += buf[:n]
            await bounded(sent)
            assert bytes(got) == DATA
            with open(env["file"], "rb") as f:
                n = await bounded(loop.sock_sendfile(client, f))
            got = bytearray()
            while len(got) < n:
                got += await bounded(loop.sock_recv(conn, 65536))
            assert bytes(got) == env["file_data"]
    finally:
        client.close()
        lsock.close()
    if sys.version_info >= (3, 11):
        u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for s in (u1, u2):
                s.bind((HOST, 0))
                s.setblocking(False)
            await bounded(loop.sock_sendto(u1, b"dgram", u2.getsockname()))
            data, addr = await bounded(loop.sock_recvfrom(u2, 100))
            assert data == b"dgram" and addr == u1.getsockname()
            await bounded(loop.sock_sendto(u2, b"back", u1.getsockname()))
            buf = bytearray(100)
            n, _ = await bounded(loop.sock_recvfrom_into(u1, buf))
            assert bytes(buf[:n]) == b"back"
        finally:
            u1.close()
            u2.close()


# -- transports ----------------------------------------------------------------------------


@step
async def tcp(env):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await bounded(asyncio.open_connection(HOST, port))
    writer.transport.pause_reading()
    writer.transport.resume_reading()
    assert writer.get_extra_info("peername")[1] == port
    await _echo_roundtrip(reader, writer)

    # transport sendfile, then write_eof: the echo closes after it.
    received = bytearray()
    closed = loop.create_future()

    class Sink(asyncio.Protocol):
        def data_received(self, data):
            received.extend(data)

        def connection_lost(self, exc):
            closed.set_result(exc)

    transport, _ = await bounded(loop.create_connection(Sink, HOST, port))
    with open(env["file"], "rb") as f:
        await bounded(loop.sendfile(transport, f))
    transport.write_eof()
    assert await bounded(closed) is None
    transport.close()
    assert bytes(received) == env["file_data"]
    server.close()
    await bounded(server.wait_closed())


@step
async def unix(env):
    path = os.path.join(env["dir"], "echo.sock")
    server = await asyncio.start_unix_server(_stream_echo, path)
    reader, writer = await bounded(asyncio.open_unix_connection(path))
    await _echo_roundtrip(reader, writer)
    server.close()
    await bounded(server.wait_closed())


async def _stream_echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@step
async def tls(env):
    import _tls

    certs = env["certs"]
    server = await asyncio.start_server(_stream_echo, HOST, 0,
                                        ssl=_tls.server_context(certs, client_auth=True))
    port = server.sockets[0].getsockname()[1]
    client_ctx = _tls.client_context(certs, client_cert=True)
    reader, writer = await bounded(asyncio.open_connection(HOST, port, ssl=client_ctx,
                                                           server_hostname="localhost"))
    assert writer.get_extra_info("peercert")["subject"]
    await _echo_roundtrip(reader, writer)

    # start_tls: plain TCP upgraded in place on both ends.
    loop = asyncio.get_running_loop()
    upgraded = loop.create_future()

    async def upgrade(r, w):
        await w.start_tls(_tls.server_context(certs))
        upgraded.set_result(None)
        await _stream_echo(r, w)

    plain = await asyncio.start_server(upgrade, HOST, 0)
    reader, writer = await bounded(asyncio.open_connection(HOST, plain.sockets[0].getsockname()[1]))
    await bounded(writer.start_tls(_tls.client_context(certs), server_hostname="localhost"))
    await bounded(upgraded)
    await _echo_roundtrip(reader, writer, DATA[:4096])
    for s in (server, plain):
        s.close()
        await bounded(s.wait_closed())


@step
async def udp(env):
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    class Server(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data[::-1], addr)

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            got.set_result(data)

    server, _ = await loop.create_datagram_endpoint(Server, local_addr=(HOST, 0))
    client, _ = await loop.create_datagram_endpoint(
        Client, remote_addr=server.get_extra_info("sockname"))
    client.sendto(b"abc")
    assert await bounded(got) == b"cba"
    client.close()
    server.close()


# -- processes, pipes, signals -------------------------------------------------------------


@step
async def subprocesses(env):
    code = "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1]); " \
           "sys.stderr.write('err'); sys.exit(3)"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await bounded(proc.communicate(DATA))
    assert out == DATA[::-1] and err == b"err" and proc.returncode == 3
    shell = await asyncio.create_subprocess_shell("echo hi", stdout=asyncio.subprocess.PIPE)
    out, _ = await bounded(shell.communicate())
    assert out == b"hi\n" and shell.returncode == 0
    sleeper = await asyncio.create_subprocess_exec("/bin/sh", "-c", "sleep 60")
    sleeper.terminate()
    assert await bounded(sleeper.wait()) == -signal.SIGTERM


@step
async def pipes(env):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    reader = asyncio.StreamReader()
    rtransport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0))
    wtransport, wprotocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(w, "wb", 0))
    wtransport.write(DATA)
    wtransport.close()
    assert await bounded(reader.read()) == DATA
    rtransport.close()


@step
async def signals(env):
    loop = asyncio.get_running_loop()
    hit = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, lambda: hit.done() or hit.set_result(True))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await bounded(hit)
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)


# -- DNS, executor, server close -----------------------------------------------------------


@step
async def dns(env):
    loop = asyncio.get_running_loop()
    infos = await bounded(loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM))
    assert infos and all(info[1] == socket.SOCK_STREAM for info in infos)
    infos = await bounded(loop.getaddrinfo(HOST, "80", family=socket.AF_INET))
    assert infos[0][4] == (HOST, 80)
    host, port = await bounded(loop.getnameinfo((HOST, 80), socket.NI_NUMERICHOST
                                                | socket.NI_NUMERICSERV))
    assert (host, port) == (HOST, "80")


@step
async def executor(env):
    loop = asyncio.get_running_loop()
    assert await bounded(loop.run_in_executor(None, sum, range(100))) == 4950
    assert await bounded(asyncio.to_thread(lambda: "thread")) == "thread"


@step
async def server_lifecycle(env):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, HOST, 0, start_serving=False)
    assert not server.is_serving()
    await server.start_serving()
    port = server.sockets[0].getsockname()[1]
    reader, writer = await bounded(asyncio.open_connection(HOST, port))
    server.close()
    await _echo_roundtrip(reader, writer, b"still open")  # close() leaves connections alone
    await bounded(server.wait_closed())
    try:
        await asyncio.open_connection(HOST, port)
    except OSError:
        pass
    else:
        raise AssertionError("the closed server still accepted")


# -- driver --------------------------------------------------------------------------------


def new_loop(kind):
    if kind == "tokioloop":
        import tokioloop
        return tokioloop.new_event_loop()
    return asyncio.new_event_loop()


def run(kind, rounds=1, log=None):
    """Run every step ``rounds`` times on one fresh loop of ``kind``; returns the step names."""
    import _tls

    with tempfile.TemporaryDirectory(prefix="tokioloop-smoke-") as directory:
        env = {"dir": directory, "file": os.path.join(directory, "payload")}
        env["file_data"] = DATA * 2
        with open(env["file"], "wb") as f:
            f.write(env["file_data"])
        env["certs"] = _tls.make_certs(directory)
        loop = new_loop(kind)
        ran = []
        try:
            asyncio.set_event_loop(loop)
            for _ in range(rounds):
                for fn in STEPS:
                    start = time.monotonic()
                    loop.run_until_complete(fn(env))
                    ran.append(fn.__name__)
                    if log:
                        log(f"{fn.__name__}: ok in {time.monotonic() - start:.2f} s")
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        del loop
        gc.collect()
        return ran


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=["tokioloop", "asyncio"], default="tokioloop")
    parser.add_argument("--rounds", type=int, default=1, help="times to run every step")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per step")
    args = parser.parse_args(argv)
    start = time.monotonic()
    ran = run(args.loop, args.rounds, log=print if args.verbose else None)
    print(f"smoke: ok {args.loop}: {len(ran)} steps ({len(STEPS)} distinct) in "
          f"{time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
