"""`ar run`, the serial loop and `--workers 2` are one code path (experiment.step.run_experiment):
driven through the same scripted sequence of results, they make the same keep/discard
decisions and write the same runs.jsonl schema."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import pytest

from autoresearch.experiment.once import run_once
from autoresearch.workspace.config import load_config
from autoresearch.workspace.init import init_workspace
from autoresearch.ui.view import workspace_view
from autoresearch.experiment.lab import LoopSettings
from autoresearch.executors.local import make_executor
from autoresearch.loop.parallel import run_parallel
from autoresearch.proposers.base import NoProposal, Proposal
from autoresearch.journal.files import read_results, read_run_records
from autoresearch.run.script import ScriptRunner
from autoresearch.loop.serial import run_loop
from autoresearch.workspace.git import Workspace
from fake_cache import fake_prepared_data

# val_bpb is a sum of independent terms, so a change's effect does not depend on which
# other changes are in (with workers, a win is re-applied on a moved best and run again).
FAKE_TRAIN = """\
import sys
LR = 0.04  # learning rate
WD = 0.1  # weight decay
CRASH = 0
if CRASH:
    sys.exit("RuntimeError: loss exploded")
print("---")
print(f"val_bpb: {1.0 + 5 * (LR - 0.04) + 0.2 * (WD - 0.1):.6f}")
print("peak_vram_mb: 1024.0")
"""

# (description, constant, new value): the scripted sequence, and what each must come to.
SEQUENCE = [
    ("lower LR", "LR", "0.03"),  # 0.95 < 1.0: keep
    ("more weight decay", "WD", "0.2"),  # +0.02: discard
    ("crash on purpose", "CRASH", "1"),  # no val_bpb: crash
    ("no weight decay", "WD", "0.0"),  # -0.02: keep
]
EXPECTED = {"baseline": "keep", "lower LR": "keep", "more weight decay": "discard", "crash on purpose": "crash",
            "no weight decay": "keep"}


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def change(text: str, name: str, value: str) -> str:
    return re.sub(rf"^{name} = \S+", f"{name} = {value}", text, flags=re.M)


def make_ws(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    init_workspace(folder, "same", backend="cpu", budget=20, kill=60)
    (folder / "train.py").write_text(FAKE_TRAIN)
    cfg = folder / ".autoresearch" / "config.toml"
    cfg.write_text(cfg.read_text() + 'metric = "printed"\n')  # the fake prints its own val_bpb
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "fake training script")
    return folder


class Scripted:
    """Hands out SEQUENCE in order, to whichever worker asks (thread-safe)."""

    name = "scripted"

    def __init__(self):
        self.items = list(SEQUENCE)
        self.lock = threading.Lock()

    def propose(self, ctx):
        with self.lock:
            if not self.items:
                raise NoProposal("the script is done")
            desc, name, value = self.items.pop(0)
        return Proposal(change(ctx.editable_text, name, value), desc)


def by_hand(folder: Path) -> None:
    """Upstream's manual loop with `ar run`: commit, run, reset what is not kept."""
    ws = Workspace.open(folder)
    assert run_once(folder, keep_rule="strict", grace=0.2).recorded == "keep"
    for desc, name, value in SEQUENCE:
        (folder / "train.py").write_text(change((folder / "train.py").read_text(), name, value))
        ws.commit(["train.py"], desc)
        if run_once(folder, keep_rule="strict", grace=0.2).recorded != "keep":
            ws.reset_hard("HEAD~1")


def looped(folder: Path, workers: int) -> None:
    cfg = load_config(folder)
    settings = LoopSettings(editable="train.py", budget=cfg.budget, full_budget=cfg.budget, backend=cfg.backend,
                            keep_rule="strict", max_experiments=len(SEQUENCE))
    runner = ScriptRunner.for_workspace(folder, cfg, budget=cfg.budget, kill=cfg.kill, grace=0.2)
    ws = Workspace.open(folder)
    if workers == 1:
        report = run_loop(ws, Scripted(), runner, settings, sleep=lambda s: None)
    else:
        executor = make_executor(folder, cfg, runner, workers=workers, force=True)
        report = run_parallel(ws, Scripted(), executor, settings, workers=workers, sleep=lambda s: None)
    assert report.experiments == len(SEQUENCE) and not report.interrupted, report


def schema(folder: Path) -> dict[str, set[str]]:
    """The fields of each kind of record (a worker label is the one field only workers add)."""
    out: dict[str, set[str]] = {}
    for r in read_run_records(folder / ".autoresearch" / "runs" / "runs.jsonl"):
        if r["event"] in ("started", "run", "finished"):
            out.setdefault(r["event"], set()).update(set(r) - {"worker", "reapplied_from"})
    return out


def check(ws: Path) -> dict[str, set[str]]:
    """What a user checks: the rows, HEAD at the best, a clean tree, one record per row."""
    rows = read_results(ws / "results.tsv")
    assert {r.description: r.status for r in rows} == EXPECTED and len(rows) == len(EXPECTED)
    best = min((r for r in rows if r.status == "keep"), key=lambda r: r.val_bpb)
    assert best.val_bpb == pytest.approx(0.93) and git(ws, "rev-parse", "--short=7", "HEAD") == best.commit
    assert git(ws, "status", "--porcelain", "--untracked-files=no") == ""
    view = workspace_view(ws)
    assert all(e.record.get("event") == "finished" and e.record["row"] == e.number for e in view.entries)
    assert view.summary().best == pytest.approx(0.93)
    fields = schema(ws)
    assert fields["finished"] >= {"id", "row", "commit", "parent", "status", "val_bpb", "budget", "backend", "kind",
                                  "decision", "values", "notes", "usage", "best_before", "keep_rule", "description"}
    return fields


def test_ar_run_the_serial_loop_and_two_workers_decide_and_record_alike(tmp_path):
    fake_prepared_data(tmp_path / "cache")
    manual, serial, parallel = (make_ws(tmp_path, n) for n in ("manual", "serial", "parallel"))
    by_hand(manual)
    looped(serial, 1)
    looped(parallel, 2)
    schemas = [check(ws) for ws in (manual, serial, parallel)]
    assert schemas[0] == schemas[1] == schemas[2]  # one schema, whoever wrote it
