"""The judge's cost: the tiny profile's evaluation, in-process (the old path, a script run by
hand) against through the judge from a subprocess (the new one), the same model and data.
The README quotes benchmarks/judge.py's figure; this test runs it and holds the target."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_judged_evaluation_is_within_one_and_a_half_times_the_in_process_one():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "judge.py"), "--repeat", "3", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    print(out.stdout)
    times = {name: [float(x) for x in re.search(rf"{name}.*\[([^\]]*)\]", out.stdout).group(1).split(",")]
             for name in ("in-process", "judged")}
    # The fastest of each: what the machine's other work added least to (the median is in the output).
    ratio = min(times["judged"]) / min(times["in-process"])
    assert ratio <= 1.5, out.stdout
    same = re.search(r"val_bpb (\d+\.\d+) in-process, (\d+\.\d+) judged", out.stdout)
    assert same and same.group(1) == same.group(2)  # the same number both ways
