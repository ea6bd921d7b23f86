"""Name resolution: ``getaddrinfo`` and ``getnameinfo``, natively off the loop's thread.

Lookups run on the runtime's blocking pool without the GIL (src/dns.rs) and resolve their
future in a later turn; the answers and errors are exactly ``socket.getaddrinfo``'s and
``socket.getnameinfo``'s (tests compare). When the host is already a numeric IPv4/IPv6 literal
and the rest of the query is simple enough that ``socket.getaddrinfo``'s answer is fully
determined (no resolver, no service names, no configuration-dependent ordering), the answer
is built here without a thread hop. Arguments of unusual types, and debug mode (which logs
and times the call as asyncio does), go through ``run_in_executor(None, ...)`` as in asyncio.
"""

from __future__ import annotations

import logging
import socket
from asyncio.log import logger

_HAS_IPv6 = hasattr(socket, "AF_INET6")

# Flags that do not change getaddrinfo's answer for a numeric host and a numeric port.
_NEUTRAL_FLAGS = socket.AI_NUMERICHOST | socket.AI_PASSIVE | getattr(socket, "AI_NUMERICSERV", 0)

# What getaddrinfo lists for each socket type, in its order, when type and proto are 0.
_ALL_TYPES = (
    (socket.SOCK_STREAM, socket.IPPROTO_TCP),
    (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
    (socket.SOCK_RAW, 0),
)
_PROTO_OF_TYPE = {socket.SOCK_STREAM: socket.IPPROTO_TCP, socket.SOCK_DGRAM: socket.IPPROTO_UDP}


def _literal_family(host):
    """(family, canonical text) if ``host`` is a numeric IP literal inet_pton accepts."""
    if not isinstance(host, str) or not host or "%" in host:
        return None
    families = (socket.AF_INET, socket.AF_INET6) if _HAS_IPv6 else (socket.AF_INET,)
    for af in families:
        try:
            packed = socket.inet_pton(af, host)
        except (OSError, ValueError):
            continue
        return af, socket.inet_ntop(af, packed)
    return None


def _numeric_port(port):
    if port is None:
        return 0
    if type(port) is int:
        return port if 0 <= port <= 65535 else None
    if isinstance(port, str) and port.isascii() and port.isdigit() and len(port) <= 5:
        value = int(port)
        return value if value <= 65535 else None
    return None


def numeric_addrinfo(host, port, family=0, type=0, proto=0, flags=0):
    """socket.getaddrinfo's answer for a numeric host and port, or None to ask the resolver."""
    if flags & ~_NEUTRAL_FLAGS:
        return None
    literal = _literal_family(host)
    if literal is None:
        return None
    af, text = literal
    if family not in (socket.AF_UNSPEC, af):
        return None
    port = _numeric_port(port)
    if port is None:
        return None
    if type == 0:
        if proto != 0:
            return None
        kinds = _ALL_TYPES
    elif type in _PROTO_OF_TYPE and proto in (0, _PROTO_OF_TYPE[type]):
        kinds = ((socket.SocketKind(type), _PROTO_OF_TYPE[type]),)
    else:
        return None
    if af == socket.AF_INET:
        address = (text, port)
    else:
        address = (text, port, 0, 0)
    af = socket.AddressFamily(af)
    return [(af, socket.SocketKind(kind), kproto, "", address) for kind, kproto in kinds]


def _native_arguments(host, port, family, type, proto, flags):
    """The arguments as the native lookup takes them (host and port as bytes), or None when
    socket.getaddrinfo itself should judge them (odd types, encodings, NUL characters)."""
    try:
        if host is None:
            host_bytes = None
        elif isinstance(host, str):
            host_bytes = host.encode("idna")  # what the socket module does with str hosts
        elif isinstance(host, bytes):
            host_bytes = bytes(host)
        else:
            return None
        if port is None:
            port_bytes = None
        elif type_of(port) is int:
            port_bytes = str(port).encode()
        elif isinstance(port, str):
            port_bytes = port.encode("utf-8")
        elif isinstance(port, bytes):
            port_bytes = bytes(port)
        else:
            return None
    except Exception:
        return None
    if any(b"\0" in value for value in (host_bytes, port_bytes) if value is not None):
        return None
    numbers = (family, type, proto, flags)
    # Comparisons, not `in range(...)`: that scans the range for int subclasses (IntEnum).
    if not all(isinstance(value, int) and -(2**31) <= value < 2**31 for value in numbers):
        return None
    return (host_bytes, port_bytes, *map(int, numbers))


type_of = type


def infos_from_native(raw):
    """Builds socket.getaddrinfo's list from the native lookup's raw entries."""
    infos = []
    for family, kind, proto, canonname, packed, port, flowinfo, scope_id in raw:
        address = socket.inet_ntop(family, packed)
        if family == socket.AF_INET:
            sockaddr = (address, port)
        else:
            sockaddr = (address, port, flowinfo, scope_id)
        infos.append((_as_enum(socket.AddressFamily, family), _as_enum(socket.SocketKind, kind), proto, canonname, sockaddr))
    return infos


def _as_enum(enum_class, value):
    try:
        return enum_class(value)
    except ValueError:
        return value


def _nameinfo_arguments(sockaddr, flags):
    """(host, port, flowinfo, scope_id, tuple length, flags) for the native getnameinfo, or
    None when socket.getnameinfo itself should judge odd types or out-of-range values."""
    if type(sockaddr) is not tuple or not 2 <= len(sockaddr) <= 4 or type(flags) is not int:
        return None
    host, port, *rest = sockaddr
    if type(host) is not str or type(port) is not int or any(type(v) is not int for v in rest):
        return None
    flowinfo, scope_id = (list(rest) + [0, 0])[:2]
    if not (0 <= port <= 0xFFFF and 0 <= flowinfo <= 0xFFFFF and 0 <= scope_id <= 0xFFFFFFFF):
        return None
    if not -(2**31) <= flags < 2**31 or "\0" in host:
        return None
    try:
        encoded = host.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return encoded, port, flowinfo, scope_id, len(sockaddr), flags


class DnsSupport:
    """Mixin for ``Loop``: getaddrinfo and getnameinfo."""

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        """Resolve ``host``/``port`` as socket.getaddrinfo does, off the loop's thread."""
        if self.get_debug():
            resolve = self._getaddrinfo_debug
        else:
            try:
                infos = numeric_addrinfo(host, port, family, type, proto, flags)
            except Exception:
                infos = None  # odd argument types: let socket.getaddrinfo judge them
            if infos is not None:
                return infos
            native = _native_arguments(host, port, family, type, proto, flags)
            if native is not None:
                return await self._getaddrinfo_native(*native)
            resolve = socket.getaddrinfo
        return await self.run_in_executor(None, resolve, host, port, family, type, proto, flags)

    def _getaddrinfo_debug(self, host, port, family, type, proto, flags):
        parts = [f"{host}:{port!r}"]
        for name, value in (("family", family), ("type", type), ("proto", proto),
                            ("flags", flags)):
            if value:
                parts.append(f"{name}={value!r}")
        query = ", ".join(parts)
        logger.debug("Get address info %s", query)
        started = self.time()
        infos = socket.getaddrinfo(host, port, family, type, proto, flags)
        took = self.time() - started
        level = logging.INFO if took >= self.slow_callback_duration else logging.DEBUG
        logger.log(level, f"Getting address info {query} took {took * 1e3:.3f}ms: {infos!r}")
        return infos

    async def getnameinfo(self, sockaddr, flags=0):
        """socket.getnameinfo(sockaddr, flags), off the loop's thread."""
        native = None if self.get_debug() else _nameinfo_arguments(sockaddr, flags)
        if native is not None:
            return await self._getnameinfo_native(*native)
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    async def _resolve_address(self, address, *, family=0, type=socket.SOCK_STREAM, proto=0,
                               flags=0):
        """asyncio's _ensure_resolved: an IP literal as is, anything else through getaddrinfo."""
        host, port = address[:2]
        info = _ip_literal_info(host, port, family, type, proto, *address[2:])
        if info is not None:
            return [info]
        return await self.getaddrinfo(host, port, family=family, type=type, proto=proto,
                                      flags=flags)


def _ip_literal_info(host, port, family, type, proto, flowinfo=0, scopeid=0):
    """The address asyncio uses without resolving when ``host`` is an IP literal, else None.

    Unlike numeric_addrinfo this keeps the host text as given and the caller's flowinfo and
    scope id, as asyncio's ``_ipaddr_info`` does for connect()."""
    if not hasattr(socket, "inet_pton"):
        return None
    if host is None or proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    if type == socket.SOCK_STREAM:
        proto = socket.IPPROTO_TCP
    elif type == socket.SOCK_DGRAM:
        proto = socket.IPPROTO_UDP
    else:
        return None
    if port is None or port == b"" or port == "":
        port = 0
    else:
        try:
            port = int(port)  # a service name such as "http" goes to getaddrinfo
        except (TypeError, ValueError):
            return None
    if family == socket.AF_UNSPEC:
        candidates = [socket.AF_INET] + ([socket.AF_INET6] if _HAS_IPv6 else [])
    else:
        candidates = [family]
    if isinstance(host, bytes):
        host = host.decode("idna")
    if "%" in host:
        return None  # Linux's inet_pton rejects an IPv6 zone index
    for af in candidates:
        try:
            socket.inet_pton(af, host)
        except OSError:
            continue
        if _HAS_IPv6 and af == socket.AF_INET6:
            return af, type, proto, "", (host, port, flowinfo, scopeid)
        return af, type, proto, "", (host, port)
    return None
