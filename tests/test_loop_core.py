"""The loop's pure core with fakes: a scripted proposer, a runner returning canned results,
and a real temporary git repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from autoresearch.errors import ArError
from autoresearch.experiment.lab import INTERRUPTED_NOTE, Lab, LoopSettings
from autoresearch.experiment.recovery import recover
from autoresearch.loop.serial import run_loop
from autoresearch.journal.queries import best_entry, budget_key, history
from autoresearch.proposers.base import NoProposal, Proposal, Usage
from autoresearch.journal.files import ResultRow, append_result, append_run_record, read_results, read_run_records
from autoresearch.run.process import RunResult
from autoresearch.workspace.git import Workspace

SCRIPT = "import os\nLR = 0.04  # learning rate\nWD = 0.1\n"


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def ws(tmp_path) -> Workspace:
    folder = tmp_path / "ws"
    w = Workspace.init(folder)
    (folder / "train.py").write_text(SCRIPT)
    (folder / "program.md").write_text("Lower val_bpb.\n")
    (folder / ".gitignore").write_text("results.tsv\n.autoresearch/runs/\n")
    w.commit(["train.py", "program.md", ".gitignore"], "template")
    return w


def lr_of(text: str) -> float:
    return float(re.search(r"^LR = (\S+)", text, re.M).group(1))


def with_lr(text: str, lr: float) -> str:
    return re.sub(r"^LR = \S+", f"LR = {lr:g}", text, flags=re.M)


class FakeRunner:
    """val_bpb from a table keyed by (LR, seed) (falling back to (LR, None)); None = crash,
    "interrupt" = the user pressed Ctrl-C during this run, "raise" = the interrupt escapes."""

    def __init__(self, ws: Workspace, table: dict):
        self.ws, self.table = ws, table
        self.calls: list[tuple[str, Optional[int], float]] = []

    def run(self, commit, *, seed=None, on_progress=None):
        # The loop runs exactly the commit it names, from a clean tree.
        assert self.ws.head_commit() == commit and not self.ws.is_dirty()
        lr = lr_of((self.ws.path / "train.py").read_text())
        self.calls.append((commit, seed, lr))
        if on_progress:
            on_progress({"step": 1, "pct": 50.0, "loss": 3.0})
        value = self.table.get((lr, seed), self.table.get((lr, None)))
        log = self.ws.path / ".autoresearch" / "runs" / f"{len(self.calls):04d}-{commit}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if value == "raise":
            raise KeyboardInterrupt
        if value == "interrupt":
            log.write_text("progress step=1\n")
            return RunResult("interrupted", None, 0.0, 0.1, {}, "interrupted by the user", log, ["progress step=1"])
        if value is None:
            tail = ["Traceback (most recent call last):", "RuntimeError: loss exploded"]
            log.write_text("\n".join(tail) + "\n")
            return RunResult("crash", None, 0.0, 0.1, {}, "RuntimeError: loss exploded (exit code 1, no val_bpb)", log, tail, 1)
        log.write_text(f"---\nval_bpb: {value:.6f}\n")
        return RunResult("ok", value, 2.0, 0.1, {"val_bpb": value}, "", log, [f"val_bpb: {value:.6f}"], 0)


class ScriptedProposer:
    """Each step: a new LR (float), a NoProposal, or any other exception to raise."""

    name = "scripted"

    def __init__(self, steps, cost: float = 0.0):
        self.steps, self.cost = list(steps), cost
        self.contexts = []

    def propose(self, ctx):
        self.contexts.append(ctx)
        step = self.steps.pop(0) if self.steps else NoProposal("out of ideas")
        if isinstance(step, BaseException):
            raise step
        usage = Usage(input_tokens=100, output_tokens=10, cost_usd=self.cost)
        return Proposal(with_lr(ctx.editable_text, step), f"LR {lr_of(ctx.editable_text):g} -> {step:g}", usage)


def settings(**kw) -> LoopSettings:
    base = dict(editable="train.py", budget=60.0, full_budget=60.0, keep_rule="strict", max_experiments=10)
    base.update(kw)
    return LoopSettings(**base)


class Invariants:
    """After every finished experiment: a clean tree and HEAD = the best commit of the budget."""

    def __init__(self, ws: Workspace, s: LoopSettings):
        self.ws, self.s = ws, s
        self.events = []
        self.checked = 0

    def __call__(self, event):
        self.events.append(event)
        if event.kind == "finished":
            assert git(self.ws.path, "status", "--porcelain") == ""
            entries = history(self.ws.path, budget=self.s.full_budget, backend=self.s.backend)
            best = best_entry(entries, (budget_key(self.s.budget), self.s.backend), self.ws.ancestry())
            if best is not None:
                assert self.ws.head_commit() == best.row.commit
            self.checked += 1


def loop(ws, proposer, runner, s, **kw):
    inv = Invariants(ws, s)
    report = run_loop(ws, proposer, runner, s, on_event=inv, sleep=kw.pop("sleep", lambda t: None), **kw)
    return report, inv


def rows(ws):
    return read_results(ws.path / "results.tsv")


def records(ws, event=None):
    recs = read_run_records(ws.path / ".autoresearch" / "runs" / "runs.jsonl")
    return [r for r in recs if event is None or r.get("event") == event]


def test_baseline_then_keep_discard_crash(ws):
    base = ws.head_commit()
    runner = FakeRunner(ws, {(0.04, None): 1.5, (0.02, None): 1.2, (0.01, None): 1.3, (0.08, None): None})
    proposer = ScriptedProposer([0.02, 0.01, 0.08])
    s = settings(max_experiments=3)
    report, inv = loop(ws, proposer, runner, s)

    got = rows(ws)
    assert [(r.status, r.val_bpb, r.description) for r in got] == [
        ("keep", 1.5, "baseline"),
        ("keep", 1.2, "LR 0.04 -> 0.02"),
        ("discard", 1.3, "LR 0.02 -> 0.01"),
        ("crash", 0.0, "LR 0.02 -> 0.08"),
    ]
    assert got[0].commit == base and runner.calls[0] == (base, None, 0.04)  # the unmodified script first
    assert ws.head_commit() == got[1].commit and lr_of((ws.path / "train.py").read_text()) == 0.02
    assert git(ws.path, "log", "--format=%s", "-1") == "LR 0.04 -> 0.02"  # the description is the commit message
    assert inv.checked == 4
    assert report.experiments == 3 and report.kept == 1 and report.crashed == 1 and report.baseline_run
    assert report.best == 1.2 and report.best_commit == got[1].commit and "--max-experiments 3" in report.stop_reason

    # What the proposer saw: the history so far, the best file, the crash tail after a crash.
    ctx = proposer.contexts[-1]
    assert [h.status for h in ctx.history] == ["keep", "keep", "discard"] and ctx.best == 1.2
    assert ctx.program == "Lower val_bpb.\n" and lr_of(ctx.editable_text) == 0.02 and ctx.last_crash_tail is None
    # Order of writes of one experiment in runs.jsonl.
    keyed = [(r["event"], r.get("id")) for r in records(ws) if r.get("id")]
    xid = records(ws, "started")[1]["id"]
    assert [e for e, i in keyed if i == xid] == ["proposing", "started", "run", "finished"]
    finished = records(ws, "finished")
    assert [f["status"] for f in finished] == ["keep", "keep", "discard", "crash"]
    assert finished[1]["proposer"] == "scripted" and finished[1]["usage"]["input_tokens"] == 100
    assert finished[2]["best_before"] == 1.2 and "does not beat" in finished[2]["decision"]


def test_the_crash_log_tail_reaches_the_next_proposal(ws):
    runner = FakeRunner(ws, {(0.04, None): 1.5, (0.08, None): None, (0.02, None): 1.4, (0.01, None): None})
    proposer = ScriptedProposer([0.08, 0.02, 0.01])
    loop(ws, proposer, runner, settings(max_experiments=3))
    tails = [c.last_crash_tail for c in proposer.contexts]
    assert "RuntimeError: loss exploded" in tails[1] and tails[0] is None and tails[2] is None
    # A new process finds the last crash's log through runs.jsonl.
    proposer2 = ScriptedProposer([0.03])
    loop(ws, proposer2, FakeRunner(ws, {(0.03, None): 1.3}), settings(max_experiments=1))
    assert "RuntimeError: loss exploded" in proposer2.contexts[0].last_crash_tail
    # A crash row with no log behind it (written by hand): nothing is invented.
    append_result(ws.path / "results.tsv", ResultRow("abcdef0", 0.0, 0.0, "crash", "by hand"))
    proposer3 = ScriptedProposer([0.025])
    loop(ws, proposer3, FakeRunner(ws, {(0.025, None): 1.35}), settings(max_experiments=1))
    assert proposer3.contexts[0].last_crash_tail is None


def test_limits_stop_the_loop(ws):
    table = {(lr, None): 1.0 + abs(lr - 0.02) for lr in (0.04, 0.02, 0.01, 0.03, 0.05, 0.06)}
    # --max-cost: proposals cost 0.4 each; the third starts at 0.8 < 1.0, the fourth is not asked for.
    report, _ = loop(ws, ScriptedProposer([0.02, 0.01, 0.03, 0.05], cost=0.4), FakeRunner(ws, table), settings(max_experiments=None, max_cost=1.0))
    assert report.experiments == 3 and report.cost_usd == pytest.approx(1.2) and "--max-cost" in report.stop_reason
    # --max-hours, with a clock that moves 1000 s per reading.
    ticks = iter(range(0, 10**6, 1000))
    report, _ = loop(
        ws, ScriptedProposer([0.05, 0.06, 0.03]), FakeRunner(ws, table), settings(max_experiments=None, max_hours=0.5),
        clock=lambda: next(ticks),
    )
    assert report.experiments == 1 and "0.5 hours" in report.stop_reason
    assert len(rows(ws)) == 5 and not report.baseline_run  # resumed: no second baseline


def test_no_proposal_is_fed_back_and_asked_again_with_backoff(ws):
    runner = FakeRunner(ws, {(0.04, None): 1.5, (0.02, None): 1.4})
    proposer = ScriptedProposer(
        [NoProposal("the edit did not apply", Usage(cost_usd=0.1)), NoProposal("no tool call"), NoProposal("no tool call"), 0.02]
    )
    waits = []
    report, inv = loop(ws, proposer, runner, settings(max_experiments=1, patience=2, backoff=5), sleep=waits.append)
    assert report.experiments == 1 and [r.status for r in rows(ws)] == ["keep", "keep"]
    assert waits == [5, 10]  # after the 2nd and 3rd failure in a row
    assert [c.feedback for c in proposer.contexts] == [None, "the edit did not apply", "no tool call", "no tool call"]
    assert [r["consecutive"] for r in records(ws, "no_proposal")] == [1, 2, 3]
    assert report.cost_usd == pytest.approx(0.1)
    assert [e.kind for e in inv.events].count("no_proposal") == 3


def test_a_failing_proposer_is_asked_again_but_a_user_error_stops(ws):
    runner = FakeRunner(ws, {(0.04, None): 1.5, (0.02, None): 1.4})
    report, _ = loop(ws, ScriptedProposer([ConnectionError("reset by peer"), 0.02]), runner, settings(max_experiments=1))
    assert report.experiments == 1
    assert records(ws, "no_proposal")[0]["reason"] == "the scripted proposer failed: ConnectionError: reset by peer"
    with pytest.raises(ArError, match="no API key"):
        loop(ws, ScriptedProposer([ArError("no API key")]), runner, settings())
    assert git(ws.path, "status", "--porcelain") == ""


def test_an_unchanged_file_is_not_an_experiment(ws):
    runner = FakeRunner(ws, {(0.04, None): 1.5, (0.02, None): 1.4})
    report, _ = loop(ws, ScriptedProposer([0.04, 0.02]), runner, settings(max_experiments=1))
    assert [r.description for r in rows(ws)] == ["baseline", "LR 0.04 -> 0.02"]
    assert "unchanged" in records(ws, "no_proposal")[0]["reason"]


@pytest.mark.parametrize("how", ["interrupt", "raise"])
def test_ctrl_c_during_a_run_leaves_a_clean_tree_and_no_row(ws, how):
    runner = FakeRunner(ws, {(0.04, None): 1.5, (0.02, None): 1.4, (0.01, None): how})
    report, _ = loop(ws, ScriptedProposer([0.02, 0.01, 0.03]), runner, settings())
    assert report.interrupted and report.stop_reason == "interrupted" and report.experiments == 1
    assert [r.description for r in rows(ws)] == ["baseline", "LR 0.04 -> 0.02"]
    assert git(ws.path, "status", "--porcelain") == "" and ws.head_commit() == rows(ws)[1].commit
    abandoned = records(ws, "abandoned")
    assert len(abandoned) == 1 and abandoned[0]["reason"] == "interrupted"
    # Nothing left to recover: the next start goes on without a crash row.
    runner2 = FakeRunner(ws, {(0.02, None): 1.4, (0.03, None): 1.39})
    report2, _ = loop(ws, ScriptedProposer([0.03]), runner2, settings(max_experiments=1))
    assert report2.recovered == 0 and [r.status for r in rows(ws)] == ["keep", "keep", "keep"]


def test_ctrl_c_while_proposing_stops_without_a_trace_in_git(ws):
    runner = FakeRunner(ws, {(0.04, None): 1.5})
    report, _ = loop(ws, ScriptedProposer([KeyboardInterrupt()]), runner, settings())
    assert report.interrupted and len(rows(ws)) == 1 and git(ws.path, "status", "--porcelain") == ""


def test_an_interrupted_baseline_is_run_again_next_time(ws):
    report, _ = loop(ws, ScriptedProposer([]), FakeRunner(ws, {(0.04, None): "interrupt"}), settings())
    assert report.interrupted and rows(ws) == []
    report, _ = loop(ws, ScriptedProposer([]), FakeRunner(ws, {(0.04, None): 1.5}), settings(max_experiments=0))
    assert [r.description for r in rows(ws)] == ["baseline"] and report.recovered == 0


def test_a_crashing_baseline_is_not_rerun_and_the_first_success_becomes_the_best(ws):
    runner = FakeRunner(ws, {(0.04, None): None, (0.02, None): 1.4, (0.01, None): 1.45})
    loop(ws, ScriptedProposer([0.02, 0.01]), runner, settings(max_experiments=2))
    assert [(r.status, r.description) for r in rows(ws)] == [
        ("crash", "baseline"), ("keep", "LR 0.04 -> 0.02"), ("discard", "LR 0.02 -> 0.01"),
    ]


def test_noise_rule_measures_the_floor_and_confirms_marginal_gains(ws):
    table = {
        (0.04, None): 1.000, (0.04, 1): 1.004, (0.04, 2): 0.998,  # floor 0.006
        (0.03, None): 0.990, (0.03, 3): 0.992,  # gain 0.010: confirmed, mean 0.991 -> keep
        (0.025, None): 0.988,  # gain 0.003 < floor: discard (strict would keep it)
        (0.02, None): 0.960,  # gain 0.031 > 2x floor: keep at once
        (0.015, None): 0.950, (0.015, 3): 0.960,  # gain 0.010, then mean 0.955: gain 0.005 -> discard
    }
    runner = FakeRunner(ws, table)
    s = settings(keep_rule="noise", max_experiments=4)
    report, _ = loop(ws, ScriptedProposer([0.03, 0.025, 0.02, 0.015]), runner, s)
    got = rows(ws)
    assert [(r.status, round(r.val_bpb, 6)) for r in got] == [
        ("keep", 1.0), ("keep", 0.991), ("discard", 0.988), ("keep", 0.96), ("discard", 0.955),
    ]
    assert report.noise_floor == pytest.approx(0.006)
    kinds = [(r["kind"], r["seed"]) for r in records(ws, "run")]
    assert kinds == [
        ("baseline", None), ("noise", 1), ("noise", 2), ("experiment", None), ("confirm", 3),
        ("experiment", None), ("experiment", None), ("experiment", None), ("confirm", 3),
    ]
    assert len(runner.calls) == 9  # 5 rows cost 9 runs: +2 for the floor, +1 per marginal gain
    floor = records(ws, "noise_floor")[0]
    assert floor["floor"] == pytest.approx(0.006) and floor["values"] == [1.0, 1.004, 0.998]
    # A new process reuses the recorded floor: no more noise runs.
    runner2 = FakeRunner(ws, {(0.02, None): 0.96, (0.01, None): 0.9})
    loop(ws, ScriptedProposer([0.01]), runner2, settings(keep_rule="noise", max_experiments=1))
    assert [c[1] for c in runner2.calls] == [None]


def test_strict_rule_keeps_what_noise_would_not(ws):
    runner = FakeRunner(ws, {(0.04, None): 1.000, (0.025, None): 0.998})
    loop(ws, ScriptedProposer([0.025]), runner, settings(keep_rule="strict", max_experiments=1))
    assert [r.status for r in rows(ws)] == ["keep", "keep"] and len(runner.calls) == 2


def test_a_smoke_budget_has_its_own_baseline_and_best(ws):
    # A full-budget result on the branch does not count for a 2-second loop, nor the other way round.
    append_result(ws.path / "results.tsv", ResultRow(ws.head_commit(), 0.9, 1.0, "keep", "baseline"))
    runner = FakeRunner(ws, {(0.04, None): 1.5, (0.02, None): 1.4})
    s = settings(budget=2.0, max_experiments=1)
    report, _ = loop(ws, ScriptedProposer([0.02]), runner, s)
    assert [r.description for r in rows(ws)] == ["baseline", "baseline (budget 2 s)", "LR 0.04 -> 0.02 (budget 2 s)"]
    assert rows(ws)[2].status == "keep" and report.best == 1.4  # 1.4 is not compared with the 0.9
    entries = history(ws.path, budget=60.0, backend="")
    assert [e.budget for e in entries] == ["60", "2", "2"]  # from the journal, not the description


def test_a_dirty_tree_is_refused(ws):
    (ws.path / "program.md").write_text("my uncommitted tuning\n")
    with pytest.raises(ArError, match="uncommitted changes"):
        run_loop(ws, ScriptedProposer([]), FakeRunner(ws, {}), settings())


# -- recovery from a process that died (kill -9) at each point of an experiment --------


def _open_experiment(ws, *, commit_it: bool, start_it: bool, row: Optional[str] = None, dirty: bool = False):
    """Leave the traces a process killed mid-experiment would leave."""
    runs = ws.path / ".autoresearch" / "runs" / "runs.jsonl"
    parent = ws.head_commit()
    append_result(ws.path / "results.tsv", ResultRow(parent, 1.5, 1.0, "keep", "baseline"))
    n = len(rows(ws))
    common = dict(id="deadbeef0001", parent=parent, message="LR 0.04 -> 0.08", description="LR 0.04 -> 0.08", suffix="",
                  rows_before=n, experiment=n + 1)
    append_run_record(runs, {"event": "proposing", **common})
    (ws.path / "train.py").write_text(with_lr(SCRIPT, 0.08))
    if not commit_it:
        return parent, None
    commit = ws.commit(["train.py"], "LR 0.04 -> 0.08")
    if start_it:
        append_run_record(runs, {"event": "started", "commit": commit, "kind": "experiment", **common})
    if row:
        append_result(ws.path / "results.tsv", ResultRow(commit, 1.6, 1.0, row, "LR 0.04 -> 0.08"))
    if dirty:
        (ws.path / "train.py").write_text(with_lr(SCRIPT, 0.5))
    return parent, commit


def _recover(ws):
    return recover(Lab(ws, settings()))


def test_recover_a_run_that_died_writes_one_crash_row_and_resets(ws):
    parent, commit = _open_experiment(ws, commit_it=True, start_it=True)
    assert _recover(ws) == 1
    assert [(r.commit, r.status, r.description) for r in rows(ws)][1:] == [(commit, "crash", f"LR 0.04 -> 0.08 {INTERRUPTED_NOTE}")]
    assert ws.head_commit() == parent and git(ws.path, "status", "--porcelain") == ""
    rec = records(ws, "recovered")[0]
    assert rec["status"] == "crash" and rec["row"] == 2 and rec["budget"] == 60.0  # the journal names the row it wrote
    assert _recover(ws) == 0 and len(rows(ws)) == 2  # idempotent: never a second row


def test_recover_after_the_row_was_written_adds_no_row(ws):
    parent, commit = _open_experiment(ws, commit_it=True, start_it=True, row="discard")
    assert _recover(ws) == 1
    assert [r.status for r in rows(ws)] == ["keep", "discard"] and ws.head_commit() == parent


def test_recover_a_commit_that_never_started_and_a_dirty_file(ws):
    parent, commit = _open_experiment(ws, commit_it=True, start_it=False)
    assert _recover(ws) == 1 and ws.head_commit() == parent and len(rows(ws)) == 1
    assert not ws.is_dirty()


def test_recover_an_uncommitted_edit(ws, tmp_path):
    parent, _ = _open_experiment(ws, commit_it=False, start_it=False)
    assert ws.is_dirty(["train.py"])
    assert _recover(ws) == 1 and ws.head_commit() == parent and not ws.is_dirty() and len(rows(ws)) == 1


def test_recover_leaves_a_moved_head_alone(ws):
    parent, commit = _open_experiment(ws, commit_it=True, start_it=True)
    (ws.path / "notes.txt").write_text("the user's own commit\n")
    mine = ws.commit(["notes.txt"], "user work")
    assert _recover(ws) == 1 and ws.head_commit() == mine  # never reset someone else's commit
    assert rows(ws)[-1].status == "crash"


def test_stop_signals_wait_for_a_critical_step_to_finish():
    import os
    import signal

    from autoresearch.experiment.signals import Signals as _Signals, StopRequested

    done = []
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with _Signals() as sigs:
        with pytest.raises(KeyboardInterrupt):
            with sigs.critical():
                os.kill(os.getpid(), signal.SIGINT)  # delivered now, raised only after the block
                done.append("row written")
                with sigs.critical():  # nested: still held
                    done.append("git reset")
                done.append("finished record")
        assert done == ["row written", "git reset", "finished record"]
        with pytest.raises(StopRequested):
            os.kill(os.getpid(), signal.SIGTERM)  # outside a critical step: at once
            for _ in range(100):  # the handler runs between bytecodes
                pass
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # put back


def test_the_test_rule_starts_right_after_the_baseline_and_re_runs_a_lucky_best(ws):
    table = {
        (0.04, None): 0.995, (0.04, 1): 1.005,  # a lucky baseline: its second run says 1.005
        (0.03, None): 1.001, (0.025, None): 0.998, (0.02, None): 0.999,  # no better than 0.995: discarded at once
        (0.015, None): 0.910, (0.015, 3): 0.912,  # a real gain: promising on one run, kept on two
    }
    runner = FakeRunner(ws, table)
    report, _ = loop(ws, ScriptedProposer([0.03, 0.025, 0.02, 0.015]), runner, settings(keep_rule="test", max_experiments=4))
    kinds = [(r["kind"], r["seed"]) for r in records(ws, "run")]
    assert kinds == [
        ("baseline", None),  # no noise runs up front: the first idea runs right after the baseline
        ("experiment", None), ("experiment", None), ("experiment", None),  # each discarded on one run
        ("remeasure", 1),  # three discards against a best measured once: it may be a lucky draw
        ("experiment", None), ("confirm", 3),
    ]
    assert [(r.status, round(r.val_bpb, 6)) for r in rows(ws)] == [
        ("keep", 0.995), ("discard", 1.001), ("discard", 0.998), ("discard", 0.999), ("keep", 0.911),
    ]
    last = records(ws, "finished")[-1]
    assert last["values"] == [0.91, 0.912] and "false keeps" in last["decision"] and report.noise_sd is not None
    assert "1.000000 (mean of 2 runs)" in last["decision"]  # the best to beat is the mean of its runs


def test_the_test_rule_does_not_keep_noise(ws):
    # Candidates that compute the same thing as the best: their values are draws of the same noise.
    table = {(0.04, None): 1.0, (0.04, 1): 1.004}
    for i, lr in enumerate((0.03, 0.025, 0.02, 0.015, 0.01)):
        table[(lr, None)], table[(lr, 3)], table[(lr, 4)] = 0.999 - 0.0005 * i, 1.003, 1.001
    runner = FakeRunner(ws, table)
    loop(ws, ScriptedProposer([0.03, 0.025, 0.02, 0.015, 0.01]), runner, settings(keep_rule="test", max_experiments=5))
    assert [r.status for r in rows(ws)] == ["keep"] + ["discard"] * 5  # strict would have kept the first


class MoodyRunner(FakeRunner):
    """Another job used 90% of the machine during the baseline, then finished: every later run
    trains more steps and scores better, whatever the edit did."""

    def run(self, commit, *, seed=None, on_progress=None):
        result = super().run(commit, seed=seed, on_progress=on_progress)
        idle = len(self.calls) > 1
        result.machine = 0.02 if idle else 0.9  # the foreign load (run/probe.py)
        if idle and result.val_bpb is not None:
            result.val_bpb = round(result.val_bpb - 0.18, 6)
        return result


def test_the_machines_mood_is_not_credited_to_an_edit(ws):
    # LR 0.03 and 0.02 compute the same as the baseline: only the machine changed.
    runner = MoodyRunner(ws, {(0.04, None): 1.0, (0.04, 1): 1.0, (0.03, None): 1.0, (0.02, None): 1.0})
    loop(ws, ScriptedProposer([0.03, 0.02]), runner, settings(keep_rule="test", max_experiments=2))
    got = rows(ws)
    assert [r.status for r in got] == ["keep", "discard", "discard"]  # strict would have kept 0.82 over 1.0
    first = records(ws, "finished")[1]
    assert "not credited" in first["decision"] and "88% less of the machine" in first["decision"]
    # The best was re-run under the new load before the next experiment, which was then judged fairly.
    assert [(r["kind"], r["machine"]) for r in records(ws, "run")] == [
        ("baseline", 0.9), ("experiment", 0.02), ("remeasure", 0.02), ("experiment", 0.02)]
    assert "0.820000 is no better than the best 0.820000" in records(ws, "finished")[2]["decision"]
