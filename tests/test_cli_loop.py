"""`ar loop` end to end with a fake training script and the offline proposer; stopping it
with Ctrl-C / SIGTERM and killing it with SIGKILL (real subprocesses)."""

from __future__ import annotations

import io
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.experiment.lab import INTERRUPTED_NOTE, LoopEvent
from autoresearch.ui.display import LiveDisplay, PlainDisplay
from autoresearch.journal.files import read_results, read_run_records
from autoresearch.run.process import RunResult
from fake_cache import fake_prepared_data

# Fast stand-in for train.py: val_bpb depends on its constants (best at LR = 0.02, DEPTH = 5).
# With hang.flag present, any changed script hangs (for the stop and kill tests).
FAKE_TRAIN = """\
import math, os, time
LR = 0.04  # learning rate
DEPTH = 4  # transformer blocks
budget = float(os.environ["AUTORESEARCH_TIME_BUDGET"])
print(f"seed: {os.environ.get('AUTORESEARCH_SEED')}")
if os.path.exists("hang.flag") and (LR, DEPTH) != (0.04, 4):
    open("pids.txt", "w").write(str(os.getpid()))
    print("progress step=1 pct=10.0 loss=6.0", flush=True)
    time.sleep(60)
for step in range(1, 5):
    print(f"progress step={step} pct={25 * step:.1f} loss={6 - step:.4f} tok_per_s=1000 remaining_s={budget - step * budget / 4:.1f}")
print("---")
print(f"val_bpb: {1 + abs(math.log(LR / 0.02)) + 0.05 * abs(DEPTH - 5):.6f}")
print(f"training_seconds: {budget:.1f}")
print("peak_vram_mb: 1024.0")
print("backend: cpu")
"""


def expected_bpb(text: str) -> float:
    lr = float(re.search(r"^LR = (\S+)", text, re.M).group(1))
    depth = int(re.search(r"^DEPTH = (\S+)", text, re.M).group(1))
    return round(1 + abs(math.log(lr / 0.02)) + 0.05 * abs(depth - 5), 6)


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    # Loop mechanics with control files outside the workspace, which a sandboxed run cannot
    # see: these run without it (tests/test_sandboxed_runs.py runs the same paths sandboxed).
    monkeypatch.setenv("AUTORESEARCH_NO_SANDBOX", "1")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


@pytest.fixture
def ws(tmp_path, cli) -> Path:
    """A workspace made by `ar init`, data "prepared", the fake script committed."""
    folder = tmp_path / "research"
    res = cli("init", "loop1", "--dir", folder, "--backend", "cpu", "--budget", "20", "--kill", "60")
    assert res.exit_code == 0, res.output
    fake_prepared_data(tmp_path / "cache")
    (folder / "train.py").write_text(FAKE_TRAIN)
    # The fake script prints its own val_bpb: opt out of the harness result channel.
    cfg = folder / ".autoresearch" / "config.toml"
    cfg.write_text(cfg.read_text() + 'metric = "printed"\n')
    git(folder, "commit", "-q", "-am", "fake training script")
    return folder


def best_commit(folder: Path) -> str:
    rows = [r for r in read_results(folder / "results.tsv") if r.status == "keep"]
    return min(rows, key=lambda r: r.val_bpb).commit


def test_loop_with_the_offline_proposer_end_to_end(ws, cli):
    res = cli("loop", "--dir", ws, "--max-experiments", 3, "--budget", 2, "--keep-rule", "noise")
    assert res.exit_code == 0, res.output
    assert "no ANTHROPIC_API_KEY set" in res.output and "proposer:  optuna" in res.output

    rows = read_results(ws / "results.tsv")
    assert len(rows) == 4  # the baseline + 3 experiments; the noise-floor runs are not rows
    assert rows[0].description == "baseline (budget 2 s)" and rows[0].val_bpb == pytest.approx(1.743147)
    assert all(r.description.startswith("optuna: ") and r.description.endswith(" (budget 2 s)") for r in rows[1:])
    assert len({r.description for r in rows}) == 4  # never the same experiment twice
    assert git(ws, "status", "--porcelain") == ""
    head = git(ws, "rev-parse", "--short=7", "HEAD")
    assert head == best_commit(ws)
    assert expected_bpb((ws / "train.py").read_text()) == min(r.val_bpb for r in rows if r.status == "keep")
    for r in rows:  # each row's number is what its script gives (the runner really ran that commit)
        if r.status != "crash":
            assert r.val_bpb == pytest.approx(expected_bpb(git(ws, "show", f"{r.commit}:train.py")))

    runs = [r for r in read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl") if r.get("event") == "run"]
    assert [r["kind"] for r in runs[:3]] == ["baseline", "noise", "noise"] and len(runs) == 6
    noise_logs = [(ws / r["log"]).read_text() for r in runs[1:3]]
    assert "seed: 1" in noise_logs[0] and "seed: 2" in noise_logs[1]  # AUTORESEARCH_SEED reaches the script
    assert "seed: None" in (ws / runs[0]["log"]).read_text()
    assert "noise floor 0.000000" in res.output and "3 experiments" in res.output and "(HEAD)" in res.output

    # `ar loop` again resumes: no second baseline, the next experiments differ from the first.
    again = cli("loop", "--dir", ws, "--max-experiments", 1, "--budget", 2, "--keep-rule", "strict")
    assert again.exit_code == 0, again.output
    assert "resuming: 4 experiments" in again.output
    rows2 = read_results(ws / "results.tsv")
    assert len(rows2) == 5 and rows2[4].description not in {r.description for r in rows}
    assert git(ws, "rev-parse", "--short=7", "HEAD") == best_commit(ws) and git(ws, "status", "--porcelain") == ""


def test_loop_errors_are_one_line(tmp_path, ws, cli):
    res = cli("loop", "--dir", tmp_path / "nowhere")
    assert res.exit_code == 1 and "not an autoresearch workspace" in res.output and "Traceback" not in res.output
    res = cli("loop", "--dir", ws, "--keep-rule", "lenient")
    assert res.exit_code == 1 and "unknown keep rule 'lenient'" in res.output
    res = cli("loop", "--dir", ws, "--proposer", "nonesuch")
    assert res.exit_code == 1 and "unknown proposer" in res.output
    (ws / "train.py").write_text("LR = 1\n")
    res = cli("loop", "--dir", ws, "--max-experiments", 1)
    assert res.exit_code == 1 and "uncommitted changes" in res.output
    assert read_results(ws / "results.tsv") == []


def _start_loop(ws: Path, *extra: str) -> subprocess.Popen:
    with open(ws / ".git" / "info" / "exclude", "a") as f:  # the test's own files are not the loop's business
        f.write("hang.flag\npids.txt\n")
    (ws / "hang.flag").write_text("")
    return subprocess.Popen(
        [sys.executable, "-c", "from autoresearch.cli import app; app()", "loop", "--dir", str(ws), "--budget", "2",
         "--keep-rule", "strict", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "120"},
    )


def _wait_for_hang(ws: Path, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (ws / "pids.txt").exists() and (ws / "pids.txt").read_text():
            return int((ws / "pids.txt").read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the experiment did not start:\n" + (proc.communicate()[0] or ""))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_abandons_the_running_experiment_cleanly(ws, sig):
    proc = _start_loop(ws)
    pid = None
    try:
        pid = _wait_for_hang(ws, proc)
        baseline = read_results(ws / "results.tsv")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert "abandoned" in out and "interrupted" in out
    time.sleep(0.1)
    assert not _alive(pid)  # the training process was stopped with the loop
    assert read_results(ws / "results.tsv") == baseline and len(baseline) == 1  # no row for it
    assert git(ws, "status", "--porcelain") == "" and git(ws, "rev-parse", "--short=7", "HEAD") == baseline[0].commit
    events = [r["event"] for r in read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl") if r.get("event")]
    assert events[-3:] == ["run", "abandoned", "loop_stopped"]


def test_resume_after_kill_9_records_the_dead_experiment_once(ws, cli):
    proc = _start_loop(ws)
    pid = None
    try:
        pid = _wait_for_hang(ws, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)  # an orphan of the dead loop, in its own process group
    rows = read_results(ws / "results.tsv")
    dead = git(ws, "rev-parse", "--short=7", "HEAD")
    assert len(rows) == 1 and dead != rows[0].commit  # died with its experiment checked out, no row
    (ws / "hang.flag").unlink()
    (ws / "pids.txt").unlink()

    res = cli("loop", "--dir", ws, "--budget", 2, "--keep-rule", "strict", "--max-experiments", 2)
    assert res.exit_code == 0, res.output
    assert "recovered" in res.output
    rows = read_results(ws / "results.tsv")
    assert [r.status for r in rows[:2]] == ["keep", "crash"] and len(rows) == 4
    assert rows[1].commit == dead and INTERRUPTED_NOTE in rows[1].description and rows[1].description.endswith("(budget 2 s)")
    assert len({r.commit for r in rows}) == 4  # nothing duplicated
    assert git(ws, "status", "--porcelain") == "" and git(ws, "rev-parse", "--short=7", "HEAD") == best_commit(ws)
    recovered = [r for r in read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl") if r.get("event") == "recovered"]
    assert len(recovered) == 1 and recovered[0]["commit"] == dead and recovered[0]["reset"] is True


# -- the display ---------------------------------------------------------------------


def _events(tmp_path):
    log = tmp_path / "x.log"
    ok = RunResult("ok", 1.2, 2.0, 3.0, {}, "", log, [])
    return [
        LoopEvent("resumed", number=1, best=1.5),
        LoopEvent("proposing", number=2, best=1.5),
        LoopEvent("run_started", number=2, description="offline: LR 0.04 -> 0.02", commit="abc1234", run_kind="experiment"),
        LoopEvent("progress", number=2, progress={"step": 3, "pct": 30.0, "loss": 4.5}),
        LoopEvent("progress", number=2, progress={"step": 4, "pct": 40.0, "loss": 4.4}),
        LoopEvent("progress", number=2, progress={"step": 6, "pct": 60.0, "loss": 4.2}),
    ], [
        LoopEvent("run_finished", number=2, result=ok, val_bpb=1.2),
        LoopEvent("finished", number=2, description="offline: LR 0.04 -> 0.02", status="keep", val_bpb=1.2, best=1.2,
                  note="1.200000 beats the best 1.500000", cost_usd=0.25),
    ]


def test_plain_display_prints_lines_and_thins_progress(tmp_path):
    out = io.StringIO()
    display = PlainDisplay(Console(file=out, width=120))
    during, after = _events(tmp_path)
    for e in during + after:
        display(e)
    text = out.getvalue()
    assert "resuming: 1 experiments in results.tsv, best 1.500000" in text
    assert "#2 offline: LR 0.04 -> 0.02 (abc1234)" in text
    assert "30.0%  step 3  loss 4.5000" in text and "40.0%" not in text and "60.0%" in text  # every 25%
    assert "keep 1.200000  best 1.200000: 1.200000 beats the best 1.500000" in text


def test_live_display_shows_the_current_experiment_and_the_last_results(tmp_path):
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    display = LiveDisplay(console)
    during, after = _events(tmp_path)
    for e in during:
        display(e)
    shot = Console(file=io.StringIO(), width=120, color_system=None)
    shot.print(display.render())
    text = shot.file.getvalue()
    assert "best 1.500000" in text and "#2 offline: LR 0.04 -> 0.02" in text
    assert "60.0%" in text and "step 6" in text and "experiment" in text
    for e in after:
        display(e)
    shot = Console(file=io.StringIO(), width=120, color_system=None)
    shot.print(display.render())
    text = shot.file.getvalue()
    assert "best 1.200000" in text and "1 kept" in text and "$0.25" in text
    assert re.search(r"2\s+1\.200000\s+keep\s+offline: LR 0\.04 -> 0\.02", text)
    assert "#2 keep 1.200000" in console.file.getvalue()  # a finished experiment stays in the scrollback


def test_live_display_says_evaluating_fits_110_columns_and_leaves_the_results_on_exit(tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=110, force_terminal=True, color_system=None)
    display = LiveDisplay(console)
    during, after = _events(tmp_path)
    with display:
        for e in during:
            display(e)
        last = next(e for e in reversed(during) if e.kind == "progress")
        long = "x" * 300  # a long progress line must not wrap the live area
        display(LoopEvent("progress", number=last.number, commit=last.commit, run_kind="experiment",
                          progress={"step": 10, "pct": 100.0, "loss": 3.0, "tok_per_s": 1000, "remaining_s": 0.0, "note": long}))
        shot = Console(file=io.StringIO(), width=110, color_system=None)
        shot.print(display.render())
        text = shot.file.getvalue()
        assert "evaluating" in text and "100.0%" not in text and "0 s left" not in text  # not stuck at 100%
        assert max(len(line) for line in text.splitlines()) <= 110
        for e in after:
            display(e)
    # The live area is gone, but the last results stay on the screen.
    assert re.search(r"2\s+1\.200000\s+keep\s+offline: LR 0\.04 -> 0\.02", out.getvalue().split("#2 keep")[-1])
