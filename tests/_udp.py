"""Helpers shared by the datagram tests (test_udp, test_udp_stress): a recording
``DatagramProtocol``, plain peer sockets and an await-able receive on them, and what the running
asyncio's datagram transport does where versions differ (asked of asyncio's own source, so the
stdlib half of every test agrees with the expectation)."""

import asyncio
import inspect
import os
import shutil
import socket
import tempfile

import pytest

TIMEOUT = 10.0

_STDLIB_DGRAM = asyncio.selector_events._SelectorDatagramTransport
_SENDTO_SRC = inspect.getsource(_STDLIB_DGRAM.sendto)
_CREATE_SRC = inspect.getsource(asyncio.base_events.BaseEventLoop.create_datagram_endpoint)

# Empty datagrams: dropped by sendto() up to 3.12, sent from 3.13 (gh-113812).
EMPTY_DATAGRAM_SENT = "if not data:" not in _SENDTO_SRC
# A queued datagram counts len(data) + 8 in get_write_buffer_size() from 3.13 (added with
# gh-113812 so that queued empty datagrams count); before, len(data).
QUEUED_HEADER = 8 if ("+ 8" in _SENDTO_SRC or "_header_size" in _SENDTO_SRC) else 0
# 3.12+ derives the transport from asyncio.DatagramTransport; 3.10 and 3.11 do not.
IS_DATAGRAM_TRANSPORT = issubclass(_STDLIB_DGRAM, asyncio.DatagramTransport)
# pause_reading/resume_reading/is_reading work on datagram transports from 3.11; 3.10's are
# ReadTransport's (NotImplementedError: 3.10 keeps them on the stream transport).
HAS_PAUSE_READING = _STDLIB_DGRAM.pause_reading is not asyncio.ReadTransport.pause_reading
# sock= of the wrong type: 3.13 refuses SOCK_STREAM only ('A datagram socket was expected');
# 3.10-3.12 anything but SOCK_DGRAM ('A UDP Socket was expected') (gh-114887).
if "A datagram socket was expected" in _CREATE_SRC:
    WRONG_SOCK_MESSAGE, RAW_SOCK_ACCEPTED = "A datagram socket was expected, got ", True
else:
    WRONG_SOCK_MESSAGE, RAW_SOCK_ACCEPTED = "A UDP Socket was expected, got ", False


class Dgram(asyncio.DatagramProtocol):
    """Records every callback in ``events`` as tuples: ("made",), ("data", data, addr),
    ("error", exc), ("lost", exc), ("pause",), ("resume",). ``until(predicate)`` waits for the
    predicate to hold after some callback (bounded by TIMEOUT)."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.events = []
        self.transport = None
        self.lost = self.loop.create_future()
        self._waiters = []

    def _kind(self, kind):
        return [e for e in self.events if e[0] == kind]

    @property
    def datagrams(self):
        return [(e[1], e[2]) for e in self._kind("data")]

    @property
    def errors(self):
        return [e[1] for e in self._kind("error")]

    def count(self, kind):
        return len(self._kind(kind))

    def _note(self, *event):
        self.events.append(event)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred():
                fut.set_result(None)

    async def until(self, pred):
        if pred():
            return
        fut = self.loop.create_future()
        entry = (pred, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, TIMEOUT)
        finally:
            self._waiters.remove(entry)

    async def wait_datagrams(self, n):
        await self.until(lambda: self.count("data") >= n)
        return self.datagrams

    async def wait_lost(self):
        return await asyncio.wait_for(asyncio.shield(self.lost), TIMEOUT)

    def connection_made(self, transport):
        self.transport = transport
        self._note("made")

    def datagram_received(self, data, addr):
        self._note("data", data, addr)

    def error_received(self, exc):
        self._note("error", exc)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)
        self._note("lost", exc)

    def pause_writing(self):
        self._note("pause")

    def resume_writing(self):
        self._note("resume")


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))


async def close_and_wait(tr, proto):
    tr.close()
    return await proto.wait_lost()


def plain(sockets, family=socket.AF_INET, addr=("127.0.0.1", 0)):
    """A non-blocking datagram socket bound to ``addr`` (None: unbound), closed at teardown."""
    sock = sockets(socket.socket(family, socket.SOCK_DGRAM))
    sock.setblocking(False)
    if addr is not None:
        sock.bind(addr)
    return sock


async def recv_plain(sock, size=256 * 1024):
    """recvfrom on a plain non-blocking socket, waiting through the running loop."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return sock.recvfrom(size)
        except BlockingIOError:
            pass
        ready = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, TIMEOUT)
        finally:
            loop.remove_reader(sock.fileno())


def drain_plain(sock, size=256 * 1024):
    """Every datagram already queued on a plain non-blocking socket."""
    got = []
    while True:
        try:
            got.append(sock.recvfrom(size))
        except BlockingIOError:
            return got


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def short_tmp():
    """A fresh directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix="tl-udp-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
