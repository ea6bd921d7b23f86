#!/usr/bin/env python3
"""Chart the latest benchmark results: benches/results/chart.png.

Top panel: micro.py's CPU time per op, one group of bars per workload and one
bar per loop, each divided by the fastest loop's of that workload (1.0 = the
fastest, lower is better), with the min-max over the repeats as whiskers.
Loops that were not installed (or failed) have no bar.

Bottom panels, when an instructions.py run exists: its instructions per op,
one small chart per workload, each loop's bar stacked as CPython / the loop's
own native code / libc + other (just the total for a run made without
--split). rsloop can't run under valgrind, so it has no bar there.

It reads the newest benches/results/micro-*.json and instructions-*.json (by
modification time), or the files given. Needs matplotlib (pip install
".[bench]").

Usage:
    python benches/chart.py [MICRO_JSON] [--instructions PATH | --no-instructions]
                            [--out PATH]
"""

import argparse
import datetime
import glob
import json
import math
import os
import sys

try:
    import matplotlib
except ImportError:
    sys.exit("error: chart.py needs matplotlib: pip install \".[bench]\" (or pip install "
             "matplotlib)")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import instructions  # noqa: E402  (the kinds of a split)
import micro  # noqa: E402  (the loops' order, the results folder)

COLORS = {"asyncio": "#9a9a9a", "uvloop": "#4c72b0", "rloop": "#55a868",
          "rsloop": "#8172b2", "tokioloop": "#dd8452"}
KIND_COLORS = {"cpython": "#6b7b8c", "native": "#c44e52", "other": "#d4d4d4"}
CAP = 3.0  # the top panel's y limit, in multiples of the fastest; taller bars are cut
COLUMNS = 4  # small charts per row in the bottom panels


def newest(pattern):
    paths = glob.glob(os.path.join(micro.RESULTS, pattern))
    return max(paths, key=os.path.getmtime) if paths else None


def load(path):
    with open(path) as f:
        return json.load(f)


def ordered(names):
    """``names`` in micro.LOOPS' order, unknown names last."""
    names = set(names)
    known = [n for n in micro.LOOPS if n in names]
    return known + sorted(n for n in names if n not in micro.LOOPS)


def when(meta):
    """The run's date and time, as 2026-11-30 05:54."""
    try:
        return datetime.datetime.fromisoformat(meta["date"]).strftime("%Y-%m-%d %H:%M")
    except (KeyError, ValueError):
        return "unknown date"


def python_version(meta):
    return meta.get("python_version") or meta.get("python", "?").split()[0]


def run_kind(meta):
    quick = meta.get("quick", str(meta.get("mode", "")).startswith("quick"))
    return "quick run" if quick else "full run"


def loop_list(meta, loops):
    versions = meta.get("loop_versions", {})
    return ", ".join(f"{name} {versions.get(name, '?')}".replace("stdlib (Python ", "(Python ")
                     for name in loops)


def cpu_bars(data):
    """{workload: {loop: (median / fastest, min / fastest, max / fastest)}}, measured loops only."""
    per_op = {}
    for s in data.get("samples", []):
        if "error" not in s and s.get("ops"):
            per_op.setdefault((s["bench"], s["loop"]), []).append(1e6 * s["cpu"] / s["ops"])
    bars = {}
    for bench, by_loop in data["medians"].items():
        med = {name: m["cpu_us_per_op"] for name, m in by_loop.items() if "cpu_us_per_op" in m}
        if not med:
            continue
        best = min(med.values())
        bars[bench] = {}
        for name, value in med.items():
            samples = per_op.get((bench, name)) or [value]
            bars[bench][name] = (value / best, min(samples) / best, max(samples) / best)
    return bars


def draw_cpu(ax, data):
    bars = cpu_bars(data)
    benches = list(bars)
    loops = ordered({name for by_loop in bars.values() for name in by_loop})
    width = 0.8 / max(len(loops), 1)
    for i, name in enumerate(loops):
        xs, heights, lows, highs = [], [], [], []
        for j, bench in enumerate(benches):
            if name in bars[bench]:
                ratio, low, high = bars[bench][name]
                xs.append(j - 0.4 + width * (i + 0.5))
                heights.append(min(ratio, CAP))
                lows.append(min(ratio, CAP) - min(low, CAP))
                highs.append(min(high, CAP) - min(ratio, CAP))
        ax.bar(xs, heights, width * 0.92, color=COLORS.get(name, "#333333"), label=name,
               edgecolor="black" if name == micro.CANDIDATE else "none", linewidth=0.8,
               yerr=[lows, highs], error_kw={"elinewidth": 0.7, "capsize": 1.5,
                                             "ecolor": "#444444"})
        for x, bench in zip(xs, (b for b in benches if name in bars[b])):
            ratio = bars[bench][name][0]
            if ratio > CAP:  # cut: say how tall it really is
                ax.text(x, CAP * 0.985, f"{ratio:.1f}x", rotation=90, ha="center", va="top",
                        fontsize=7, color="white", fontweight="bold")
            elif ratio == 1.0:
                ax.text(x, 0.04, "fastest", rotation=90, ha="center", va="bottom",
                        fontsize=6.5, color="white")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", zorder=0)
    ax.set_xticks(range(len(benches)))
    ax.set_xticklabels(benches)
    ax.set_xlim(-0.5, len(benches) - 0.5)
    ax.set_ylim(0, CAP)
    ax.set_ylabel("CPU time per op ÷ the fastest loop's")
    ax.legend(ncol=len(loops), loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8,
              frameon=False, borderaxespad=0.2)
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    ax.set_axisbelow(True)
    return loops


def draw_split(axes, data):
    """One small chart per workload: instructions per op, stacked by kind when split."""
    results = data["results"]
    benches = list(results)
    for ax, bench in zip(axes, benches):
        measured = {name: r for name, r in results[bench].items() if "instr_per_op" in r}
        loops = ordered(measured)
        bottoms = [0.0] * len(loops)
        split = all("split" in measured[name] for name in loops)
        kinds = instructions.KINDS if split else ["total"]  # bottom to top
        for kind in kinds:
            values = [(measured[name]["split"][kind] if split else measured[name]["instr_per_op"])
                      / 1000 for name in loops]
            ax.bar(range(len(loops)), values, 0.7, bottom=bottoms,
                   color=KIND_COLORS.get(kind, "#9a9a9a"),
                   label=instructions.KIND_LABELS.get(kind, "total (this run has no split)"))
            bottoms = [b + v for b, v in zip(bottoms, values)]
        # asyncio costs 2-8x the native loops: cut its bar so theirs stay readable
        native = [t for name, t in zip(loops, bottoms) if name != "asyncio"]
        top = max(native or bottoms or [1]) * 1.3
        for x, total in enumerate(bottoms):
            if total > top:
                ax.text(x, top * 0.98, f"{total:.1f}k", ha="center", va="top", fontsize=7,
                        color="white", fontweight="bold")
            else:
                ax.text(x, total, f"{total:.1f}k", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(loops)))
        ax.set_xticklabels(loops, rotation=35, ha="right", fontsize=8)
        ax.set_title(bench, fontsize=9)
        ax.set_ylim(0, top)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", linewidth=0.4, alpha=0.5)
        ax.set_axisbelow(True)
    for ax in axes[len(benches):]:
        ax.set_visible(False)
    axes[0].set_ylabel("thousand instructions per op", fontsize=8)
    return axes[0].get_legend_handles_labels()


def caption(micro_data, micro_path, instr_data, instr_path):
    meta = micro_data["meta"]
    loops = ordered(name for name, v in meta.get("loop_versions", {}).items() if v)
    lines = [f"micro.py {run_kind(meta)} of {when(meta)} ({os.path.basename(micro_path)}), "
             f"Python {python_version(meta)}: {loop_list(meta, loops)}."]
    if instr_data:
        imeta = instr_data["meta"]
        skipped = sorted({name for r in instr_data["results"].values()
                          for name, v in r.items() if "skipped" in v})
        lines.append(f"instructions.py (callgrind) {run_kind(imeta)} of {when(imeta)} "
                     f"({os.path.basename(instr_path)}), Python {python_version(imeta)}"
                     + (f"; not measurable under valgrind: {', '.join(skipped)}" if skipped
                        else "") + ".")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("micro_json", nargs="?",
                        help="a micro.py JSON (default: the newest benches/results/micro-*.json)")
    parser.add_argument("--instructions", metavar="PATH",
                        help="an instructions.py JSON (default: the newest "
                             "benches/results/instructions-*.json, if any)")
    parser.add_argument("--no-instructions", action="store_true",
                        help="draw the micro.py panel only")
    parser.add_argument("--out", default=os.path.join(micro.RESULTS, "chart.png"),
                        help="where to write the PNG (default benches/results/chart.png)")
    args = parser.parse_args(argv)
    args.micro_json = args.micro_json or newest("micro-*.json")
    if args.micro_json is None:
        parser.error("no benches/results/micro-*.json: run python benches/micro.py --quick first")
    if args.no_instructions:
        args.instructions = None
    elif args.instructions is None:
        args.instructions = newest("instructions-*.json")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    micro_data = load(args.micro_json)
    instr_data = load(args.instructions) if args.instructions else None
    if instr_data and not any("instr_per_op" in r for by_loop in instr_data["results"].values()
                              for r in by_loop.values()):
        instr_data = None  # nothing measured: no panel

    rows = math.ceil(len(instr_data["results"]) / COLUMNS) if instr_data else 0
    fig = plt.figure(figsize=(13, 5.6 + 3.0 * rows), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[5.6, 3.0 * rows + 0.01])
    draw_cpu(top.subplots(), micro_data)
    repeats = micro_data["meta"].get("repeat", "?")
    top.suptitle("micro.py: CPU time per operation relative to the fastest loop of each "
                 f"workload (1.0 = fastest, lower is better;\nwhiskers: min-max over "
                 f"{repeats} repeats; bars over {CAP:.0f}x are cut and labelled)",
                 x=0.01, ha="left", fontsize=10)
    if instr_data:
        axes = list(bottom.subplots(rows, COLUMNS, squeeze=False).flat)
        handles, labels = draw_split(axes, instr_data)
        bottom.suptitle("instructions.py: instructions per operation (callgrind, lower is "
                        "better), split by where they run; taller bars (asyncio) are cut and "
                        "labelled", x=0.01, ha="left", fontsize=10)
        spare = axes[len(instr_data["results"]):]
        if spare:  # the legend goes where a chart would be
            spare[0].set_visible(True)
            spare[0].axis("off")
            spare[0].legend(handles[::-1], labels[::-1], loc="center", fontsize=8,
                            frameon=False)
        else:
            bottom.legend(handles[::-1], labels[::-1], loc="outside lower right",
                          fontsize=8, frameon=False)
    fig.get_layout_engine().set(h_pad=0.12)
    fig.supxlabel(caption(micro_data, args.micro_json, instr_data, args.instructions),
                  x=0.01, ha="left", fontsize=8, color="#333333")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"chart written to {micro.shown_path(args.out)} (from "
          f"{micro.shown_path(args.micro_json)}"
          + (f" and {micro.shown_path(args.instructions)}" if instr_data else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
