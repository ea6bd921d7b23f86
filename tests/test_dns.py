"""loop.getaddrinfo / loop.getnameinfo, and tokioloop's numeric-host shortcut."""

import asyncio
import socket

import pytest

from conftest import import_tokioloop, tokioloop_only

HOSTS = ["127.0.0.1", "0.0.0.0", "255.255.255.255", "10.1.2.3", "::1", "::", "0:0:0:0:0:0:0:1",
         "fe80::1", "2001:DB8::A", "::ffff:1.2.3.4", "2001:db8:0:0:1:0:0:1"]
PORTS = [None, 0, 80, 65535, "443", "080", "0"]
QUERIES = [
    dict(),
    dict(type=socket.SOCK_STREAM),
    dict(type=socket.SOCK_DGRAM),
    dict(type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
    dict(type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP),
    dict(family=socket.AF_INET, type=socket.SOCK_STREAM),
    dict(family=socket.AF_INET6, type=socket.SOCK_STREAM),
    dict(flags=socket.AI_NUMERICHOST),
    dict(flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV, type=socket.SOCK_STREAM),
]


def _stdlib(host, port, family=0, type=0, proto=0, flags=0):
    try:
        return socket.getaddrinfo(host, port, family, type, proto, flags)
    except OSError as exc:
        return type_and_args(exc)


def type_and_args(exc):
    return (type(exc), exc.args)


async def _loop_answer(loop, host, port, **kw):
    try:
        return await loop.getaddrinfo(host, port, **kw)
    except OSError as exc:
        return type_and_args(exc)


def test_getaddrinfo_numeric_matches_socket(loop):
    async def main():
        mismatches = []
        for host in HOSTS:
            for port in PORTS:
                for kw in QUERIES:
                    want = _stdlib(host, port, **kw)
                    got = await _loop_answer(loop, host, port, **kw)
                    if got != want or repr(got) != repr(want):
                        mismatches.append((host, port, kw, got, want))
        return mismatches

    assert loop.run_until_complete(main()) == []


def test_getaddrinfo_localhost(loop):
    async def main():
        return await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)

    infos = loop.run_until_complete(main())
    assert infos == socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    assert infos
    for family, kind, proto, _, addr in infos:
        assert family in (socket.AF_INET, socket.AF_INET6)
        assert kind == socket.SOCK_STREAM
        assert addr[1] == 80


def test_getaddrinfo_service_name_and_none_host(loop):
    run = loop.run_until_complete
    for args, kw in [(("127.0.0.1", "http"), dict(type=socket.SOCK_STREAM)),
                     ((None, 8080), dict(type=socket.SOCK_STREAM)),
                     ((None, 8080), dict(type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)),
                     (("127.0.0.1", 80), dict(type=socket.SOCK_RAW))]:
        try:
            want = socket.getaddrinfo(*args, **kw)
        except OSError as exc:
            want = type_and_args(exc)
        assert run(_loop_answer(loop, *args, **kw)) == want


def test_getaddrinfo_errors_propagate(loop):
    run = loop.run_until_complete
    # An IPv4 literal asked for as IPv6, and a port out of range: the resolver's own errors.
    for host, port, kw in [("127.0.0.1", 80, dict(family=socket.AF_INET6)),
                           ("127.0.0.1", "no-such-service-xyz", dict())]:
        with pytest.raises(socket.gaierror) as info:
            socket.getaddrinfo(host, port, **kw)
        with pytest.raises(socket.gaierror) as got:
            run(loop.getaddrinfo(host, port, **kw))
        assert got.value.args == info.value.args
    # A float port: socket.getaddrinfo raises OSError("Int or String expected").
    with pytest.raises(OSError) as info:
        socket.getaddrinfo("127.0.0.1", 1.5)
    with pytest.raises(OSError) as got:
        run(loop.getaddrinfo("127.0.0.1", 1.5))
    assert type_and_args(got.value) == type_and_args(info.value)


def test_getaddrinfo_debug_mode(loop):
    loop.set_debug(True)
    got = loop.run_until_complete(loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM))
    assert got == socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)


def test_getnameinfo(loop):
    sa = ("127.0.0.1", 80)
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    got = loop.run_until_complete(loop.getnameinfo(sa, flags))
    assert got == socket.getnameinfo(sa, flags) == ("127.0.0.1", "80")
    got = loop.run_until_complete(loop.getnameinfo(("127.0.0.1", 0)))
    assert got == socket.getnameinfo(("127.0.0.1", 0), 0)


def test_getaddrinfo_concurrent(loop):
    async def main():
        return await asyncio.gather(
            loop.getaddrinfo("localhost", 1),
            loop.getaddrinfo("127.0.0.1", 2),
            loop.getaddrinfo("::1", 3, type=socket.SOCK_DGRAM),
        )

    a, b, c = loop.run_until_complete(main())
    assert a == socket.getaddrinfo("localhost", 1)
    assert b == socket.getaddrinfo("127.0.0.1", 2)
    assert c == socket.getaddrinfo("::1", 3, type=socket.SOCK_DGRAM)


@tokioloop_only
def test_lookups_skip_the_default_executor(loop, loop_kind):
    # Numeric hosts answer at once; other lookups run on the runtime's own blocking pool.
    assert loop._default_executor is None
    infos = loop.run_until_complete(loop.getaddrinfo("::1", 443, type=socket.SOCK_STREAM))
    assert infos == socket.getaddrinfo("::1", 443, type=socket.SOCK_STREAM)
    assert loop._default_executor is None
    infos = loop.run_until_complete(loop.getaddrinfo("localhost", 443, flags=socket.AI_CANONNAME))
    assert infos == socket.getaddrinfo("localhost", 443, flags=socket.AI_CANONNAME)
    assert loop._default_executor is None


@tokioloop_only
def test_close_with_a_lookup_in_flight(loop_kind):
    loop = import_tokioloop().new_event_loop()
    lookup = loop.create_task(loop.getaddrinfo("localhost", 80))
    loop.run_until_complete(asyncio.sleep(0))
    lookup.cancel()
    loop.run_until_complete(asyncio.gather(lookup, return_exceptions=True))
    loop.close()
    # "localhost" may resolve (from /etc/hosts) before the cancel lands: either outcome is fine,
    # what matters is that closing with the lookup's thread still running is clean.
    assert lookup.cancelled() or lookup.exception() is None


@tokioloop_only
def test_numeric_addrinfo_declines_what_it_cannot_mirror(loop_kind):
    numeric = import_tokioloop()._dns.numeric_addrinfo
    assert numeric("localhost", 80) is None
    assert numeric(None, 80) is None
    assert numeric("", 80) is None
    assert numeric("fe80::1%lo", 80) is None
    assert numeric("127.1", 80) is None  # inet_aton form: leave it to the resolver
    assert numeric("127.0.0.1", "http") is None
    assert numeric("127.0.0.1", 70000) is None
    assert numeric("127.0.0.1", 80, family=socket.AF_INET6) is None
    assert numeric("127.0.0.1", 80, flags=socket.AI_CANONNAME) is None
    assert numeric("127.0.0.1", 80, type=socket.SOCK_RAW) is None
    assert numeric(b"127.0.0.1", 80) is None


_NAMEINFO_CASES = [
    (("127.0.0.1", 80), 0),
    (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (("::1", 443, 0, 0), 0),
    (("::1", 22), socket.NI_NUMERICHOST),
    (("fe80::1", 80, 0, 1), socket.NI_NUMERICHOST),
    (("localhost", 80), 0),  # not numeric: gaierror, as socket.getnameinfo
    (("127.0.0.1", 80, 1), 0),  # IPv4 with flowinfo: OSError
    (("::1", 80, 0x100000), 0),  # flowinfo out of range: OverflowError
    ("127.0.0.1", 0),  # not a tuple: TypeError
    (("127.0.0.1",), 0),
    (("127.0.0.1", "80"), 0),
]


def _outcome(call, *args):
    try:
        return call(*args)
    except Exception as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("sockaddr,flags", _NAMEINFO_CASES)
def test_getnameinfo_matches_socket_module(loop, sockaddr, flags):
    if ":" in str(sockaddr[0]) and not socket.has_ipv6:
        pytest.skip("no IPv6")
    expected = _outcome(socket.getnameinfo, sockaddr, flags)
    got = _outcome(loop.run_until_complete, loop.getnameinfo(sockaddr, flags))
    assert got == expected
