"""Plot a run's telemetry: event-loop utilization and timer lateness over time, as a PNG.

    pip install tokioloop matplotlib
    python examples/telemetry_plot.py --seconds 10 --out telemetry.png

The recipe: a sampler task takes ``loop.metrics()`` every ``--every`` seconds; each pair of
neighbouring snapshots gives the window's utilization (``LoopMetrics.utilization``) and its
timer lateness (``Histogram.since`` then ``quantile``). Here the loop runs a made-up workload
that gets busier halfway through and blocks now and then, so both lines move. Every sample is
also written as CSV (``--csv``); without matplotlib only the CSV is written, and the script
says so. With no arguments it runs 3 seconds (CI runs it this way).
"""

import argparse
import asyncio
import csv
import random
import sys
import time

import tokioloop


async def workload(stop_at):
    """Idle-ish first, then busy; an occasional 30 ms blocking call makes timers late."""
    loop = asyncio.get_running_loop()
    halfway = (loop.time() + stop_at) / 2
    while loop.time() < stop_at:
        busy = loop.time() > halfway
        deadline = time.monotonic() + (0.004 if busy else 0.0005)
        while time.monotonic() < deadline:
            pass
        if random.random() < 0.02:
            time.sleep(0.03)
        await asyncio.sleep(0.001 if busy else 0.01)


async def sample(every, stop_at):
    loop = asyncio.get_running_loop()
    rows = []
    previous = loop.metrics()
    while loop.time() < stop_at:
        await asyncio.sleep(every)
        current = loop.metrics()
        late = current.timer_lateness.since(previous.timer_lateness)
        rows.append({
            "time": current.time,
            "utilization": current.utilization(previous),
            "lateness_p99_ms": late.quantile(0.99) * 1000 if late.count else 0.0,
            "callbacks_per_s": (current.callbacks - previous.callbacks) / (current.time - previous.time),
        })
        previous = current
    return rows


async def main(seconds, every):
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    rows, _ = await asyncio.gather(sample(every, stop_at), workload(stop_at))
    return rows


def plot(rows, path):
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no {path} (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = rows[0]["time"]
    times = [row["time"] - start for row in rows]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    top.plot(times, [row["utilization"] for row in rows])
    top.set_ylabel("utilization")
    top.set_ylim(0, 1.05)
    bottom.step(times, [row["lateness_p99_ms"] for row in rows], where="post")
    bottom.set_ylabel("timer lateness p99 (ms,\nbucket bound)")
    bottom.set_xlabel("seconds")
    figure.suptitle("tokioloop telemetry")
    figure.tight_layout()
    figure.savefig(path)
    print(f"wrote {path}")


def run(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--every", type=float, default=0.1)
    parser.add_argument("--out", default=None, help="PNG path (default: none unless given)")
    parser.add_argument("--csv", default=None, help="CSV path (default: print to stdout)")
    args = parser.parse_args(argv)
    rows = tokioloop.run(main(args.seconds, args.every))
    if not rows:
        sys.exit("no samples taken")
    out = open(args.csv, "w", newline="") if args.csv else sys.stdout
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    if args.csv:
        out.close()
    if args.out:
        plot(rows, args.out)


if __name__ == "__main__":
    run()
