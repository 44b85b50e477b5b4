"""The offline proposer: coordinate search over the editable script's numeric constants."""

from __future__ import annotations

import ast
import difflib

import pytest

from autoresearch.proposers.base import HistoryItem, NoProposal, ProposalContext
from autoresearch.proposers.offline import OfflineProposer, find_constants, moves, number_of

SCRIPT = '''"""A training script (é: not ASCII, so ast's byte columns differ from characters)."""
import os
from autoresearch.data.context import load_context

ctx = load_context()
TIME_BUDGET = ctx.TIME_BUDGET       # harness constant, in the script anyway
ASPECT_RATIO = 64       # model_dim = depth * ASPECT_RATIO
WINDOW_PATTERN = "SSSL" # a string: not a number
TOTAL_BATCH_SIZE = 2**19 # ~524K tokens per step
MATRIX_LR = 0.04  # «Muon» learning rate
WEIGHT_DECAY = 0.2
ADAM_BETAS = (0.8, 0.95)
ADAM_BETA2: float = 0.95
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
DEPTH = 8
EVAL_BATCH_SIZE = 64
SEED = 42
lower_case = 3
DERIVED = DEPTH * 64

def f():
    INSIDE = 1
'''


def context(text=SCRIPT, history=()):
    return ProposalContext(
        program="", editable_name="train.py", editable_text=text, history=tuple(history), best=1.0, hardware="", profile=""
    )


def item(n, description, status="discard"):
    return HistoryItem(n, f"{n:07x}", 1.0, status, description)


def test_finds_module_level_numeric_constants_with_their_spans():
    found = {c.name: c for c in find_constants(SCRIPT)}
    assert list(found) == [
        "ASPECT_RATIO", "TOTAL_BATCH_SIZE", "MATRIX_LR", "WEIGHT_DECAY", "ADAM_BETA2",
        "WARMUP_RATIO", "WARMDOWN_RATIO", "DEPTH", "EVAL_BATCH_SIZE", "SEED",
    ]
    for c in found.values():
        assert SCRIPT[c.start : c.end] == c.text  # spans are character offsets, despite the é and «»
    assert found["TOTAL_BATCH_SIZE"].value == 2**19 and found["TOTAL_BATCH_SIZE"].text == "2**19"
    assert found["MATRIX_LR"].value == 0.04 and isinstance(found["DEPTH"].value, int)
    assert find_constants("def broken(:\n") == []


def test_moves_by_kind_of_constant():
    c = {c.name: c for c in find_constants(SCRIPT)}
    texts = lambda name, level=0: [m.new_text for m in moves(c[name], level)]  # noqa: E731
    assert texts("MATRIX_LR") == ["0.08", "0.02"]  # x2 and /2
    assert texts("MATRIX_LR", 1) == ["0.0566", "0.0283"]  # then finer factors
    assert texts("DEPTH") == ["9", "7"] and texts("DEPTH", 1) == ["10", "6"]  # small ints: +-1, +-2
    assert texts("ASPECT_RATIO") == ["128", "32"]  # powers of two stay powers of two
    assert texts("TOTAL_BATCH_SIZE") == ["2**20", "2**18"]
    assert texts("ADAM_BETA2") == ["0.975", "0.9"]  # toward 1 and away from it: 1-(1-b)/2, 1-(1-b)*2
    assert texts("WARMUP_RATIO") == ["0.1"]  # a ratio at 0 is switched on
    assert texts("WARMDOWN_RATIO") == ["1.0", "0.25"] and texts("WARMDOWN_RATIO", 1) == ["0.707", "0.354"]
    assert all(m.new_value <= 1 for level in range(4) for m in moves(c["WARMDOWN_RATIO"], level))
    assert [m.new_text for m in moves(find_constants("DEPTH = 1\n")[0], 0)] == ["2"]  # never below 1
    assert number_of("2**19") == 2**19 and number_of("0.04") == 0.04 and number_of("os.x") is None


def test_a_proposal_changes_one_value_and_keeps_the_comment():
    p = OfflineProposer().propose(context())
    name, old, _, new = p.description.removeprefix("offline: ").split(" ")
    assert p.description.startswith("offline: ")
    diff = [l for l in difflib.ndiff(SCRIPT.splitlines(), p.new_text.splitlines()) if l[:1] in "+-"]
    assert len(diff) == 2 and diff[0].startswith(f"- {name} = {old}") and diff[1].startswith(f"+ {name} = {new}")
    assert diff[0].split("#")[1:] == diff[1].split("#")[1:]  # the comment survives
    ast.parse(p.new_text)
    assert name not in ("TIME_BUDGET", "SEED", "EVAL_BATCH_SIZE", "DERIVED", "INSIDE", "lower_case")


def test_deterministic_for_a_seed():
    a = [m.new_text + m.name for m in OfflineProposer(seed=3).candidates(context())]
    b = [m.new_text + m.name for m in OfflineProposer(seed=3).candidates(context())]
    assert a == b
    orders = {tuple(m.name for m in OfflineProposer(seed=s).candidates(context())[:8]) for s in range(6)}
    assert len(orders) > 1  # the seed breaks ties between untried constants


def test_prefers_constants_the_history_has_not_touched():
    history = [item(1, "baseline", "keep"), item(2, "offline: MATRIX_LR 0.04 -> 0.08"), item(3, "try a bigger WEIGHT_DECAY")]
    p = OfflineProposer().propose(context(history=history))
    assert p.description.split()[1] not in ("MATRIX_LR", "WEIGHT_DECAY")


def test_never_repeats_and_exhausts_into_no_proposal():
    """Play the loop with every proposal discarded: no description comes twice, then NoProposal."""
    proposer = OfflineProposer(seed=1)
    text = "LR = 0.04  # lr\nDEPTH = 2\n"
    history, seen = [], set()
    while True:
        try:
            p = proposer.propose(context(text, history))
        except NoProposal as e:
            assert "tried every change" in str(e)
            break
        assert p.description not in seen
        seen.add(p.description)
        history.append(item(len(history) + 1, p.description + " (budget 2 s)"))  # a suffix does not hide it
        assert len(history) < 100
    # Coarse steps of every constant come before finer ones.
    first_lr = [d for d in seen if "LR" in d]
    assert "offline: LR 0.04 -> 0.08" in seen and "offline: LR 0.04 -> 0.02" in seen and len(first_lr) == 8
    assert {d for d in seen if "DEPTH" in d} == {"offline: DEPTH 2 -> 3", "offline: DEPTH 2 -> 1", "offline: DEPTH 2 -> 4"}


def test_a_kept_change_is_pushed_further_from_the_new_value():
    text = "LR = 0.08\nWD = 0.1\n"
    history = [
        item(1, "baseline", "keep"),
        item(2, "offline: WD 0.1 -> 0.2"),
        item(3, "offline: WD 0.1 -> 0.05"),
        item(4, "offline: LR 0.04 -> 0.08", "keep"),
    ]
    p = OfflineProposer().propose(context(text, history))
    assert p.description == "offline: LR 0.08 -> 0.16"  # up again: the last move up worked
    history[3] = item(4, "offline: LR 0.16 -> 0.08", "keep")
    assert OfflineProposer().propose(context(text, history)).description == "offline: LR 0.08 -> 0.04"


def test_no_constants_is_a_clear_no_proposal():
    with pytest.raises(NoProposal, match="no module-level UPPER_CASE numeric constants"):
        OfflineProposer().propose(context("import os\nlr = 0.1\nTIME_BUDGET = 300\n"))


def test_skip_list_is_respected():
    text = "LR = 0.04\nWD = 0.1\n"
    candidates = OfflineProposer(skip=frozenset({"LR"})).candidates(context(text))
    assert candidates and {m.name for m in candidates} == {"WD"}
    p = OfflineProposer(skip=frozenset({"LR"})).propose(context(text))
    assert p.description in ("offline: WD 0.1 -> 0.2", "offline: WD 0.1 -> 0.05")


@pytest.mark.parametrize("script", ["train.py", "train_mlx.py"])
def test_against_the_shipped_templates_depth_moves_within_ten_proposals(tmp_path, script):
    # The real templates as `ar init` writes them (literal dials), not a hand-written script.
    from autoresearch.workspace.init import init_workspace
    from autoresearch.proposers.base import HistoryItem, ProposalContext
    from autoresearch.proposers.offline import OfflineProposer

    init_workspace(tmp_path, "t", backend="cpu")
    text = (tmp_path / script).read_text()
    history: list = []
    descriptions = []
    for i in range(10):
        ctx = ProposalContext(program="", editable_name=script, editable_text=text, history=tuple(history),
                              best=1.0, hardware="", profile="")
        p = OfflineProposer().propose(ctx)
        descriptions.append(p.description)
        history.append(HistoryItem(i + 2, f"{i:07x}", 1.1, "discard", p.description))
    assert any(d.startswith("offline: DEPTH ") for d in descriptions), descriptions
