"""Datagram endpoints: ``loop.create_datagram_endpoint`` and the datagram transport.

Every test runs on both loops with stdlib asyncio (``selector_events._SelectorDatagramTransport``
and ``BaseEventLoop.create_datagram_endpoint``) as the oracle. Where asyncio changed between 3.10
and 3.13 the expectation is read from the running asyncio (``_udp.py``, ``_stdlib.py``), never
from a version table. Traffic stays on 127.0.0.1, ::1 and AF_UNIX paths in a private temporary
directory; every wait is bounded by ``_udp.TIMEOUT``. Checks that something did *not* arrive send
a marker datagram behind it (loopback and AF_UNIX keep one sender's datagrams in order).

The transport itself (sendto, flow control, close/abort, errors) is tested in
test_udp_transport.py, and under load in test_udp_stress.py.
"""

import os
import re
import socket

import pytest
from _netutil import needs_ipv6
from _stdlib import loop_has, stdlib_has_bug
from _udp import (
    RAW_SOCK_ACCEPTED, WRONG_SOCK_MESSAGE, Dgram, close_and_wait, plain, recv_plain, run,
    short_tmp,  # noqa: F401  (fixture)
)

HAS_REUSE_ADDRESS = loop_has("create_datagram_endpoint", "reuse_address")  # removed in 3.11
TAIL_OPTS = ("reuse_port", "allow_broadcast")


# -- creating endpoints ----------------------------------------------------------------------


def test_local_addr_receives_and_replies(loop, sockets):
    async def main():
        tr, proto = await loop.create_datagram_endpoint(Dgram, local_addr=("127.0.0.1", 0))
        assert proto.events == [("made",)]  # connection_made ran before the call returned
        assert proto.transport is tr
        here = tr.get_extra_info("sockname")
        assert here[0] == "127.0.0.1" and here[1] != 0
        assert tr.get_extra_info("peername") is None
        peer = plain(sockets)
        peer.sendto(b"ping", here)
        assert await proto.wait_datagrams(1) == [(b"ping", peer.getsockname())]
        tr.sendto(b"pong", peer.getsockname())
        assert await recv_plain(peer) == (b"pong", here)
        assert await close_and_wait(tr, proto) is None
        assert [e[0] for e in proto.events] == ["made", "data", "lost"]

    run(loop, main())


def test_remote_addr_connects(loop, sockets):
    async def main():
        peer, stranger = plain(sockets), plain(sockets)
        tr, proto = await loop.create_datagram_endpoint(Dgram, remote_addr=peer.getsockname())
        assert tr.get_extra_info("peername") == peer.getsockname()
        here = tr.get_extra_info("sockname")
        assert here[0] == "127.0.0.1" and here[1] != 0
        tr.sendto(b"no address")
        tr.sendto(b"same address", peer.getsockname())
        assert await recv_plain(peer) == (b"no address", here)
        assert await recv_plain(peer) == (b"same address", here)
        stranger.sendto(b"filtered by the kernel", here)
        peer.sendto(b"reply", here)
        assert await proto.wait_datagrams(1) == [(b"reply", peer.getsockname())]
        await close_and_wait(tr, proto)
        assert proto.datagrams == [(b"reply", peer.getsockname())]

    run(loop, main())


def test_local_and_remote_addr(loop, sockets):
    async def main():
        peer = plain(sockets)
        probe = plain(sockets)  # a free port to bind to
        local = probe.getsockname()
        probe.close()
        tr, proto = await loop.create_datagram_endpoint(
            Dgram, local_addr=local, remote_addr=peer.getsockname())
        assert tr.get_extra_info("sockname") == local
        assert tr.get_extra_info("peername") == peer.getsockname()
        tr.sendto(b"x")
        assert await recv_plain(peer) == (b"x", local)
        await close_and_wait(tr, proto)

    run(loop, main())


def test_family_only_leaves_the_socket_unbound(loop, sockets):
    async def main():
        tr, proto = await loop.create_datagram_endpoint(Dgram, family=socket.AF_INET)
        assert tr.get_extra_info("sockname") == ("0.0.0.0", 0)
        assert tr.get_extra_info("peername") is None
        peer = plain(sockets)
        tr.sendto(b"first send binds", peer.getsockname())
        data, addr = await recv_plain(peer)
        assert data == b"first send binds" and addr[1] != 0
        peer.sendto(b"back", addr)
        assert await proto.wait_datagrams(1) == [(b"back", peer.getsockname())]
        await close_and_wait(tr, proto)

        tr, proto = await loop.create_datagram_endpoint(Dgram, family=socket.AF_UNIX)
        assert tr.get_extra_info("sockname") == ""
        await close_and_wait(tr, proto)

    run(loop, main())


@pytest.mark.parametrize("kwargs", [{}, {"family": 0}, {"proto": 17}])
def test_no_address_and_no_family_is_refused(loop, kwargs):
    async def main():
        with pytest.raises(ValueError, match="^unexpected address family$"):
            await loop.create_datagram_endpoint(Dgram, **kwargs)

    run(loop, main())


@needs_ipv6
def test_ipv6(loop, sockets):
    async def main():
        peer = plain(sockets, socket.AF_INET6, ("::1", 0))
        server, sproto = await loop.create_datagram_endpoint(Dgram, local_addr=("::1", 0))
        here = server.get_extra_info("sockname")
        assert here[0] == "::1" and len(here) == 4
        client, cproto = await loop.create_datagram_endpoint(Dgram, remote_addr=here[:2])
        assert client.get_extra_info("peername")[:2] == here[:2]
        client.sendto(b"six")
        [(data, addr)] = await sproto.wait_datagrams(1)
        assert data == b"six" and addr[:2] == client.get_extra_info("sockname")[:2]
        server.sendto(b"to a plain socket", peer.getsockname()[:2])
        assert (await recv_plain(peer))[0] == b"to a plain socket"
        await close_and_wait(client, cproto)
        await close_and_wait(server, sproto)

    run(loop, main())


def test_host_names_are_resolved(loop, sockets):
    async def main():
        peer = plain(sockets)
        tr, proto = await loop.create_datagram_endpoint(
            Dgram, local_addr=("localhost", 0), remote_addr=("localhost", peer.getsockname()[1]),
            family=socket.AF_INET)
        assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
        assert tr.get_extra_info("peername") == peer.getsockname()
        tr.sendto(b"resolved")
        assert (await recv_plain(peer))[0] == b"resolved"
        await close_and_wait(tr, proto)

    run(loop, main())


@pytest.mark.parametrize("side", ["local_addr", "remote_addr"])
@pytest.mark.parametrize("addr", [
    ("127.0.0.1", 0, 0, 0), ("127.0.0.1",), ["127.0.0.1", 0], "127.0.0.1:9",
], ids=["4-tuple", "1-tuple", "list", "str"])
def test_inet_address_must_be_a_2_tuple(loop, loop_kind, side, addr):
    # 3.10 checks with an assert (AssertionError); tokioloop raises 3.11's TypeError everywhere.
    expected = AssertionError if stdlib_has_bug(loop_kind, "datagram_addr_asserts") else TypeError

    async def main():
        with pytest.raises(expected, match="^2-tuple is expected$"):
            await loop.create_datagram_endpoint(Dgram, **{side: addr})

    run(loop, main())


@pytest.mark.parametrize("side", ["local_addr", "remote_addr"])
@pytest.mark.parametrize("addr", [("/tmp/x", 0), b"/tmp/x", 5], ids=["tuple", "bytes", "int"])
def test_unix_address_must_be_a_str(loop, side, addr):
    async def main():
        with pytest.raises(TypeError, match="^string is expected$"):
            await loop.create_datagram_endpoint(Dgram, family=socket.AF_UNIX, **{side: addr})

    run(loop, main())


def test_connect_failure_propagates(loop, short_tmp):
    async def main():
        missing = os.path.join(short_tmp, "nobody")
        with pytest.raises(FileNotFoundError):
            await loop.create_datagram_endpoint(
                Dgram, remote_addr=missing, family=socket.AF_UNIX)

    run(loop, main())


def test_unix_paths(loop, sockets, short_tmp):
    async def main():
        a, b = os.path.join(short_tmp, "a"), os.path.join(short_tmp, "b")
        ta, pa = await loop.create_datagram_endpoint(Dgram, local_addr=a, family=socket.AF_UNIX)
        tb, pb = await loop.create_datagram_endpoint(Dgram, local_addr=b, family=socket.AF_UNIX)
        assert ta.get_extra_info("sockname") == a
        assert ta.get_extra_info("peername") is None
        ta.sendto(b"a to b", b)
        assert await pb.wait_datagrams(1) == [(b"a to b", a)]  # the peer address is the path
        tb.sendto(b"b to a", a)
        assert await pa.wait_datagrams(1) == [(b"b to a", b)]
        unnamed = plain(sockets, socket.AF_UNIX, None)
        unnamed.sendto(b"anonymous", a)
        await pa.wait_datagrams(2)
        assert pa.datagrams[1] == (b"anonymous", None)  # an unbound sender has no address
        await close_and_wait(ta, pa)
        await close_and_wait(tb, pb)
        # Unlike a Unix stream server, a datagram endpoint leaves its socket file behind.
        assert os.path.exists(a) and os.path.exists(b)

    run(loop, main())


def test_unix_stale_socket_file_is_replaced(loop, sockets, short_tmp):
    path = os.path.join(short_tmp, "stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as old:
        old.bind(path)  # closing leaves the file: a stale socket

    async def main():
        tr, proto = await loop.create_datagram_endpoint(
            Dgram, local_addr=path, family=socket.AF_UNIX)
        plain(sockets, socket.AF_UNIX, None).sendto(b"fresh", path)
        assert (await proto.wait_datagrams(1))[0][0] == b"fresh"
        await close_and_wait(tr, proto)

    run(loop, main())


def test_unix_path_that_is_not_a_socket_is_kept(loop, short_tmp):
    path = os.path.join(short_tmp, "regular")
    with open(path, "w") as f:
        f.write("keep me")

    async def main():
        with pytest.raises(OSError):
            await loop.create_datagram_endpoint(Dgram, local_addr=path, family=socket.AF_UNIX)

    run(loop, main())
    with open(path) as f:
        assert f.read() == "keep me"


def test_unix_abstract_name(loop, sockets):
    name = f"\0tokioloop-udp-test-{os.getpid()}-{id(loop)}"

    async def main():
        tr, proto = await loop.create_datagram_endpoint(
            Dgram, local_addr=name, family=socket.AF_UNIX)
        assert tr.get_extra_info("sockname") == name.encode()
        sender = plain(sockets, socket.AF_UNIX, None)
        sender.sendto(b"abstract", name)
        assert await proto.wait_datagrams(1) == [(b"abstract", None)]
        await close_and_wait(tr, proto)

    run(loop, main())


# -- sock= -----------------------------------------------------------------------------------


def test_sock_is_used_as_given(loop, sockets):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        here = sock.getsockname()
        tr, proto = await loop.create_datagram_endpoint(Dgram, sock=sock)
        assert not sock.getblocking()
        assert tr.get_extra_info("socket").fileno() == sock.fileno()
        assert tr.get_extra_info("sockname") == here
        assert tr.get_extra_info("peername") is None
        peer = plain(sockets)
        peer.sendto(b"in", here)
        assert await proto.wait_datagrams(1) == [(b"in", peer.getsockname())]
        tr.sendto(b"out", peer.getsockname())
        assert await recv_plain(peer) == (b"out", here)
        await close_and_wait(tr, proto)
        assert sock.fileno() == -1  # connection_lost closed it

    run(loop, main())


def test_sock_unix_socketpair_peer_has_no_address(loop, sockets):
    async def main():
        ours, theirs = sockets(*socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
        tr, proto = await loop.create_datagram_endpoint(Dgram, sock=ours)
        theirs.send(b"unnamed")
        assert await proto.wait_datagrams(1) == [(b"unnamed", None)]
        await close_and_wait(tr, proto)

    run(loop, main())


def test_sock_of_the_wrong_type_is_refused(loop, sockets):
    async def main():
        stream = sockets(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        with pytest.raises(ValueError) as info:
            await loop.create_datagram_endpoint(Dgram, sock=stream)
        assert str(info.value) == WRONG_SOCK_MESSAGE + repr(stream)
        try:
            raw = sockets(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP))
        except PermissionError:
            return  # no CAP_NET_RAW: the stream case is the whole test
        if RAW_SOCK_ACCEPTED:  # 3.13: only SOCK_STREAM is refused (gh-114887)
            tr, proto = await loop.create_datagram_endpoint(Dgram, sock=raw)
            await close_and_wait(tr, proto)
        else:
            with pytest.raises(ValueError, match="^A UDP Socket was expected, got "):
                await loop.create_datagram_endpoint(Dgram, sock=raw)

    run(loop, main())


@pytest.mark.parametrize("kwargs, listed", [
    ({"local_addr": ("127.0.0.1", 0)}, "local_addr=('127.0.0.1', 0)"),
    ({"remote_addr": ("127.0.0.1", 9), "family": socket.AF_INET},
     "remote_addr=('127.0.0.1', 9), family=2"),
    ({"proto": 17, "flags": 1, "reuse_port": True}, "proto=17, flags=1, reuse_port=True"),
    ({"allow_broadcast": True, "reuse_port": False}, "allow_broadcast=True"),
])
def test_sock_with_socket_modifiers_is_refused(loop, sockets, kwargs, listed):
    sock = sockets(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    prefix = "socket modifier keyword arguments can not be used when sock is specified. "
    parts = [re.escape(p) for p in listed.split(", ")]
    if HAS_REUSE_ADDRESS:
        # 3.10 lists its unset reuse_address sentinel (a truthy object()) among the problems,
        # just before reuse_port and allow_broadcast.
        at = sum(1 for p in listed.split(", ") if p.split("=")[0] not in TAIL_OPTS)
        parts.insert(at, "reuse_address=<object object at 0x[0-9a-f]+>")
    pattern = re.escape(prefix) + r"\(" + ", ".join(parts) + r"\)"

    async def main():
        with pytest.raises(ValueError, match=f"^{pattern}$"):
            await loop.create_datagram_endpoint(Dgram, sock=sock, **kwargs)
        assert sock.getblocking()  # refused before touching the socket

    run(loop, main())


def test_sock_with_falsy_modifiers_is_accepted(loop, sockets):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tr, proto = await loop.create_datagram_endpoint(
            Dgram, sock=sock, local_addr=None, family=0, proto=0, flags=0,
            reuse_port=False, allow_broadcast=False)
        await close_and_wait(tr, proto)

    run(loop, main())


# -- socket options --------------------------------------------------------------------------


def test_no_socket_options_unless_asked(loop):
    async def main():
        tr, proto = await loop.create_datagram_endpoint(Dgram, local_addr=("127.0.0.1", 0))
        sock = tr.get_extra_info("socket")
        for opt in (socket.SO_REUSEADDR, socket.SO_REUSEPORT, socket.SO_BROADCAST):
            assert sock.getsockopt(socket.SOL_SOCKET, opt) == 0, opt
        await close_and_wait(tr, proto)

    run(loop, main())


def test_reuse_port_shares_a_port(loop):
    async def main():
        first, p1 = await loop.create_datagram_endpoint(
            Dgram, local_addr=("127.0.0.1", 0), reuse_port=True)
        addr = first.get_extra_info("sockname")
        assert first.get_extra_info("socket").getsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        second, p2 = await loop.create_datagram_endpoint(Dgram, local_addr=addr, reuse_port=True)
        assert second.get_extra_info("sockname") == addr
        with pytest.raises(OSError):  # without reuse_port the port is taken
            await loop.create_datagram_endpoint(Dgram, local_addr=addr)
        await close_and_wait(first, p1)
        await close_and_wait(second, p2)

    run(loop, main())


def test_allow_broadcast(loop, sockets):
    async def main():
        peer, other = plain(sockets), plain(sockets)
        tr, proto = await loop.create_datagram_endpoint(
            Dgram, remote_addr=peer.getsockname(), allow_broadcast=True)
        sock = tr.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
        assert tr.get_extra_info("peername") is None  # not connected...
        tr.sendto(b"default address")  # ...but remote_addr is the default destination
        data, addr = await recv_plain(peer)
        assert data == b"default address"
        with pytest.raises(ValueError, match="^Invalid address: must be None or "):
            tr.sendto(b"elsewhere", other.getsockname())
        other.sendto(b"unconnected sockets hear anyone", addr)
        assert await proto.wait_datagrams(1) == [
            (b"unconnected sockets hear anyone", other.getsockname())]
        await close_and_wait(tr, proto)

    run(loop, main())


@pytest.mark.skipif(not HAS_REUSE_ADDRESS, reason="reuse_address was removed in 3.11")
def test_reuse_address_3_10(loop):
    async def main():
        # bpo-37228: True is refused, False is accepted with a DeprecationWarning.
        with pytest.raises(ValueError, match="^Passing `reuse_address=True` is no longer"):
            await loop.create_datagram_endpoint(
                Dgram, local_addr=("127.0.0.1", 0), reuse_address=True)
        with pytest.warns(DeprecationWarning, match="reuse_address"):
            tr, proto = await loop.create_datagram_endpoint(
                Dgram, local_addr=("127.0.0.1", 0), reuse_address=False)
        await close_and_wait(tr, proto)

    run(loop, main())


@pytest.mark.skipif(HAS_REUSE_ADDRESS, reason="3.10 still takes reuse_address")
@pytest.mark.parametrize("value", [True, False, None])
def test_reuse_address_is_not_a_parameter(loop, value):
    async def main():
        with pytest.raises(TypeError, match="unexpected keyword argument 'reuse_address'"):
            await loop.create_datagram_endpoint(
                Dgram, local_addr=("127.0.0.1", 0), reuse_address=value)

    run(loop, main())
