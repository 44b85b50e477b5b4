"""The plateau modes (loop/plateau.py) on scripted results: the real loop, git and runner,
a fake training script whose val_bpb is a known function of its constants.

val_bpb = 1 - 0.05 A - 0.02 B - 0.03 C + 0.025 B*C + 0.01 D + 0.01 E - 0.04 D*E
- A, B, C each help alone; B stops helping once C is on (dropping it then gains 0.005);
- D and E each hurt alone, and help together: near-misses worth combining.
"""

from __future__ import annotations


import pytest

from autoresearch.errors import ArError
from autoresearch.experiment.keep import Decision, Noise, decide_ablation
from autoresearch.experiment.lab import LoopSettings
from autoresearch.journal.files import read_results, read_run_records
from autoresearch.loop import plateau
from autoresearch.loop.serial import run_loop
from autoresearch.proposers.base import HistoryItem, Proposal
from autoresearch.run.script import ScriptRunner
from autoresearch.workspace.git import Workspace
from workspaces import git, git_workspace

FAKE_TRAIN = """\
A = 0
B = 0
C = 0
D = 0
E = 0
F = 0
G = 0
v = 1 - 0.05 * A - 0.02 * B - 0.03 * C + 0.025 * B * C + 0.01 * D + 0.01 * E - 0.04 * D * E + 0.001 * F + 0.001 * G
print("---")
print(f"val_bpb: {v:.6f}")
print("training_seconds: 1.0")
"""


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return git_workspace(tmp_path / "ws", FAKE_TRAIN)


class Scripted:
    """Switches constants on, one per proposal, from the text it is given; keeps every context."""

    name = "scripted"

    def __init__(self, *names: str):
        self.names = list(names)
        self.seen = []

    def propose(self, ctx):
        self.seen.append(ctx)
        if not self.names:
            raise ArError(f"asked more often than scripted: {[c.mode for c in self.seen]}")  # stops the loop
        name = self.names.pop(0)
        return Proposal(ctx.editable_text.replace(f"{name} = 0", f"{name} = 1"), f"{name} on")


def loop(ws: Workspace, proposer, n: int, events: list) -> None:
    runner = ScriptRunner(ws.path, editable="train.py", env={}, budget=1.0, kill=30.0)
    s = LoopSettings(editable="train.py", budget=1.0, full_budget=1.0, keep_rule="strict", max_experiments=n,
                     early_stop=False, plateau=2)
    run_loop(ws, proposer, runner, s, on_event=events.append, sleep=lambda t: None)


def finished(ws: Workspace) -> list[dict]:
    return [r for r in read_run_records(ws.path / ".autoresearch" / "runs" / "runs.jsonl") if r["event"] == "finished"]


def test_combine_runs_two_near_misses_together(ws):
    p = Scripted("D", "E")
    events: list = []
    loop(ws, p, 3, events)
    rows = read_results(ws.path / "results.tsv")
    assert [(r.description, r.status) for r in rows] == [
        ("baseline", "keep"), ("D on", "discard"), ("E on", "discard"),  # a plateau of 2: the modes begin
        ("combine #2 + #3: D on; E on", "keep"),  # each hurt alone; together 0.98 < 1.0
    ]
    assert rows[-1].val_bpb == pytest.approx(0.98)
    assert len(p.seen) == 2  # combine built its script; the proposer was not asked
    assert git(ws.path, "rev-parse", "--short=7", "HEAD") == rows[-1].commit  # HEAD is the best
    final = (ws.path / "train.py").read_text()
    assert "D = 1" in final and "E = 1" in final
    # the display was told, and the journal records the mode
    modes = [e for e in events if e.kind == "mode"]
    assert len(modes) == 1 and modes[0].description == "combine (2 experiments without a keep)"
    assert [r.get("mode", "") for r in finished(ws)] == ["", "", "", "combine"]


def test_ablate_drops_a_kept_change_that_no_longer_helps(ws):
    p = Scripted("A", "B", "C", "F", "G")
    events: list = []
    loop(ws, p, 7, events)
    rows = read_results(ws.path / "results.tsv")
    assert [(r.description, r.status) for r in rows] == [
        ("baseline", "keep"), ("A on", "keep"), ("B on", "keep"), ("C on", "keep"),
        ("F on", "discard"), ("G on", "discard"),
        ("combine #5 + #6: F on; G on", "discard"),  # both hurt, together too
        ("ablate #3: drop B on", "keep"),  # B stopped helping once C was on: dropping it gains 0.005
    ]
    assert rows[-1].val_bpb == pytest.approx(0.92)
    assert len(p.seen) == 5
    assert git(ws.path, "rev-parse", "--short=7", "HEAD") == rows[-1].commit
    final = (ws.path / "train.py").read_text()
    assert "A = 1" in final and "B = 0" in final and "C = 1" in final
    assert [e.description.split()[0] for e in events if e.kind == "mode"] == ["combine", "ablate"]


def test_branch_starts_from_an_earlier_good_commit_and_head_stays_the_best(ws):
    p = Scripted("A", "B", "F", "G", "C")
    events: list = []
    loop(ws, p, 7, events)
    rows = read_results(ws.path / "results.tsv")
    assert [(r.description, r.status) for r in rows] == [
        ("baseline", "keep"), ("A on", "keep"), ("B on", "keep"), ("F on", "discard"), ("G on", "discard"),
        ("combine #4 + #5: F on; G on", "discard"),
        ("ablate #2: drop A on", "discard"),  # A matters
        ("branch from #2: C on", "keep"),  # from A's script: A and C on, B off: 0.92 < 0.93
    ]
    branch_ctx = p.seen[-1]
    assert branch_ctx.mode == "branch" and "branches" in branch_ctx.mode_note
    assert branch_ctx.editable_text == git(ws.path, "show", f"{rows[1].commit}:train.py") + "\n"  # A's script
    assert rows[-1].val_bpb == pytest.approx(0.92)
    rec = finished(ws)[-1]
    assert rec["mode"] == "branch" and rec["base"][:7] == rows[1].commit
    # HEAD moved to the branch's commit, the best; it is committed on top of the old best
    assert git(ws.path, "rev-parse", "--short=7", "HEAD") == rows[-1].commit
    assert git(ws.path, "rev-parse", "--short=7", "HEAD~1") == rows[2].commit
    final = (ws.path / "train.py").read_text()
    assert "A = 1" in final and "B = 0" in final and "C = 1" in final


# -- the pieces, on scripted histories ---------------------------------------------------------


def item(n, status, val, text="", parent="", outcome="", description=None):
    return HistoryItem(n, f"c{n:06d}", val, status, description or f"#{n}", parent=parent, text=text, outcome=outcome)


def test_modes_take_turns_and_workers_take_different_modes():
    h = [item(1, "keep", 1.0)] + [item(n, "discard", 1.1) for n in range(2, 6)]
    assert plateau.mode_for(h[:3], 3) == ""  # 2 without a keep: not yet
    assert [plateau.mode_for(h[:k], 3) for k in (4, 5)] == ["combine", "ablate"]
    assert {plateau.mode_for(h[:4], 3, offset=slot) for slot in range(4)} == set(plateau.MODES)
    assert plateau.mode_for(h, 0) == ""  # 0: off


def test_a_stopped_or_crashed_run_is_no_near_miss_and_branches_differ_per_worker():
    base = "X = 0\n"
    h = [item(1, "keep", 1.0, base), item(2, "keep", 0.9, "X = 1\n", "c000001"), item(3, "keep", 0.8, "X = 2\n", "c000002"),
         item(4, "discard", 0.81, "X = 3\n", "c000003"), item(5, "discard", 0.0, "X = 4\n", "c000003", outcome="stopped"),
         item(6, "crash", 0.0, "X = 5\n", "c000003", outcome="crashed")]
    assert [it.number for it in plateau.near_misses(h, h[2])] == [4]
    bases = {plateau.branch(h, h[2], offset).base.number for offset in range(2)}
    assert bases == {1, 2}  # two workers start from two different earlier commits


@pytest.mark.parametrize("values, action", [
    ([0.95], "confirm"),  # within the noise on one run: run it again
    ([1.20], "discard"),  # clearly worse: the dropped change matters
    ([0.95, 0.94], "keep"),  # mean 0.945 <= the best's 0.95: no worse, simpler
    ([0.95, 0.97], "discard"),  # mean 0.96 > 0.95
    ([0.95, None], "crash"),
])
def test_an_ablation_is_kept_when_two_runs_average_no_worse(values, action):
    d = decide_ablation([0.95, 0.95], values, Noise(sigma=0.01, dof=6))
    assert isinstance(d, Decision) and d.action == action
