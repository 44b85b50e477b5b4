"""Profiles, the run context, and a CLI that starts without torch or mlx."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoresearch.data import load_context
from autoresearch.data.profiles import PROFILES, get_profile
from autoresearch.errors import ArError


def test_datacenter_profile_holds_the_upstream_constants():
    p = get_profile("datacenter")
    assert (p.max_seq_len, p.time_budget, p.eval_tokens, p.vocab_size) == (2048, 300, 40 * 524288, 8192)


def test_smaller_profiles_are_smaller():
    dc, lap, tiny = PROFILES["datacenter"], PROFILES["laptop"], PROFILES["tiny"]
    assert dc.max_seq_len > lap.max_seq_len > tiny.max_seq_len
    assert dc.eval_tokens > lap.eval_tokens > tiny.eval_tokens
    assert tiny.source == "builtin"


def test_unknown_profile_names_the_choices():
    with pytest.raises(ArError, match="tiny"):
        get_profile("huge")


def test_context_reads_workspace_config_and_env_overrides(tmp_path, monkeypatch):
    (tmp_path / ".autoresearch").mkdir()
    (tmp_path / ".autoresearch" / "config.toml").write_text('profile = "laptop"\nbudget = 120\n')
    ctx = load_context(tmp_path)
    assert ctx.profile.name == "laptop" and ctx.TIME_BUDGET == 120 and ctx.source == "tinystories"
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "5")
    assert load_context(tmp_path).TIME_BUDGET == 5


def test_context_rejects_a_bad_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "soon")
    with pytest.raises(ArError, match="seconds"):
        load_context(tmp_path)


def test_missing_data_names_the_prepare_command(tmp_path):
    ctx = load_context(tmp_path)
    with pytest.raises(ArError, match="ar prepare --source builtin --profile tiny"):
        ctx.check_prepared()


def test_ar_help_imports_neither_torch_nor_mlx():
    code = (
        "import sys; from typer.testing import CliRunner; from autoresearch.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'mlx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
