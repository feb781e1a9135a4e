#!/usr/bin/env python3
"""One Markdown table row from a load generator's RESULT line (wrk_report.lua, grpc-load) and
the server's CPU ticks over the run, for the side-by-side scripts in loadtests/:

    python3 loadtests/result_row.py "$RESULT_LINE" CPU_TICKS TICK_US CELL...

prints `| CELL... | req/s | p50 µs | p99 µs | errors | server CPU µs/req |`.
"""
import re
import sys

line, ticks, tick_us, *cells = sys.argv[1:]
f = dict(re.findall(r"(\w+)=([0-9.]+)", line))
req, secs = int(f["requests"]), float(f["seconds"])
cpu_us = float(ticks) * float(tick_us) / max(req, 1)
print("| " + " | ".join(cells + [f"{req / secs:,.0f}", f["p50_us"], f["p99_us"], f["errors"],
                                 f"{cpu_us:.1f}"]) + " |")
