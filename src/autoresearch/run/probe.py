"""How busy the machine was with other work while a run trained.

A wall-clock budget measures the machine as much as the idea: the same script trained 8
steps while another job ran and 26 once it had finished, and scored 2.22 against 1.90
(measured here, tiny profile, 10 s budget). The script's own tok/s cannot tell the two
apart, since an edit may change it legitimately (a smaller model is faster), and a timed
probe before and after the run misses what happens during it. So `ar` measures the CPU
time the rest of the machine used during the run: the busy time of every core
(psutil.cpu_times) minus what the run's own processes and `ar` used (getrusage), as a
fraction of the cores' time. The keep rule compares a candidate only with runs of the
best made under a similar foreign load (experiment/keep.py: same_machine).
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class _Mark:
    wall: float
    busy: float  # busy CPU seconds of the whole machine
    ours: float  # CPU seconds of this process and its waited-for children


def _mark() -> _Mark:
    import psutil

    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    busy = sum(t) - idle
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return _Mark(time.monotonic(), busy, me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime)


class ForeignLoad:
    """start() before a run, stop() after its processes are reaped: the share (0..1) of the
    machine's CPU time that other work used meanwhile."""

    def start(self) -> "ForeignLoad":
        self.begin = _mark()
        return self

    def stop(self) -> float:
        end = _mark()
        wall = max(end.wall - self.begin.wall, 1e-6)
        foreign = (end.busy - self.begin.busy) - (end.ours - self.begin.ours)
        return round(min(1.0, max(0.0, foreign / (wall * (os.cpu_count() or 1)))), 3)
