"""`ar report`: one HTML file that opens offline in a real browser, after a real loop,
and shows the same numbers as `ar results --json`."""

from __future__ import annotations

import json
import math
import re
import statistics
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from autoresearch.executors.local import make_executor
from autoresearch.experiment.keep import MOOD_GAP
from autoresearch.experiment.lab import LoopSettings
from autoresearch.journal.files import read_run_records
from autoresearch.loop.parallel import run_parallel
from autoresearch.loop.serial import run_loop
from autoresearch.proposers.offline import OfflineProposer
from autoresearch.run.script import ScriptRunner
from autoresearch.ui.report import serve_report, write_report
from autoresearch.ui.table import results_json
from autoresearch.ui.view import workspace_view
from autoresearch.workspace.config import load_config
from autoresearch.workspace.git import Workspace
from autoresearch.workspace.init import init_workspace
from conftest import _ENV as ISOLATED_ENV
from fake_cache import fake_prepared_data

# val_bpb depends on the constants (best at LR = 0.02, DEPTH = 5, WD = 0.2), DEPTH >= 6
# crashes, and the seed adds a little noise so the noise floor is not zero. The loss falls
# faster with a better LR, so the baseline's and the best's curves differ.
FAKE_TRAIN = """\
import math, os, sys
LR = 0.04  # learning rate
DEPTH = 4  # transformer blocks
WD = 0.1  # weight decay
NOISE = 0.0005 * int(os.environ.get("AUTORESEARCH_SEED") or 0)
if DEPTH >= 6:
    sys.exit("RuntimeError: CUDA out of memory")
for step in range(1, 6):
    print(f"progress step={step} pct={20 * step:.1f} loss={6 - step * (1.2 - abs(math.log(LR / 0.02)) / 4):.4f}", flush=True)
print("---")
print(f"val_bpb: {1 + abs(math.log(LR / 0.02)) + 0.05 * abs(DEPTH - 5) + 0.1 * abs(WD - 0.2) + NOISE:.6f}")
print("peak_vram_mb: 1024.0")
print("backend: cpu")
print("chip: Fake CPU 9000")
"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def make_ws(tmp_path: Path) -> Path:
    fake_prepared_data(tmp_path / "cache")
    folder = tmp_path / "ws"
    init_workspace(folder, "report", backend="cpu", budget=20, kill=60)
    (folder / "train.py").write_text(FAKE_TRAIN)
    cfg = folder / ".autoresearch" / "config.toml"
    cfg.write_text(cfg.read_text() + 'metric = "printed"\n')  # the fake prints its own val_bpb
    subprocess.run(["git", "add", "-A"], cwd=folder, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "fake training script"], cwd=folder, check=True)
    return folder


def loop(folder: Path, experiments: int, workers: int = 1) -> None:
    cfg = load_config(folder)
    settings = LoopSettings(editable="train.py", budget=cfg.budget, full_budget=cfg.budget, backend=cfg.backend,
                            max_experiments=experiments)
    runner = ScriptRunner.for_workspace(folder, cfg, budget=cfg.budget, kill=cfg.kill, grace=0.2)
    if workers == 1:
        report = run_loop(Workspace.open(folder), OfflineProposer(), runner, settings, sleep=lambda s: None)
    else:
        executor = make_executor(folder, cfg, runner, workers=workers, force=True)
        report = run_parallel(Workspace.open(folder), OfflineProposer(), executor, settings, workers=workers,
                              sleep=lambda s: None)
    assert report.experiments == experiments and not report.interrupted, report


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
                          page.as_uri()], capture_output=True, text=True, timeout=120)


def table_row(html: str, n: int) -> str:
    m = re.search(rf'<tr [^>]*id="row-{n}"[^>]*>(.*?)</tr>', html, re.S)
    assert m, f"row {n} is not in the table"
    return m.group(1)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A workspace after a real 10-experiment offline loop, and its report."""
    tmp_path = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    # conftest's isolated_env is per test and starts after this fixture: do the same here
    mp.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    for name in ISOLATED_ENV:
        mp.delenv(name, raising=False)
    try:
        folder = make_ws(tmp_path)
        loop(folder, 10)
        out = write_report(folder, tmp_path / "out" / "report.html")
    finally:
        mp.undo()
    return folder, out


def test_the_report_shows_what_ar_results_json_says(session):
    folder, out = session
    assert out == folder.parent / "out" / "report.html" and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # one file, nothing beside it
    html = out.read_text()
    # Opens with the network off: no URL of any kind, so nothing to fetch.
    assert "http://" not in html and "https://" not in html and "//" not in re.sub(r"<script>.*?</script>", "", html, flags=re.S)

    data = json.loads(results_json(workspace_view(folder)))
    rows, s = data["rows"], data["summary"]
    assert len(rows) == 11 and {r["status"] for r in rows} == {"keep", "discard", "crash"}  # baseline + 10
    assert re.search(rf'id="baseline">{s["baseline"]:.6f}<', html) and re.search(rf'id="best"[^>]*>{s["best"]:.6f}<', html)
    assert f"{s['experiments']} experiments: {s['kept']} kept, {s['discarded']} discarded, {s['crashed']} crashed" in html
    for r in rows:
        cells = table_row(html, r["n"])
        assert f">{r['commit']}<" in cells
        assert (f">{r['val_bpb']:.6f}<" in cells) if r["status"] != "crash" else ">-<" in cells
        assert f">{r['status']}<" in cells
        if r["delta"] is not None:
            assert f">{r['delta']:+.6f}<" in cells

    # Each kept change's diff, linked from its row; the baseline changed nothing.
    kept = [r for r in rows if r["status"] == "keep"]
    for r in kept:
        assert f'href="#diff-{r["n"]}"' in table_row(html, r["n"]) and f'id="diff-{r["n"]}"' in html
    best = min(kept, key=lambda r: r["val_bpb"])
    section = html.split(f'id="diff-{best["n"]}"')[1].split("</section>")[0]
    old, new = re.search(r"LR (\S+) -> (\S+)", best["description"]).groups()
    assert f'class="del">-LR = {old}  # learning rate<' in section and f'class="add">+LR = {new}  # learning rate<' in section

    # The charts: the progress (crashes marked) and the baseline's and best's loss curves.
    assert "<svg" in html.split('id="progress-chart"')[1].split("</div>")[0]
    assert f"crashed ({s['crashed']})" in html and f"kept ({s['kept']})" in html
    loss = html.split('id="loss-chart"')[1].split("</div>")[0]
    assert "<svg" in loss and f"baseline #1 ({s['baseline']:.6f})" in loss and f"best #{best['n']} ({s['best']:.6f})" in loss

    # The run-to-run noise: the spread of repeated runs of one script (the seed adds 0.0005 a
    # step), pooled as the keep rule pools it: runs of one script under foreign loads more than
    # MOOD_GAP apart (another job started meanwhile) are compared only among themselves.
    by_commit: dict[str, list[tuple[float, float]]] = {}
    for r in read_run_records(folder / ".autoresearch" / "runs" / "runs.jsonl"):
        if r["event"] == "run" and r["status"] == "ok":
            by_commit.setdefault(r["commit"], []).append((r["machine"], r["val_bpb"]))
    groups: dict[tuple, list[float]] = {}
    for commit, runs in by_commit.items():
        start = None
        for load, value in sorted(runs):
            if start is None or load - start > MOOD_GAP:
                start = load
            groups.setdefault((commit, start), []).append(value)
    repeated = {c: vs for c, vs in groups.items() if len(vs) > 1}
    sd = math.sqrt(sum(statistics.variance(vs) * (len(vs) - 1) for vs in repeated.values())
                   / sum(len(vs) - 1 for vs in repeated.values()))
    assert sd > 0 and f"sd {sd:.6f} val_bpb ({sum(map(len, repeated.values()))} repeated runs of {len(repeated)} scripts)" in html
    floors = [e.record["noise_floor"] for e in workspace_view(folder).entries if e.record.get("noise_floor") is not None]
    if floors:  # the `noise` keep rule's floor (the `test` rule has none)
        assert f"{floors[-1]:.6f} val_bpb (the gain a change must clear)" in html
    assert "Fake CPU 9000 (cpu)" in html and "tiny (data: builtin)" in html and "no LLM usage recorded" in html
    assert 'id="workers"' not in html  # a serial loop has no workers to show


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (CI: apt-get install -y chromium)")
def test_the_report_renders_in_a_headless_browser(session, tmp_path):
    from PIL import Image

    folder, out = session
    shot = tmp_path / "report.png"
    res = chromium(out, tmp_path, f"--screenshot={shot}", "--window-size=1400,2000")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1400, 2000)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours and len(colours) > 50  # text, green points, red numbers: not a blank page

    dom = chromium(out, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(r'<body[^>]*data-ready="1"', dom.stdout), "the page's script did not run to its end"
    assert dom.stdout.count("<svg") >= 2  # the progress chart and the loss curves
    data = json.loads(results_json(workspace_view(folder)))
    for r in data["rows"]:
        assert r["commit"] in table_row(dom.stdout, r["n"])
    assert f"{len(data['rows'])} of {len(data['rows'])} shown" in dom.stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (CI: apt-get install -y chromium)")
def test_sorting_and_the_status_filter_work_in_the_browser(session, tmp_path):
    """Click the val_bpb header, untick "discard": what a user does with the table."""
    folder, out = session
    clicks = """<script>
var th = Array.prototype.find.call(document.querySelectorAll("#results th"), function (t) { return t.textContent === "val_bpb"; });
th.click();
var ids = function (all) { return Array.prototype.filter.call(document.querySelectorAll("#results tbody tr"),
  function (r) { return all || !r.hidden; }).map(function (r) { return r.id.slice(4); }).join(","); };
document.body.dataset.sorted = ids(true);
var box = document.querySelector('#filters input[value="discard"]');
box.checked = false; box.dispatchEvent(new Event("change"));
document.body.dataset.visible = ids(false);
</script></body>"""
    page = tmp_path / "clicked.html"
    page.write_text(out.read_text().replace("</body>", clicks))
    dom = chromium(page, tmp_path, "--dump-dom").stdout
    rows = json.loads(results_json(workspace_view(folder)))["rows"]
    scored = sorted((r for r in rows if r["status"] != "crash"), key=lambda r: (r["val_bpb"], r["n"]))
    order = [r["n"] for r in scored] + [r["n"] for r in rows if r["status"] == "crash"]  # crashes last
    sorted_ids = [int(n) for n in re.search(r'data-sorted="([\d,]*)"', dom).group(1).split(",")]
    assert [rows[n - 1]["val_bpb"] for n in sorted_ids] == [rows[n - 1]["val_bpb"] for n in order]
    visible = re.search(r'data-visible="([\d,]*)"', dom).group(1).split(",")
    assert {rows[int(n) - 1]["status"] for n in visible} == {"keep", "crash"}
    assert len(visible) == sum(r["status"] != "discard" for r in rows)


def test_workers_get_their_own_section(tmp_path):
    folder = make_ws(tmp_path)
    loop(folder, 4, workers=2)
    html = write_report(folder).read_text()  # default: report.html in the workspace
    assert (folder / "report.html").is_file()
    rows = json.loads(results_json(workspace_view(folder)))["rows"]
    workers = {r["worker"] for r in rows if r.get("worker")}
    assert len(workers) == 2
    section = html.split('id="workers"')[1].split("</table>")[0]
    for w in workers:
        mine = [r for r in rows if r.get("worker") == w]
        cells = re.search(rf"<tr><td>{re.escape(w)}</td><td class=\"num\">(\d+)</td>", section)
        assert cells and int(cells.group(1)) == len(mine)


def test_serve_renders_the_report_afresh_for_each_request(session):
    folder, _ = session
    server = serve_report(folder, port=0, refresh=5)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and '<meta http-equiv="refresh" content="5">' in page and 'id="results"' in page
        rows = (folder / "results.tsv").read_text()
        with (folder / "results.tsv").open("a") as f:  # a row the loop just wrote
            f.write("abcdef1\t0.990000\t1.0\tdiscard\tjust now\n")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
                assert "just now" in resp.read().decode()
        finally:
            (folder / "results.tsv").write_text(rows)
    finally:
        server.shutdown()
        server.server_close()
