"""The optuna proposer (proposers/tuner.py): warm start from the history, the values it
writes, what it never touches or repeats. Fast: no training."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from autoresearch.proposers import PROPOSER_NAMES, default_proposer_name, get_proposer
from autoresearch.proposers.base import HistoryItem, NoProposal, ProposalContext
from autoresearch.proposers.offline import find_constants
from autoresearch.proposers.tuner import OptunaProposer

SCRIPT = '''"""A training script."""
import os

TIME_BUDGET = 60  # seconds of training (the harness's)
MAX_SEQ_LEN = 256
EVAL_TOKENS = 1000
UNTIMED_STEPS = 2
EVAL_SEED = 7
SEED = int(os.environ.get("AUTORESEARCH_SEED", "42"))

DEPTH = 4  # transformer blocks
DEVICE_BATCH_SIZE = 16  # rows per pass
TOTAL_BATCH_SIZE = 2**12  # tokens per optimizer step
MATRIX_LR = 0.04  # Muon
ADAM_BETA2 = 0.95
WARMDOWN_RATIO = 0.5  # the end of the schedule


def train():
    assert TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * MAX_SEQ_LEN) == 0
    return DEPTH * MATRIX_LR
'''
HARNESS = ("TIME_BUDGET", "MAX_SEQ_LEN", "EVAL_TOKENS", "UNTIMED_STEPS", "EVAL_SEED", "SEED")


def values(text: str) -> dict[str, float]:
    return {c.name: float(c.value) for c in find_constants(text)}


def literal(text: str, name: str) -> str:
    return next(c.text for c in find_constants(text) if c.name == name)


def with_values(text: str, **new: object) -> str:
    for c in sorted(find_constants(text), key=lambda c: c.start, reverse=True):
        if c.name in new:
            text = text[: c.start] + str(new[c.name]) + text[c.end :]
    return text


def item(n: int, text, val_bpb: float, status: str = "discard", **kw) -> HistoryItem:
    return HistoryItem(n, f"c{n:06d}", val_bpb, status, kw.pop("description", f"experiment {n}"), text=text, **kw)


def context(text: str = SCRIPT, history=(), best=1.9, in_flight=()) -> ProposalContext:
    if not history:
        history = (item(1, text, best, "keep", description="baseline"),)
    return ProposalContext("", "train.py", text, tuple(history), best, "cpu", "tiny", in_flight=tuple(in_flight))


# -- warm start ------------------------------------------------------------------------------


def test_warm_start_makes_one_trial_per_comparable_history_item():
    from optuna.trial import TrialState

    history = (
        item(1, SCRIPT, 1.90, "keep", description="baseline"),
        item(2, with_values(SCRIPT, MATRIX_LR=0.08), 1.95),
        item(3, with_values(SCRIPT, DEPTH=6), 0.0, "crash", outcome="crashed"),
        item(4, with_values(SCRIPT, WARMDOWN_RATIO=0.3), 0.0, outcome="stopped", losses=(5.1, 4.8, None, None)),
        item(5, None, 1.85),  # the script is unknown
        item(6, with_values(SCRIPT, MATRIX_LR=0.02) + "x = DEPTH + 1\n", 1.70),  # another program: incomparable
        item(7, with_values(SCRIPT, MATRIX_LR=0.03).replace("# Muon", "# Muon, 2-D matrices"), 1.92),  # a comment: same code
        item(8, with_values(SCRIPT, ADAM_BETA2=0.9), 1.93, outcome="rejected"),
    )
    p = OptunaProposer(seed=0)
    proposal = p.propose(context(history=history))
    trials = [t for t in p.last_study.trials if t.state != TrialState.RUNNING]  # RUNNING: the asked trial(s)
    assert len(trials) == 6  # 1, 2, 3, 4, 7, 8; no anchor: the baseline (the current best) is trial 1
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert sorted(t.value for t in by_state[TrialState.COMPLETE]) == [1.90, 1.92, 1.95]
    crash, rejected = by_state[TrialState.FAIL]
    assert crash.params["DEPTH"] == 6 and rejected.params["ADAM_BETA2"] == pytest.approx(0.1)  # beta as 1 - b
    (pruned,) = by_state[TrialState.PRUNED]
    assert pruned.params["WARMDOWN_RATIO"] == pytest.approx(0.3) and pruned.intermediate_values == {25: 5.1, 50: 4.8}
    ran = {tuple(sorted(values(h.text).items())) for h in history if h.text}
    assert tuple(sorted(values(proposal.new_text).items())) not in ran  # not a repeat


def test_the_current_best_is_the_anchor_when_the_history_has_no_scripts():
    history = (item(1, None, 1.9, "keep"), item(2, None, 2.0))
    p = OptunaProposer(seed=0)
    p.propose(context(history=history, best=1.9))
    (anchor,) = [t for t in p.last_study.trials if t.state.is_finished()]
    assert anchor.value == 1.9 and anchor.params["DEPTH"] == 4 and anchor.params["TOTAL_BATCH_SIZE"] == 12


def test_proposals_move_toward_the_better_region_the_history_shows():
    # Two constants (fewer than a subspace: both free). The history: a higher MATRIX_LR was
    # clearly better, WARMDOWN_RATIO made no difference. A sampler that ignored the study
    # would go up about half the time (the range is log-symmetric around 0.04).
    script = "MATRIX_LR = 0.04  # lr\nWARMDOWN_RATIO = 0.5\n"
    history = [item(1, script, 1.90, "keep")]
    for i, (lr, wd) in enumerate([(0.012, 0.4), (0.02, 0.6), (0.03, 0.5), (0.015, 0.7), (0.025, 0.3), (0.035, 0.55),
                                  (0.06, 0.45), (0.09, 0.65), (0.12, 0.35), (0.15, 0.5), (0.07, 0.6), (0.1, 0.4)]):
        history.append(item(i + 2, with_values(script, MATRIX_LR=lr, WARMDOWN_RATIO=wd), 1.90 - 0.05 * math.log2(lr / 0.04)))
    ctx = context(script, history, best=1.90)
    up = sum(values(OptunaProposer(seed=s).propose(ctx).new_text)["MATRIX_LR"] > 0.04 for s in range(20))
    assert up >= 17, f"{up} of 20 proposals raised MATRIX_LR"


# -- what it writes --------------------------------------------------------------------------


def proposals(n: int = 25):
    out, history = [], [item(1, SCRIPT, 1.9, "keep")]
    for s in range(n):
        p = OptunaProposer(seed=s).propose(context(history=history))
        out.append(p)
        history.append(item(len(history) + 1, p.new_text, 1.95))  # the study grows: TPE, not only start-up
    return out


def test_values_keep_their_form_comments_and_valid_batches():
    for p in proposals():
        new = values(p.new_text)
        assert p.new_text.count("\n") == SCRIPT.count("\n")
        for line in ("# transformer blocks", "# rows per pass", "# tokens per optimizer step", "# Muon",
                     "# the end of the schedule"):
            assert line in p.new_text
        assert literal(p.new_text, "TOTAL_BATCH_SIZE").startswith("2**")  # a power of two stays one, written so
        rows = literal(p.new_text, "DEVICE_BATCH_SIZE")
        assert rows.isdigit() and literal(p.new_text, "DEPTH").isdigit()
        assert new["TOTAL_BATCH_SIZE"] % (new["DEVICE_BATCH_SIZE"] * 256) == 0  # never breaks the script's assert
        lr = literal(p.new_text, "MATRIX_LR")
        assert "." in lr and len(lr.replace("0.", "").lstrip("0").replace(".", "").rstrip("0")) <= 3, lr
        assert 0 < new["ADAM_BETA2"] < 1 and 0 <= new["WARMDOWN_RATIO"] <= 1
        assert 1 <= new["DEPTH"] <= 6
        assert p.description.startswith("optuna: ")
        for part in p.description[len("optuna: "):].split(", "):
            name, old, arrow, to = part.split(" ")
            assert arrow == "->" and old == literal(SCRIPT, name) and to == literal(p.new_text, name) and old != to
        changed = {n for n in new if new[n] != values(SCRIPT)[n]}
        assert changed == {part.split(" ")[0] for part in p.description[len("optuna: "):].split(", ")}


def test_harness_constants_are_never_touched():
    for p in proposals():
        for name in HARNESS:
            line = next(x for x in SCRIPT.splitlines() if x.startswith(f"{name} = "))
            assert line in p.new_text.splitlines()
            assert name not in p.description.replace("TOTAL_BATCH_SIZE", "")


def test_the_same_seed_and_history_give_the_same_proposal():
    ctx = context()
    a, b = OptunaProposer(seed=3).propose(ctx), OptunaProposer(seed=3).propose(ctx)
    assert (a.new_text, a.description) == (b.new_text, b.description)
    assert len({OptunaProposer(seed=s).propose(ctx).description for s in range(6)}) > 1


# -- repeats and no proposal -----------------------------------------------------------------


def test_never_proposes_what_is_in_flight_or_already_ran():
    script = "DEPTH = 1  # blocks\n"  # the search: DEPTH 1..3
    ctx = context(script)
    first = OptunaProposer(seed=0).propose(ctx)
    other = OptunaProposer(seed=0).propose(dataclasses.replace(ctx, in_flight=(first.description,)))
    assert {first.description, other.description} == {"optuna: DEPTH 1 -> 2", "optuna: DEPTH 1 -> 3"}
    ran = ctx.history + (item(2, with_values(script, DEPTH=2), 1.95),)
    for s in range(5):
        assert OptunaProposer(seed=s).propose(dataclasses.replace(ctx, history=ran)).description == "optuna: DEPTH 1 -> 3"
    with pytest.raises(NoProposal, match="exhausted"):
        OptunaProposer(seed=0).propose(dataclasses.replace(ctx, history=ran, in_flight=("optuna: DEPTH 1 -> 3",)))


def test_no_proposal_without_eligible_constants():
    harness_only = "TIME_BUDGET = 60\nSEED = 1\nEVAL_TOKENS = 100\nprint(TIME_BUDGET)\n"
    for text in (harness_only, "print('no constants')\n"):
        with pytest.raises(NoProposal, match="constants"):
            OptunaProposer().propose(context(text))


# -- the registry ----------------------------------------------------------------------------


def test_optuna_is_the_default_without_an_api_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert default_proposer_name() == "optuna" and "optuna" in PROPOSER_NAMES
    assert get_proposer().name == "optuna" and get_proposer("offline").name == "offline"


def test_the_cli_does_not_import_optuna():
    code = "import sys, autoresearch.cli, autoresearch.proposers; assert 'optuna' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
