"""`ar results` as a user sees it: every row as plain text through a pipe, `--last N`,
and on a terminal only the rows that fit, with a line saying how to see the rest."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.journal.files import HEADER
from autoresearch.ui.table import results_text, rows_that_fit
from autoresearch.ui.view import workspace_view

AR = [sys.executable, "-m", "autoresearch"]


def description(i: int) -> str:
    # longer than a default 80-column console, so cut-off lines would show
    return f"idea {i:04d}: raise the learning rate of the embeddings and shorten the warm-up a little"


def journal(folder: Path, n: int) -> Path:
    """results.tsv of `n` rows (the first kept, one in three kept after) with runs.jsonl records."""
    lines, records = [HEADER], []
    for i in range(1, n + 1):
        commit = f"{i:07x}"
        status = "crash" if i % 50 == 7 else "keep" if i % 3 == 1 else "discard"
        bpb, mem = ("0.000000", "0.0") if status == "crash" else (f"{1.5 - i * 1e-4:.6f}", "12.5")
        lines.append(f"{commit}\t{bpb}\t{mem}\t{status}\t{description(i)}")
        records.append({"event": "started", "commit": commit, "budget": 300})
        records.append({"event": "finished", "row": i, "commit": commit, "budget": 300, "backend": "cpu"})
    (folder / "results.tsv").write_text("\n".join(lines) + "\n")
    (folder / ".autoresearch" / "runs").mkdir(parents=True)
    (folder / ".autoresearch" / "runs" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_piped_output_is_plain_text_with_every_row_whole(tmp_path):
    journal(tmp_path, 300)
    res = CliRunner().invoke(app, ["results", "--dir", str(tmp_path)])  # stdout is not a terminal
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "…" not in res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["#", "commit", "val_bpb", "vs", "best", "memory", "status", "description"]
    assert [line.split(None, 1)[0] for line in lines[1:301]] == [str(i) for i in range(1, 301)]
    assert all(line.endswith(description(i)) for i, line in enumerate(lines[1:301], start=1))
    assert lines[301].startswith("300 experiments, 98 kept, 196 discarded, 6 crashed; baseline 1.499900 -> best")
    assert len(lines) == 302


def test_last_shows_that_many_rows_and_the_summary_of_all(tmp_path):
    journal(tmp_path, 300)
    res = CliRunner().invoke(app, ["results", "--dir", str(tmp_path), "--last", "5"])
    assert res.exit_code == 0, res.output
    shown = [line.split(None, 1)[0] for line in res.output.splitlines()[1:-1]]
    assert shown == ["296", "297", "298", "299", "300"]
    assert "300 experiments, 98 kept" in res.output
    # "vs best" still compares with every row before, not only the rows shown
    assert "-0.000200" in res.output.splitlines()[-2]  # row 300 (discard) against kept row 298


def test_json_keeps_every_row_whatever_the_output(tmp_path):
    journal(tmp_path, 300)
    data = json.loads(CliRunner().invoke(app, ["results", "--dir", str(tmp_path), "--json"]).output)
    assert len(data["rows"]) == 300 and data["rows"][-1]["description"] == description(300)


def test_rows_that_fit_a_terminal():
    assert rows_that_fit(10, height=50, other_lines=3) == 10  # all fit: no note
    assert rows_that_fit(47, height=50, other_lines=3) == 47
    assert rows_that_fit(48, height=50, other_lines=3) == 46  # one line goes to the note
    assert rows_that_fit(10_000, height=50, other_lines=3) == 46
    assert rows_that_fit(10_000, height=4, other_lines=3) == 5  # a tiny window still shows some


def test_terminal_table_keeps_the_latest_rows_and_says_how_to_see_all(tmp_path):
    view = workspace_view(journal(tmp_path, 300))
    table, lines = results_text(view, height=24, width=200)
    rows = table.plain.splitlines()[1:]
    assert len(rows) + 1 + len(lines) + 1 <= 24  # header, rows, note and summary, the prompt
    assert len(rows) == 20 and rows[-1].split()[0] == "300" and rows[0].split()[0] == "281"
    assert "280 earlier rows hidden" in lines[0] and "ar results | less" in lines[0]
    assert lines[-1].startswith("300 experiments")
    # a narrow window: the summary takes two lines, the table gives one up
    table, lines = results_text(view, height=24, width=60)
    assert len(table.plain.splitlines()) == 1 + 19
    # --last is what the user asked for: shown whole, however small the window
    table, lines = results_text(view, last=40, height=24, width=200)
    assert len(table.plain.splitlines()) == 41 and "hidden" not in " ".join(lines)


def run_in_terminal(cmd: list[str], lines: int, columns: int) -> str:
    """What `cmd` prints with its stdout on a terminal of that size."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    out = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its end
                return
            if not chunk:
                return
            out.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    proc = subprocess.run(cmd, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env={**env, "TERM": "xterm-256color"}, timeout=60)
    os.close(slave)
    reader.join()
    os.close(master)
    assert proc.returncode == 0, proc.stderr.decode()
    return out.decode()


def test_on_a_terminal_only_what_fits_in_colour(tmp_path):
    journal(tmp_path, 300)
    out = run_in_terminal(AR + ["results", "--dir", str(tmp_path)], lines=30, columns=200)
    assert "\x1b[" in out  # coloured
    lines = out.rstrip("\r\n").splitlines()
    assert len(lines) < 30
    assert description(300) in out and description(1) not in out
    assert "earlier rows hidden" in out and "300 experiments" in out


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    journal(tmp_path, 3000)  # more than a pipe holds
    proc = subprocess.Popen(AR + ["results", "--dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"commit" in first
    assert err == b""  # no BrokenPipeError traceback


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_better_row_off_the_branch_is_not_the_best(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("a\n")
    git(tmp_path, "add", "train.py")
    git(tmp_path, "commit", "-q", "-m", "baseline")
    on = git(tmp_path, "rev-parse", "--short=7", "HEAD")
    (tmp_path / "train.py").write_text("b\n")
    git(tmp_path, "commit", "-q", "-am", "better, then reset away")
    off = git(tmp_path, "rev-parse", "--short=7", "HEAD")
    git(tmp_path, "reset", "-q", "--hard", on)
    (tmp_path / "results.tsv").write_text(f"{HEADER}\n{on}\t1.500000\t1.0\tkeep\tbaseline\n{off}\t1.400000\t1.0\tkeep\tgone\n")
    summary = json.loads(CliRunner().invoke(app, ["results", "--dir", str(tmp_path), "--json"]).output)["summary"]
    assert summary["best"] == 1.5 and summary["kept"] == 2


def test_a_repository_without_commits_counts_every_row(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "results.tsv").write_text(f"{HEADER}\naaaaaaa\t1.500000\t1.0\tkeep\tbaseline\nbbbbbbb\t1.400000\t1.0\tkeep\tdeeper\n")
    assert workspace_view(tmp_path).summary().best == 1.4


def test_rows_find_their_records_among_other_events_and_a_torn_line(tmp_path):
    (tmp_path / "results.tsv").write_text(f"{HEADER}\naaaaaaa\t1.500000\t1.0\tkeep\tbase\nbbbbbbb\t1.400000\t1.0\tkeep\tdeeper\n")
    (tmp_path / ".autoresearch" / "runs").mkdir(parents=True)
    (tmp_path / ".autoresearch" / "runs" / "runs.jsonl").write_text(
        json.dumps({"event": "proposing", "message": "the finished warm-up", "row": 2, "commit": "bbbbbbb", "worker": "x"}) + "\n"
        + json.dumps({"event": "finished", "row": 1, "commit": "aaaaaaa", "budget": 60, "backend": "mps"}) + "\n"
        + '{"event": "finished", "row": 2, "comm\n'  # an append cut short by a crash
        + json.dumps({"event": "finished", "row": 2, "commit": "bbbbbbb", "worker": "w2"}) + "\n")
    entries = workspace_view(tmp_path).entries
    assert [(e.budget, e.backend, e.worker) for e in entries] == [("60", "mps", ""), ("0", "", "w2")]
