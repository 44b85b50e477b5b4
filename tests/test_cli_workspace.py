"""`ar init`, `ar run`, `ar results`, `ar plot` from the command line, end to end."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import autoresearch.backends as backends
from autoresearch.cli import app
from autoresearch.errors import ArError
from autoresearch.workspace import init as config_mod  # where `ar init` reads the templates
from autoresearch.journal.files import HEADER, read_results
from fake_cache import fake_prepared_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A stand-in for the real training script: progress lines, then the summary block.
# It reads its val_bpb from bpb.txt so a test can play "better" and "worse" experiments.
FAKE_TRAIN = """\
import os, time
budget = float(os.environ["AUTORESEARCH_TIME_BUDGET"])
bpb = float(open("bpb.txt").read())
for step in range(1, 4):
    time.sleep(0.02)
    print(f"progress step={step} pct={step * 33.3:.1f} loss={6 - step:.4f} tok_per_s=2048 remaining_s={3 - step}")
if bpb < 0:
    raise RuntimeError("loss exploded")
print("---")
print(f"val_bpb: {bpb:.6f}")
print(f"training_seconds: {budget:.1f}")
print("total_seconds: 1.5")
print("peak_vram_mb: 3072.0")
print("num_steps: 3")
print(f"backend: {os.environ['AUTORESEARCH_BACKEND']}")
print("chip: fake")
"""


@pytest.fixture(autouse=True)
def templates(monkeypatch):
    """Stand in for the backend helpers and training templates only while they are missing."""
    if not hasattr(backends, "script_for_backend"):
        monkeypatch.setattr(
            backends, "script_for_backend", lambda b: "train_mlx.py" if b == "mlx" else "train.py", raising=False
        )
    real = config_mod.template_bytes

    def template_bytes(name: str) -> bytes:
        try:
            return real(name)
        except ArError:
            return b"print('training template')\n"

    monkeypatch.setattr(config_mod, "template_bytes", template_bytes)


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120", **(env or {})})

    return invoke


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def commit_experiment(folder: Path, bpb: float, message: str) -> None:
    (folder / "bpb.txt").write_text(str(bpb))
    git(folder, "add", "bpb.txt")
    git(folder, "commit", "-q", "-m", message)


def test_init_run_results_plot_end_to_end(tmp_path, cli):
    ws = tmp_path / "research"
    res = cli("init", "mar5", "--dir", str(ws), "--backend", "cpu", "--budget", "20", "--kill", "60")
    assert res.exit_code == 0, res.output
    assert "autoresearch/mar5" in res.output and "new git repository" in res.output
    assert "ar prepare --source builtin --profile tiny" in res.output  # the data warning

    # Not prepared yet: `ar run` refuses with the command to run, and records nothing.
    res = cli("run", "--dir", str(ws))
    assert res.exit_code == 1 and "ar prepare --source builtin --profile tiny" in res.output
    fake_prepared_data(tmp_path / "cache")

    # Put the fake training script in place of the template, as a committed change.
    (ws / "train.py").write_text(FAKE_TRAIN)
    (ws / "bpb.txt").write_text("1.25")
    # The fake script prints its own val_bpb: opt out of the harness result channel.
    cfg = ws / ".autoresearch" / "config.toml"
    cfg.write_text(cfg.read_text() + 'metric = "printed"\n')
    git(ws, "add", "train.py", "bpb.txt", ".autoresearch/config.toml")
    git(ws, "commit", "-q", "-m", "fake training script")

    smoke = cli("run", "--dir", str(ws), "--budget", "2")
    assert smoke.exit_code == 0, smoke.output
    assert "val_bpb 1.250000" in smoke.output
    smoke_rows = read_results(ws / "results.tsv")
    assert [r.description for r in smoke_rows] == ["baseline (budget 2 s)"]
    logs = list((ws / ".autoresearch" / "runs").glob("0001-*.log"))
    assert len(logs) == 1 and "training_seconds: 2.0" in logs[0].read_text()

    # The strict rule: this test is about the commands; the `test` rule's re-runs and its
    # foreign-load check (a busy CI machine can make it refuse to credit) have tests of their own.
    base = cli("run", "--dir", str(ws), "--keep-rule", "strict")
    assert base.exit_code == 0, base.output
    assert "keep" in base.output and "baseline" in base.output and "memory 3.0 GB" in base.output
    commit_experiment(ws, 1.20, "wider MLP")
    assert "keep" in cli("run", "--dir", str(ws), "--keep-rule", "strict").output
    commit_experiment(ws, 1.22, "GeLU instead of ReLU^2")
    assert "discard" in cli("run", "--dir", str(ws), "--keep-rule", "strict").output
    git(ws, "reset", "-q", "--hard", "HEAD~1")
    commit_experiment(ws, -1, "learning rate x10")
    crash = cli("run", "--dir", str(ws))
    assert crash.exit_code == 1 and "RuntimeError: loss exploded" in crash.output and "crash" in crash.output

    lines = (ws / "results.tsv").read_text().splitlines()
    assert lines[0] == HEADER
    assert [line.split("\t")[1:] for line in lines[1:]] == [
        ["1.250000", "3.0", "keep", "baseline (budget 2 s)"],
        ["1.250000", "3.0", "keep", "baseline"],
        ["1.200000", "3.0", "keep", "wider MLP"],
        ["1.220000", "3.0", "discard", "GeLU instead of ReLU^2"],
        ["0.000000", "0.0", "crash", "learning rate x10"],
    ]
    assert git(ws, "status", "--porcelain") == ""  # results.tsv and the logs stay out of git

    table = cli("results", "--dir", str(ws))
    assert table.exit_code == 0, table.output
    assert "wider MLP" in table.output and "-0.050000" in table.output and "+0.020000" in table.output
    assert "5 experiments, 3 kept, 1 discarded, 1 crashed" in table.output
    assert "baseline 1.250000 -> best 1.200000" in table.output and "-4.00%" in table.output

    data = json.loads(cli("results", "--dir", str(ws), "--json").output)
    assert [r["status"] for r in data["rows"]] == ["keep", "keep", "keep", "discard", "crash"]
    assert data["rows"][3]["delta"] == pytest.approx(0.02) and data["summary"]["best"] == 1.2

    plot = cli("plot", "--dir", str(ws))
    assert plot.exit_code == 0, plot.output
    assert (ws / "progress.png").read_bytes().startswith(PNG_MAGIC)


def test_init_in_a_non_git_folder_creates_the_repo(tmp_path, cli):
    res = cli("init", "apr1", "--dir", str(tmp_path / "fresh"), "--backend", "cpu")
    assert res.exit_code == 0, res.output
    assert git(tmp_path / "fresh", "branch", "--show-current") == "autoresearch/apr1"


def test_init_twice_resumes_and_refuses_a_dirty_tree_and_a_bad_tag(tmp_path, cli):
    assert cli("init", "mar5", "--dir", str(tmp_path), "--backend", "cpu").exit_code == 0
    head = git(tmp_path, "rev-parse", "HEAD")
    git(tmp_path, "checkout", "-q", "-b", "elsewhere")
    again = cli("init", "mar5", "--dir", str(tmp_path), "--backend", "cpu")  # the quick start pasted twice
    assert again.exit_code == 0 and "resumed" in again.output, again.output
    assert git(tmp_path, "branch", "--show-current") == "autoresearch/mar5" and git(tmp_path, "rev-parse", "HEAD") == head

    (tmp_path / "program.md").write_text("my own rules\n")
    dirty = cli("init", "mar6", "--dir", str(tmp_path), "--backend", "cpu")
    assert dirty.exit_code == 1 and "uncommitted changes" in dirty.output

    bad = cli("init", "no spaces please", "--dir", str(tmp_path), "--backend", "cpu")
    assert bad.exit_code == 1 and "not make a valid git branch name" in bad.output


def test_init_in_an_existing_repo_commits_on_the_new_branch_only_with_literal_dials(tmp_path, cli):
    repo = tmp_path / "proj"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "master")
    (repo / "README").write_text("mine\n")
    git(repo, "add", "README")
    git(repo, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "-m", "mine")
    res = cli("init", "mar5", "--dir", str(repo), "--backend", "cpu")
    assert res.exit_code == 0, res.output
    assert git(repo, "ls-tree", "--name-only", "master") == "README"  # master untouched
    files = git(repo, "ls-tree", "--name-only", "HEAD").split()
    assert {"train.py", "train_mlx.py", "program.md", ".gitignore"} <= set(files)
    for name in ("train.py", "train_mlx.py"):  # the size as plain numbers, with where they came from
        text = (repo / name).read_text()
        assert re.search(r"^DEPTH = \d+  #", text, re.M) and re.search(r"^TOTAL_BATCH_SIZE = 2\*\*\d+  #", text, re.M)
        assert "suggested by `ar init` for" in text and "profile tiny" in text and "_suggested" not in text


def test_a_new_tag_archives_the_previous_results(tmp_path, cli):
    assert cli("init", "mar5", "--dir", str(tmp_path), "--backend", "cpu").exit_code == 0
    rows = HEADER + "\na1b2c3d\t1.000000\t2.0\tkeep\tbaseline\n"
    (tmp_path / "results.tsv").write_text(rows)
    res = cli("init", "mar6", "--dir", str(tmp_path), "--backend", "cpu")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "results-mar5.tsv").read_text() == rows  # never lost
    assert (tmp_path / "results.tsv").read_text() == HEADER + "\n"  # a fresh one for mar6
    assert git(tmp_path, "status", "--porcelain") == ""  # the archive stays out of git


def test_init_with_a_local_source_suggests_a_prepare_command_that_works(tmp_path, cli):
    missing = cli("init", "loc", "--dir", str(tmp_path / "a"), "--backend", "cpu", "--source", "local")
    assert missing.exit_code == 1 and "--path" in missing.output
    texts = tmp_path / "texts"
    texts.mkdir()
    import gzip
    from importlib import resources

    # The shipped public-domain corpus as a user's own folder: enough text for the tokenizer.
    lines = gzip.decompress((resources.files("autoresearch") / "data/builtin/web_bible.jsonl.gz").read_bytes()).splitlines()
    (texts / "a.jsonl").write_bytes(b"\n".join(lines[:-100]) + b"\n")
    (texts / "b.jsonl").write_bytes(b"\n".join(lines[-100:]) + b"\n")
    res = cli("init", "loc", "--dir", str(tmp_path / "b"), "--backend", "cpu", "--source", "local", "--path", str(texts))
    assert res.exit_code == 0, res.output
    command = re.search(r"run: (ar prepare .*? --profile \w+)", " ".join(res.output.split())).group(1)
    assert command == f"ar prepare --source local --path {texts} --profile tiny"
    pasted = cli(*command.split()[1:])  # the suggestion, pasted
    assert pasted.exit_code == 0, pasted.output


def test_results_with_a_bad_row_names_the_line(tmp_path, cli):
    (tmp_path / "results.tsv").write_text(HEADER + "\na1b2c3d\t1.000000\t2.0\tkeep\tok\nnot a row\n")
    res = cli("results", "--dir", str(tmp_path))
    assert res.exit_code == 1 and "line 3" in res.output and "Traceback" not in res.output


def test_results_of_a_foreign_file_is_a_clear_error(tmp_path, cli):
    (tmp_path / "results.tsv").write_text("epoch,loss\n1,2.0\n")
    res = cli("results", "--dir", str(tmp_path))
    assert res.exit_code == 1 and "line 1: expected the header" in res.output


def test_results_is_fast_on_ten_thousand_rows(tmp_path, cli):
    lines = [HEADER]
    best = 1.5
    for i in range(10_000):
        if i % 97 == 13:
            lines.append(f"{i:07x}\t0.000000\t0.0\tcrash\tidea {i} crashed")
            continue
        v = 1.5 - i * 1e-5 + (0.002 if i % 3 else 0.0)
        status = "keep" if v < best else "discard"
        best = min(best, v) if status == "keep" else best
        lines.append(f"{i:07x}\t{v:.6f}\t12.5\t{status}\tidea number {i}: tweak something small")
    (tmp_path / "results.tsv").write_text("\n".join(lines) + "\n")

    start = time.perf_counter()
    res = cli("results", "--dir", str(tmp_path))
    elapsed = time.perf_counter() - start
    assert res.exit_code == 0, res.output
    assert "10000 experiments" in res.output and "idea number 9999" in res.output
    assert elapsed < 2.0, f"ar results took {elapsed:.2f} s on 10,000 rows"

    start = time.perf_counter()
    res = cli("results", "--dir", str(tmp_path), "--json")
    assert time.perf_counter() - start < 2.0
    assert len(json.loads(res.output)["rows"]) == 10_000


def test_plot_needs_experiments(tmp_path, cli):
    (tmp_path / "results.tsv").write_text(HEADER + "\n")
    res = cli("plot", "--dir", str(tmp_path))
    assert res.exit_code == 1 and "no experiments yet" in res.output


def test_plot_writes_where_asked(tmp_path, cli):
    (tmp_path / "results.tsv").write_text(
        HEADER + "\na1b2c3d\t1.000000\t2.0\tkeep\tbaseline\nb1b2c3d\t0.000000\t0.0\tcrash\toom\n"
        "c1b2c3d\t0.990000\t2.0\tkeep\tbetter\n"
    )
    out = tmp_path / "charts" / "run.png"
    res = cli("plot", "--dir", str(tmp_path), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes().startswith(PNG_MAGIC) and not (tmp_path / "progress.png").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie is dead, merely not yet reaped


HANGING_TRAIN = """\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open("pids.txt", "w").write(f"{os.getpid()} {child.pid}")
print("progress step=1 pct=5.0 loss=7.0", flush=True)
time.sleep(120)
"""


def test_ctrl_c_on_ar_run_stops_training_and_records_nothing(tmp_path, cli):
    ws = tmp_path / "ws"
    assert cli("init", "int", "--dir", str(ws), "--backend", "cpu", "--budget", "20", "--kill", "60").exit_code == 0
    fake_prepared_data(tmp_path / "cache")
    (ws / "train.py").write_text(HANGING_TRAIN)
    cfg = ws / ".autoresearch" / "config.toml"  # a fake script: no harness result channel
    cfg.write_text(cfg.read_text() + 'metric = "printed"\n')
    git(ws, "commit", "-q", "-am", "hangs")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from autoresearch.cli import app; app()", "run", "--dir", str(ws)],
        # without the sandbox: the test reads the pids the script writes, which a PID namespace would renumber
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "120", "AUTORESEARCH_NO_SANDBOX": "1"},
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            if (ws / "pids.txt").exists():
                pids = [int(p) for p in (ws / "pids.txt").read_text().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    time.sleep(0.2)
    assert [p for p in pids if _alive(p)] == []
    assert read_results(ws / "results.tsv") == []
    records = [json.loads(line) for line in (ws / ".autoresearch" / "runs" / "runs.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["started", "run", "abandoned"]
    assert records[1]["status"] == "interrupted" and records[2]["reason"] == "interrupted"


@pytest.mark.parametrize("command", ["run", "loop"])
def test_a_backend_that_is_not_installed_is_one_line_with_the_install_command(tmp_path, cli, monkeypatch, command):
    assert cli("init", "b1", "--dir", str(tmp_path), "--backend", "cpu").exit_code == 0
    fake_prepared_data(tmp_path / "cache")
    monkeypatch.setitem(sys.modules, "mlx", None)  # as on a machine without MLX: find_spec says so
    res = cli(command, "--dir", str(tmp_path), "--backend", "mlx")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().count("\n") == 0 and "pip install 'autoresearch[mlx]'" in res.output, res.output
    env = cli(command, "--dir", str(tmp_path), env={"AUTORESEARCH_BACKEND": "mlx"})  # the variable picks it too
    assert env.exit_code == 1 and "autoresearch[mlx]" in env.output
