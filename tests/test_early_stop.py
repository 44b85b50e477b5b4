"""Early stopping of doomed runs: the rule on scripted curves, the runner stopping a real
process, and the loop recording a stopped run as a discard that says so."""

from __future__ import annotations

import time

import psutil
import pytest

from autoresearch.experiment import early_stop
from autoresearch.experiment.early_stop import Stopper, reference, spread
from autoresearch.run.process import RunResult, StopRun, run_script

from test_loop_core import FakeRunner, ScriptedProposer, loop, lr_of, records, rows, settings, ws  # noqa: F401


def curve(loss_at, pcts=None, lrm_at=None):
    """Progress lines like the template's: pct, loss and lrm every 2.5% of the budget."""
    pcts = pcts or [2.5 * i for i in range(1, 41)]
    return [{"step": i, "pct": p, "loss": round(loss_at(p), 4), "lrm": round(lrm_at(p), 2) if lrm_at else 1.0}
            for i, p in enumerate(pcts, start=1)]


def best_loss(p):  # the best run: 6.0 falling to 3.0
    return 3.0 + 3.0 * (1 - p / 100) ** 2


REF = [[r["pct"], r["loss"]] for r in curve(best_loss)]


def first_stop(stopper, lines):
    for fields in lines:
        why = stopper(fields)
        if why:
            return fields["pct"], why
    return None


def test_a_clearly_worse_run_is_stopped_after_the_minimum_share_with_the_reason():
    got = first_stop(Stopper(REF, 0.01), curve(lambda p: best_loss(p) * 1.15))
    assert got is not None
    pct, why = got
    # worse from the start, but never before 30%: then 3 progress lines in a row beyond the margin
    assert pct == early_stop.MIN_PCT + 2 * 2.5
    assert why == f"stopped at 35%: loss {best_loss(35) * 1.15:.3f} vs {best_loss(35):.3f}"


def test_a_slow_starter_is_not_stopped_while_its_learning_rate_warms_up():
    # A long warm-up (lrm rising to 1 at 60%) trains slowly at first, then catches up and wins.
    def warm(p):
        return min(1.0, p / 60)

    def slow(p):
        return best_loss(p) + (0.8 * (60 - p) / 60 if p < 60 else -0.02)

    lines = curve(slow, lrm_at=warm)
    assert first_stop(Stopper(REF, 0.01), lines) is None
    # the same curve with a flat learning rate would have been stopped: the warm-up is what spares it
    assert first_stop(Stopper(REF, 0.01), curve(slow)) is not None


def test_a_warm_up_printed_with_repeated_values_still_counts_as_warming():
    lines = curve(lambda p: best_loss(p) * 1.3, lrm_at=lambda p: min(1.0, round(p / 90, 1)))  # 0.3, 0.3, 0.4, ...
    got = first_stop(Stopper(REF, 0.01), lines)
    assert got is not None and got[0] >= 87.5  # only once lrm reached 1


def test_worse_only_before_the_minimum_share_is_not_stopped():
    lines = curve(lambda p: best_loss(p) + (1.0 if p < early_stop.MIN_PCT else 0.0))
    assert first_stop(Stopper(REF, 0.01), lines) is None


def test_the_margin_follows_the_spread_learned_from_repeat_runs():
    slightly = curve(lambda p: best_loss(p) + 0.25)  # 0.25 above the best all along (about 6% at the end)
    assert first_stop(Stopper(REF, 0.1), slightly) is None  # 4 sd = 0.4: within the run-to-run spread
    assert first_stop(Stopper(REF, 0.02), slightly) is not None  # 4 sd = 0.08: clearly worse
    # no repeat run yet: a margin of 5% of the best's loss
    assert first_stop(Stopper(REF, None), curve(lambda p: best_loss(p) * 1.04)) is None
    assert first_stop(Stopper(REF, None), curve(lambda p: best_loss(p) * 1.08)) is not None


def test_one_noisy_line_does_not_stop_a_run():
    lines = curve(best_loss)
    for k in (20, 30):  # two single spikes
        lines[k]["loss"] += 2.0
    assert first_stop(Stopper(REF, 0.01), lines) is None


def test_reference_and_spread_from_repeat_curves():
    a = [[p, 3.0 + 0.01] for p in range(0, 101, 5)]
    b = [[p, 3.0 - 0.01] for p in range(0, 101, 5)]
    ref = reference([a, b])
    assert ref[0][0] == early_stop.MIN_PCT and all(abs(v - 3.0) < 1e-9 for _, v in ref)
    assert spread([[a, b], [a]]) == pytest.approx((2 * 0.01 ** 2 / 1) ** 0.5 / 1, rel=1e-6)  # sd of two draws
    assert spread([[a]]) is None  # a script run once says nothing about the spread
    assert early_stop.loss_at(a, 52.5) == pytest.approx(3.01)
    assert len(early_stop.compact([(i / 10, 3.0) for i in range(1000)])) == early_stop.MAX_POINTS


# -- the runner stops a real process -------------------------------------------------------

SLOW_SCRIPT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open("child.pid", "w").write(str(child.pid))
for i in range(1, 201):
    print(f"progress step={i} pct={i * 0.5:.1f} loss={5.0 - i * 0.001:.4f} lrm=1.00", flush=True)
    time.sleep(0.05)
print("---")
print("val_bpb: 1.0")
"""


def test_run_script_stops_the_run_when_the_progress_callback_says_so(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SLOW_SCRIPT)
    seen = []

    def on_progress(fields):
        seen.append(fields["pct"])
        if fields["pct"] >= 20:
            raise StopRun("stopped at 20%: loss 4.960 vs 4.000")

    start = time.monotonic()
    result = run_script(script, cwd=tmp_path, log_path=tmp_path / "run.log", kill_after=60, on_progress=on_progress,
                        grace=2)
    assert result.status == "stopped" and result.val_bpb is None
    assert result.reason == "stopped at 20%: loss 4.960 vs 4.000"
    assert time.monotonic() - start < 8  # the script alone would take 10 s
    assert max(seen) < 30  # no callback after the stop
    child = int((tmp_path / "child.pid").read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


# -- the loop: a stopped run is a discard that says so --------------------------------------

class CurveRunner(FakeRunner):
    """Plays a training curve per learning rate through on_progress and, like run_script,
    ends the run as "stopped" when the callback raises StopRun."""

    def __init__(self, ws, table, curves):
        super().__init__(ws, table)
        self.curves = curves
        self.stopped_at = []

    def run(self, commit, *, seed=None, on_progress=None):
        lr = lr_of((self.ws.path / "train.py").read_text())
        for fields in curve(self.curves[lr]):
            try:
                if on_progress:
                    on_progress(fields)
            except StopRun as e:
                self.calls.append((commit, seed, lr))
                self.stopped_at.append(fields["pct"])
                log = self.ws.path / ".autoresearch" / "runs" / f"{len(self.calls):04d}-{commit}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text("progress ...\n")
                return RunResult("stopped", None, 0.0, fields["pct"] / 100, {}, str(e), log, [])
        return super().run(commit, seed=seed, on_progress=None)


def test_the_loop_records_a_stopped_run_as_a_discard_and_keeps_the_best(ws):
    curves = {
        0.04: best_loss,  # the baseline
        0.4: lambda p: best_loss(p) * 1.3,  # harmful: stopped
        0.03: lambda p: best_loss(p) - 0.05,  # helpful: runs to the end and is kept
    }
    runner = CurveRunner(ws, {(0.04, None): 1.0, (0.03, None): 0.95}, curves)
    loop(ws, ScriptedProposer([0.4, 0.03]), runner, settings(keep_rule="strict", max_experiments=2))
    got = rows(ws)
    assert [(r.status, r.val_bpb) for r in got] == [("keep", 1.0), ("discard", 0.0), ("keep", 0.95)]
    assert got[1].description.startswith("LR 0.04 -> 0.4 (stopped at 35%: loss ")
    assert runner.stopped_at == [35.0]
    finished = records(ws, "finished")
    assert finished[1]["val_bpb"] is None and finished[1]["decision"].startswith("stopped at 35%")
    runs = records(ws, "run")
    assert runs[0]["curve"][0] == [2.5, round(best_loss(2.5), 4)]  # the baseline's curve is the reference
    assert runs[1]["status"] == "stopped"
    assert ws.head_commit() == got[2].commit  # HEAD is the best


def test_no_early_stop_runs_every_idea_to_the_end(ws):
    curves = {0.04: best_loss, 0.4: lambda p: best_loss(p) * 1.3}
    runner = CurveRunner(ws, {(0.04, None): 1.0, (0.4, None): 1.2}, curves)
    loop(ws, ScriptedProposer([0.4]), runner, settings(keep_rule="strict", max_experiments=1, early_stop=False))
    assert [(r.status, r.val_bpb) for r in rows(ws)] == [("keep", 1.0), ("discard", 1.2)]
    assert runner.stopped_at == []
