"""`ar loop --workers N`: worktrees, device shares, the stale-best rule, and the whole loop
with a fast fake training script (real subprocesses, real git)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoresearch.backends.detect import GpuDevice, Hardware
from autoresearch.cli import app
from autoresearch.errors import ArError
from autoresearch.experiment.lab import INTERRUPTED_NOTE, LoopSettings
from autoresearch.ui.view import workspace_view
from autoresearch.executors.devices import plan_workers
from autoresearch.loop.parallel import run_parallel
from autoresearch.proposers.base import HistoryItem, NoProposal, Proposal, ProposalContext
from autoresearch.proposers.offline import OfflineProposer
from autoresearch.journal.files import read_results, read_run_records
from autoresearch.run.process import RunResult, allocate_log
from autoresearch.workspace.git import Workspace
from autoresearch.workspace.worktrees import WORKTREES_RELDIR, WorktreePool, merge3, prune_stale_worktrees
from fake_cache import fake_prepared_data

# Fast stand-in for train.py: val_bpb depends on its constants (best at LR 0.02, DEPTH 5,
# WD 0.05). It is steered through files in the test's control folder `ctl` (the runner
# passes no foreign environment variables): ctl/pids/<pid> gets each run's start and end
# time, ctl/sleep makes runs last longer (so they overlap), and with ctl/hang present a
# changed script hangs (for the stop and kill tests).
FAKE_TRAIN = """\
import math, os, time
LR = 0.04  # learning rate
DEPTH = 4  # transformer blocks
WD = 0.1  # weight decay
ctl = {ctl!r}
budget = float(os.environ["AUTORESEARCH_TIME_BUDGET"])
pidfile = os.path.join(ctl, "pids", str(os.getpid()))
open(pidfile, "w").write(f"{{time.time()}}\\n")
if os.path.exists(os.path.join(ctl, "hang")) and (LR, DEPTH, WD) != (0.04, 4, 0.1):
    print("progress step=1 pct=10.0 loss=6.0", flush=True)
    time.sleep(60)
if os.path.exists(os.path.join(ctl, "sleep")):
    time.sleep(float(open(os.path.join(ctl, "sleep")).read()))
for step in range(1, 5):
    print(f"progress step={{step}} pct={{25 * step:.1f}} loss={{6 - step:.4f}} tok_per_s=1000 remaining_s={{budget - step * budget / 4:.1f}}")
print("---")
print(f"val_bpb: {{1 + abs(math.log(LR / 0.02)) + 0.05 * abs(DEPTH - 5) + abs(WD - 0.05):.6f}}")
print("peak_vram_mb: 1024.0")
print(f"threads: {{os.environ.get('OMP_NUM_THREADS')}}")
open(pidfile, "a").write(f"{{time.time()}}\\n")
"""


def expected_bpb(text: str) -> float:
    lr, depth, wd = (float(re.search(rf"^{k} = (\S+)", text, re.M).group(1)) for k in ("LR", "DEPTH", "WD"))
    return round(1 + abs(math.log(lr / 0.02)) + 0.05 * abs(depth - 5) + abs(wd - 0.05), 6)


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
    return lambda *args: runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "160"})


@pytest.fixture
def ws(tmp_path, cli) -> Path:
    """A workspace made by `ar init`, data "prepared", the fake script committed."""
    folder = tmp_path / "research"
    res = cli("init", "par", "--dir", folder, "--backend", "cpu", "--budget", "20", "--kill", "60")
    assert res.exit_code == 0, res.output
    fake_prepared_data(tmp_path / "cache")
    ctl = tmp_path / "ctl"
    (ctl / "pids").mkdir(parents=True)
    (folder / "train.py").write_text(FAKE_TRAIN.format(ctl=str(ctl)))
    with open(folder / ".autoresearch" / "config.toml", "a") as f:
        f.write('metric = "printed"\n')  # the fake prints val_bpb; it does not use the harness
    git(folder, "commit", "-q", "-am", "fake training script")
    return folder


def worktree_paths(folder: Path) -> list[str]:
    return [ln for ln in git(folder, "worktree", "list", "--porcelain").splitlines() if ln.startswith("worktree ")]


def assert_clean_end(folder: Path) -> None:
    """One truth left behind: a clean tree, no worktrees, no training process, HEAD = the best."""
    assert git(folder, "status", "--porcelain") == ""
    assert worktree_paths(folder) == [f"worktree {folder}"]
    assert not (folder / WORKTREES_RELDIR).exists()
    alive = [p.name for p in (folder.parent / "ctl" / "pids").iterdir() if _alive(int(p.name))]
    assert alive == []
    rows = read_results(folder / "results.tsv")
    best = min((r for r in rows if r.status == "keep"), key=lambda r: r.val_bpb)
    assert git(folder, "rev-parse", "--short=7", "HEAD") == best.commit
    assert expected_bpb((folder / "train.py").read_text()) == best.val_bpb


# -- devices --------------------------------------------------------------------------


def _hw(kind="cpu", cores=8, gpus=0):
    return Hardware(kind=kind, chip="x", cpu_cores=cores, gpus=tuple(GpuDevice(f"gpu{i}") for i in range(gpus)))


def test_each_worker_gets_its_own_gpu_or_an_even_share_of_the_cpu():
    plan = plan_workers("cuda", 2, _hw("nvidia", gpus=4), environ={})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in plan.envs] == ["0", "1"]
    plan = plan_workers("cuda", 2, _hw("nvidia", gpus=4), environ={"CUDA_VISIBLE_DEVICES": "3, 5"})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in plan.envs] == ["3", "5"]  # the user's own selection is honoured
    with pytest.raises(ArError, match=r"--workers 3 needs 3 GPUs .* but 2 are visible; use --workers 2"):
        plan_workers("cuda", 3, _hw("nvidia", gpus=2), environ={})
    shared = plan_workers("cuda", 3, _hw("nvidia", gpus=2), environ={}, force=True)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in shared.envs] == ["0", "1", "0"]

    plan = plan_workers("cpu", 3, _hw(cores=8))
    assert [e["OMP_NUM_THREADS"] for e in plan.envs] == ["2", "2", "2"] and plan.envs[0]["MKL_NUM_THREADS"] == "2"
    with pytest.raises(ArError, match="less than one core per worker"):
        plan_workers("cpu", 3, _hw(cores=2))

    with pytest.raises(ArError, match="one GPU .*--force-workers"):
        plan_workers("mps", 2, _hw("apple"))
    with pytest.raises(ArError, match="--force-workers"):
        plan_workers("mlx", 2, _hw("apple"))
    assert len(plan_workers("mps", 2, _hw("apple"), force=True).envs) == 2
    assert plan_workers("mlx", 2, _hw("cpu", cores=4)).envs[1]["OMP_NUM_THREADS"] == "2"  # MLX on a Linux CPU


def test_loop_refuses_more_workers_than_the_machine_holds(ws, cli, monkeypatch):
    import autoresearch.backends as backends

    monkeypatch.setattr(backends, "detect_hardware", lambda: _hw(cores=1))
    res = cli("loop", "--dir", ws, "--workers", 2, "--max-experiments", 1)
    assert res.exit_code == 1 and "less than one core per worker" in res.output and "Traceback" not in res.output
    res = cli("loop", "--dir", ws, "--workers", 2, "--executor", "slurm")
    assert res.exit_code == 1 and "unknown executor 'slurm'" in res.output
    assert read_results(ws / "results.tsv") == []


# -- merging a change onto a new best -------------------------------------------------


def test_merge3_applies_changes_on_adjacent_lines_and_refuses_overlaps():
    base = "LR = 0.04\nWD = 0.1\nDEPTH = 4\n"
    ours = "LR = 0.02\nWD = 0.1\nDEPTH = 4\n"
    assert merge3(base, ours, "LR = 0.04\nWD = 0.05\nDEPTH = 4\n") == "LR = 0.02\nWD = 0.05\nDEPTH = 4\n"
    assert merge3(base, ours, "LR = 0.08\nWD = 0.1\nDEPTH = 4\n") is None  # the same line, changed both ways
    assert merge3(base, ours, ours) == ours  # already there
    assert merge3(base, "# top\n" + base, base + "X = 1\n") == "# top\n" + base + "X = 1\n"
    assert merge3(base, base + "A = 1\n", base + "B = 2\n") is None  # two insertions at one place


# -- the offline proposer and experiments in flight --------------------------------------


def test_offline_proposer_never_proposes_an_experiment_in_flight():
    ctx = ProposalContext("", "train.py", "LR = 0.04\nWD = 0.1\n", (), 1.0, "", "")
    first = OfflineProposer().propose(ctx)
    second = OfflineProposer().propose(ProposalContext("", "train.py", ctx.editable_text, (), 1.0, "", "",
                                                       in_flight=(first.description,)))
    assert second.description != first.description
    # running experiments count as mentions: the next worker changes another constant
    assert second.description.split()[1] != first.description.split()[1]
    history = (HistoryItem(1, "abc1234", 1.0, "discard", second.description),)
    third = OfflineProposer().propose(ProposalContext("", "train.py", ctx.editable_text, history, 1.0, "", "",
                                                      in_flight=(first.description,)))
    assert third.description not in (first.description, second.description)


# -- worktrees ------------------------------------------------------------------------


def test_worktrees_are_ignored_owned_and_pruned_after_a_dead_owner(ws):
    head = git(ws, "rev-parse", "--short=7", "HEAD")
    with WorktreePool(ws) as pool:
        trees = pool.create(2, head)
        assert [t.name for t in trees] == ["w1", "w2"] and len(worktree_paths(ws)) == 3
        assert git(ws, "status", "--porcelain", "--untracked-files=all") == ""  # ignored through .git/info/exclude
        with pytest.raises(ArError, match=r"another `ar loop --workers` \(pid \d+\) is running"):
            WorktreePool(ws).claim()
    assert worktree_paths(ws) == [f"worktree {ws}"] and not (ws / WORKTREES_RELDIR).exists()

    # A process that dies with its worktrees (kill -9): the next start removes them.
    code = ("import os, sys; from pathlib import Path; from autoresearch.workspace.worktrees import WorktreePool; "
            "p = WorktreePool(Path(sys.argv[1])); p.claim(); p.create(2, sys.argv[2]); print('ready', flush=True); "
            "os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code, str(ws), head], capture_output=True, text=True, timeout=60)
    assert "ready" in proc.stdout and proc.returncode == -9
    assert len(worktree_paths(ws)) == 3
    assert sorted(prune_stale_worktrees(ws)) == ["w1", "w2"]
    assert worktree_paths(ws) == [f"worktree {ws}"] and not (ws / WORKTREES_RELDIR).exists()
    assert prune_stale_worktrees(ws) == []


# -- the stale-best rule, with a fake executor ------------------------------------------------


class FakeExecutor:
    """val_bpb from the script's constants (`value_of`, default expected_bpb); a run whose value
    is in `gates` first waits for that event (to make the best move while it runs)."""

    def __init__(self, folder: Path, gates: dict, value_of=expected_bpb, by_seed: dict = None):
        self.folder, self.gates, self.value_of, self.by_seed = folder, gates, value_of, by_seed or {}
        self.calls: list[tuple[int, str, float]] = []
        self.closed = False

    def describe(self) -> str:
        return "fake"

    def label(self, slot: int) -> str:
        return f"w{slot + 1}"

    def run(self, slot, tree, commit, *, seed, on_progress, stop):
        assert git(tree, "rev-parse", "--short=7", "HEAD") == commit and git(tree, "status", "--porcelain") == ""
        value = self.value_of((tree / "train.py").read_text())
        value = self.by_seed.get((value, seed), value)  # run-to-run noise, where a test wants some
        self.calls.append((slot, commit, value))
        gate = self.gates.pop(value, None)
        if gate is not None:
            assert gate.wait(20)
        _, log = allocate_log(self.folder / ".autoresearch" / "runs", commit)
        log.write_text(f"---\nval_bpb: {value:.6f}\n")
        return RunResult("ok", value, 1.0, 0.01, {"val_bpb": value}, "", log, [], 0), self.label(slot)

    def close(self) -> None:
        self.closed = True


def changed(text: str, name: str, value: str) -> str:
    return re.sub(rf"^{name} = \S+", f"{name} = {value}", text, flags=re.M)


class ByWorker:
    """Worker i (thread ar-w<i>) proposes its own list of (constant, value) changes."""

    name = "byworker"

    def __init__(self, plans: dict[str, list[tuple[str, str]]]):
        self.plans = plans

    def propose(self, ctx: ProposalContext) -> Proposal:
        todo = self.plans.get(threading.current_thread().name)
        if not todo:
            raise NoProposal("nothing more for this worker")
        name, value = todo.pop(0)
        return Proposal(changed(ctx.editable_text, name, value), f"{name} -> {value}")


def _run_two(ws: Path, w1: tuple[str, str], w2: tuple[str, str], value_of=expected_bpb) -> FakeExecutor:
    """w1's experiment is kept while w2's run (on the baseline) is still going."""
    w1_done = threading.Event()

    def on_event(e):
        if e.kind == "finished" and e.worker.startswith("w1") and e.run_kind == "experiment":
            w1_done.set()

    gate = value_of(changed(FAKE_TRAIN.format(ctl=''), *w2))
    executor = FakeExecutor(ws, {gate: w1_done}, value_of)
    settings = LoopSettings(editable="train.py", budget=20, full_budget=20, keep_rule="strict", max_experiments=2)
    report = run_parallel(Workspace.open(ws), ByWorker({"ar-w1": [w1], "ar-w2": [w2]}), executor, settings, workers=2, on_event=on_event)
    assert executor.closed and report.experiments == 2
    return executor


def test_a_win_measured_against_an_older_best_is_reapplied_and_confirmed(ws):
    base = git(ws, "rev-parse", "--short=7", "HEAD")
    # w1: LR 0.04 -> 0.02 (1.793 -> 1.100, kept at once); w2: WD 0.1 -> 0.05 measured on the
    # baseline (1.743: a win there) while the best moved to w1's commit.
    executor = _run_two(ws, ("LR", "0.02"), ("WD", "0.05"))
    rows = read_results(ws / "results.tsv")
    assert [(r.status, r.description) for r in rows] == [("keep", "baseline"), ("keep", "LR -> 0.02"), ("keep", "WD -> 0.05")]
    lr_commit, wd_row = rows[1].commit, rows[2]
    assert wd_row.val_bpb == pytest.approx(1.05)  # the confirmed value of both changes, not the 1.743 it first measured
    assert git(ws, "rev-parse", "--short=7", "HEAD") == wd_row.commit
    assert git(ws, "rev-parse", "--short=7", "HEAD^") == lr_commit  # re-applied on top of the new best
    assert "LR = 0.02" in (ws / "train.py").read_text() and "WD = 0.05" in (ws / "train.py").read_text()

    records = read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl")
    reapplied = [r for r in records if r.get("event") == "reapplied"]
    assert len(reapplied) == 1 and reapplied[0]["onto"] == lr_commit and reapplied[0]["new_commit"] == wd_row.commit
    assert reapplied[0]["parent"] == base and reapplied[0]["measured"] == pytest.approx(1.743147)
    confirm = [r for r in records if r.get("event") == "run" and r.get("kind") == "confirm"]
    assert [(c["commit"], c["worker"], c["val_bpb"]) for c in confirm] == [(wd_row.commit, "w2", pytest.approx(1.05))]
    assert [c[2] for c in executor.calls if c[0] == 1] == [pytest.approx(1.743147), pytest.approx(1.05)]
    assert {e.row.commit: e.worker for e in workspace_view(ws).entries} == {rows[0].commit: "w1", lr_commit: "w1", wd_row.commit: "w2"}
    assert_clean_end(ws)


def test_a_stale_win_that_conflicts_with_the_new_best_is_discarded(ws):
    # Both change LR: w2's 0.03 (a win on the baseline) cannot be merged onto w1's 0.02.
    _run_two(ws, ("LR", "0.02"), ("LR", "0.03"))
    rows = read_results(ws / "results.tsv")
    assert [r.status for r in rows] == ["keep", "keep", "discard"]
    assert rows[2].description == "LR -> 0.03 (conflicts with the new best)"
    assert rows[2].val_bpb == pytest.approx(expected_bpb(changed(FAKE_TRAIN.format(ctl=''), "LR", "0.03")))  # what it measured
    assert git(ws, "rev-parse", "--short=7", "HEAD") == rows[1].commit
    records = read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl")
    assert "conflicts with the new best" in [r for r in records if r.get("event") == "finished"][-1]["decision"]
    assert not [r for r in records if r.get("event") == "run" and r.get("kind") == "confirm"]  # nothing to run
    assert_clean_end(ws)


def test_a_reapplied_win_that_does_not_beat_the_new_best_is_discarded_with_the_confirmed_value(ws):
    def value_of(text: str) -> float:  # the two changes do not add up here
        both = "LR = 0.02" in text and "WD = 0.05" in text
        return 1.2 if both else expected_bpb(text)

    _run_two(ws, ("LR", "0.02"), ("WD", "0.05"), value_of)
    rows = read_results(ws / "results.tsv")
    assert [r.status for r in rows] == ["keep", "keep", "discard"]
    assert rows[2].val_bpb == pytest.approx(1.2) and rows[2].description == "WD -> 0.05"
    assert git(ws, "rev-parse", "--short=7", f"{rows[2].commit}^") == rows[1].commit  # the row names the re-applied commit
    assert git(ws, "rev-parse", "--short=7", "HEAD") == rows[1].commit
    assert "LR = 0.02" in (ws / "train.py").read_text() and "WD = 0.1" in (ws / "train.py").read_text()
    assert git(ws, "status", "--porcelain") == "" and worktree_paths(ws) == [f"worktree {ws}"]


def test_the_noise_rule_confirms_a_marginal_gain_as_with_one_worker(ws):
    # The baseline (1.793147) runs twice more under seeds 1 and 2: floor 0.01. LR 0.05 gains
    # 0.015 (between 1x and 2x the floor): a confirmation run under seed 3, kept on the mean.
    base = expected_bpb(FAKE_TRAIN.format(ctl=""))
    marginal = expected_bpb(changed(FAKE_TRAIN.format(ctl=""), "LR", "0.05"))
    noisy = {(base, 1): base + 0.01, (marginal, None): base - 0.015, (marginal, 3): base - 0.012}
    executor = FakeExecutor(ws, {}, by_seed=noisy)
    settings = LoopSettings(editable="train.py", budget=20, full_budget=20, keep_rule="noise", max_experiments=1)
    report = run_parallel(Workspace.open(ws), ByWorker({"ar-w1": [("LR", "0.05")]}), executor, settings, workers=2)
    assert report.experiments == 1 and report.kept == 1 and report.noise_floor == pytest.approx(0.01)
    runs = [r for r in read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl") if r.get("event") == "run"]
    assert [(r["kind"], r["seed"], r["worker"]) for r in runs] == [
        ("baseline", None, "w1"), ("noise", 1, "w1"), ("noise", 2, "w1"), ("experiment", None, "w1"), ("confirm", 3, "w1")]
    rows = read_results(ws / "results.tsv")
    assert rows[-1].status == "keep" and rows[-1].val_bpb == pytest.approx(base - 0.0135)  # the mean of both runs
    assert git(ws, "rev-parse", "--short=7", "HEAD") == rows[-1].commit


def test_the_live_view_shows_one_line_per_worker():
    import io

    from rich.console import Console

    from autoresearch.experiment.lab import LoopEvent
    from autoresearch.ui.display import LiveDisplay, PlainDisplay

    events = [
        LoopEvent("resumed", number=1, best=1.5),
        LoopEvent("run_started", number=2, description="offline: LR 0.04 -> 0.02", commit="abc1234", run_kind="experiment", worker="w1"),
        LoopEvent("run_started", number=3, description="offline: WD 0.1 -> 0.05", commit="def5678", run_kind="experiment", worker="w2@gpu-07"),
        LoopEvent("progress", number=3, progress={"step": 6, "pct": 60.0}, worker="w2@gpu-07"),
        LoopEvent("finished", number=2, description="offline: LR 0.04 -> 0.02", status="keep", val_bpb=1.2, best=1.2,
                  note="beats", run_kind="experiment", worker="w1"),
    ]
    display = LiveDisplay(Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None))
    for e in events:
        display(e)
    shot = Console(file=io.StringIO(), width=120, color_system=None)
    shot.print(display.render())
    text = shot.file.getvalue()
    assert "[w2@gpu-07] offline: WD 0.1 -> 0.05" in text and "60.0%" in text
    assert "[w1] offline: LR" not in text  # finished: its line is gone
    assert re.search(r"2\s+1\.200000\s+keep\s+w1\s+offline: LR", text)
    plain = io.StringIO()
    p = PlainDisplay(Console(file=plain, width=120))
    for e in events:
        p(e)
    assert "[w2@gpu-07] offline: WD 0.1 -> 0.05 (def5678)" in plain.getvalue()
    assert "[w1] #2 keep 1.200000" in plain.getvalue()


# -- the whole loop from the command line -----------------------------------------------


def test_loop_with_two_workers_end_to_end(ws, cli, monkeypatch):
    import autoresearch.backends as backends

    monkeypatch.setattr(backends, "detect_hardware", lambda: _hw(cores=4))
    (ws.parent / "ctl" / "sleep").write_text("0.3")  # runs overlap
    res = cli("loop", "--dir", ws, "--workers", 2, "--max-experiments", 6, "--budget", 2, "--keep-rule", "noise")
    assert res.exit_code == 0, res.output
    assert "workers:   2 on this machine, 2 CPU threads each (4 cores)" in res.output
    assert "[w1]" in res.output and "[w2]" in res.output

    rows = read_results(ws / "results.tsv")
    failed = [r for r in read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl") if r.get("status") not in (None, "ok", "keep", "discard")]
    assert not failed, ([(r.get("event"), r.get("status"), r.get("reason"), r.get("decision")) for r in failed], res.output)
    assert len(rows) == 7  # the baseline + 6 experiments, one row each; noise runs are not rows
    assert len({r.commit for r in rows}) == 7 and len({r.description for r in rows}) == 7  # no duplicates
    for r in rows:  # each row's number is what its commit's script gives
        assert r.val_bpb == pytest.approx(expected_bpb(git(ws, "show", f"{r.commit}:train.py")))
    assert_clean_end(ws)

    records = read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl")
    runs = [r for r in records if r.get("event") == "run"]
    assert [r["kind"] for r in runs[:3]] == ["baseline", "noise", "noise"] and all(r["worker"] == "w1" for r in runs[:3])
    assert {r["worker"] for r in runs} == {"w1", "w2"}
    for r in runs:  # each worker ran with its share of the CPU threads
        assert "threads: 2" in (ws / r["log"]).read_text()
    finished = [r for r in records if r.get("event") == "finished"]
    assert len(finished) == 7 and len({r["id"] for r in finished}) == 7
    spans = sorted(tuple(map(float, p.read_text().split())) for p in (ws.parent / "ctl" / "pids").iterdir())
    assert len(spans) == len(runs)
    overlaps = sum(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    assert overlaps >= 3  # experiments really ran two at a time

    shown = cli("results", "--dir", ws)
    assert shown.exit_code == 0 and re.search(r"status\s+worker\s+description", shown.output)
    assert re.search(r"keep\s+w1\s+baseline", shown.output)
    as_json = json.loads(cli("results", "--dir", ws, "--json").output)
    assert {r["worker"] for r in as_json["rows"]} <= {"w1", "w2"}
    assert (ws / "results.tsv").read_text().splitlines()[0].count("\t") == 4  # still the 5 upstream columns
    plotted = cli("plot", "--dir", ws, "--out", ws.parent / "p.png")
    assert plotted.exit_code == 0 and (ws.parent / "p.png").stat().st_size > 0

    # Resuming with one worker goes on from the same truth.
    again = cli("loop", "--dir", ws, "--max-experiments", 1, "--budget", 2)
    assert again.exit_code == 0, again.output
    assert len(read_results(ws / "results.tsv")) == 8
    assert_clean_end(ws)


def _start_loop(ws: Path) -> subprocess.Popen:
    (ws.parent / "ctl" / "hang").write_text("")
    return subprocess.Popen(
        [sys.executable, "-c", "from autoresearch.cli import app; app()", "loop", "--dir", str(ws), "--budget", "2",
         "--keep-rule", "strict", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "160"},
    )


def _wait_for_hanging(ws: Path, proc: subprocess.Popen, n: int = 2) -> list[int]:
    """The pids of the `n` experiments hanging (the baseline's pid comes first)."""
    pids_dir = ws.parent / "ctl" / "pids"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = [int(p.name) for p in pids_dir.iterdir() if _alive(int(p.name))]
        if len(live) >= n and len(list(pids_dir.iterdir())) >= n + 1:
            return live
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the experiments did not start:\n" + (proc.communicate()[0] or ""))


def test_ctrl_c_stops_every_worker_and_leaves_nothing_behind(ws, tmp_path):
    proc = _start_loop(ws)
    try:
        pids = _wait_for_hanging(ws, proc)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    rows = read_results(ws / "results.tsv")
    assert [r.description for r in rows] == ["baseline (budget 2 s)"]  # no row for the abandoned experiments
    records = read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl")
    abandoned = [r for r in records if r.get("event") == "abandoned"]
    assert len(abandoned) == 2 and {r["worker"] for r in abandoned} == {"w1", "w2"}, out + "\n".join(json.dumps(r) for r in records)
    (tmp_path / "ctl" / "hang").unlink()
    assert_clean_end(ws)


def test_after_kill_9_the_next_loop_prunes_the_worktrees_and_records_each_dead_experiment_once(ws, tmp_path, cli):
    proc = _start_loop(ws)
    pids = []
    try:
        pids = _wait_for_hanging(ws, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in pids:  # orphans of the dead loop, in their own process groups
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    assert len(worktree_paths(ws)) == 3  # left behind by the dead process
    (tmp_path / "ctl" / "hang").unlink()

    res = cli("loop", "--dir", ws, "--workers", 2, "--budget", 2, "--keep-rule", "strict", "--max-experiments", 2)
    assert res.exit_code == 0, res.output
    assert "removed 2 worktrees a dead `ar loop` left behind" in res.output
    rows = read_results(ws / "results.tsv")
    crashes = [r for r in rows if INTERRUPTED_NOTE in r.description]
    assert len(rows) == 5 and len(crashes) == 2 and all(r.status == "crash" for r in crashes)
    assert len({r.commit for r in rows}) == 5
    recovered = [r for r in read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl") if r.get("event") == "recovered"]
    assert len(recovered) == 2
    assert_clean_end(ws)


# -- Ray ------------------------------------------------------------------------------


def test_ray_executor_needs_ray_and_says_so(ws, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    res = cli("loop", "--dir", ws, "--executor", "ray", "--max-experiments", 1)
    assert res.exit_code == 1 and "--executor ray needs Ray" in res.output and "pip install 'autoresearch[ray]'" in res.output
    assert "Traceback" not in res.output and worktree_paths(ws) == [f"worktree {ws}"]


def test_the_node_check_names_what_a_node_lacks(ws, monkeypatch):
    from autoresearch import __version__
    from autoresearch.executors.ray import node_check_fn

    check = node_check_fn()
    config = (ws / ".autoresearch" / "config.toml").read_text()
    host, problem = check(config, __version__)
    assert problem is None and host
    assert "has autoresearch " + __version__ + " but this machine has 9.9" in check(config, "9.9")[1]
    (ws.parent / "cache" / "tokenizers" / "builtin-v2048" / "tokenizer.json").unlink()
    problem = check(config, __version__)[1]
    assert problem.startswith("lacks the prepared data: no tokenizer in ") and "ar prepare --source builtin" in problem
    assert "AUTORESEARCH_CACHE" in problem
    monkeypatch.setitem(sys.modules, "autoresearch", None)  # a node without the package
    assert check(config, __version__)[1] == f"lacks the autoresearch package: run `pip install autoresearch=={__version__}` there"


@pytest.mark.slow
def test_loop_with_ray_tasks_on_a_local_ray_instance(ws, cli):
    ray = pytest.importorskip("ray")
    import socket

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # inherits AUTORESEARCH_CACHE of this test
    try:
        res = cli("loop", "--dir", ws, "--workers", 2, "--executor", "ray", "--max-experiments", 4, "--budget", 2,
                  "--keep-rule", "strict")
        assert res.exit_code == 0, res.output
        assert "Ray tasks (auto: 1 nodes checked, 2 CPUs); each asks for 1 CPU" in res.output
        assert ray.is_initialized()  # a Ray the caller started is left running
        rows = read_results(ws / "results.tsv")
        assert len(rows) == 5 and len({r.commit for r in rows}) == 5 and len({r.description for r in rows}) == 5
        for r in rows:
            assert r.val_bpb == pytest.approx(expected_bpb(git(ws, "show", f"{r.commit}:train.py")))
        runs = [r for r in read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl") if r.get("event") == "run"]
        host = socket.gethostname()
        assert {r["worker"] for r in runs} == {f"w1@{host}", f"w2@{host}"}
        for r in runs:  # the log came back from the task; one CPU each, as asked
            log = (ws / r["log"]).read_text()
            assert "val_bpb:" in log and "threads: 1" in log
        shown = cli("results", "--dir", ws)
        assert f"w1@{host}" in shown.output
        assert_clean_end(ws)

        # A node without the prepared data is named before anything runs.
        (ws.parent / "cache" / "tokenizers" / "builtin-v2048" / "tokenizer.json").unlink()
        res = cli("loop", "--dir", ws, "--workers", 2, "--executor", "ray", "--max-experiments", 1, "--budget", 2)
        assert res.exit_code == 1 and re.search(r"Ray node \S+ .*lacks the prepared data: no tokenizer", res.output)
        assert len(read_results(ws / "results.tsv")) == 5 and worktree_paths(ws) == [f"worktree {ws}"]
    finally:
        ray.shutdown()
