"""The two editable training templates, run the way the loop runs them: a copy of the
script in a workspace folder, a subprocess, the tiny profile and a short time budget.

Untrained, a template predicts a near-uniform distribution (its lm_head starts at
std 0.001), so its val_bpb is that of a zero-logit model: log2(vocab) bits per token
over the bytes per token. Each template must end clearly below that.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from autoresearch.run.summary import SUMMARY_KEYS, parse_progress, parse_summary

TEMPLATES = Path(str(resources.files("autoresearch") / "templates"))
BUDGET_S = 8  # training seconds per run: enough for clear learning on 2 CPU cores


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """The tiny profile's data (built-in corpus, 2048-token tokenizer) in a tmp cache."""
    from autoresearch.data import get_profile
    from autoresearch.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("template_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(root))
        prepare_data("builtin", get_profile("tiny"))
    return root


@pytest.fixture(scope="module")
def uniform_bpb(tiny_cache):
    """val_bpb of a model that predicts every token with equal probability, measured
    with the harness's own evaluate_bpb on the tiny profile's validation rows."""
    torch = pytest.importorskip("torch")
    from autoresearch.data import get_profile
    from autoresearch.data.context import RunContext
    from autoresearch.data.torch_io import evaluate_bpb

    profile = get_profile("tiny")
    ctx = RunContext(profile=profile, source=profile.source, time_budget=60.0, cache=tiny_cache)

    def uniform(x):
        return torch.zeros(x.shape[0], x.shape[1], profile.vocab_size)

    return evaluate_bpb(uniform, ctx, 64, device="cpu")


def run_template(name: str, folder: Path, cache: Path, budget: float, edits: dict | None = None):
    """Copy template `name` into `folder`, set constants as the agent would (by editing
    the file), run it and return the CompletedProcess."""
    source = (TEMPLATES / name).read_text(encoding="utf-8")
    for const, value in (edits or {}).items():
        source, n = re.subn(rf"^{const} = .*$", f"{const} = {value}", source, flags=re.M)
        assert n == 1, f"{name} has no top-level {const} to edit"
    script = folder / name
    script.write_text(source, encoding="utf-8")
    env = dict(os.environ)
    env.update(AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_TIME_BUDGET=str(budget), AUTORESEARCH_PROFILE="tiny")
    if name == "train.py":
        env["AUTORESEARCH_BACKEND"] = "cpu"  # the same run on every machine (no CUDA compile)
    return subprocess.run([sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=240)


def check_trained(proc, backend: str, uniform: float, margin: float) -> dict:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = parse_summary(proc.stdout)
    assert list(summary) == list(SUMMARY_KEYS)
    # `grep "^val_bpb:" run.log` finds exactly one line with six decimals
    assert len(re.findall(r"^val_bpb:\s+\d+\.\d{6}$", proc.stdout, flags=re.M)) == 1
    assert summary["backend"] == backend
    assert summary["val_bpb"] < uniform - margin, f"val_bpb {summary['val_bpb']} vs untrained {uniform:.3f}"
    assert BUDGET_S <= summary["training_seconds"] < BUDGET_S + 15
    assert summary["total_seconds"] > summary["training_seconds"]
    assert summary["num_steps"] >= 3 and summary["peak_vram_mb"] > 0 and summary["mfu_percent"] > 0

    progress = [p for p in map(parse_progress, proc.stdout.splitlines()) if p is not None]
    assert len(progress) >= 2
    for p in progress:
        assert {"step", "pct", "loss", "tok_per_s", "remaining_s"} <= set(p)
    assert [p["step"] for p in progress] == sorted(p["step"] for p in progress)
    assert progress[-1]["pct"] == 100.0 and progress[-1]["remaining_s"] == 0.0
    assert progress[-1]["step"] == summary["num_steps"]
    assert progress[-1]["loss"] < progress[0]["loss"]
    return summary


@pytest.mark.slow
def test_torch_template_trains_and_prints_the_summary(tmp_path, tiny_cache, uniform_bpb):
    # The CPU defaults (suggest_config): depth 2, 16 rows of 256 tokens per step.
    proc = run_template("train.py", tmp_path, tiny_cache, BUDGET_S)
    summary = check_trained(proc, "cpu", uniform_bpb, margin=0.6)
    assert summary["depth"] == 2


@pytest.mark.slow
def test_mlx_template_trains_and_prints_the_summary(tmp_path, tiny_cache, uniform_bpb):
    pytest.importorskip("mlx.core")
    # MLX's Linux CPU build is ~15x slower than torch at matmuls: 4 rows per step.
    proc = run_template("train_mlx.py", tmp_path, tiny_cache, BUDGET_S,
                        {"DEPTH": 2, "DEVICE_BATCH_SIZE": 4, "TOTAL_BATCH_SIZE": 1024})
    summary = check_trained(proc, "mlx", uniform_bpb, margin=0.3)
    assert summary["depth"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["train.py", "train_mlx.py"])
def test_a_diverging_run_fails_fast_without_a_result(tmp_path, tiny_cache, name):
    if name == "train_mlx.py":
        pytest.importorskip("mlx.core")
    else:
        pytest.importorskip("torch")
    # An agent's bad edit: a huge Muon learning rate turns the loss into NaN in a few steps.
    proc = run_template(name, tmp_path, tiny_cache, 60,
                        {"MATRIX_LR": "1e6", "DEVICE_BATCH_SIZE": 2, "TOTAL_BATCH_SIZE": 512})
    assert proc.returncode == 1
    assert not re.search(r"^val_bpb:", proc.stdout, flags=re.M)
    assert "FAIL: training diverged" in proc.stderr
    assert "Traceback" not in proc.stderr
    steps = [p["step"] for p in map(parse_progress, proc.stdout.splitlines()) if p]
    assert max(steps, default=0) < 20  # stopped at once, not after the 60 s budget


@pytest.mark.parametrize("name", ["train.py", "train_mlx.py"])
def test_without_prepared_data_it_prints_the_prepare_command(tmp_path, name):
    pytest.importorskip("mlx.core" if name == "train_mlx.py" else "torch")
    proc = run_template(name, tmp_path, tmp_path / "empty-cache", 5)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "ar prepare --source builtin --profile tiny" in lines[0]


def test_program_md_at_the_repository_root_is_the_one_ar_init_ships():
    # The design card stands at the root, as upstream has it; the package ships the same text.
    from pathlib import Path

    from autoresearch.workspace.config import template_bytes

    root = Path(__file__).resolve().parents[1] / "program.md"
    assert root.read_bytes() == template_bytes("program.md"), "copy src/autoresearch/templates/program.md to program.md"
