"""TLS under load: 50 concurrent connections per round, each with a seeded random fate (a full
echo up to 1 MiB, a paused-then-resumed reader, a clean close part-way, an abort part-way),
both ends on the loop under test. Every echo is checked byte for byte, the process holds
no more file descriptors after the later rounds than after the first, and no connection's
objects (SSL objects, memory BIOs, transports, protocols) outlive their round.
"""

import asyncio
import gc
import os
import random
import ssl

from _netutil import PAYLOAD
from _tls import TIMEOUT, Recorder, certs, client_context, server_context, until  # noqa: F401

ADDR = "127.0.0.1"
CONNECTIONS = 50
ROUNDS = 3


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        if not self.transport.is_closing():
            self.transport.write(data)


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def live_connection_objects():
    """Objects of a TLS connection still alive, by type name (after a collection)."""
    gc.collect()
    kinds = (ssl.SSLObject, ssl.MemoryBIO, asyncio.BaseTransport, Recorder)
    counts = {}
    for obj in gc.get_objects():
        if isinstance(obj, kinds):
            name = type(obj).__name__
            counts[name] = counts.get(name, 0) + 1
    # MemoryBIO and SSLObject's C half are not GC-tracked; the SSLObject wrapper is.
    return counts


async def one_client(loop, port, ctx, rng, results):
    fate = rng.choice(["echo", "echo", "pause", "close", "abort"])
    size = rng.choice([len(PAYLOAD), rng.randrange(1, len(PAYLOAD))])
    start = rng.randrange(0, 256)
    data = PAYLOAD[start:] + PAYLOAD[:start]
    data = data[:size]
    tr, pr = await loop.create_connection(Recorder, ADDR, port, ssl=ctx)
    if fate == "abort":
        tr.write(data)
        tr.abort()
        assert await pr.closed() is None
    elif fate == "close":
        half = max(1, size // 2)
        tr.write(data[:half])
        assert await pr.read(half) == data[:half]
        tr.close()
        assert await pr.closed() is None
        assert bytes(pr.data) == data[:half]
    else:
        if fate == "pause":
            tr.pause_reading()
        tr.write(data)
        if fate == "pause":
            for _ in range(rng.randrange(1, 5)):
                await asyncio.sleep(0.01)
            assert pr.data == b""
            tr.resume_reading()
        got = await pr.read(size, timeout=TIMEOUT * 2)
        assert got == data, f"{fate} {size}: echo differs"
        tr.close()
        assert await pr.closed() is None
    results.append(fate)


def test_stress_concurrent_tls(loop, certs):
    rng = random.Random(20261130)

    async def one_round():
        made = []
        server = await loop.create_server(lambda: made.append(Echo()) or made[-1], ADDR, 0,
                                          ssl=server_context(certs))
        port = server.sockets[0].getsockname()[1]
        results = []
        await asyncio.wait_for(
            asyncio.gather(*(one_client(loop, port, client_context(certs), rng, results)
                             for _ in range(CONNECTIONS))), TIMEOUT * 3)
        assert len(results) == CONNECTIONS
        await until(lambda: len(made) == CONNECTIONS and all(p.lost.done() for p in made),
                    what="every server-side connection to end")
        server.close()
        await server.wait_closed()
        return results

    async def main():
        counts = []
        fates = set()
        for _ in range(ROUNDS):
            fates.update(await one_round())
            await asyncio.sleep(0)
            gc.collect()
            counts.append(fd_count())
            assert live_connection_objects() == {}, "a round's connections outlived it"
        assert fates == {"echo", "pause", "close", "abort"}
        assert counts == [counts[0]] * ROUNDS, f"fd counts per round: {counts}"

    loop.run_until_complete(main())
