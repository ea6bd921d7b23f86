"""Every public method of asyncio's transports and Server exists on tokioloop's, with the
same outcome.

For each kind of transport (socket stream, TLS, read pipe, write pipe, datagram, subprocess and
its stdin and stdout pipes) and for the server, the public methods are enumerated from the class of the object the stdlib
loop hands out (its whole hierarchy: ``asyncio.transports`` and the concrete selector/unix
classes), so a method added to asyncio, or one a tokioloop class lacks, is caught without
editing this file. Each method is called on a fresh object of that kind, made by the loop under
test and by a stdlib loop (the oracle, made inside the test), and the outcomes must agree: the
same exception type, or a return value alike (equal where it is plain data, the same category
otherwise: peer addresses and pids differ between any two runs).

A coroutine method runs as a task for a few turns: it either finishes (its outcome recorded)
or is still pending (recorded as such, then cancelled) — ``serve_forever`` and ``wait_closed``
on an open server do not end by themselves.
"""

import asyncio
import inspect
import os
import socket
import sys

import pytest

from _tls import certs, client_context, server_context  # noqa: F401  (certs is a fixture)

# Arguments for the methods that take some (given the object); the rest are called with none.
ARGUMENTS = {
    "write": lambda obj: (b"x",),
    "writelines": lambda obj: ([b"x", b"y"],),
    "sendto": lambda obj: (b"x",),
    "set_protocol": lambda obj: (obj.get_protocol(),),  # the one it has: cleanup relies on it
    "get_extra_info": lambda obj: ("peername",),
    "get_pipe_transport": lambda obj: (0,),
    "send_signal": lambda obj: (0,),
}

# Results that differ between any two connections or processes: only their kind is compared.
VARYING = {"get_extra_info", "get_pid"}

PLAIN = (type(None), bool, int, float, str, bytes)

# Turns a coroutine method gets before it is recorded as still pending.
COROUTINE_TURNS = 10


def _shape(name, value):
    if isinstance(value, PLAIN) and name not in VARYING:
        return value
    if isinstance(value, (tuple, list)) and name not in VARYING:
        if all(isinstance(item, PLAIN) for item in value):
            return tuple(value)
    if isinstance(value, PLAIN):
        return type(value).__name__
    if isinstance(value, (tuple, list)):
        return "sequence"
    return "object"


async def _outcome(name, method, args):
    try:
        result = method(*args)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            for _ in range(COROUTINE_TURNS):
                if task.done():
                    break
                await asyncio.sleep(0)
            if not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                return ("pending",)
            result = task.result()
    except Exception as exc:  # the outcome under test
        return ("raises", type(exc).__name__)
    return ("returns", _shape(name, result))


class _Peer(asyncio.Protocol):
    """The server's end of a stream: closes its transport once the connection is lost, and
    says so (``lost``), so cleanup ends only when both ends are gone."""

    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport.close()
        self.lost.set_result(None)


class _Ends(asyncio.SubprocessProtocol):
    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(None)

    def process_exited(self):
        pass


# -- makers: each returns (object, cleanup coroutine function) -------------------------------


async def _stream(loop, ssl_pair=None):
    server_ssl, client_ssl = ssl_pair or (None, None)
    peers = []
    server = await loop.create_server(
        lambda: peers.append(_Peer()) or peers[-1], "127.0.0.1", 0, ssl=server_ssl
    )
    kwargs = {"ssl": client_ssl, "server_hostname": "localhost"} if client_ssl else {}
    transport, protocol = await loop.create_connection(
        asyncio.Protocol, *server.sockets[0].getsockname(), **kwargs
    )

    async def cleanup():
        transport.abort()
        server.close()
        await server.wait_closed()
        await asyncio.gather(*(peer.lost for peer in peers))
        await asyncio.sleep(0)

    return transport, cleanup


async def _pipe(loop, writing):
    """A transport on one end of a fresh pipe; the other end is closed at cleanup."""
    read_end, write_end = os.pipe()
    if writing:
        ours, theirs = os.fdopen(write_end, "wb", 0), read_end
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, ours)
    else:
        ours, theirs = os.fdopen(read_end, "rb", 0), write_end
        transport, _ = await loop.connect_read_pipe(asyncio.Protocol, ours)

    async def cleanup():
        if not transport.is_closing():  # asyncio's write pipe ends twice on close+abort
            transport.close()
        await asyncio.sleep(0)
        os.close(theirs)
        await asyncio.sleep(0)

    return transport, cleanup


async def _datagram(loop):
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=peer.getsockname()
    )

    async def cleanup():
        transport.close()
        await asyncio.sleep(0)
        peer.close()

    return transport, cleanup


async def _subprocess(loop):
    code = "import sys; sys.stdin.read()"
    transport, protocol = await loop.subprocess_exec(_Ends, sys.executable, "-c", code)

    async def cleanup():
        if transport.get_returncode() is None:
            try:
                transport.kill()
            except ProcessLookupError:
                pass
        transport.close()
        await transport._wait()

    return transport, cleanup


async def _subprocess_pipe(loop, fd):
    """The transport of a child's stdin (fd 0) or stdout (fd 1)."""
    process, cleanup = await _subprocess(loop)
    return process.get_pipe_transport(fd), cleanup


async def _server(loop):
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, start_serving=False)

    async def cleanup():
        server.close()
        await server.wait_closed()

    return server, cleanup


def _makers(certs):
    tls = (server_context(certs), client_context(certs))
    return {
        "stream": _stream,
        "tls": lambda loop: _stream(loop, tls),
        "read_pipe": lambda loop: _pipe(loop, False),
        "write_pipe": lambda loop: _pipe(loop, True),
        "datagram": _datagram,
        "subprocess": _subprocess,
        "subprocess_stdin": lambda loop: _subprocess_pipe(loop, 0),
        "subprocess_stdout": lambda loop: _subprocess_pipe(loop, 1),
        "server": _server,
    }


def _public_methods(cls):
    return sorted(
        name for name in dir(cls)
        if not name.startswith("_") and callable(getattr(cls, name, None))
    )


def _outcomes(loop, make, names=None):
    """{method: outcome} on ``loop``, each method called on a fresh object; with ``names``
    None, the methods are those of the object's own class. Returns (class, outcomes)."""

    async def run():
        first, cleanup = await make(loop)
        await cleanup()
        methods = _public_methods(type(first)) if names is None else names
        found = {}
        for name in methods:
            obj, cleanup = await make(loop)
            try:
                method = getattr(obj, name, None)
                if method is None:
                    found[name] = ("missing",)
                else:
                    arguments = ARGUMENTS.get(name, lambda obj: ())(obj)
                    found[name] = await _outcome(name, method, arguments)
            finally:
                await cleanup()
        return type(first), found

    return loop.run_until_complete(run())


@pytest.mark.parametrize(
    "kind",
    ["stream", "tls", "read_pipe", "write_pipe", "datagram", "subprocess", "subprocess_stdin",
     "subprocess_stdout", "server"],
)
def test_public_methods_match_asyncio(loop, certs, kind):
    make = _makers(certs)[kind]
    oracle = asyncio.new_event_loop()
    try:
        stdlib_class, expected = _outcomes(oracle, make)
    finally:
        oracle.close()
    assert expected, f"no public methods found on {stdlib_class!r}"
    _, got = _outcomes(loop, make, sorted(expected))
    differing = {
        name: {"asyncio": expected[name], "here": got[name]}
        for name in expected if got[name] != expected[name]
    }
    assert differing == {}, f"{kind}: methods of {stdlib_class.__qualname__} differ"
