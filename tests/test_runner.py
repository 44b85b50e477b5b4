"""The runner: one training script as a process group, budget + hard kill, summary parsing."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autoresearch.errors import ArError
from autoresearch.workspace.config import WorkspaceConfig, write_config
from autoresearch.journal.files import read_results, read_run_records
from autoresearch.journal.queries import history
from autoresearch.experiment.once import run_once
from autoresearch.run.process import allocate_log, run_script
from autoresearch.run.summary import last_error_line, parse_progress, parse_summary
from autoresearch.workspace.git import Workspace
from fake_cache import fake_prepared_data

SUMMARY = """\
---
val_bpb: 0.997900
training_seconds: 300.1
total_seconds: 325.9
peak_vram_mb: 8192.0
mfu_percent: 45.20
total_tokens_M: 125.0
num_steps: 250
num_params_M: 50.3
depth: 8
backend: mlx
chip: Apple M4 Max
"""


def write_script(folder: Path, body: str, name: str = "train.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (zombies are dead, merely unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


@pytest.fixture(autouse=True)
def no_leaks(tmp_path):
    """If a test fails, do not leave its sleeping processes behind."""
    yield
    for path in tmp_path.rglob("pids.txt"):
        for pid in path.read_text().split():
            if alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)


def wait_for_pids(path: Path, count: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            pids = [int(x) for x in path.read_text().split()]
            if len(pids) >= count:
                return pids
        if time.monotonic() >= deadline:
            raise AssertionError(f"the script did not write {count} pids to {path}")
        time.sleep(0.05)


# A script that never ends: it starts a child that ignores SIGTERM and a child that
# starts a grandchild, writes every pid to pids.txt, then sleeps (120 s: a leak ends soon).
FOREVER = """\
import os, signal, subprocess, sys, time
pids = [os.getpid()]
stubborn = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
parent = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
    "open('grandchild.txt', 'w').write(str(p.pid)); time.sleep(120)"])
while not os.path.exists("grandchild.txt") or not open("grandchild.txt").read():
    time.sleep(0.01)
pids += [stubborn.pid, parent.pid, int(open("grandchild.txt").read())]
open("pids.txt", "w").write(" ".join(map(str, pids)))
print("progress step=1 pct=1.0 loss=9.0", flush=True)
time.sleep(120)
"""


# -- summary and progress parsing --------------------------------------------------


def test_summary_block_is_parsed_into_numbers_and_text():
    s = parse_summary("noise\n---\nnot: this one\nprogress step=1\n" + SUMMARY + "\n")
    assert s["val_bpb"] == pytest.approx(0.9979) and s["num_steps"] == 250 and s["depth"] == 8
    assert s["peak_vram_mb"] == 8192.0 and s["chip"] == "Apple M4 Max" and s["backend"] == "mlx"
    assert "not" not in s  # the last block wins


def test_no_summary_block_is_empty_and_nan_is_a_float():
    assert parse_summary("step 1\nstep 2\n") == {}
    assert math.isnan(parse_summary("---\nval_bpb: nan\n")["val_bpb"])


def test_progress_lines_tolerate_unknown_keys():
    p = parse_progress("progress step=12 pct=40.0 loss=5.1234 tok_per_s=12345 remaining_s=36.0 phase=warmup junk")
    assert p == {"step": 12, "pct": 40.0, "loss": 5.1234, "tok_per_s": 12345, "remaining_s": 36.0, "phase": "warmup"}
    assert parse_progress("step 12 loss 5.0") is None


def test_last_error_line_finds_the_exception():
    lines = ["Traceback (most recent call last):", '  File "x.py", line 1', "torch.OutOfMemoryError: CUDA out of memory", ""]
    assert last_error_line(lines) == "torch.OutOfMemoryError: CUDA out of memory"


# -- run_script ---------------------------------------------------------------------


def test_ok_run_reports_progress_summary_and_keeps_the_log(tmp_path):
    body = textwrap.dedent(
        """\
        import os
        print("budget", os.environ["AUTORESEARCH_TIME_BUDGET"])
        for i in range(3):
            print(f"progress step={i} pct={(i + 1) * 33.3:.1f} loss=5.{i} tok_per_s=100 remaining_s={2 - i} extra=x")
        print(SUMMARY)
        """
    )
    script = write_script(tmp_path, body.replace("SUMMARY", repr(SUMMARY)))
    seen = []
    log = tmp_path / "runs" / "1.log"
    res = run_script(
        script, cwd=tmp_path, log_path=log, env={"AUTORESEARCH_TIME_BUDGET": "7"}, kill_after=30, on_progress=seen.append
    )
    assert res.status == "ok" and res.reason == ""
    assert res.val_bpb == pytest.approx(0.9979) and res.memory_gb == pytest.approx(8.0)
    assert res.summary["num_params_M"] == 50.3 and res.returncode == 0
    assert [p["step"] for p in seen] == [0, 1, 2] and seen[-1]["extra"] == "x"
    text = log.read_text()
    assert "budget 7" in text and "val_bpb: 0.997900" in text
    assert res.log_tail[-1] == "chip: Apple M4 Max" and len(res.log_tail) <= 50


def test_crash_reason_is_the_exception_line(tmp_path):
    script = write_script(
        tmp_path,
        """\
        print("progress step=1 pct=10.0 loss=4.0")
        raise ValueError("shapes do not match: 3 vs 4")
        """,
    )
    res = run_script(script, cwd=tmp_path, log_path=tmp_path / "r.log", kill_after=30)
    assert res.status == "crash" and res.val_bpb is None
    assert "ValueError: shapes do not match: 3 vs 4" in res.reason and "exit code 1" in res.reason
    assert any("Traceback" in line for line in res.log_tail)


def test_nan_style_exit_without_val_bpb_is_a_crash(tmp_path):
    script = write_script(
        tmp_path,
        """\
        import sys
        print("progress step=5 pct=20.0 loss=nan")
        print("loss is nan, stopping")
        sys.exit(1)
        """,
    )
    res = run_script(script, cwd=tmp_path, log_path=tmp_path / "r.log", kill_after=30)
    assert res.status == "crash"
    assert "loss is nan, stopping" in res.reason and "exit code 1" in res.reason
    assert res.memory_gb == 0.0


def test_nan_val_bpb_in_the_summary_is_a_crash(tmp_path):
    script = write_script(tmp_path, 'print("---"); print("val_bpb: nan"); print("peak_vram_mb: 100.0")\n')
    res = run_script(script, cwd=tmp_path, log_path=tmp_path / "r.log", kill_after=30)
    assert res.status == "crash" and res.val_bpb is None and "nan" in res.reason


def test_hard_kill_stops_the_whole_tree(tmp_path):
    script = write_script(tmp_path, FOREVER)
    res = run_script(script, cwd=tmp_path, log_path=tmp_path / "r.log", kill_after=3.0, grace=0.5)
    pids = wait_for_pids(tmp_path / "pids.txt", 4, timeout=0)
    assert res.status == "timeout" and "3 s" in res.reason
    assert 3.0 <= res.seconds < 8.0
    time.sleep(0.2)
    survivors = [p for p in pids if alive(p)]
    assert survivors == [], f"processes survived the kill: {survivors}"


def test_children_left_behind_by_a_finished_script_are_swept(tmp_path):
    script = write_script(
        tmp_path,
        """\
        import subprocess, sys
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdout=subprocess.DEVNULL)
        open("pids.txt", "w").write(str(p.pid))
        print("---"); print("val_bpb: 1.5")
        """,
    )
    res = run_script(script, cwd=tmp_path, log_path=tmp_path / "r.log", kill_after=30, grace=0.5)
    assert res.status == "ok" and res.val_bpb == 1.5
    (pid,) = wait_for_pids(tmp_path / "pids.txt", 1, timeout=0)
    time.sleep(0.2)
    assert not alive(pid)


def test_ctrl_c_stops_the_run_and_leaves_no_orphan(tmp_path):
    script = write_script(tmp_path, FOREVER)
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""\
            import json
            from pathlib import Path
            from autoresearch.run.process import run_script
            res = run_script(Path({str(script)!r}), cwd=Path({str(tmp_path)!r}),
                             log_path=Path({str(tmp_path / 'r.log')!r}), kill_after=60, grace=0.5)
            print(json.dumps({{"status": res.status, "reason": res.reason}}))
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, text=True)
    try:
        pids = wait_for_pids(tmp_path / "pids.txt", 4)
        assert all(alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert json.loads(out.strip().splitlines()[-1])["status"] == "interrupted"
    time.sleep(0.2)
    assert [p for p in pids if alive(p)] == []


def test_a_callback_that_fails_does_not_block_the_run(tmp_path):
    script = write_script(tmp_path, 'for i in range(2000): print(f"progress step={i} pct=1.0")\nprint("---\\nval_bpb: 2.0")\n')

    def broken(_):
        raise RuntimeError("display gone")

    res = run_script(script, cwd=tmp_path, log_path=tmp_path / "r.log", kill_after=30, on_progress=broken)
    assert res.status == "ok" and res.val_bpb == 2.0


# -- run_once in a workspace ----------------------------------------------------------


FAKE_TRAIN = """\
import os
bpb = float(open("bpb.txt").read())
print(f"progress step=1 pct=100.0 loss=3.0 budget={os.environ['AUTORESEARCH_TIME_BUDGET']}")
if bpb < 0:
    raise RuntimeError("diverged")
print("---")
print(f"val_bpb: {bpb:.6f}")
print("peak_vram_mb: 1536.0")
print(f"backend: {os.environ['AUTORESEARCH_BACKEND']}")
"""


@pytest.fixture
def workspace(tmp_path):
    folder = tmp_path / "ws"
    ws = Workspace.init(folder)
    write_script(folder, FAKE_TRAIN)
    (folder / "bpb.txt").write_text("1.5")
    (folder / ".gitignore").write_text("results.tsv\n.autoresearch/runs/\n")
    write_config(folder, WorkspaceConfig(tag="t", backend="cpu", profile="tiny", source="builtin", budget=5, kill=30, metric="printed"))
    ws.commit(["train.py", "bpb.txt", ".gitignore", ".autoresearch/config.toml"], "start")
    fake_prepared_data(tmp_path / "cache")
    return folder, ws


def experiment(ws: Workspace, folder: Path, bpb: float, message: str) -> None:
    (folder / "bpb.txt").write_text(str(bpb))
    ws.commit(["bpb.txt"], message)


def test_run_once_records_baseline_then_keep_discard_crash(workspace):
    folder, ws = workspace
    first = run_once(folder, grace=0.2)
    assert first.recorded == "keep" and first.description == "baseline" and first.best_before is None
    experiment(ws, folder, 1.4, "wider mlp")
    assert run_once(folder, grace=0.2).recorded == "keep"
    experiment(ws, folder, 1.45, "lower lr")
    assert run_once(folder, grace=0.2).recorded == "discard"
    ws.reset_hard("HEAD~1")
    experiment(ws, folder, -1, "huge lr")
    crash = run_once(folder, grace=0.2)
    assert crash.recorded == "crash" and "RuntimeError: diverged" in crash.result.reason

    rows = read_results(folder / "results.tsv")
    assert [(r.status, r.val_bpb, r.memory_gb, r.description) for r in rows] == [
        ("keep", 1.5, 1.5, "baseline"),
        ("keep", 1.4, 1.5, "wider mlp"),
        ("discard", 1.45, 1.5, "lower lr"),
        ("crash", 0.0, 0.0, "huge lr"),
    ]
    assert all(len(r.commit) == 7 for r in rows)
    records = read_run_records(folder / ".autoresearch" / "runs" / "runs.jsonl")
    finished = [r for r in records if r["event"] == "finished"]
    runs = [r for r in records if r["event"] == "run"]
    assert [r["status"] for r in finished] == ["keep", "keep", "discard", "crash"] and [r["row"] for r in finished] == [1, 2, 3, 4]
    assert runs[0]["backend"] == "cpu" and runs[0]["summary"]["peak_vram_mb"] == 1536.0
    # The default rule runs a promising result again under another seed before keeping it.
    assert [(r["kind"], r["seed"]) for r in runs] == [("run", None), ("run", None), ("confirm", 3), ("run", None), ("run", None)]
    logs = sorted((folder / ".autoresearch" / "runs").glob("*.log"))
    assert [p.name.split("-")[0] for p in logs] == ["0001", "0002", "0003", "0004", "0005"]
    assert (folder / runs[4]["log"]).read_text().count("diverged") >= 1


def test_a_new_branch_gets_its_own_baseline(workspace):
    folder, ws = workspace
    run_once(folder, grace=0.2)
    experiment(ws, folder, 1.2, "better")
    run_once(folder, grace=0.2)
    ws.checkout("HEAD~1")  # detached at the first commit: the 1.2 row is not in its history
    ws.create_branch("autoresearch/other")
    experiment(ws, folder, 1.3, "other idea")
    assert run_once(folder, grace=0.2).recorded == "keep"  # 1.5 is the only kept ancestor


def test_budget_override_is_recorded_but_never_the_best_and_dirty_script_is_not_recorded(workspace):
    folder, ws = workspace
    smoke = run_once(folder, budget=1, grace=0.2)
    assert smoke.recorded == "keep" and smoke.description.endswith("(budget 1 s)")
    assert "budget=1" in smoke.result.log_path.read_text()
    rows = read_results(folder / "results.tsv")
    assert len(rows) == 1 and history(folder, budget=5, backend="cpu")[0].budget == "1"  # the journal says so
    (folder / "train.py").write_text(FAKE_TRAIN + "# edited\n")
    dirty = run_once(folder, grace=0.2)
    assert dirty.recorded is None and "uncommitted" in dirty.note
    assert len(read_results(folder / "results.tsv")) == 1
    runs = [r for r in read_run_records(folder / ".autoresearch" / "runs" / "runs.jsonl") if r["event"] == "run"]
    assert [r.get("dirty", False) for r in runs] == [False, True] and runs[0]["budget"] == 1


def test_full_budget_run_after_a_smoke_run_is_its_own_baseline_and_each_backend_has_its_own(workspace):
    folder, ws = workspace
    (folder / "bpb.txt").write_text("1.0")
    assert run_once(folder, budget=1, grace=0.2).recorded == "keep"  # 1.0 at 1 s
    ws.commit(["bpb.txt"], "set 1.0")
    (folder / "bpb.txt").write_text("1.2")
    ws.commit(["bpb.txt"], "worse")
    full = run_once(folder, grace=0.2)
    assert full.recorded == "keep" and full.best_before is None  # never judged against the 1 s run
    # --backend mlx runs train_mlx.py, with its own baseline: 1.3 is not compared with cpu's 1.2.
    write_script(folder, FAKE_TRAIN, "train_mlx.py")
    (folder / "bpb.txt").write_text("1.3")
    ws.commit(["train_mlx.py", "bpb.txt"], "the mlx script")
    mlx = run_once(folder, backend="mlx", grace=0.2)
    assert mlx.recorded == "keep" and mlx.best_before is None
    assert "backend: mlx" in mlx.result.log_path.read_text()
    entries = history(folder, budget=5, backend="cpu")
    assert [(e.budget, e.backend, e.row.status) for e in entries] == [("1", "cpu", "keep"), ("5", "cpu", "keep"), ("5", "mlx", "keep")]
    records = [r for r in read_run_records(folder / ".autoresearch" / "runs" / "runs.jsonl") if r["event"] == "finished"]
    assert [r["row"] for r in records] == [1, 2, 3] and [r["backend"] for r in records] == ["cpu", "cpu", "mlx"]


def test_run_once_refuses_missing_data_and_kill_below_budget(workspace, tmp_path, monkeypatch):
    folder, _ = workspace
    with pytest.raises(ArError, match="longer than the time budget"):
        run_once(folder, budget=40)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ArError, match="ar prepare --source builtin --profile tiny"):
        run_once(folder)
    assert not (folder / ".autoresearch" / "runs" / "runs.jsonl").exists()


def test_run_once_outside_a_workspace_says_so(tmp_path):
    with pytest.raises(ArError, match="ar init"):
        run_once(tmp_path)


def test_log_files_are_never_reused(tmp_path):
    runs = tmp_path / "runs"
    n1, p1 = allocate_log(runs, "abcdef1234")
    p1.write_text("first")
    (runs / "0007-zzz.log").write_text("old")
    n2, p2 = allocate_log(runs, "abcdef1234")
    assert (n1, p1.name) == (1, "0001-abcdef1.log") and (n2, p2.name) == (8, "0008-abcdef1.log")
    assert p1.read_text() == "first"


def test_an_old_summary_in_the_same_log_is_not_taken_for_this_run(tmp_path):
    log = tmp_path / "r.log"
    log.write_text("---\nval_bpb: 0.5\n")
    script = write_script(tmp_path, "raise SystemExit('FAIL')\n")
    res = run_script(script, cwd=tmp_path, log_path=log, kill_after=30)
    assert res.status == "crash" and res.val_bpb is None
    assert log.read_text().startswith("---\nval_bpb: 0.5\n")  # kept, not overwritten
