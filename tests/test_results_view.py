"""`ar results` as a user sees it: every row as plain text through a pipe, `--last N`,
and on a terminal only the rows that fit, with a line saying how to see the rest; and its
cache of the journal: a repeat call parses nothing, a changed journal is never shown stale."""

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

import pytest
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.journal.files import HEADER, ResultRow, append_result
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


def test_a_better_row_off_the_branch_is_not_the_best(tmp_path, monkeypatch):
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
    # the same from a partial view (journal/cache.py: the rows that count and the last one)
    import autoresearch.journal.cache as cache
    from autoresearch.ui.table import results_plain

    monkeypatch.setattr(cache, "TAIL", 1)
    os.utime(tmp_path / "results.tsv")
    shown = CliRunner().invoke(app, ["results", "--dir", str(tmp_path), "--last", "1"]).output
    assert shown == "".join(results_plain(workspace_view(tmp_path), 1)) and "best 1.500000" in shown


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


# -- the cache of the joined journal (journal/cache.py) -----------------------------------------


def varied_journal(folder: Path, n: int) -> Path:
    """journal() with what the table shows besides the rows: two backends, workers, LLM
    usage, sandboxes (one run without), a recovered row."""
    folder.mkdir()
    journal(folder, n)
    (folder / ".autoresearch" / "config.toml").write_text(
        'tag = "t"\nbackend = "cpu"\nprofile = "tiny"\nsource = "builtin"\nbudget = 300\n')
    records = []
    for i in range(1, n + 1):
        usage = {"input_tokens": 1000 + i, "output_tokens": 10, "cache_read_tokens": 0, "cost_usd": 0.001 * (i % 7)}
        records.append({"event": "recovered" if i == 5 else "finished", "row": i, "commit": f"{i:07x}", "budget": 300,
                        "backend": "mps" if i % 10 == 3 else "cpu", "worker": f"w{i % 2}", "usage": usage,
                        "sandbox": "none" if i == 8 else "bwrap" if i > 2 else None})
    runs = folder / ".autoresearch" / "runs" / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def outputs(folder: Path) -> list[str]:
    runner = CliRunner()
    out = []
    for extra in ([], ["--last", "7"], ["--last", "2"], ["--json"]):
        res = runner.invoke(app, ["results", "--dir", str(folder), *extra])
        assert res.exit_code == 0, res.output
        out.append(res.output)
    return out


def uncached(folder: Path) -> list[str]:
    """outputs(), rendered from the view every other command reads (no cache)."""
    from autoresearch.ui.table import results_json, results_plain

    view = workspace_view(folder)
    return ["".join(results_plain(view, last)) for last in (None, 7, 2)] + [results_json(view) + "\n"]


def no_reading(monkeypatch) -> None:
    """From here on, a call that reads the journal instead of the cache fails."""
    import autoresearch.journal.cache as cache

    def history(*args, **kwargs):
        raise AssertionError("the journal was read: the cache did not answer")

    monkeypatch.setattr(cache, "history", history)


def written_later(folder: Path) -> None:
    """The cache as if written a second after the journal: a file system whose clock ticks
    coarsely would otherwise make every test here a miss (see the next test)."""
    from autoresearch.journal.cache import cache_dir

    for path in cache_dir().iterdir():
        later = os.stat(path).st_mtime_ns + 1_000_000_000
        os.utime(path, ns=(later, later))


@pytest.mark.parametrize("tail", [5, 500])
def test_a_repeat_call_comes_from_the_cache_and_shows_the_same(tmp_path, monkeypatch, tail):
    import autoresearch.journal.cache as cache
    from autoresearch.journal.cache import UNREAD, cache_dir
    from autoresearch.ui.view import results_view

    # tail 5: a partial view, its --last 7 and whole table from every row (the cache's line 3)
    monkeypatch.setattr(cache, "TAIL", tail)
    folder = varied_journal(tmp_path / "ws", 60)
    fresh = outputs(folder)  # a miss: read, joined, cached
    assert [p.suffix for p in cache_dir().iterdir()] == [".json"]
    written_later(folder)
    no_reading(monkeypatch)
    assert outputs(folder) == fresh == uncached(folder)  # the same as from the view other commands read
    assert "sandbox" in fresh[0] and "worker" in fresh[0] and "backend" in fresh[0] and "LLM:" in fresh[0]
    for height in (10, 24, 80):  # on a terminal: the rows that fit, or all (tail 5: from line 3)
        for last in (None, 3):
            assert results_text(results_view(folder), last, height=height, width=120) == \
                results_text(workspace_view(folder), last, height=height, width=120)
    if tail == 5:
        assert len(results_view(folder).known) < 60  # partial indeed

    entry = results_view(folder).entries[0]
    assert entry.record is UNREAD and entry.sandbox is None
    with pytest.raises(RuntimeError, match="no journal records"):
        entry.record.get("id")  # a reader of records through the cache is told at once


def test_the_cache_never_shows_a_changed_journal(tmp_path):
    folder = varied_journal(tmp_path / "ws", 30)
    results = folder / "results.tsv"
    outputs(folder)
    written_later(folder)
    # a row appended
    append_result(results, ResultRow("abcdef1", 1.25, 3.0, "keep", "appended"))
    assert outputs(folder) == uncached(folder) and "appended" in outputs(folder)[0]
    written_later(folder)
    # a row edited by hand, the file's size kept, and its mtime put back as it was
    before = os.stat(results)
    text = results.read_text()
    assert "\t1.499700\t" in text
    results.write_text(text.replace("\t1.499700\t", "\t1.388800\t"))
    os.utime(results, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(results).st_size == before.st_size
    assert outputs(folder) == uncached(folder) and "1.388800" in outputs(folder)[0]
    written_later(folder)
    # a record that changes a row's worker
    with open(folder / ".autoresearch" / "runs" / "runs.jsonl", "a") as f:
        f.write(json.dumps({"event": "finished", "row": 30, "commit": f"{30:07x}", "worker": "late-worker"}) + "\n")
    assert outputs(folder) == uncached(folder) and "late-worker" in outputs(folder)[0]
    written_later(folder)
    # the workspace's settings: its budget (the appended row, without a record, ran with it), then none
    config = folder / ".autoresearch" / "config.toml"
    config.write_text(config.read_text().replace("budget = 300", "budget = 60"))
    assert json.loads(outputs(folder)[3])["rows"][-1]["budget"] == 60.0
    written_later(folder)
    config.unlink()
    assert json.loads(outputs(folder)[3])["rows"][-1]["budget"] == 0.0
    written_later(folder)
    assert outputs(folder) == uncached(folder)


def test_after_a_new_row_the_settings_come_from_the_cache_until_config_toml_changes(tmp_path, monkeypatch):
    import autoresearch.ui.view as view

    folder = varied_journal(tmp_path / "ws", 10)
    outputs(folder)
    written_later(folder)
    read, calls = view._settings, []
    monkeypatch.setattr(view, "_settings", lambda folder: calls.append(folder) or read(folder))
    append_result(folder / "results.tsv", ResultRow("abcdef1", 1.25, 3.0, "keep", "appended"))
    assert "appended" in outputs(folder)[0] and calls == []  # the journal read again, not the config
    config = folder / ".autoresearch" / "config.toml"
    config.write_text(config.read_text().replace('backend = "cpu"', 'backend = "mps"'))
    assert json.loads(outputs(folder)[3])["summary"]["backend"] == "mps" and calls


def test_a_change_in_the_tick_the_cache_was_written_is_not_trusted(tmp_path, monkeypatch):
    from autoresearch.journal.cache import cache_dir

    folder = varied_journal(tmp_path / "ws", 10)
    outputs(folder)
    (cache,) = cache_dir().iterdir()
    # as on a file system with a coarse clock: results.tsv's last change shares the cache's tick
    tick = os.stat(folder / "results.tsv").st_ctime_ns
    os.utime(cache, ns=(tick, tick))
    no_reading(monkeypatch)
    with pytest.raises(AssertionError, match="the journal was read"):
        CliRunner().invoke(app, ["results", "--dir", str(folder)], catch_exceptions=False)


def test_a_journal_changed_during_the_read_leaves_no_cache(tmp_path, monkeypatch):
    import autoresearch.journal.cache as cache

    folder = varied_journal(tmp_path / "ws", 10)
    read = cache.history

    def history(*args, **kwargs):
        out = read(*args, **kwargs)
        append_result(folder / "results.tsv", ResultRow("abcdef1", 1.25, 3.0, "keep", "appended meanwhile"))
        return out

    monkeypatch.setattr(cache, "history", history)
    assert "appended meanwhile" not in outputs(folder)[0]
    assert not list(cache.cache_dir().iterdir())
    monkeypatch.setattr(cache, "history", read)
    assert "appended meanwhile" in outputs(folder)[0]


def test_the_cache_is_outside_the_workspace_and_a_broken_one_is_rebuilt(tmp_path, monkeypatch):
    from autoresearch.data.cache import cache_root
    from autoresearch.journal.cache import cache_dir

    assert cache_dir() == cache_root() / "results"
    folder = varied_journal(tmp_path / "ws", 10)
    listing = sorted(p for p in folder.rglob("*"))
    fresh = outputs(folder)
    assert sorted(p for p in folder.rglob("*")) == listing  # nothing new for a run's guard to see
    (cache,) = cache_dir().iterdir()
    for junk in (b"", b"{", b'{"stamp": 1}', cache.read_bytes()[:-100]):
        cache.write_bytes(junk)
        assert outputs(folder) == fresh
    # the rows past the latest (line 3) damaged, after the stamp was found fresh: read from the journal
    import autoresearch.journal.cache as module

    monkeypatch.setattr(module, "TAIL", 3)
    os.utime(folder / "results.tsv")
    assert outputs(folder) == fresh
    head = cache.read_bytes().split(b"\n")[:2]
    cache.write_bytes(b"\n".join(head + [b'{"number": [1, 2], "commit": '[:-3]]))
    assert outputs(folder) == fresh
    # the cache of a workspace gone for over a month goes when another is written
    gone = cache_dir() / "0123456789abcdef.json"
    gone.write_text("{}")
    os.utime(gone, (0, 0))
    os.utime(folder / "results.tsv")
    assert outputs(folder) == fresh and not gone.exists()
    # no cache can be written (the cache root is a file): still the same answer
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(folder / "results.tsv"))
    assert outputs(folder) == fresh
