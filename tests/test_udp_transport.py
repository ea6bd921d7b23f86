"""The datagram transport returned by ``loop.create_datagram_endpoint``: type, extra info,
``sendto`` rules, flow control, close/abort, ICMP errors, protocol errors and contexts.

Both loops, with stdlib asyncio's ``_SelectorDatagramTransport`` as the oracle; version
differences are read from the running asyncio (``_udp.py``, ``_stdlib.py``). Traffic stays on
127.0.0.1 and AF_UNIX paths in a private temporary directory; every wait is bounded.

The kernel refuses a UDP send on loopback only in extreme cases, so the queued-send paths
(EAGAIN, flow control, close flushing, abort discarding) use a transport connected to a plain
AF_UNIX datagram peer that does not read: its receive queue holds a handful of datagrams, and
the transport's SO_SNDBUF is shrunk. AF_UNIX datagrams are neither lost nor reordered, so every
datagram sent there can be accounted for.
"""

import asyncio
import contextvars
import errno
import logging
import os
import socket

import pytest
from _stdlib import stdlib_has_bug
from _udp import (
    EMPTY_DATAGRAM_SENT, HAS_PAUSE_READING, IS_DATAGRAM_TRANSPORT, QUEUED_HEADER, Dgram,
    close_and_wait, drain_plain, plain, recv_plain, run,
    short_tmp,  # noqa: F401  (fixture)
)

HIGH, LOW = 64 * 1024, 16 * 1024
SIZE = 1024  # datagram size on the AF_UNIX paths


async def unix_pair(loop, sockets, short_tmp, sndbuf=4096):
    """(tr, proto, peer): a transport bound at short_tmp/a and connected to a plain AF_UNIX
    socket bound at short_tmp/b, which does not read until the test makes it."""
    a, b = os.path.join(short_tmp, "a"), os.path.join(short_tmp, "b")
    peer = plain(sockets, socket.AF_UNIX, b)
    tr, proto = await loop.create_datagram_endpoint(
        Dgram, local_addr=a, remote_addr=b, family=socket.AF_UNIX)
    tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return tr, proto, peer


def numbered(i):
    return i.to_bytes(4, "big") * (SIZE // 4)


def send_until_queued(tr, count):
    """Send ``count`` numbered datagrams; the peer is not reading, so most of them queue."""
    for i in range(count):
        tr.sendto(numbered(i))


async def read_numbered(peer, count):
    """Read ``count`` datagrams from the AF_UNIX peer: they are numbered(0..count-1), in order."""
    for i in range(count):
        data, _ = await recv_plain(peer)
        assert data == numbered(i), i


async def udp_endpoint(loop, **kwargs):
    kwargs.setdefault("local_addr", ("127.0.0.1", 0))
    return await loop.create_datagram_endpoint(Dgram, **kwargs)


# -- type and extra info ---------------------------------------------------------------------


def test_transport_type_and_extra_info(loop, sockets):
    async def main():
        peer = plain(sockets)
        tr, proto = await udp_endpoint(loop, remote_addr=peer.getsockname())
        assert isinstance(tr, asyncio.BaseTransport)
        assert isinstance(tr, asyncio.Transport)  # as asyncio's (CPython's test_events checks)
        # 3.12 made the selector datagram transport an asyncio.DatagramTransport.
        assert isinstance(tr, asyncio.DatagramTransport) is IS_DATAGRAM_TRANSPORT
        sock = tr.get_extra_info("socket")
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert sock.type == socket.SOCK_DGRAM and sock.family == socket.AF_INET
        assert tr.get_extra_info("sockname") == sock.getsockname()
        assert tr.get_extra_info("peername") == peer.getsockname() == sock.getpeername()
        assert tr.get_extra_info("no such key") is None
        assert tr.get_extra_info("no such key", "default") == "default"
        assert tr.get_protocol() is proto
        assert not tr.is_closing()
        await close_and_wait(tr, proto)
        assert tr.is_closing()

    run(loop, main())


# -- sendto ------------------------------------------------------------------------------------


def test_sendto_accepts_bytes_like_objects(loop, sockets):
    async def main():
        peer = plain(sockets)
        tr, proto = await udp_endpoint(loop)
        here, there = tr.get_extra_info("sockname"), peer.getsockname()
        tr.sendto(b"bytes", there)
        tr.sendto(bytearray(b"bytearray"), there)
        tr.sendto(memoryview(b"xxmemoryviewxx")[2:-2], there)
        big = os.urandom(65507)  # the largest IPv4 UDP payload
        tr.sendto(big, there)
        for expected in (b"bytes", b"bytearray", b"memoryview", big):
            assert await recv_plain(peer) == (expected, here)
        assert tr.get_write_buffer_size() == 0  # all went out at once
        await close_and_wait(tr, proto)

    run(loop, main())


@pytest.mark.parametrize("data, name", [("text", "str"), (5, "int"), (None, "NoneType")])
def test_sendto_rejects_other_types(loop, sockets, data, name):
    async def main():
        tr, proto = await udp_endpoint(loop)
        with pytest.raises(TypeError) as info:
            tr.sendto(data, plain(sockets).getsockname())
        assert str(info.value) == f"data argument must be a bytes-like object, not '{name}'"
        await close_and_wait(tr, proto)

    run(loop, main())


def test_connected_sendto_checks_the_address(loop, sockets):
    async def main():
        peer, other = plain(sockets), plain(sockets)
        remote = peer.getsockname()
        tr, proto = await udp_endpoint(loop, local_addr=None, remote_addr=remote)
        tr.sendto(b"none")
        tr.sendto(b"equal", remote)
        tr.sendto(b"equal list", ("127.0.0.1", remote[1]))
        with pytest.raises(ValueError) as info:
            tr.sendto(b"other", other.getsockname())
        assert str(info.value) == f"Invalid address: must be None or {remote}"
        for expected in (b"none", b"equal", b"equal list"):
            assert (await recv_plain(peer))[0] == expected
        assert drain_plain(other) == []
        await close_and_wait(tr, proto)

    run(loop, main())


def test_sendto_error_goes_to_error_received(loop, sockets):
    async def main():
        peer = plain(sockets)
        tr, proto = await udp_endpoint(loop)
        tr.sendto(b"x" * 65508, peer.getsockname())  # one byte too many for IPv4 UDP
        [exc] = proto.errors  # reported from inside sendto
        assert isinstance(exc, OSError) and exc.errno == errno.EMSGSIZE
        assert not tr.is_closing() and tr.get_write_buffer_size() == 0
        tr.sendto(b"still usable", peer.getsockname())
        assert (await recv_plain(peer))[0] == b"still usable"
        await close_and_wait(tr, proto)

    run(loop, main())


@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
def test_empty_datagram(loop, sockets, connected):
    async def main():
        peer = plain(sockets)
        kwargs = {"remote_addr": peer.getsockname()} if connected else {}
        tr, proto = await udp_endpoint(loop, **kwargs)
        addr = None if connected else peer.getsockname()
        tr.sendto(b"", addr)
        tr.sendto(b"marker", addr)
        first = (await recv_plain(peer))[0]
        if EMPTY_DATAGRAM_SENT:  # 3.13 sends it (gh-113812)
            assert first == b""
            assert (await recv_plain(peer))[0] == b"marker"
        else:  # up to 3.12 sendto drops it
            assert first == b"marker"
        peer.sendto(b"", tr.get_extra_info("sockname"))  # receiving one works everywhere
        assert (await proto.wait_datagrams(1))[0][0] == b""
        await close_and_wait(tr, proto)

    run(loop, main())


# -- write buffer and flow control -------------------------------------------------------------


def test_write_buffer_limits(loop):
    async def main():
        tr, proto = await udp_endpoint(loop)
        assert tr.get_write_buffer_limits() == (LOW, HIGH)
        assert tr.get_write_buffer_size() == 0
        tr.set_write_buffer_limits(high=100)
        assert tr.get_write_buffer_limits() == (25, 100)
        tr.set_write_buffer_limits(low=100)
        assert tr.get_write_buffer_limits() == (100, 400)
        tr.set_write_buffer_limits(high=10, low=0)
        assert tr.get_write_buffer_limits() == (0, 10)
        with pytest.raises(ValueError, match=r"^high \(1\) must be >= low \(2\) must be >= 0$"):
            tr.set_write_buffer_limits(high=1, low=2)
        assert tr.get_write_buffer_limits() == (0, 10)
        tr.set_write_buffer_limits()
        assert tr.get_write_buffer_limits() == (LOW, HIGH)
        await close_and_wait(tr, proto)
        assert proto.count("pause") == 0

    run(loop, main())


def test_pause_and_resume_writing(loop, loop_kind, sockets, short_tmp):
    async def main():
        tr, proto, peer = await unix_pair(loop, sockets, short_tmp)
        sent = 0
        while not proto.count("pause") and sent < 1000:
            tr.sendto(numbered(sent))
            sent += 1
        assert proto.count("pause") == 1, "pause_writing once the queue passes 64 KiB"
        size = tr.get_write_buffer_size()
        assert HIGH < size <= HIGH + SIZE + QUEUED_HEADER  # the datagram that crossed it
        assert size % (SIZE + QUEUED_HEADER) == 0  # 3.13 counts 8 bytes per queued datagram
        queued = size // (SIZE + QUEUED_HEADER)
        assert 0 < sent - queued < 100  # the first few went straight to the kernel
        assert proto.events[-1] == ("pause",)
        await read_numbered(peer, sent)
        await proto.until(lambda: proto.count("resume"))
        assert [e[0] for e in proto.events if e[0] in ("pause", "resume")] == ["pause", "resume"]
        if not stdlib_has_bug(loop_kind, "datagram_buffer_size_drift"):
            await proto.until(lambda: tr.get_write_buffer_size() == 0)
        tr.sendto(b"after the drain")
        assert (await recv_plain(peer))[0] == b"after the drain"
        await close_and_wait(tr, proto)
        assert proto.errors == []

    run(loop, main())


def test_set_write_buffer_limits_pauses_at_once(loop, sockets, short_tmp):
    async def main():
        tr, proto, peer = await unix_pair(loop, sockets, short_tmp)
        send_until_queued(tr, 40)
        size = tr.get_write_buffer_size()
        assert 0 < size < HIGH and proto.count("pause") == 0
        tr.set_write_buffer_limits(high=size - 1)
        assert proto.count("pause") == 1
        await read_numbered(peer, 40)
        await proto.until(lambda: proto.count("resume"))
        await close_and_wait(tr, proto)

    run(loop, main())


def test_close_flushes_queued_datagrams(loop, sockets, short_tmp):
    async def main():
        tr, proto, peer = await unix_pair(loop, sockets, short_tmp)
        send_until_queued(tr, 60)
        assert tr.get_write_buffer_size() > 0
        tr.close()
        assert tr.is_closing()
        for _ in range(10):
            await asyncio.sleep(0)
        assert proto.count("lost") == 0  # waits for the queue
        await read_numbered(peer, 60)
        assert await proto.wait_lost() is None
        assert proto.count("lost") == 1
        assert tr.get_extra_info("socket").fileno() == -1
        assert drain_plain(peer) == []

    run(loop, main())


def test_abort_discards_the_queue(loop, sockets, short_tmp):
    async def main():
        tr, proto, peer = await unix_pair(loop, sockets, short_tmp)
        send_until_queued(tr, 60)
        assert tr.get_write_buffer_size() > 0
        tr.abort()
        assert tr.is_closing()
        assert proto.count("lost") == 0  # connection_lost comes on a later iteration
        assert await proto.wait_lost() is None
        got = [data for data, _ in drain_plain(peer)]
        assert 0 < len(got) < 60  # what the kernel had taken; the queue is gone
        assert got == [numbered(i) for i in range(len(got))]
        for _ in range(5):
            await asyncio.sleep(0)
        assert proto.count("lost") == 1

    run(loop, main())


@pytest.mark.parametrize("calls", [
    ("close", "close"), ("abort", "abort"), ("close", "abort"), ("abort", "close"),
])
def test_connection_lost_once(loop, calls):
    async def main():
        tr, proto = await udp_endpoint(loop)
        for name in calls:
            getattr(tr, name)()
        assert proto.count("lost") == 0
        assert await proto.wait_lost() is None
        for name in calls:
            getattr(tr, name)()
        for _ in range(5):
            await asyncio.sleep(0)
        assert proto.events == [("made",), ("lost", None)]

    run(loop, main())


def test_sendto_after_close_connected_is_dropped_with_warning(loop, sockets, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")

    def warnings():
        return [r for r in caplog.records
                if r.name == "asyncio" and r.getMessage() == "socket.send() raised exception."]

    async def main():
        peer = plain(sockets)
        tr, proto = await udp_endpoint(loop, local_addr=None, remote_addr=peer.getsockname())
        await close_and_wait(tr, proto)
        for _ in range(4):
            assert tr.sendto(b"dropped") is None
        assert warnings() == []  # silent for the first four
        for _ in range(3):
            tr.sendto(b"dropped")
        assert len(warnings()) == 3  # then one warning per call
        with pytest.raises(TypeError):  # the type check still comes first
            tr.sendto("text")
        assert drain_plain(peer) == []
        assert proto.count("lost") == 1 and proto.errors == []

    run(loop, main())


# -- receiving and errors ----------------------------------------------------------------------


def test_datagram_boundaries_and_order(loop, sockets):
    async def main():
        tr, proto = await udp_endpoint(loop)
        peer = plain(sockets)
        here, there = tr.get_extra_info("sockname"), peer.getsockname()
        sent = [bytes([i]) * (i * 37 % 1400 + 1) for i in range(100)]
        for data in sent:
            peer.sendto(data, here)
        assert await proto.wait_datagrams(100) == [(data, there) for data in sent]
        await close_and_wait(tr, proto)

    run(loop, main())


def test_connected_to_a_dead_port_reports_refusal(loop, sockets):
    async def main():
        dead = plain(sockets)
        port = dead.getsockname()
        dead.close()
        tr, proto = await udp_endpoint(loop, local_addr=None, remote_addr=port)
        tr.sendto(b"nobody listens")
        await proto.until(lambda: proto.errors)
        assert all(isinstance(e, ConnectionRefusedError) for e in proto.errors), proto.errors
        assert not tr.is_closing() and proto.count("lost") == 0
        # The transport stays usable: someone takes the port and the exchange works.
        revived = plain(sockets, addr=port)
        tr.sendto(b"now someone does")
        data, addr = await recv_plain(revived)
        assert data == b"now someone does"
        revived.sendto(b"reply", addr)
        await proto.until(lambda: proto.datagrams)
        assert proto.datagrams == [(b"reply", port)]
        await close_and_wait(tr, proto)

    run(loop, main())


def test_unconnected_send_to_a_dead_port_is_silent(loop, sockets):
    # The idea of 3.13's test_datagram_send_to_non_listening_address (gh-91227, gh-88906):
    # after a datagram to nobody, the endpoint keeps sending and receiving.
    async def main():
        one, p1 = await udp_endpoint(loop)
        two, p2 = await udp_endpoint(loop)
        three, p3 = await udp_endpoint(loop)
        dead = three.get_extra_info("sockname")
        three.abort()
        await p3.wait_lost()
        one.sendto(b"a", two.get_extra_info("sockname"))
        await p2.wait_datagrams(1)
        one.sendto(b"b", dead)
        one.sendto(b"c", two.get_extra_info("sockname"))
        two.sendto(b"d", one.get_extra_info("sockname"))
        assert [d for d, _ in await p2.wait_datagrams(2)] == [b"a", b"c"]
        assert [d for d, _ in await p1.wait_datagrams(1)] == [b"d"]
        assert p1.errors == []  # Linux reports ICMP errors on connected sockets only
        await close_and_wait(one, p1)
        await close_and_wait(two, p2)

    run(loop, main())


def test_datagram_received_error_goes_to_the_handler(loop, sockets, exc_contexts):
    class Boom(Dgram):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"boom":
                raise ZeroDivisionError("boom")

    async def main():
        tr, proto = await loop.create_datagram_endpoint(Boom, local_addr=("127.0.0.1", 0))
        peer = plain(sockets)
        peer.sendto(b"boom", tr.get_extra_info("sockname"))
        peer.sendto(b"after", tr.get_extra_info("sockname"))
        assert [d for d, _ in await proto.wait_datagrams(2)] == [b"boom", b"after"]
        [ctx] = exc_contexts  # not fatal: the transport keeps reading
        assert isinstance(ctx["exception"], ZeroDivisionError)
        assert ctx["message"].startswith("Exception in callback")
        assert not tr.is_closing() and proto.count("lost") == 0
        tr.sendto(b"and sending", peer.getsockname())
        assert (await recv_plain(peer))[0] == b"and sending"
        await close_and_wait(tr, proto)
        exc_contexts.clear()

    run(loop, main())


def test_callbacks_run_in_the_creators_context(loop, sockets):
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    class Ctx(Dgram):
        def connection_made(self, transport):
            seen.append(("made", var.get()))
            super().connection_made(transport)

        def datagram_received(self, data, addr):
            seen.append(("data", var.get()))
            super().datagram_received(data, addr)

        def connection_lost(self, exc):
            seen.append(("lost", var.get()))
            super().connection_lost(exc)

    async def main():
        var.set("creator")
        tr, proto = await loop.create_datagram_endpoint(Ctx, local_addr=("127.0.0.1", 0))
        plain(sockets).sendto(b"x", tr.get_extra_info("sockname"))
        await proto.wait_datagrams(1)
        await close_and_wait(tr, proto)

    assert var.get() == "unset"
    run(loop, main())
    assert seen == [("made", "creator"), ("data", "creator"), ("lost", "creator")]


@pytest.mark.skipif(not HAS_PAUSE_READING, reason="3.10's datagram transport cannot pause reading")
def test_pause_and_resume_reading(loop, sockets):
    async def main():
        tr, proto = await udp_endpoint(loop)
        peer = plain(sockets)
        here = tr.get_extra_info("sockname")
        assert tr.is_reading()
        tr.pause_reading()
        tr.pause_reading()  # idempotent
        assert not tr.is_reading()
        peer.sendto(b"held", here)
        await asyncio.sleep(0.05)
        assert proto.datagrams == []
        tr.resume_reading()
        assert tr.is_reading()
        assert [d for d, _ in await proto.wait_datagrams(1)] == [b"held"]
        tr.close()
        assert not tr.is_reading()
        await proto.wait_lost()

    run(loop, main())


@pytest.mark.skipif(HAS_PAUSE_READING, reason="3.11+ datagram transports can pause reading")
def test_pause_reading_not_supported_on_3_10(loop):
    async def main():
        tr, proto = await udp_endpoint(loop)
        for name in ("pause_reading", "resume_reading", "is_reading"):
            with pytest.raises(NotImplementedError):
                getattr(tr, name)()
        await close_and_wait(tr, proto)

    run(loop, main())
