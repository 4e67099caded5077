#!/usr/bin/env python3
"""Writes lab's two example link traces, in Mahimahi's format (one integer millisecond
per line, each a chance to deliver 1500 bytes; the trace loops with its last
millisecond as the period), into topologies/traces/:

- const-12mbit.trace: one chance every millisecond for 1 s: 12 Mbit/s, constant.
- cellular-onoff.trace: a synthetic on-off "cellular" link over 10 s: 2 s at 24 Mbit/s
  (two chances a millisecond), 1 s with none, 3 s at 6 Mbit/s (one chance every 2 ms),
  0.5 s with none, 3.5 s at 12 Mbit/s; 10.8 Mbit/s on average.

Deterministic; no third-party trace is copied. Run it from anywhere: python3
scripts/make-traces.py
"""
import os

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "topologies", "traces")
os.makedirs(here, exist_ok=True)


def write(name, ms):
    with open(os.path.join(here, name), "w") as f:
        f.write("".join(f"{m}\n" for m in ms))


write("const-12mbit.trace", range(1, 1001))

ms = []
for t in range(1, 2001):  # 0-2 s: 24 Mbit/s
    ms += [t, t]
# 2-3 s: nothing
for t in range(3002, 6001, 2):  # 3-6 s: 6 Mbit/s
    ms.append(t)
# 6-6.5 s: nothing
for t in range(6501, 10001):  # 6.5-10 s: 12 Mbit/s
    ms.append(t)
write("cellular-onoff.trace", ms)
