#!/usr/bin/env python3
"""One line of bench/sip results from a sipp run directory.

usage: summarize.py DIR NAME WALL_SECONDS SERVER_CPU_TICKS CLK_TCK LOAD1
       summarize.py --header

From sipp's files in DIR:
- *_rtt.csv (-trace_rtt): one line per measured interval, `ms-since-start;
  duration-ms;rtd`. rtd 1 is the whole operation (a registration: both
  round trips; a call: INVITE to 200), rtd 2 its second part (the
  authorized REGISTER to its 200; a call: BYE to its 200). sipp 3.6.1
  records whole milliseconds.
- *_.csv (-trace_stat): the last line has the cumulative counters.

The rate is completed operations (rtd 1) per second between the first and
the last completion. CPU is the server's user+system time during the sipp
run, per 1000 completed operations.
"""

import glob
import os
import sys

COLUMNS = [
    ("run", 28),
    ("ok", 7),
    ("failed", 7),
    ("retrans", 8),
    ("ok/s", 8),
    ("p50ms", 6),
    ("p99ms", 6),
    ("max", 6),
    ("p99ms2", 7),
    ("srvCPU%", 8),
    ("cpu-ms/op", 10),
    ("load1", 6),
]


def row(values):
    return " ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, ((_, w), v) in enumerate(zip(COLUMNS, values)))


def pct(sorted_values, p):
    if not sorted_values:
        return "-"
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def main():
    if sys.argv[1:] == ["--header"]:
        print(row([c for c, _ in COLUMNS]))
        return
    d, name, wall, ticks, clk, load = sys.argv[1:7]
    wall, ticks, clk = float(wall), int(ticks), int(clk)
    rtd = {"1": [], "2": []}
    for path in glob.glob(os.path.join(d, "*_rtt.csv")):
        with open(path) as f:
            for line in f:
                parts = line.strip().split(";")
                if len(parts) < 3 or parts[2] not in rtd:
                    continue
                try:
                    rtd[parts[2]].append((float(parts[0]), float(parts[1])))
                except ValueError:
                    continue
    stats = {}
    for path in glob.glob(os.path.join(d, "*_.csv")):
        with open(path) as f:
            lines = [l.rstrip("\n") for l in f if l.strip()]
        if len(lines) >= 2:
            head = lines[0].split(";")
            last = lines[-1].split(";")
            stats = dict(zip(head, last))
    done = rtd["1"]
    ok = len(done)
    rate = "-"
    if ok > 1:
        times = sorted(t for t, _ in done)
        span = (times[-1] - times[0]) / 1000.0
        if span > 0:
            rate = f"{(ok - 1) / span:.0f}"
    whole = sorted(v for _, v in done)
    second = sorted(v for _, v in rtd["2"])
    failed = stats.get("FailedCall(C)", "?")
    retrans = stats.get("Retransmissions(C)", "?")
    cpu_s = ticks / clk
    cpu_pct = f"{100 * cpu_s / wall:.0f}" if wall > 0 else "-"
    per_op = f"{1000 * cpu_s / ok:.3f}" if ok else "-"
    fmt = lambda v: v if v == "-" else f"{v:.0f}"
    print(
        row(
            [
                name,
                ok,
                failed,
                retrans,
                rate,
                fmt(pct(whole, 0.50)),
                fmt(pct(whole, 0.99)),
                fmt(whole[-1]) if whole else "-",
                fmt(pct(second, 0.99)),
                cpu_pct,
                per_op,
                load,
            ]
        )
    )


if __name__ == "__main__":
    main()
