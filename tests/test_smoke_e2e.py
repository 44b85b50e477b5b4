"""The CI smoke test: a new user's whole path through the real CLI and the real templates.

`ar prepare` (offline corpus) -> `ar init ci` -> `ar loop --max-experiments 3 --budget N`
with the offline proposer, on PyTorch CPU and on MLX CPU. Slow by nature (real training),
so the budgets are a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.loop.results import read_results

AR = [sys.executable, "-c", "from autoresearch.cli import app; app()"]


def ar(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("API_KEY")}  # the offline proposer
    return subprocess.run([*AR, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend,script,budget",
    [("cpu", "train.py", "3"), ("mlx", "train_mlx.py", "3")],
)
def test_prepare_init_loop_end_to_end(tmp_path, backend, script, budget):
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    prep = ar("prepare", cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    ws = tmp_path / "research"
    ws.mkdir()
    init = ar("init", "ci", "--backend", backend, cwd=ws)
    assert init.returncode == 0, init.stdout + init.stderr
    assert (ws / script).is_file() and git(ws, "branch", "--show-current") == "autoresearch/ci"

    loop = ar("loop", "--max-experiments", "3", "--budget", budget, "--keep-rule", "strict", cwd=ws)
    assert loop.returncode == 0, loop.stdout[-3000:] + loop.stderr[-3000:]
    assert "offline" in loop.stdout  # says which proposer runs, and that it needs no LLM

    rows = read_results(ws / "results.tsv")
    assert len(rows) == 4, rows  # the baseline plus three experiments
    assert rows[0].status == "keep" and rows[0].description.startswith("baseline")
    assert len({r.commit for r in rows}) == 4
    kept = [r for r in rows if r.status == "keep"]
    best = min(kept, key=lambda r: r.val_bpb)
    assert git(ws, "rev-parse", "--short=7", "HEAD") == best.commit
    assert git(ws, "status", "--porcelain") == ""
    assert len(list((ws / ".autoresearch" / "runs").glob("*.log"))) >= 4
