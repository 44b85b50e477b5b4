"""A run that tries to change the prepared cache: in the sandbox it cannot; without one
(--no-sandbox) its number is void, no later run starts on the changed cache, and the
`ar prepare` command the error prints repairs it (real CLI, real `ar prepare`)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.data.digests import verify_cache
from autoresearch.journal.files import read_results
from autoresearch.workspace.config import load_config

# Copies the validation shard in among the training shards, where it sorts first (an
# audit's route: every later experiment would train on validation text).
POISON = """\
import glob, os, shutil
data = os.path.join(os.environ["AUTORESEARCH_CACHE"], "data", "builtin")
val = sorted(glob.glob(os.path.join(data, "*.parquet")))[-1]
shutil.copy(val, os.path.join(data, "shard_00000_a.parquet"))
print("---")
print("val_bpb: 0.5")
"""
HONEST = 'print("---")\nprint("val_bpb: 1.0")\n'


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_a_run_that_changes_the_cache_is_void_and_the_printed_command_repairs_it(tmp_path, cli):
    assert cli("prepare", "--profile", "tiny").exit_code == 0
    ws = tmp_path / "ws"
    assert cli("init", "cache1", "--dir", ws, "--backend", "cpu").exit_code == 0
    cfg = ws / ".autoresearch" / "config.toml"
    cfg.write_text(cfg.read_text() + 'metric = "printed"\n')  # these scripts print their own number
    (ws / "train.py").write_text(HONEST)
    git(ws, "commit", "-q", "-am", "honest")
    assert cli("run", "--dir", ws, "--budget", "1").exit_code == 0

    (ws / "train.py").write_text(POISON)
    git(ws, "commit", "-q", "-am", "poison the cache")
    ctx = load_config(ws).run_context()
    before = {p: p.read_bytes() for p in sorted(ctx.data_dir.iterdir())}

    # In the sandbox (the default) the cache is read-only: the copy fails, nothing changes.
    res = cli("run", "--dir", ws, "--budget", "1")
    assert "Read-only file system" in res.output and res.exit_code == 1
    assert {p: p.read_bytes() for p in sorted(ctx.data_dir.iterdir())} == before
    verify_cache(ctx)

    # Without it the copy lands, and is caught: the run is void.
    res = cli("run", "--dir", ws, "--budget", "1", "--no-sandbox")
    rows = read_results(ws / "results.tsv")
    assert rows[-1].status == "crash" and "(rejected: cache modified)" in rows[-1].description, res.output

    # The next run does not start on the changed cache: one line, and the command that repairs it.
    res = cli("run", "--dir", ws, "--budget", "1", "--no-sandbox")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "shard_00000_a.parquet was not written by `ar prepare`" in res.output
    assert len(read_results(ws / "results.tsv")) == 3
    command = re.search(r"run: (ar prepare [^\n]*)", res.output).group(1).strip()
    args = shlex.split(command)[1:]
    assert cli(*args).exit_code == 0  # the printed command, as a user pastes it
    verify_cache(ctx)  # byte for byte what `ar prepare` wrote
    assert {p: p.read_bytes() for p in sorted(ctx.data_dir.iterdir())} == before
    git(ws, "reset", "-q", "--hard", "HEAD~1")
    assert cli("run", "--dir", ws, "--budget", "1").exit_code == 0
