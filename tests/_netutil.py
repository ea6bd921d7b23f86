"""Helpers shared by the socket-level tests (test_sock, test_connect, test_server): IPv6
detection, plain listening sockets and the sendfile payload. The fixtures that go with them
live in conftest.py: ``sockets`` (closes every registered socket at teardown) and
``payload_file`` (an open file holding ``PAYLOAD``)."""

import asyncio
import socket

import pytest

HAS_IPV6 = socket.has_ipv6


def _ipv6_loopback_works():
    if not HAS_IPV6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


IPV6_OK = _ipv6_loopback_works()
needs_ipv6 = pytest.mark.skipif(not IPV6_OK, reason="no IPv6 loopback")

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every byte value


async def check_unix_arguments(create, path, missing):
    """The argument errors create_unix_connection and create_unix_server (``create``) share:
    neither ``path`` nor a socket (the ``missing`` message), both, a socket that is not
    AF_UNIX, and an ssl_handshake_timeout without ssl. Nothing is created at ``path``."""
    with pytest.raises(ValueError, match=missing):
        await create(asyncio.Protocol)
    with socket.socket(socket.AF_UNIX) as sock:
        with pytest.raises(ValueError, match="path and sock can not be specified"):
            await create(asyncio.Protocol, path, sock=sock)
    with socket.socket(socket.AF_INET) as sock:
        with pytest.raises(ValueError, match="A UNIX Domain Stream Socket was expected"):
            await create(asyncio.Protocol, sock=sock)
    with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
        await create(asyncio.Protocol, path, ssl_handshake_timeout=1)


async def read_all(loop, sock, size):
    """Receive from ``sock`` until ``size`` bytes have come or the peer has closed."""
    got = bytearray()
    while len(got) < size:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def listener(sockets, family=socket.AF_INET, host="127.0.0.1", backlog=16):
    """A non-blocking TCP socket listening on an ephemeral port of ``host``."""
    srv = sockets(socket.socket(family, socket.SOCK_STREAM))
    srv.setblocking(False)
    srv.bind((host, 0))
    srv.listen(backlog)
    return srv


def free_port():
    """A TCP port on 127.0.0.1 nobody listens on (connecting to it is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def connect_from_busy_address(loop):
    """create_connection whose local_addr is already taken: it fails with OSError."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", free_port(), local_addr=busy.getsockname()
            )


async def serve_on_busy_address(loop):
    """create_server on a port another socket listens on: it fails with OSError."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            await loop.create_server(
                asyncio.Protocol, "127.0.0.1", busy.getsockname()[1], reuse_address=False
            )
