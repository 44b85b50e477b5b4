"""The CI smoke test: a new user's whole path through the real CLI and the real templates.

`ar prepare` (offline corpus) -> `ar init` -> `ar loop` with the offline proposer, on
PyTorch CPU and on MLX CPU in one workspace, as the mission's own sequence types it. Slow by
nature (real training), so the budgets are a few seconds. The rows must be real runs: a
loop whose every experiment crashed fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.journal.files import read_results, read_run_records

AR = [sys.executable, "-c", "from autoresearch.cli import app; app()"]


def ar(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("API_KEY")}  # the offline proposer
    return subprocess.run([*AR, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def runs_of(ws: Path) -> list[dict]:
    return read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl")


def assert_rows_are_real_runs(ws: Path) -> None:
    """Every scored row is the mean of real runs whose logs print that val_bpb; a crash row has a log."""
    records = runs_of(ws)
    finished = {r["row"]: r for r in records if r.get("event") == "finished"}
    for n, row in enumerate(read_results(ws / "results.tsv"), start=1):
        runs = [r for r in records if r.get("event") == "run" and r.get("id") == finished[n]["id"]]
        assert runs, f"row {n} has no run behind it"
        for r in runs:
            log = (ws / r["log"]).read_text()
            if r["status"] == "ok":
                assert f"val_bpb:          {r['val_bpb']:.6f}" in log, log[-2000:]
        if any(r["status"] == "stopped" for r in runs):  # stopped early: a discard without a value
            assert row.status == "discard" and row.val_bpb == 0.0 and "(stopped at " in row.description
        elif row.status != "crash":
            values = [r["val_bpb"] for r in runs if r["kind"] != "noise"]
            assert row.val_bpb == pytest.approx(sum(values) / len(values), abs=2e-6)


@pytest.mark.slow
def test_the_mission_sequence_mlx_then_cpu_on_one_branch(tmp_path):
    """`ar prepare`, `ar init mar5`, `ar loop --backend mlx -n 1 --budget 5`, then `--backend cpu`:
    each backend trains its own script, with its own baseline, never judged against the other."""
    pytest.importorskip("mlx.core")
    prep = ar("prepare", cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    ws = tmp_path / "research"
    ws.mkdir()
    init = ar("init", "mar5", cwd=ws)
    assert init.returncode == 0, init.stdout + init.stderr
    assert (ws / "train.py").is_file() and (ws / "train_mlx.py").is_file()

    mlx = ar("loop", "--backend", "mlx", "-n", "1", "--budget", "5", cwd=ws)
    assert mlx.returncode == 0, mlx.stdout[-3000:] + mlx.stderr[-3000:]
    assert "optuna" in mlx.stdout and "needs no LLM" in mlx.stdout  # says which proposer runs, and that it needs no LLM
    mlx_rows = len(read_results(ws / "results.tsv"))
    runs = [r for r in runs_of(ws) if r.get("event") == "run"]
    assert runs and all(r["backend"] == "mlx" for r in runs)
    assert all("backend:          mlx" in (ws / r["log"]).read_text() for r in runs if r["status"] == "ok")  # train_mlx.py ran

    cpu = ar("loop", "--backend", "cpu", "-n", "1", "--budget", "5", cwd=ws)
    assert cpu.returncode == 0, cpu.stdout[-3000:] + cpu.stderr[-3000:]
    rows = read_results(ws / "results.tsv")
    cpu_runs = [r for r in runs_of(ws) if r.get("event") == "run" and r["backend"] == "cpu"]
    assert cpu_runs and all("backend:          cpu" in (ws / r["log"]).read_text() for r in cpu_runs if r["status"] == "ok")

    data = json.loads(ar("results", "--json", cwd=ws).stdout)["rows"]
    assert [r["backend"] for r in data] == ["mlx"] * mlx_rows + ["cpu"] * (len(rows) - mlx_rows)
    for backend in ("mlx", "cpu"):
        mine = [r for r in data if r["backend"] == backend]
        assert mine[0]["description"] == "baseline (budget 5 s)" and mine[0]["best_before"] is None  # its own baseline
        assert mine[-1]["status"] != "crash", mine  # the experiment really trained
        kept = [r["val_bpb"] for r in mine if r["status"] == "keep"]
        # judged only against its own backend's best
        assert mine[-1]["best_before"] == pytest.approx(min(kept[:-1] if mine[-1]["status"] == "keep" else kept))
    table = ar("results", cwd=ws).stdout
    assert "backend" in table and "mlx" in table and "cpu" in table
    assert_rows_are_real_runs(ws)
    best_cpu = min((r for r in data if r["backend"] == "cpu" and r["status"] == "keep"), key=lambda r: r["val_bpb"])
    assert git(ws, "rev-parse", "--short=7", "HEAD") == best_cpu["commit"]  # HEAD is the best of the last loop
    assert git(ws, "status", "--porcelain") == ""


@pytest.mark.slow
def test_prepare_init_loop_end_to_end_on_cpu(tmp_path):
    prep = ar("prepare", cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    ws = tmp_path / "research"
    ws.mkdir()
    init = ar("init", "ci", "--backend", "cpu", cwd=ws)
    assert init.returncode == 0, init.stdout + init.stderr
    assert git(ws, "branch", "--show-current") == "autoresearch/ci"

    loop = ar("loop", "--max-experiments", "3", "--budget", "3", "--keep-rule", "strict", cwd=ws)
    assert loop.returncode == 0, loop.stdout[-3000:] + loop.stderr[-3000:]

    rows = read_results(ws / "results.tsv")
    assert len(rows) == 4, rows  # the baseline plus three experiments
    assert rows[0].status == "keep" and rows[0].description.startswith("baseline")
    assert any(r.status != "crash" for r in rows[1:]), rows  # a loop whose every experiment crashed fails here
    assert len({r.commit for r in rows}) == 4
    assert_rows_are_real_runs(ws)
    kept = [r for r in rows if r.status == "keep"]
    best = min(kept, key=lambda r: r.val_bpb)
    assert git(ws, "rev-parse", "--short=7", "HEAD") == best.commit
    assert git(ws, "status", "--porcelain") == ""
    assert len(list((ws / ".autoresearch" / "runs").glob("*.log"))) >= 4
