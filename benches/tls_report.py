"""Aggregation and the Markdown report of benches/tls.py: medians per cell (memory
cells have their own metrics), ratios against uvloop (plus the paired
per-repeat ratio when there are repeats), and the tables."""

import statistics

import netbench as nb

REFERENCE = "uvloop"  # ratios are against it


# ---- Aggregation ----

MEMORY_METRICS = ("rss_base_kib", "rss_kib_per_1000", "server_cpu_us_per_conn")


def ok(s):
    return "error" not in s and "unsupported" not in s


def summarize_memory(samples):
    good = [s for s in samples if ok(s)]
    if not good:
        return nb.summarize(samples)  # the first error, or "unsupported"
    med = {k: statistics.median(s[k] for s in good) for k in MEMORY_METRICS}
    rss = [s["rss_kib_per_1000"] for s in good]
    med["rss_spread"] = ((max(rss) - min(rss)) / med["rss_kib_per_1000"]
                         if len(rss) > 1 and med["rss_kib_per_1000"] else None)
    med.update(samples=len(good), failed=len(samples) - len(good))
    return med


def paired_ratio(by_loop, name, key):
    """Median over the repeats of name's ``key`` / uvloop's ``key`` in the same repeat:
    the samples of one repeat run back to back, so this cancels most of the drift."""
    ref = {s["repeat"]: s[key] for s in by_loop.get(REFERENCE, []) if ok(s) and s.get(key)}
    ratios = [s[key] / ref[s["repeat"]] for s in by_loop.get(name, [])
              if ok(s) and s["repeat"] in ref and s.get(key) is not None]
    return statistics.median(ratios) if ratios else None


# ---- Markdown ----

def ratio_text(row, by_loop, name, key, repeat):
    """name's median / uvloop's median, plus [the paired per-repeat ratio] when repeated."""
    ours, ref = row.get(name, {}).get(key), row.get(REFERENCE, {}).get(key)
    if not ours or not ref:
        return "-"
    text = f"{ours / ref:.2f}"
    paired = paired_ratio(by_loop, name, key) if repeat > 1 and name != REFERENCE else None
    return text + (f" [{paired:.2f}]" if paired is not None else "")


def grid(title, note, row_keys, label, med, samples, loops, cell, ratio_key=None, repeat=1):
    """A table with one row per key and one column per loop (plus ratios vs uvloop)."""
    others = [n for n in loops if n != REFERENCE] if ratio_key and REFERENCE in loops else []
    head = f"| {label} | " + " | ".join(loops) + "".join(f" | {n} ÷ {REFERENCE}" for n in others)
    rows = [f"### {title}", "", note, "", head + " |",
            "|---|" + "---:|" * (len(loops) + len(others))]
    for key in row_keys:
        vals = [nb.short(cell(med[key].get(n), n)) for n in loops]
        vals += [ratio_text(med[key], samples[key], n, ratio_key, repeat) for n in others]
        rows.append(f"| {row_label(key)} | " + " | ".join(nb.md_escape(v) for v in vals) + " |")
    return "\n".join(rows) + "\n"


def row_label(key):
    if key[0] == "echo":
        return f"{key[1]} {key[2]} KiB"
    return {"https": "HTTPS keep-alive", "memory": "idle TLS connections"}[key[0]]


def spread_line(med, keys, loops, key):
    parts = []
    for name in loops:
        vals = [med[k][name][key] for k in keys if med[k].get(name, {}).get(key) is not None]
        if vals:
            parts.append(f"{name} {100 * statistics.median(vals):.0f}%")
    return ("Spread, (max - min) / median over the repeats (median over the rows): "
            + ", ".join(parts) + ". Differences smaller than that are noise.\n") if parts else ""


def per_loop_table(title, note, row, by_loop, loops, repeat, columns):
    """One row per loop. ``columns``: (header, metric key, format, with a ratio column?);
    format is a str.format pattern, "pct", "kib" (per 1000 -> per conn), "mib", or a
    function of (median dict, loop name)."""
    head, rule = ["loop"], ["---"]
    for title_, _, _, with_ratio in columns:
        head += [title_] + ([f"÷ {REFERENCE}"] if with_ratio else [])
        rule += ["---:"] * (2 if with_ratio else 1)
    rows = [f"### {title}", "", note, "", "| " + " | ".join(head) + " |",
            "|" + "|".join(rule) + "|"]
    for name in loops:
        m = row.get(name)
        if m is None or not ok(m):
            rows.append(f"| {name} | {nb.md_escape(nb.fmt_cell(m, '-', str, name))} |"
                        + " |" * (len(head) - 2))
            continue
        cells = [name + ("*" if m.get("failed") else "")]
        for _, key, fmt, with_ratio in columns:
            v = m.get(key) if key else None
            if callable(fmt):
                cells.append(fmt(m, name))
            elif v is None:
                cells.append("-")
            elif fmt == "pct":
                cells.append(f"{100 * v:.0f}%")
            elif fmt == "kib":
                cells.append(f"{v / 1000:.0f}")
            elif fmt == "mib":
                cells.append(f"{v / 1024:.1f}")
            else:
                cells.append(fmt.format(v))
            if with_ratio:
                cells.append(ratio_text(row, by_loop, name, key, repeat))
        rows.append("| " + " | ".join(nb.md_escape(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def render(args, med, samples, conns, hold):
    """The Markdown report. ``hold`` = (base connections, held connections, echo bytes)."""
    base, held, msg = hold
    loops, out, rep = args.loops, [], args.repeat
    ratio_note = (f" Ratio columns: loop ÷ {REFERENCE} (medians)"
                  + ("; [paired]: the median of the per-repeat ratios, steadier." if rep > 1
                     else "."))
    echo_keys = [k for k in med if k[0] == "echo"]
    if echo_keys:
        out.append(grid("TLS echo: server CPU µs per request (median) - the headline, lower is better",
                        "Server CPU time (all its threads) over the measured window / requests "
                        "completed." + ratio_note, echo_keys, "style, size", med, samples, loops,
                        nb.figure_cell("server_cpu_us_per_req", lambda v: f"{v:.2f}"),
                        "server_cpu_us_per_req", rep))
        out.append(spread_line(med, echo_keys, loops, "cpu_spread"))
        out.append(grid("TLS echo: requests/s (median) - higher is better",
                        f"{conns} connections, one request in flight each.", echo_keys,
                        "style, size", med, samples, loops,
                        nb.figure_cell("rps", lambda v: f"{v:,.0f}"), "rps", rep))
        out.append(grid("TLS echo: latency p50 / p99, µs (median over repeats)",
                        "Client side, from writing a message to reading its last echoed byte.",
                        echo_keys, "style, size", med, samples, loops, nb.latency_cell))
        out.append(grid("TLS echo: server / client core busy % (median)",
                        "CPU time / wall time of the window. A client near 100% would be the "
                        "bottleneck; a server well under 100% is waiting on the client, the "
                        "kernel or wake-ups: compare CPU/request, not req/s.",
                        echo_keys, "style, size", med, samples, loops, nb.busy_cell))
    if ("https",) in med:
        out.append(per_loop_table(
            f"HTTPS keep-alive (wrk -t1 -c{conns}): httptools Protocol server, 78-byte response",
            "Server CPU over wrk's lifetime / wrk's request count; latency is wrk's; busy = "
            "CPU time / wall time, server / wrk." + ratio_note,
            med[("https",)], samples[("https",)], loops, rep, [
                ("server CPU µs/req", "server_cpu_us_per_req", "{:.2f}", True),
                ("CPU spread", "cpu_spread", "pct", False),
                ("req/s", "rps", "{:,.0f}", True),
                ("p50 µs", "p50_us", "{:.0f}", False),
                ("p99 µs", "p99_us", "{:.0f}", False),
                ("busy %", None, nb.busy_cell, False)]))
    if ("memory",) in med:
        out.append(per_loop_table(
            f"Memory: {held} idle TLS connections",
            f"RSS growth = server VmRSS at {base + held} held connections minus "
            f"VmRSS at {base} (base), scaled to 1000 connections. Each connection did its "
            f"handshake and one {msg}-byte echo, then stayed idle. CPU per new connection "
            f"= server CPU while the {held} were opened (accept, handshake, echo) / "
            f"{held}." + ratio_note,
            med[("memory",)], samples[("memory",)], loops, rep, [
                ("RSS growth MiB / 1000 conns", "rss_kib_per_1000", "mib", True),
                ("KiB / conn", "rss_kib_per_1000", "kib", False),
                ("spread", "rss_spread", "pct", False),
                ("CPU µs / new conn", "server_cpu_us_per_conn", "{:.0f}", True),
                ("base RSS MiB", "rss_base_kib", "mib", False)]))
    return "\n".join(o for o in out if o)
