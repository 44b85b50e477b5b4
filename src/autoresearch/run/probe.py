"""How fast the machine is right now: a fixed matrix product, timed around each run.

A wall-clock budget measures the machine as much as the idea: the same script trained at
1,100 tok/s while another job ran and at 16,600 tok/s once it had finished (see
ENVIRONMENT-NOTES). The script's own tok/s cannot tell the two apart, since an edit may
change it legitimately (a smaller model is faster). A probe that does the same work every
time can: its GFLOP/s move with the machine's load, never with the edit. The keep rule
compares a candidate only with runs of the best made while the machine ran at a similar
speed (experiment/keep.py: same_machine).
"""

from __future__ import annotations

import time

_N = 1 << 16  # floats per pass: fits in cache, so the probe times the CPU, not memory


def machine_speed(seconds: float = 0.05) -> float:
    """Millions of float32 multiply-adds per second on one core now (about `seconds` of work).

    One thread on purpose: a multi-threaded probe would also count the other workers of a
    parallel loop, which are part of the plan, not a change of the machine."""
    import numpy as np

    x = np.ones(_N, dtype=np.float32)
    for _ in range(20):  # warm up: page faults and the first call's set-up are not the machine's speed
        np.multiply(x, 1.0000001, out=x)
    done, start = 0, time.perf_counter()
    while True:
        np.multiply(x, 1.0000001, out=x)
        np.add(x, 1e-7, out=x)
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return _N * done / elapsed / 1e6
