"""Ctrl-C in a real terminal: `ar loop` runs under a pseudo-terminal and the test types
^C, so the terminal sends SIGINT to the whole foreground process group (the `ar`
process and every git child it has at that moment), not only to `ar` itself."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.experiment.lab import INTERRUPTED_NOTE
from autoresearch.journal.files import read_results, read_run_records
from fake_cache import fake_prepared_data

# Fast stand-in for train.py that prints its own val_bpb. With ctl/hang present a
# changed script (an experiment, never the baseline) says so in ctl/hanging/ and hangs.
FAKE_TRAIN = """\
import math, os, time
LR = 0.04  # learning rate
DEPTH = 4  # transformer blocks
WD = 0.1  # weight decay
ctl = {ctl!r}
if os.path.exists(os.path.join(ctl, "hang")) and (LR, DEPTH, WD) != (0.04, 4, 0.1):
    open(os.path.join(ctl, "hanging", str(os.getpid())), "w").close()
    print("progress step=1 pct=10.0 loss=6.0", flush=True)
    time.sleep(120)
print("progress step=1 pct=100.0 loss=5.0")
print("---")
print(f"val_bpb: {{1 + abs(math.log(LR / 0.02)) + 0.05 * abs(DEPTH - 5) + abs(WD - 0.05):.6f}}")
print("peak_vram_mb: 1024.0")
"""

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\r")


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    """A workspace made by `ar init`, data "prepared", the fake script committed."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    # Loop mechanics with control files outside the workspace, which a sandboxed run cannot
    # see: these run without it (tests/test_sandboxed_runs.py runs the same paths sandboxed).
    monkeypatch.setenv("AUTORESEARCH_NO_SANDBOX", "1")
    folder = tmp_path / "research"
    res = CliRunner().invoke(app, ["init", "pty", "--dir", str(folder), "--backend", "cpu", "--budget", "20", "--kill", "60"])
    assert res.exit_code == 0, res.output
    fake_prepared_data(tmp_path / "cache")
    ctl = tmp_path / "ctl"
    (ctl / "hanging").mkdir(parents=True)
    (folder / "train.py").write_text(FAKE_TRAIN.format(ctl=str(ctl)))
    with open(folder / ".autoresearch" / "config.toml", "a") as f:
        f.write('metric = "printed"\n')  # the fake prints val_bpb; it does not use the harness
    git(folder, "commit", "-q", "-am", "fake training script")
    return folder


class Terminal:
    """`ar ...` as a child of a pseudo-terminal; everything it prints is collected."""

    def __init__(self, *args: str):
        env = {**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm"}
        env.pop("ANTHROPIC_API_KEY", None)
        argv = [sys.executable, "-m", "autoresearch", *args]
        self.pid, self.master = pty.fork()  # the child: a new session, the pty its controlling terminal
        if self.pid == 0:
            try:
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        self.chunks: list[bytes] = []
        self.status: int | None = None
        self.reader = threading.Thread(target=self._drain, daemon=True)  # the child never blocks on output
        self.reader.start()

    def _drain(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.1)
                if ready:
                    data = os.read(self.master, 65536)
                    if not data:
                        return
                    self.chunks.append(data)
            except OSError:  # EIO: the child side closed
                return

    @property
    def output(self) -> str:
        return ANSI.sub("", b"".join(self.chunks).decode("utf-8", "replace"))

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")  # the line discipline sends SIGINT to the foreground group

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"`ar` did not exit within {timeout} s:\n{self.output}")
            time.sleep(0.05)
        self.reader.join(timeout=5)
        return self.status

    def kill(self) -> None:
        if self.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)  # pty.fork made the child a session (and group) leader
            os.waitpid(self.pid, 0)
            self.status = -9

    def close(self) -> None:
        self.kill()
        os.close(self.master)


def _wait_for_hanging(ctl: Path, term: Terminal, n: int) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = [int(p.name) for p in (ctl / "hanging").iterdir()]
        if len(pids) >= n:
            return pids
        if term.poll() is not None:
            break
        time.sleep(0.05)
    term.kill()
    raise AssertionError("the experiments did not start:\n" + term.output)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_in_a_terminal_abandons_the_experiment_and_leaves_the_best_checked_out(ws, tmp_path, workers):
    ctl = tmp_path / "ctl"
    (ctl / "hang").write_text("")
    args = ["loop", "--dir", str(ws), "--proposer", "offline", "--budget", "2", "--keep-rule", "strict"]
    if workers > 1:
        args += ["--workers", str(workers)]
    term = Terminal(*args)
    pids: list[int] = []
    try:
        pids = _wait_for_hanging(ctl, term, workers)
        baseline = read_results(ws / "results.tsv")
        time.sleep(0.3)  # let the loop settle into waiting on the run(s)
        term.ctrl_c()
        code = term.wait(timeout=60)
    finally:
        term.close()
        for p in pids:  # a regression may leave the training processes behind
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    out = term.output
    assert code == 130, out
    assert "stopped: interrupted" in out, out

    # HEAD on the best (the baseline, the only keep), a clean tree, no row for the experiment(s)
    assert len(baseline) == 1 and baseline[0].status == "keep"
    assert read_results(ws / "results.tsv") == baseline, out
    assert git(ws, "rev-parse", "--short=7", "HEAD") == baseline[0].commit, out
    assert git(ws, "status", "--porcelain", "--untracked-files=no") == "", out
    time.sleep(0.1)
    assert not any(_alive(p) for p in pids)  # the training processes were stopped with the loop
    records = read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl")
    started = {r["commit"] for r in records if r.get("event") == "started" and r.get("kind") == "experiment"}
    abandoned = {r["commit"] for r in records if r.get("event") == "abandoned" and r.get("reason") == "interrupted"}
    assert len(started) == workers and abandoned == started, out  # each running experiment, once
    assert records[-1].get("event") == "loop_stopped"

    # The next `ar loop` finds nothing to recover: no false "interrupted" crash row.
    (ctl / "hang").unlink()
    again = Terminal(*args, "--max-experiments", "0")
    try:
        assert again.wait(timeout=60) == 0, again.output
    finally:
        again.close()
    assert "recovered" not in again.output and "died" not in again.output, again.output
    rows = read_results(ws / "results.tsv")
    assert rows == baseline and not any(INTERRUPTED_NOTE in r.description for r in rows)
    assert not [r for r in read_run_records(ws / ".autoresearch" / "runs" / "runs.jsonl") if r.get("event") == "recovered"]
