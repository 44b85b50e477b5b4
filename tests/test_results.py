"""results.tsv and runs.jsonl: the format users know, durable appends, clear errors, the chart."""

from __future__ import annotations

import json
import os

import pytest

from autoresearch.errors import ArError
from autoresearch.journal.files import (
    HEADER,
    ResultRow,
    append_result,
    append_run_record,
    create_results,
    read_results,
    read_run_records,
)
from autoresearch.journal.queries import best_before, best_entry, join, summarize
from autoresearch.ui.view import View
from autoresearch.ui.plot import plot_progress

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_rows_are_written_exactly_like_upstream(tmp_path):
    path = tmp_path / "results.tsv"
    assert create_results(path) and not create_results(path)
    append_result(path, ResultRow("a1b2c3d4e5f6", 0.9979, 44.0, "keep", "baseline"))
    append_result(path, ResultRow("b2c3d4e", 0.0, 0.0, "crash", "double the width\t(OOM)\nsecond line"))
    append_result(path, ResultRow("c3d4e5f", 1.0050001, 8192.0 / 1024, "discard", "switch to GeLU"))
    assert path.read_text() == (
        HEADER + "\n"
        "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
        "b2c3d4e\t0.000000\t0.0\tcrash\tdouble the width (OOM) second line\n"
        "c3d4e5f\t1.005000\t8.0\tdiscard\tswitch to GeLU\n"
    )
    rows = read_results(path)
    assert [r.commit for r in rows] == ["a1b2c3d", "b2c3d4e", "c3d4e5f"]
    assert rows[1].description == "double the width (OOM) second line"


def test_a_bad_row_names_its_line_and_why(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text(HEADER + "\na1b2c3d\t0.99\t1.0\tkeep\tok\nb2c3d4e\tfast\t1.0\tkeep\tbad\n")
    with pytest.raises(ArError, match=r"line 3: val_bpb 'fast' is not a number"):
        read_results(path)
    path.write_text(HEADER + "\na1b2c3d\t0.99\t1.0\tmaybe\tok\n")
    with pytest.raises(ArError, match=r"line 2: status 'maybe' is not one of keep, discard, crash"):
        read_results(path)
    path.write_text(HEADER + "\n\na1b2c3d,0.99,1.0,keep,commas\n")
    with pytest.raises(ArError, match=r"line 3: expected 5 tab-separated columns"):
        read_results(path)


def test_a_foreign_file_is_refused_with_the_header_it_expected(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text("name,score\nx,1\n")
    with pytest.raises(ArError, match="line 1: expected the header"):
        read_results(path)
    with pytest.raises(ArError, match="line 1"):
        append_result(path, ResultRow("a1b2c3d", 1.0, 1.0, "keep", "x"))  # never appends to it
    assert path.read_text() == "name,score\nx,1\n"


def test_missing_results_file_says_what_to_do(tmp_path):
    with pytest.raises(ArError, match="ar init"):
        read_results(tmp_path / "results.tsv")


def test_a_torn_last_line_is_skipped_then_cut_on_the_next_append(tmp_path):
    path = tmp_path / "results.tsv"
    append_result(path, ResultRow("a1b2c3d", 1.0, 2.0, "keep", "baseline"))
    with open(path, "a") as f:
        f.write("b2c3d4e\t0.99")  # a write cut short by a crash
    assert [r.commit for r in read_results(path)] == ["a1b2c3d"]
    append_result(path, ResultRow("c3d4e5f", 0.98, 2.0, "keep", "next"))
    assert path.read_text() == HEADER + "\na1b2c3d\t1.000000\t2.0\tkeep\tbaseline\nc3d4e5f\t0.980000\t2.0\tkeep\tnext\n"


def test_a_hand_written_last_row_without_newline_is_kept(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text(HEADER + "\na1b2c3d\t1.000000\t2.0\tkeep\tby hand")
    assert [r.description for r in read_results(path)] == ["by hand"]
    append_result(path, ResultRow("c3d4e5f", 0.98, 2.0, "keep", "next"))
    assert [r.description for r in read_results(path)] == ["by hand", "next"]


def test_appends_from_many_processes_never_interleave(tmp_path):
    path = tmp_path / "results.tsv"
    create_results(path)
    pids = []
    for k in range(4):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                for i in range(50):
                    row = ResultRow(f"{k:x}{i:06x}", 1.0 + i / 1000, 1.0, "discard", f"worker {k} row {i} " + "x" * 200)
                    append_result(path, row)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    rows = read_results(path)
    assert len(rows) == 200 and len({r.commit for r in rows}) == 200


def test_run_records_are_json_lines_and_survive_a_torn_one(tmp_path):
    path = tmp_path / "runs" / "runs.jsonl"
    append_run_record(path, {"number": 1, "val_bpb": float("nan"), "summary": {"chip": "M4"}})
    with open(path, "a") as f:
        f.write('{"number": 2, "val_')
    append_run_record(path, {"number": 3, "val_bpb": 1.25})
    records = read_run_records(path)
    assert records == [{"number": 1, "val_bpb": None, "summary": {"chip": "M4"}}, {"number": 3, "val_bpb": 1.25}]
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2]) == {"number": 3, "val_bpb": 1.25}  # not glued to the torn line


def rows_of(*specs):
    return [ResultRow(f"{i:07x}", v, 4.0 if v else 0.0, s, d) for i, (v, s, d) in enumerate(specs, start=1)]


def test_best_before_and_summary_follow_the_kept_rows():
    rows = rows_of(
        (1.0, "keep", "baseline"), (1.1, "discard", "worse"), (0.0, "crash", "oom"), (0.95, "keep", "better"), (0.97, "discard", "meh")
    )
    entries = join(rows, [], budget=300, backend="cpu")
    assert best_before(entries) == [None, 1.0, 1.0, 1.0, 0.95]
    s = summarize(entries)
    assert (s.experiments, s.kept, s.discarded, s.crashed, s.baseline, s.best) == (5, 2, 2, 1, 1.0, 0.95)
    assert s.improvement == pytest.approx(0.05) and s.improvement_pct == pytest.approx(5.0)
    assert summarize([]).improvement is None


def test_the_best_is_per_budget_and_backend_from_the_journal_never_from_descriptions():
    # Row 2 claims "(budget 5 s)" in its text but its record says 300 s on mlx: the record wins.
    rows = rows_of((1.0, "keep", "baseline"), (0.5, "keep", "baseline (budget 5 s)"), (0.9, "keep", "wider"))
    records = [{"event": "finished", "row": 2, "commit": rows[1].commit, "budget": 300, "backend": "mlx"},
               {"event": "finished", "row": 3, "commit": rows[2].commit, "budget": 300.0, "backend": "cpu"}]
    entries = join(rows, records, budget=300, backend="cpu")
    assert [e.key for e in entries] == [("300", "cpu"), ("300", "mlx"), ("300", "cpu")]
    assert best_entry(entries, ("300", "cpu")).row.val_bpb == 0.9  # never compared with mlx's 0.5
    assert best_entry(entries, ("300", "mlx")).row.val_bpb == 0.5
    assert best_entry(entries, ("300", "cpu"), ancestry={rows[0].commit}).row.val_bpb == 1.0  # off the branch: not the best
    assert best_before(entries) == [None, None, 1.0]


def test_plot_writes_a_png(tmp_path):
    rows = rows_of(
        (1.0, "keep", "baseline"),
        (1.02, "discard", "swap to GeLU activation"),
        (0.0, "crash", "double the model width (OOM)"),
        (0.985, "keep", "increase the learning rate to 0.04 and add warmup"),
        (3.5, "discard", "a wild outlier far above the rest"),
        (0.97, "keep", "remove value embeddings"),
    )
    out = plot_progress(View(join(rows, [], budget=300, backend="cpu"), None, ("300", "cpu")), tmp_path / "sub" / "progress.png")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_of_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(ArError, match="no experiments yet"):
        plot_progress(View([], None, None), tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_ar_results_summarises_each_backend_apart_and_never_prints_minus_zero():
    from autoresearch.ui.table import results_plain

    rows = rows_of((1.0, "keep", "baseline"), (0.95, "keep", "wider"), (2.0, "keep", "baseline"), (2.0, "discard", "same"))
    records = [{"event": "finished", "row": i, "commit": r.commit, "budget": 60, "backend": b}
               for i, (r, b) in enumerate(zip(rows, ["cpu", "cpu", "mlx", "mlx"]), start=1)]
    text = "".join(results_plain(View(join(rows, records, budget=60, backend="cpu"), None, ("60", "cpu"))))
    assert "baseline 1.000000 -> best 0.950000 (-0.050000, -5.00%) (cpu, 60 s)" in text
    assert "baseline 2.000000 -> best 2.000000 (+0.000000, +0.00%) (mlx, 60 s)" in text and "-0.000000" not in text
