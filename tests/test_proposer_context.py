"""What the proposer sees (issue #15): diffs, metrics and loss at 25/50/75/100% against the
best's, why runs failed; the research notes through the real Anthropic SDK (shown in the
next experiment and after a restart); no duplicate runs, including a proposal that differs
only in whitespace and comments.

The loop is the real one (run_loop, ScriptRunner, git) on a fast fake training script."""

from __future__ import annotations

import math

import pytest
from fake_llm_server import FakeLLMServer, anthropic_text, anthropic_tool_use

from autoresearch.experiment.lab import LoopSettings
from autoresearch.journal.files import read_results, read_run_records
from autoresearch.loop.history import normalise
from autoresearch.loop.serial import run_loop
from autoresearch.proposers.anthropic import DEFAULT_MODEL, AnthropicProposer
from autoresearch.proposers.base import Proposal
from autoresearch.proposers.common import RetryPolicy
from autoresearch.proposers.notes import NOTES_RELPATH
from autoresearch.run.script import ScriptRunner
from autoresearch.workspace.git import Workspace
from workspaces import git, git_workspace

# val_bpb is best at LR = 0.02; the loss curve and the summary metrics follow LR too.
FAKE_TRAIN = """\
import math
LR = 0.04  # learning rate
WIDTH = 64
if WIDTH > 1000:
    raise MemoryError("WIDTH too large for this machine")
q = abs(math.log(LR / 0.02))
for i, pct in enumerate((25.0, 50.0, 75.0, 100.0)):
    print(f"progress step={i + 1} pct={pct} loss={5 - i * 0.5 + q:.4f}", flush=True)
print("---")
print(f"val_bpb: {1 + q:.6f}")
print("training_seconds: 1.0")
print("peak_vram_mb: 512.0")
print("mfu_percent: 12.5")
print("total_tokens_M: 0.5")
print("num_steps: 40")
"""


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return git_workspace(tmp_path / "ws", FAKE_TRAIN, "# autoresearch\nGet the lowest val_bpb by editing train.py.\n")


def settings(n: int, **kw) -> LoopSettings:
    return LoopSettings(editable="train.py", budget=1.0, full_budget=1.0, keep_rule="strict", max_experiments=n,
                        early_stop=False, **kw)


def runner(ws: Workspace) -> ScriptRunner:
    return ScriptRunner(ws.path, editable="train.py", env={}, budget=1.0, kill=30.0)


class Scripted:
    """A proposer that plays edits (functions of the current text) and keeps every context it saw."""

    name = "scripted"

    def __init__(self, *edits):
        self.edits = list(edits)
        self.seen = []

    def propose(self, ctx):
        self.seen.append(ctx)
        description, edit = self.edits.pop(0)
        return Proposal(edit(ctx.editable_text), description)


def sub(old: str, new: str):
    return lambda text: text.replace(old, new)


# -- the context ---------------------------------------------------------------------------


def test_the_prompt_shows_diffs_metrics_losses_and_why_a_run_failed(ws):
    from autoresearch.proposers.prompt import user_prompt

    p = Scripted(("halve LR", sub("LR = 0.04", "LR = 0.02")),
                 ("huge width", sub("WIDTH = 64", "WIDTH = 4096")),
                 ("LR way up", sub("LR = 0.02", "LR = 0.32")),
                 ("anything", sub("WIDTH = 64", "WIDTH = 32")))
    run_loop(ws, p, runner(ws), settings(4), sleep=lambda t: None)
    ctx = p.seen[-1]  # before the 4th experiment: baseline, keep, crash, discard
    h = {it.number: it for it in ctx.history}
    assert [h[n].status for n in (1, 2, 3, 4)] == ["keep", "keep", "crash", "discard"]
    # metrics of each run's summary block
    assert dict(h[2].metrics) == {"steps": 40.0, "tokens_M": 0.5, "tok_per_s": 500000.0, "peak_mem_mb": 512.0, "mfu_pct": 12.5}
    # the loss at 25/50/75/100% of the budget
    q = math.log(16)
    assert h[2].losses == (5.0, 4.5, 4.0, 3.5)
    assert h[4].losses == pytest.approx((5 + q, 4.5 + q, 4 + q, 3.5 + q), abs=1e-3)
    # why the crash crashed
    assert h[3].outcome == "crashed" and "MemoryError" in h[3].reason and "WIDTH too large" in h[3].reason

    prompt = user_prompt(ctx)
    assert "#\tcommit\tval_bpb\tstatus\tsteps\ttokens_M\ttok/s\tmem_MB\tmfu%\tdescription" in prompt
    assert "\t40\t0.50\t500000\t512\t12.5\thalve LR" in prompt
    assert "#3 crashed: " in prompt and "WIDTH too large" in prompt
    assert "best #2: 5.000 4.500 4.000 3.500" in prompt
    assert f"#4 discard: {5 + q:.3f}" in prompt and f"(final {q:+.3f} vs best)" in prompt
    # diffs: the keep, the crash and the discard against the commit each was made from
    assert "### #2 keep: halve LR" in prompt and "-LR = 0.04  # learning rate\n+LR = 0.02  # learning rate" in prompt
    assert "### #3 crash: huge width" in prompt and "+WIDTH = 4096" in prompt
    assert "### #4 discard: LR way up" in prompt and "+LR = 0.32  # learning rate" in prompt


# -- no duplicate runs -----------------------------------------------------------------------


def test_normalise_ignores_whitespace_and_comments_not_code():
    a = "LR = 0.04  # learning rate\nx = f(1, 2)\n"
    assert normalise(a) == normalise("# a new comment\nLR   =   0.04\n\nx = f(1,\n      2)  # call\n")
    assert normalise(a) != normalise("LR = 0.05\nx = f(1, 2)\n")
    assert normalise(a) != normalise(a.replace("0.04", "0.040001"))


def test_a_repeat_is_not_run_and_the_proposer_is_told_which_experiment_it_repeats(ws):
    reformatted = lambda text: text.replace("LR = 0.02  # learning rate", "# try again\nLR  =  0.02   # the LR")  # noqa: E731
    p = Scripted(("halve LR", sub("LR = 0.04", "LR = 0.02")),
                 ("LR up", sub("LR = 0.02", "LR = 0.08")),
                 # back to the baseline's program, only reformatted: a repeat of #1
                 ("back to 0.04", lambda text: text.replace("LR = 0.02  # learning rate", "LR = 0.04 # lr\n\n")),
                 ("the same again", reformatted),  # the best itself, reformatted: a repeat of #2
                 ("width down", sub("WIDTH = 64", "WIDTH = 32")))
    report = run_loop(ws, p, runner(ws), settings(3), sleep=lambda t: None)

    rows = read_results(ws.path / "results.tsv")
    assert [r.description for r in rows] == ["baseline", "halve LR", "LR up", "width down"]  # no repeat ran
    assert report.experiments == 3
    # the proposer was told, in the next context, which experiment each repeat repeated
    assert "same program as experiment #1 (baseline" in p.seen[3].feedback
    assert "same program as experiment #2 (halve LR; val_bpb 1.000000, keep)" in p.seen[4].feedback
    records = read_run_records(ws.path / ".autoresearch" / "runs" / "runs.jsonl")
    assert sum(r["event"] == "no_proposal" and "same program" in r["reason"] for r in records) == 2
    assert not any(r["event"] == "started" and r.get("message") in ("back to 0.04", "the same again") for r in records)


# -- the research notes, through the real Anthropic SDK ---------------------------------------


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with FakeLLMServer() as s:
        yield s


def _first_user(request) -> str:
    return request.body["messages"][0]["content"][0]["text"]


def test_notes_written_in_one_experiment_are_shown_in_the_next_and_after_a_restart(ws, server):
    notes = "LR: 0.02 beat 0.04 (1.000 vs 1.693). Next: try WIDTH 32."
    # experiment 1: the model writes its notes, edits, describes
    server.push(anthropic_tool_use("t1", {"command": "replace", "text": notes}, name="research_notes"))
    server.push(anthropic_tool_use("t2", {"command": "str_replace", "path": "train.py", "old_str": "LR = 0.04",
                                          "new_str": "LR = 0.02"}))
    server.push(anthropic_text("halve the learning rate"))
    # experiment 2: it appends to the notes and edits
    server.push(anthropic_tool_use("t3", {"command": "append", "text": "- WIDTH 32: pending"}, name="research_notes"))
    server.push(anthropic_tool_use("t4", {"command": "str_replace", "path": "train.py", "old_str": "WIDTH = 64",
                                          "new_str": "WIDTH = 32"}))
    server.push(anthropic_text("narrower model"))
    retry = RetryPolicy(sdk_max_retries=0, base_delay=0.01, max_delay=0.05, sleep=lambda t: None)
    proposer = AnthropicProposer(DEFAULT_MODEL, base_url=server.url, api_key="test", retry=retry)
    run_loop(ws, proposer, runner(ws), settings(2), sleep=lambda t: None)

    first, second = _first_user(server.requests[0]), _first_user(server.requests[3])
    assert "## Your research notes\nEmpty so far" in first
    assert f"## Your research notes\n{notes}" in second
    assert (ws.path / NOTES_RELPATH).read_text() == notes + "\n- WIDTH 32: pending"
    # the tool's answer told the model its notes were saved
    result = server.requests[1].body["messages"][2]["content"][0]
    assert result["type"] == "tool_result" and "Notes saved" in result["content"]
    # the notes file is git-ignored: the tree stays clean, HEAD the best
    assert git(ws.path, "status", "--porcelain") == ""

    # a restart: a new loop, a new proposer object; the notes are still shown
    server.push(anthropic_tool_use("t5", {"command": "str_replace", "path": "train.py", "old_str": "WIDTH = 64",
                                          "new_str": "WIDTH = 16"}))  # WIDTH 32 changed nothing: discarded
    server.push(anthropic_text("narrower still"))
    proposer = AnthropicProposer(DEFAULT_MODEL, base_url=server.url, api_key="test", retry=retry)
    run_loop(ws, proposer, runner(ws), settings(1), sleep=lambda t: None)
    assert f"## Your research notes\n{notes}\n- WIDTH 32: pending" in _first_user(server.requests[6])
    assert [r.description for r in read_results(ws.path / "results.tsv")][-1] == "narrower still"


def test_notes_over_the_limit_are_refused_for_the_model_and_the_old_ones_kept(ws, server):
    from autoresearch.proposers.notes import NOTES_MAX, write_notes

    write_notes(ws.path, "keep me")
    server.push(anthropic_tool_use("t1", {"command": "replace", "text": "x" * (NOTES_MAX + 1)}, name="research_notes"))
    server.push(anthropic_tool_use("t2", {"command": "str_replace", "path": "train.py", "old_str": "LR = 0.04",
                                          "new_str": "LR = 0.02"}))
    server.push(anthropic_text("halve the learning rate"))
    retry = RetryPolicy(sdk_max_retries=0, base_delay=0.01, max_delay=0.05, sleep=lambda t: None)
    proposer = AnthropicProposer(DEFAULT_MODEL, base_url=server.url, api_key="test", retry=retry)
    run_loop(ws, proposer, runner(ws), settings(1), sleep=lambda t: None)
    result = server.requests[1].body["messages"][2]["content"][0]
    assert result["is_error"] and f"over the limit of {NOTES_MAX}" in result["content"]
    assert (ws.path / NOTES_RELPATH).read_text() == "keep me"
