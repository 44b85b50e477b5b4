"""Is `ar results` quick on a long journal? Wall time of the real command vs its targets.

    python benchmarks/results.py [--rows 1000 10000] [--repeat 7] [--ar COMMAND]

For each row count, builds a workspace-like folder: a git repository whose history is
the experiments' commits (kept ones on the branch, discarded and crashed ones left off
it, as the loop leaves them), `.autoresearch/config.toml`, a results.tsv and a runs.jsonl
with the records the loop writes for each row ("proposing", "started", "run",
"finished" with row, commit, budget, backend, usage, worker). Then times the command a
user types, `ar results --dir X` and `ar results --dir X --last 20`, as a subprocess
(wall time from start to exit, Python start-up and imports included; the median of
--repeat runs after one warm-up), with stdout piped and with stdout a terminal (a pty of
50 lines x 160 columns). Prints each median against its target (0.3 s for the whole
table, 0.2 s for --last) and the ratio median / target (under 1.0 meets it), the median
CPU seconds (user + system, git included), and for scale: the start-up of Python
(`python -c pass`) and of `ar --version`, and the floor, `ar results` on a 1-row
workspace (what the command pays before reading a row: Typer parses options with
pydantic, Rich, our imports, one git process).

After the warm-up, `ar results` answers from its cache of the journal (journal/cache.py,
under AUTORESEARCH_CACHE: here a temporary folder). The "changed" line (piped, no target)
times the call after each change of results.tsv (touched before every run): the cache rebuilt.

The figures are this machine's: on a shared or busy machine wall times move by tens of
percent from run to run (CPU s move less), so compare ratios (to the target, to the
floor, before vs after a change) rather than absolute seconds across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGETS = {"all": 0.3, "last": 0.2}
TERMINAL = (50, 160)  # lines, columns of the pty
HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"


def ar_command() -> list[str]:
    """The `ar` script of this environment, as a user runs it."""
    script = Path(sys.executable).parent / "ar"
    return [str(script)] if script.exists() else [shutil.which("ar") or "ar"]


def git(folder: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=folder, input=stdin, capture_output=True, text=True, check=True).stdout


def build_workspace(folder: Path, rows: int) -> None:
    """A workspace with `rows` experiments: git history, config, results.tsv, runs.jsonl."""
    folder.mkdir(parents=True)
    git(folder, "init", "-q", "-b", "bench")
    # The experiments, as the plan of the loop: about one in three kept, one in 97 crashed.
    plan, best = [], float("inf")
    for i in range(rows):
        if i % 97 == 13:
            plan.append(("crash", 0.0))
            continue
        v = 1.5 - i * 1e-5 + (0.002 if i % 3 else 0.0)
        status = "keep" if v < best else "discard"
        best = min(best, v) if status == "keep" else best
        plan.append((status, v))
    # One commit per experiment with git fast-import (seconds, not minutes): each is a child
    # of the last kept one, so the branch holds the kept commits and the others dangle.
    stream, tip = [], 0
    for i, (status, _) in enumerate(plan, start=1):
        body = f"# experiment {i}\n"
        stream.append(f"commit refs/heads/{'bench' if status == 'keep' else f'tmp/{i}'}\nmark :{i}\n"
                      f"committer bench <bench@localhost> {1_700_000_000 + i} +0000\n"
                      f"data 12\nexperiment\n\n" + (f"from :{tip}\n" if tip else "")
                      + f"M 100644 inline train.py\ndata {len(body)}\n{body}\n")
        if status == "keep":
            tip = i
    marks = folder / ".git" / "bench-marks"
    git(folder, "fast-import", "--quiet", f"--export-marks={marks}", stdin="".join(stream))
    sha = dict(line.split() for line in marks.read_text().splitlines())
    # dropped, as a discard resets the branch: the commits stay, unreachable
    refs = git(folder, "for-each-ref", "--format=%(refname)", "refs/heads/tmp").split()
    git(folder, "update-ref", "--stdin", stdin="".join(f"delete {ref}\n" for ref in refs))
    git(folder, "reset", "-q", "--hard", "bench")

    (folder / ".autoresearch" / "runs").mkdir(parents=True)
    (folder / ".autoresearch" / "config.toml").write_text(
        'tag = "bench"\nbackend = "cpu"\nprofile = "tiny"\nsource = "builtin"\nbudget = 300\n')
    lines, records = [HEADER], []
    for i, (status, v) in enumerate(plan, start=1):
        commit = sha[f":{i}"][:7]
        message = f"idea number {i}: raise the learning rate of the embeddings a little"
        mem = 0.0 if status == "crash" else 12.5
        lines.append(f"{commit}\t{v:.6f}\t{mem:.1f}\t{status}\t{message}")
        usage = {"input_tokens": 9000 + i % 500, "output_tokens": 700, "cache_read_tokens": 6000, "cost_usd": 0.0123}
        records += [
            {"event": "proposing", "time": 1_700_000_000 + i, "message": message},
            {"event": "started", "time": 1_700_000_000 + i, "commit": commit, "budget": 300, "backend": "cpu", "rows": i - 1},
            {"event": "run", "time": 1_700_000_000 + i, "commit": commit, "status": "ok" if v else "crash", "val_bpb": v, "seed": 42},
            {"event": "finished", "time": 1_700_000_000 + i, "row": i, "commit": commit, "budget": 300,
             "backend": "cpu", "status": status, "notes": [], "usage": usage, "worker": ""},
        ]
    (folder / "results.tsv").write_text("\n".join(lines) + "\n")
    (folder / ".autoresearch" / "runs" / "runs.jsonl").write_text(
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def cpu_seconds() -> float:
    """User + system CPU time of this process's finished children (and theirs: git)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_piped(cmd: list[str]) -> tuple[float, float, bytes]:
    """(wall s, CPU s, stdout) of the command with stdout piped."""
    cpu, t0 = cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()[-1500:]}")
    return elapsed, cpu_seconds() - cpu, proc.stdout


def run_terminal(cmd: list[str]) -> tuple[float, float, bytes]:
    """The command with stdout on a pty of TERMINAL's size (stderr piped); what it printed."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *TERMINAL, 0, 0))
    out = bytearray()

    def drain() -> None:  # a terminal reads as it goes: never let the child block on a full pty
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            out.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    cpu, t0 = cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=_env(TERM="xterm-256color"))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu
    os.close(slave)
    reader.join()
    os.close(master)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed on a terminal:\n{proc.stderr.decode()[-1500:]}")
    return elapsed, cpu, bytes(out)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "PAGER", "NO_COLOR", "FORCE_COLOR")}
    return {**env, **extra}


def median_time(runner, cmd: list[str], repeat: int) -> tuple[float, float, bytes]:
    """Median wall s, median CPU s and the output of `repeat` runs after a warm-up."""
    runner(cmd)  # warm-up: page cache, .pyc files
    results = [runner(cmd) for _ in range(repeat)]
    return (statistics.median(r[0] for r in results), statistics.median(r[1] for r in results), results[-1][2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--ar", help="the command to time instead of this environment's `ar` (e.g. a patched copy)")
    args = parser.parse_args()
    ar = args.ar.split() if args.ar else ar_command()

    python_start, python_cpu, _ = median_time(run_piped, [sys.executable, "-c", "pass"], args.repeat)
    ar_start, ar_cpu, _ = median_time(run_piped, ar + ["--version"], args.repeat)
    print(f"start-up: python -c pass {python_start:.3f} s ({python_cpu:.3f} CPU s), ar --version "
          f"{ar_start:.3f} s ({ar_cpu:.3f} CPU s)  [{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}]")
    print(f"{'rows':>6}  {'command':<22} {'output':<8} {'median s':>9} {'CPU s':>6} {'target s':>9} {'ratio':>6} "
          f"{'lines out':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AUTORESEARCH_CACHE"] = str(Path(tmp) / "cache")  # ar's caches, never the user's
        # The floor: what any `ar results` pays before reading a row (Python, Typer, which
        # imports pydantic to parse options, Rich, our imports, one git process).
        build_workspace(Path(tmp) / "ws1", 1)
        floor, floor_cpu, _ = median_time(run_piped, ar + ["results", "--dir", str(Path(tmp) / "ws1")], args.repeat)
        print(f"floor: ar results on a 1-row workspace {floor:.3f} s ({floor_cpu:.3f} CPU s)")
        for rows in args.rows:
            folder = Path(tmp) / f"ws{rows}"
            t0 = time.perf_counter()
            build_workspace(folder, rows)
            built = time.perf_counter() - t0
            for name, extra in (("all", []), ("last", ["--last", "20"])):
                cmd = ar + ["results", "--dir", str(folder)] + extra
                label = "ar results" + (" --last 20" if extra else "")
                for where, runner in (("piped", run_piped), ("terminal", run_terminal)):
                    median, cpu, out = median_time(runner, cmd, args.repeat)
                    target = TARGETS[name]
                    flag = "" if median <= target else "  <- over target"
                    lines = out.count(b"\n")
                    print(f"{rows:>6}  {label:<22} {where:<8} {median:>9.3f} {cpu:>6.3f} {target:>9.3f} "
                          f"{median / target:>6.2f} {lines:>9}{flag}")

            def changed(cmd: list[str]) -> tuple[float, float, bytes]:
                os.utime(folder / "results.tsv")  # as an appended row would: the cache is stale
                return run_piped(cmd)

            median, cpu, out = median_time(changed, ar + ["results", "--dir", str(folder)], args.repeat)
            lines = out.count(b"\n")
            print(f"{rows:>6}  {'ar results':<22} {'changed':<8} {median:>9.3f} {cpu:>6.3f} {'-':>9} {'-':>6} {lines:>9}")
            print(f"{'':>6}  (workspace built in {built:.1f} s)")


if __name__ == "__main__":
    main()
