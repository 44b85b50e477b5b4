"""`ar show <n | commit>`: one experiment in full, on a workspace built the way users build one
(`ar init`, commits, `ar run`, `ar loop` with a scripted LLM)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fake_cache import fake_prepared_data
from fake_llm_server import FakeLLMServer, anthropic_text, anthropic_tool_use
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.errors import ArError
from autoresearch.ui.show import experiment_details, render_show, show_json, sparklines

# A stand-in for the real training script: progress lines, then the summary block. It
# reads its val_bpb from bpb.txt so a test can play "better" and "worse" experiments.
FAKE_TRAIN = """\
import os
budget = float(os.environ["AUTORESEARCH_TIME_BUDGET"])
bpb = float(open("bpb.txt").read())
STEPS = 3
for step in range(1, STEPS + 1):
    print(f"progress step={step} pct={100 * step / STEPS:.1f} loss={6 - step:.4f} tok_per_s=2048 remaining_s={STEPS - step}")
print("---")
print(f"val_bpb: {bpb:.6f}")
print(f"training_seconds: {budget:.1f}")
print("peak_vram_mb: 3072.0")
print("mfu_percent: 12.50")
print(f"total_tokens_M: {STEPS * 0.5:.1f}")
print(f"num_steps: {STEPS}")
"""

# --- the command, as it goes into src/autoresearch/cli.py ----------------------------------
# --------------------------------------------------------------------------------------------


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def invoke(target, *args):
    return CliRunner().invoke(target, [str(a) for a in args], env={"COLUMNS": "120"})


def commit_bpb(ws: Path, bpb: float, message: str) -> str:
    (ws / "bpb.txt").write_text(f"{bpb}\n")
    git(ws, "commit", "-q", "-am", message)
    return git(ws, "rev-parse", "--short=7", "HEAD")


@pytest.fixture
def ws(tmp_path) -> Path:
    """Rows: 1 baseline 1.25 (keep), 2 "wider MLP" 1.20 (keep), 3 "GeLU" 1.22 (discard, reset)."""
    ws = tmp_path / "research"
    res = invoke(app, "init", "mar5", "--dir", ws, "--backend", "cpu", "--budget", "20", "--kill", "60")
    assert res.exit_code == 0, res.output
    fake_prepared_data(tmp_path / "cache")
    (ws / "train.py").write_text(FAKE_TRAIN)
    (ws / "bpb.txt").write_text("1.25\n")
    cfg = ws / ".autoresearch" / "config.toml"
    cfg.write_text(cfg.read_text() + 'metric = "printed"\n')  # the fake prints its own val_bpb
    git(ws, "add", "train.py", "bpb.txt", ".autoresearch/config.toml")
    git(ws, "commit", "-q", "-m", "fake training script")
    assert "keep" in invoke(app, "run", "--dir", ws, "--keep-rule", "strict").output
    commit_bpb(ws, 1.20, "wider MLP")
    assert "keep" in invoke(app, "run", "--dir", ws, "--keep-rule", "strict").output
    commit_bpb(ws, 1.22, "GeLU instead of ReLU^2")
    assert "discard" in invoke(app, "run", "--dir", ws, "--keep-rule", "strict").output
    git(ws, "reset", "-q", "--hard", "HEAD~1")  # as a person does after a discard
    return ws


def results_rows(ws: Path) -> list[dict]:
    res = invoke(app, "results", "--dir", ws, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.output)["rows"]


def test_show_by_number_and_by_commit(ws):
    by_number = invoke(app, "show", "2", "--dir", ws)
    assert by_number.exit_code == 0, by_number.output
    out = by_number.output
    commit = results_rows(ws)[1]["commit"]
    assert f"#2 {commit}  wider MLP" in out
    assert "val_bpb 1.200000" in out and "memory 3.0 GB" in out and "status keep" in out
    # the diff of that commit against its parent (`ar run` commits nothing itself)
    assert "-1.25" in out and "+1.2" in out and "+1.22" not in out
    # the decision and what it was judged against
    assert "decision: 1.200000 beats the best 1.250000" in out and "best before 1.250000" in out
    # the run's metrics, from its summary block
    assert "3 steps, 1.5M tokens, 75,000 tok/s, peak 3,072 MB, MFU 12.5%" in out
    # the log tail ends with the summary block
    assert "val_bpb: 1.200000" in out and "num_steps: 3" in out
    assert "cost: none (no LLM proposal)" in out
    assert "(this is the best of its budget and backend)" in out

    for ref in (commit, git(ws, "rev-parse", commit)):  # short and full hash
        by_commit = invoke(app, "show", ref, "--dir", ws)
        assert by_commit.exit_code == 0 and by_commit.output == out


def test_a_discard_shows_its_loss_against_the_best(ws):
    res = invoke(app, "show", "3", "--dir", ws)
    assert res.exit_code == 0, res.output
    best = results_rows(ws)[1]["commit"]
    assert "status discard" in res.output and "decision: 1.220000 does not beat the best 1.200000" in res.output
    assert "+1.22" in res.output  # the reset commit's diff is still there
    lines = res.output.splitlines()
    this = next(line for line in lines if line.startswith("loss  this"))
    other = next(line for line in lines if line.startswith("      best"))
    assert "5.0000 -> 3.0000" in this and f"(#2 {best}, val_bpb 1.200000)" in other


def test_unknown_number_or_commit_fails_with_one_line(ws):
    for ref, why in (("99", "no experiment 99: results.tsv has rows 1-3"),
                     ("deadbee", "no experiment with commit deadbee"),
                     ("HEAD", "neither a row number")):
        res = invoke(app, "show", ref, "--dir", ws)
        assert res.exit_code == 1
        assert res.output.strip().splitlines() == [res.output.strip()] and why in res.output
        assert "Traceback" not in res.output
    with pytest.raises(ArError, match="no experiment 0"):
        experiment_details(ws, "0")


def test_json_matches_ar_results(ws):
    rows = results_rows(ws)
    for n in (1, 2, 3):
        res = invoke(app, "show", str(n), "--dir", ws, "--json")
        assert res.exit_code == 0, res.output
        d = json.loads(res.output)
        row = rows[n - 1]
        assert (d["n"], d["commit"], d["val_bpb"], d["status"]) == (n, row["commit"], row["val_bpb"], row["status"])
        assert [r["status"] for r in d["runs"]] == ["ok"]
        assert d["runs"][0]["metrics"]["steps"] == 3 and d["runs"][0]["metrics"]["peak_memory_mb"] == 3072.0
        assert d["log_tail"][-1] == "num_steps: 3" and d["loss"]["this"][0] == [33.3, 5.0]
    assert "+1.22" in d["diff"]["text"] and d["parent"] == rows[1]["commit"]  # row 3 was built on row 2
    assert d["decision"] == "1.220000 does not beat the best 1.200000" and d["best_before"] == 1.2


def test_an_llm_proposal_shows_its_edit_and_cost(ws, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    edit = {"command": "str_replace", "path": "train.py", "old_str": "STEPS = 3", "new_str": "STEPS = 5"}
    with FakeLLMServer() as server:
        server.push(anthropic_tool_use("toolu_1", edit, usage={"input_tokens": 12000, "output_tokens": 800}))
        server.push(anthropic_text("Train for more steps", usage={"input_tokens": 300, "output_tokens": 20}))
        res = CliRunner().invoke(app, ["loop", "--dir", str(ws), "--proposer", "anthropic", "--base-url", server.url,
                                       "--keep-rule", "strict", "--max-experiments", "1"],
                                 env={"COLUMNS": "120", "ANTHROPIC_API_KEY": "test"})
    assert res.exit_code == 0, res.output
    row = results_rows(ws)[3]
    assert row["description"] == "Train for more steps" and row["usage"]["cost_usd"] > 0

    out = invoke(app, "show", "4", "--dir", ws).output
    assert "-STEPS = 3" in out and "+STEPS = 5" in out
    assert f"cost: ${row['usage']['cost_usd']:.4f} (12,300 input, 820 output" in out
    assert "5 steps" in out and "loss=1.0000" in out  # its own log: five steps, loss down to 1
    d = json.loads(invoke(app, "show", row["commit"], "--dir", ws, "--json").output)
    assert d["usage"]["cost_usd"] == row["usage"]["cost_usd"] and d["status"] == row["status"]


def test_loss_curves_share_one_scale():
    falling, flat = [[0, 5.0], [50, 4.0], [100, 3.0]], [[0, 5.0], [100, 5.0]]
    a, b = sparklines([falling, flat])
    assert len(a) == len(b) == 3
    assert a[0] == b[0] == b[-1] == "\u2588" and a[-1] == "\u2581"  # the flat one stays at the top
    assert sparklines([[]]) == [""]


def test_render_works_without_a_journal_record(tmp_path):
    """A row written by hand has no record: show what the row says, no crash."""
    (tmp_path / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                                          "aaaaaaa\t1.500000\t1.0\tkeep\tby hand\n")
    d = experiment_details(tmp_path, "1")
    text = "\n".join(str(t) for t in render_show(d))
    assert "by hand" in text and "(no journal record for this row)" in text and "(no diff: git" in text
    assert json.loads(show_json(d))["runs"] == []
