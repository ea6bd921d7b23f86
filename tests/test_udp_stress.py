"""Datagram endpoints under load, on both loops (stdlib asyncio is the oracle).

Seeded and bounded to a few seconds per loop. Only what is deterministic is asserted:
* UDP (127.0.0.1): 50 unconnected endpoints with small receive buffers exchange bursts far
  larger than those buffers while some of them close or abort at random points. Datagrams may be
  dropped; every datagram that arrives must be intact (each carries its own CRC and length),
  nothing reaches the exception handler, error_received sees only OSErrors, and every transport
  gets connection_lost(None) exactly once.
* AF_UNIX (paths in a private directory): connected sender/receiver pairs with a tiny send
  buffer, so sends queue in the transport and flow control engages. AF_UNIX datagrams are
  neither lost nor reordered: a sender that close()s delivers everything it sent, in order; one
  that abort()s delivers an in-order prefix; pause_writing and resume_writing pair up.
* No file descriptor is left behind across rounds.
"""

import asyncio
import gc
import os
import random
import socket
import struct
import zlib

import pytest
from _udp import Dgram, open_fds, short_tmp  # noqa: F401  (fixture)

HEADER = struct.Struct("!IHHI")  # crc32(body), sender, body length, sequence number
ROUNDS = 3


def make_datagram(rng, sender, seq, max_body=1400):
    body = rng.randbytes(rng.randint(0, max_body))
    return HEADER.pack(zlib.crc32(body), sender, len(body), seq) + body


def intact(data):
    if len(data) < HEADER.size:
        return False
    crc, _, length, _ = HEADER.unpack_from(data)
    body = data[HEADER.size:]
    return len(body) == length and zlib.crc32(body) == crc


def sequence(data):
    return HEADER.unpack_from(data)[3]


async def finish(protos):
    """Wait for every connection_lost, then a few turns more (a second call would show)."""
    for proto in protos:
        assert await proto.wait_lost() is None
    for _ in range(5):
        await asyncio.sleep(0)
    assert [p.count("lost") for p in protos] == [1] * len(protos)


async def udp_round(loop, rng, count=50, burst=120):
    endpoints = []
    for _ in range(count):
        tr, proto = await loop.create_datagram_endpoint(Dgram, local_addr=("127.0.0.1", 0))
        sock = tr.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        endpoints.append((tr, proto))
    addrs = [tr.get_extra_info("sockname") for tr, _ in endpoints]
    # A fifth of the endpoints end during the burst, half of them by abort().
    enders = {i: (rng.randrange(burst), rng.choice(("close", "abort")))
              for i in rng.sample(range(count), count // 5)}

    async def sender(i):
        tr, _ = endpoints[i]
        stop_at, how = enders.get(i, (None, None))
        for seq in range(burst):
            if seq == stop_at:
                getattr(tr, how)()
            if tr.is_closing():
                return
            tr.sendto(make_datagram(rng, i, seq), rng.choice(addrs))
            if seq % 16 == 15:
                await asyncio.sleep(0)

    await asyncio.gather(*(sender(i) for i in range(count)))
    await asyncio.sleep(0.05)  # let what is in flight arrive
    for tr, _ in endpoints:
        tr.close()
    protos = [proto for _, proto in endpoints]
    await finish(protos)
    received = [data for proto in protos for data, _ in proto.datagrams]
    assert received, "some datagrams arrive"
    assert all(intact(data) for data in received)
    assert all(isinstance(e, OSError) for p in protos for e in p.errors)
    return len(received)


async def unix_round(loop, rng, directory, pairs=8, burst=150):
    plans = []
    for k in range(pairs):
        a = os.path.join(directory, f"s{k}")
        b = os.path.join(directory, f"r{k}")
        rtr, rproto = await loop.create_datagram_endpoint(
            Dgram, local_addr=b, family=socket.AF_UNIX)
        str_, sproto = await loop.create_datagram_endpoint(
            Dgram, local_addr=a, remote_addr=b, family=socket.AF_UNIX)
        str_.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        how = rng.choice(("close", "close", "abort"))
        plans.append((str_, sproto, rtr, rproto, how, rng.randrange(burst // 2, burst)))

    for str_, sproto, _, _, how, stop_at in plans:
        for seq in range(stop_at):
            str_.sendto(make_datagram(rng, 0, seq, max_body=2000))
        getattr(str_, how)()
    await finish([p[1] for p in plans])  # close() returns only once the queue has drained
    for str_, sproto, rtr, rproto, how, stop_at in plans:
        if how == "close":
            await rproto.wait_datagrams(stop_at)
        rtr.close()
    await finish([p[3] for p in plans])
    for str_, sproto, rtr, rproto, how, stop_at in plans:
        got = [data for data, _ in rproto.datagrams]
        assert all(intact(data) for data in got)
        assert [sequence(data) for data in got] == list(range(len(got)))  # in order, no gaps
        if how == "close":
            assert len(got) == stop_at  # close() flushed everything
        else:
            assert len(got) <= stop_at
        assert sproto.count("pause") in (sproto.count("resume"), sproto.count("resume") + 1)
        if how == "close":
            assert sproto.count("pause") == sproto.count("resume")
        assert sproto.errors == [] and rproto.errors == []
        os.unlink(str_.get_extra_info("sockname"))
        os.unlink(rtr.get_extra_info("sockname"))
    return sum(p[3].count("data") for p in plans)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [1, 2])
def test_udp_bursts_with_random_close_and_abort(loop, seed):
    rng = random.Random(seed)

    async def main():
        fds = []
        for _ in range(ROUNDS):
            await udp_round(loop, rng)
            gc.collect()
            fds.append(open_fds())
        assert fds[1:] == fds[:1] * (ROUNDS - 1), f"fds per round: {fds}"

    loop.run_until_complete(asyncio.wait_for(main(), 30))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [1, 2])
def test_unix_datagram_queues_flush_in_order(loop, seed, short_tmp):
    rng = random.Random(seed)

    async def main():
        fds = []
        for _ in range(ROUNDS):
            await unix_round(loop, rng, short_tmp)
            gc.collect()
            fds.append(open_fds())
        assert fds[1:] == fds[:1] * (ROUNDS - 1), f"fds per round: {fds}"
        assert os.listdir(short_tmp) == []

    loop.run_until_complete(asyncio.wait_for(main(), 30))
