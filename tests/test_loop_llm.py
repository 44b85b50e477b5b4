"""The research loop end to end with the real Anthropic SDK: the proposer talks to the local
fake API (tests/fake_llm_server.py), the real ScriptRunner runs a fast fake training script
in a real git workspace. Baseline -> an edit that crashes (reset; its log tail goes to the
next turn) -> an edit that improves val_bpb (kept)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, anthropic_error, anthropic_text, anthropic_tool_use

from autoresearch.experiment.lab import LoopSettings
from autoresearch.run.script import ScriptRunner
from autoresearch.loop.serial import run_loop
from autoresearch.proposers.pricing import cost_usd
from autoresearch.proposers.base import Usage
from autoresearch.proposers.anthropic import DEFAULT_MODEL, AnthropicProposer
from autoresearch.proposers.common import RetryPolicy
from autoresearch.journal.files import read_results, read_run_records
from autoresearch.workspace.git import Workspace

# Fast stand-in for train.py: val_bpb is best at LR = 0.02; CRASH = 1 dies like a real OOM.
FAKE_TRAIN = """\
import math
LR = 0.04  # learning rate
CRASH = 0  # 1: run out of memory
print("progress step=1 pct=50.0 loss=4.0", flush=True)
if CRASH:
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
print("progress step=2 pct=100.0 loss=3.0", flush=True)
print("---")
print(f"val_bpb: {1 + abs(math.log(LR / 0.02)):.6f}")
print("training_seconds: 1.0")
print("peak_vram_mb: 512.0")
"""
BASELINE_BPB = round(1 + math.log(2), 6)

CRASH_EDIT = {"command": "str_replace", "path": "train.py", "old_str": "CRASH = 0", "new_str": "CRASH = 1"}
LR_EDIT = {"command": "str_replace", "path": "train.py", "old_str": "LR = 0.04", "new_str": "LR = 0.02"}


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def usage(inp: int, out: int, write: int = 0, read: int = 0) -> dict:
    return {"input_tokens": inp, "output_tokens": out, "cache_creation_input_tokens": write, "cache_read_input_tokens": read}


@pytest.fixture
def ws(tmp_path) -> Workspace:
    folder = tmp_path / "ws"
    w = Workspace.init(folder)
    (folder / "train.py").write_text(FAKE_TRAIN)
    (folder / "program.md").write_text("# autoresearch\nGet the lowest val_bpb by editing train.py.\n")
    (folder / ".gitignore").write_text("results.tsv\n.autoresearch/runs/\n")
    w.commit(["train.py", "program.md", ".gitignore"], "fake training script")
    return w


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with FakeLLMServer() as s:
        yield s


def test_crash_then_improvement_with_the_real_sdk(ws, server):
    # proposal 1: a clean edit whose run crashes
    server.push(anthropic_tool_use("toolu_1", CRASH_EDIT, usage=usage(1000, 50, write=900)))
    server.push(anthropic_text("Turn on the bigger activation buffers\nThis should help.", usage(60, 12, read=900)))
    # proposal 2: the API is overloaded once (retried, no real wait), then an edit that helps
    server.push(anthropic_error("overloaded_error", "Overloaded"), status=529)
    server.push(anthropic_tool_use("toolu_2", LR_EDIT, usage=usage(1100, 40, read=900)))
    server.push(anthropic_text("Halve the learning rate to 0.02", usage(70, 10, read=900)))

    sleeps: list[float] = []
    retry = RetryPolicy(sdk_max_retries=0, base_delay=0.01, max_delay=0.05, sleep=sleeps.append)
    proposer = AnthropicProposer(DEFAULT_MODEL, base_url=server.url, api_key="test", retry=retry)
    runner = ScriptRunner(ws.path, editable="train.py", env={}, budget=1.0, kill=30.0)
    s = LoopSettings(editable="train.py", budget=1.0, full_budget=1.0, keep_rule="strict", max_experiments=2)
    events = []
    report = run_loop(ws, proposer, runner, s, on_event=events.append, sleep=lambda t: None)

    rows = read_results(ws.path / "results.tsv")
    assert [r.status for r in rows] == ["keep", "crash", "keep"]
    assert rows[0].description == "baseline" and rows[0].val_bpb == pytest.approx(BASELINE_BPB)
    assert rows[1].description == "Turn on the bigger activation buffers" and rows[1].val_bpb == 0.0
    assert rows[2].description == "Halve the learning rate to 0.02" and rows[2].val_bpb == pytest.approx(1.0)

    # git: HEAD is the best commit, the crash commit is off the branch, the tree is clean
    assert git(ws.path, "rev-parse", "--short=7", "HEAD") == rows[2].commit
    assert rows[1].commit not in ws.ancestry()
    assert git(ws.path, "status", "--porcelain") == ""
    final = (ws.path / "train.py").read_text()
    assert "LR = 0.02" in final and "CRASH = 0" in final
    assert (report.experiments, report.kept, report.crashed, report.best_commit) == (2, 1, 1, rows[2].commit)

    # the SDK's requests: 2 turns, then a 529 retried, then 2 turns
    assert [r.path for r in server.requests] == ["/v1/messages"] * 5 and not server.script
    assert len(sleeps) == 1 and sleeps[0] <= 0.05
    first_user = server.requests[0].body["messages"][0]["content"][0]["text"]
    assert "CRASH = 0" in first_user and "crashed" not in first_user
    second_user = server.requests[3].body["messages"][0]["content"][0]["text"]
    assert server.requests[2].body["messages"] == server.requests[3].body["messages"]  # the retry resends it all
    # the log's tail as the script printed it (the source has `RuntimeError("CUDA ...`, not this)
    assert "crashed" in second_user and "RuntimeError: CUDA out of memory" in second_user
    assert "Traceback (most recent call last)" in second_user
    history = [line.split("\t") for line in second_user.splitlines() if line.startswith(("#\t", "1\t", "2\t"))]
    assert history[0][:4] == ["#", "commit", "val_bpb", "status"] and history[0][-1] == "description"
    assert [h[3] for h in history[1:]] == ["keep", "crash"]
    assert history[2][-1] == "Turn on the bigger activation buffers"
    # the crash was reverted: the current file has CRASH = 0; its diff shows what it tried
    current = second_user.split("## Current train.py")[1]
    assert "CRASH = 0" in current and "CRASH = 1" not in current
    assert "### #2 crash: Turn on the bigger activation buffers" in second_user and "+CRASH = 1" in second_user

    # usage and cost per experiment in runs.jsonl; the loop's total is their sum
    records = read_run_records(ws.path / ".autoresearch" / "runs" / "runs.jsonl")
    finished = [r for r in records if r["event"] == "finished"]
    assert [r["status"] for r in finished] == ["keep", "crash", "keep"]
    assert finished[0]["usage"]["input_tokens"] == 0  # the baseline asked no one
    expected = [Usage(1060, 62, cache_read_tokens=900, cache_write_tokens=900), Usage(1170, 50, cache_read_tokens=1800)]
    for rec, want in zip(finished[1:], expected):
        u = rec["usage"]
        assert (u["input_tokens"], u["output_tokens"]) == (want.input_tokens, want.output_tokens)
        assert (u["cache_read_tokens"], u["cache_write_tokens"]) == (want.cache_read_tokens, want.cache_write_tokens)
        assert u["cost_usd"] == pytest.approx(cost_usd(DEFAULT_MODEL, want)[0], abs=1e-6) and u["cost_usd"] > 0
    assert report.cost_usd == pytest.approx(sum(r["usage"]["cost_usd"] for r in finished), abs=1e-5)

    # the crash's own log holds the traceback; the kept run's log the summary
    runs = [r for r in records if r["event"] == "run"]
    assert [(r["kind"], r["status"]) for r in runs] == [("baseline", "ok"), ("experiment", "crash"), ("experiment", "ok")]
    assert "CUDA out of memory" in (ws.path / runs[1]["log"]).read_text()
    assert [e.status for e in events if e.kind == "finished"] == ["keep", "crash", "keep"]
