"""`ar results` shows what the LLM cost, per experiment and in total (from runs.jsonl)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.journal.files import HEADER


def test_results_show_cost_per_experiment_and_total(tmp_path):
    (tmp_path / "results.tsv").write_text(
        HEADER + "\n"
        "aaaaaaa\t1.500000\t1.0\tkeep\tbaseline\n"
        "bbbbbbb\t1.400000\t1.0\tkeep\tdeeper\n"
        "ccccccc\t0.000000\t0.0\tcrash\twider\n"
    )
    runs = tmp_path / ".autoresearch" / "runs"
    runs.mkdir(parents=True)
    zero = {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_usd": 0.0}
    records = [
        {"event": "finished", "row": 1, "commit": "aaaaaaa", "usage": zero},
        {"event": "finished", "row": 2, "commit": "bbbbbbb", "usage": {**zero, "input_tokens": 12000, "output_tokens": 800, "cache_read_tokens": 9000, "cost_usd": 0.0321}},
        {"event": "finished", "row": 3, "commit": "ccccccc", "usage": {**zero, "input_tokens": 3000, "output_tokens": 200, "cost_usd": 0.0101}},
    ]
    (runs / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runner = CliRunner()
    res = runner.invoke(app, ["results", "--dir", str(tmp_path)], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert "cost" in res.output and "$0.0321" in res.output and "$0.0101" in res.output
    assert "LLM: 15,000 input, 1,000 output, 9,000 cached tokens; $0.04 in total" in res.output
    data = json.loads(runner.invoke(app, ["results", "--dir", str(tmp_path), "--json"]).output)
    assert data["rows"][0]["usage"] is None and data["rows"][1]["usage"]["cost_usd"] == 0.0321
    assert data["summary"]["llm"]["cost_usd"] == 0.0422


def test_results_without_llm_usage_have_no_cost_column(tmp_path):
    (tmp_path / "results.tsv").write_text(HEADER + "\naaaaaaa\t1.500000\t1.0\tkeep\tbaseline\n")
    res = CliRunner().invoke(app, ["results", "--dir", str(tmp_path)], env={"COLUMNS": "160"})
    assert res.exit_code == 0 and "cost" not in res.output and "LLM:" not in res.output
