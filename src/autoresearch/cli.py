"""The `ar` command line: a thin edge over the library.

Every command parses its options, calls one library function, prints with Rich, and
turns an ArError into one red line with exit code 1. torch and mlx are imported only
inside the commands that need them, so `ar --help` starts fast.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import typer

from autoresearch.errors import ArError

app = typer.Typer(
    name="ar",
    help="autoresearch: an LLM proposes edits to a training script, `ar` trains each for a fixed "
    "budget and keeps what lowers val_bpb. Start with `ar prepare`, `ar init <tag>`, `ar loop`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain Click help: Rich markup would eat "[ray]" in "pip install 'autoresearch[ray]'", and
    # Click re-wraps paragraphs to the terminal instead of breaking sentences where the source does.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"ar (autoresearch) {version('autoresearch')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """autoresearch: an LLM proposes edits to a training script, `ar` trains each for a fixed
    budget and keeps what lowers val_bpb. Start with `ar prepare`, `ar init <tag>`, `ar loop`."""


class _Console:
    """Rich's Console, made on first use: importing Rich is a tenth of what `ar results | less`
    may take in all (benchmarks/results.py), and a pipe never needs it."""

    def __init__(self, **options) -> None:
        self._options, self._made = options, None

    @property
    def real(self):  # for Rich's own widgets, which want the Console itself
        if self._made is None:
            from rich.console import Console

            self._made = Console(**self._options)
        return self._made

    def __getattr__(self, name: str):
        return getattr(self.real, name)


# Options `ar run` and `ar loop` share (one definition, one help text).
EARLY_STOP = typer.Option(
    True, "--early-stop/--no-early-stop", help="Stop a new idea's run once its training loss is clearly worse than "
    "the best's at the same point of the budget (from 30% of it on, never while the learning rate warms up); "
    "it is recorded as a discard that says so."
)
NO_SANDBOX = typer.Option(
    False, "--no-sandbox", envvar="AUTORESEARCH_NO_SANDBOX", show_envvar=True,
    help="Run the training script without the OS sandbox (bubblewrap on Linux, sandbox-exec on macOS) that "
    "otherwise hides your home, other processes, the network and any secret from it and keeps the cache "
    "read-only. Only where no sandbox can be made; rows then say so."
)

console = _Console()
err_console = _Console(stderr=True)


def fail(message: str) -> "typer.Exit":
    from rich.markup import escape

    # escaped: a message may hold brackets ("pip install 'autoresearch[ray]'") that are not markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn domain errors into one line and exit 1 (never a traceback for a user mistake)."""
    try:
        yield
    except ArError as e:
        raise fail(str(e)) from None


@app.command()
def prepare(
    source: Optional[str] = typer.Option(
        None,
        "--source",
        "-s",
        help="Where the text comes from: builtin (offline, shipped in the package), tinystories, "
        "climbmix (the upstream shards), or local (a folder given with --path). "
        "Default: the profile's source.",
    ),
    profile: str = typer.Option("tiny", "--profile", "-p", help="Constants to prepare for: tiny, laptop, datacenter."),
    path: Optional[Path] = typer.Option(None, "--path", help="With --source local: a folder of .parquet/.jsonl/.txt files."),
    num_shards: Optional[int] = typer.Option(
        None, "--num-shards", "-n", min=1, help="climbmix: training shards to download (the pinned validation shard always comes too); "
        "tinystories: shards to cut the training file into."
    ),
    workers: int = typer.Option(8, "--workers", min=1, help="Parallel downloads."),
) -> None:
    """Download or build the data shards and train the tokenizer into the cache.

    The cache is ~/.cache/autoresearch, or AUTORESEARCH_CACHE. Running it twice does nothing
    the second time.
    """
    from autoresearch.data.prepare import prepare_data
    from autoresearch.ui.progress import rich_progress
    from autoresearch.data.profiles import get_profile

    with user_errors():
        prof = get_profile(profile)
        with rich_progress(console.real) as progress:
            report = prepare_data(source or prof.source, prof, path=path, num_shards=num_shards, workers=workers, progress=progress)
    verb = "already prepared" if not report.did_work else "prepared"
    console.print(f"[green]{verb}[/] source [bold]{report.source}[/] for profile [bold]{prof.name}[/]")
    console.print(f"  data:      {report.data_dir} ({report.num_train_shards} train shards + 1 validation shard)")
    console.print(f"  tokenizer: {report.tokenizer_dir} (vocab {prof.vocab_size})")


@app.command()
def hardware(
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", envvar="AUTORESEARCH_BACKEND", help="mlx, mps, cuda, cpu or auto."
    ),
    profile: str = typer.Option("tiny", "--profile", "-p", help="Profile to suggest a configuration for."),
) -> None:
    """Show the detected hardware, the backend that would be chosen and the suggested model size."""
    from autoresearch.backends import choose_backend, detect_hardware, peak_flops, suggest_config
    from autoresearch.data.profiles import get_profile

    with user_errors():
        prof = get_profile(profile)
        hw = detect_hardware()
        chosen = choose_backend(backend, hw)
        sugg = suggest_config(hw, chosen, prof)
        flops, approximate = peak_flops(hw, chosen)
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in hw.describe().items():
        table.add_row(f"[bold]{key}[/]", str(value))
    table.add_row("[bold]backend[/]", chosen)
    table.add_row(
        "[bold]peak FLOPS[/]", f"{flops / 1e12:.1f} TFLOP/s" + (" (approximate)" if approximate else "")
    )
    table.add_row(
        "[bold]suggested[/]",
        f"DEPTH={sugg.depth} DEVICE_BATCH_SIZE={sugg.device_batch_size} TOTAL_BATCH_SIZE={sugg.total_batch_size} "
        f"(profile {prof.name})",
    )
    console.print(table)


@app.command()
def init(
    tag: str = typer.Argument(..., help="Name of this research run, e.g. mar5; the branch is autoresearch/<tag>."),
    folder: Path = typer.Option(Path("."), "--dir", "-d", help="The workspace folder (created if missing)."),
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", envvar="AUTORESEARCH_BACKEND", help="mlx, mps, cuda, cpu or auto (default: detected)."
    ),
    profile: str = typer.Option("tiny", "--profile", "-p", help="Constants every experiment is judged by: tiny, laptop, datacenter."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Data source (default: the profile's)."),
    path: Optional[Path] = typer.Option(None, "--path", help="With --source local: the folder of .parquet/.jsonl/.txt files."),
    budget: Optional[float] = typer.Option(None, "--budget", help="Training seconds per experiment (default: the profile's)."),
    kill: float = typer.Option(600.0, "--kill", help="Hard limit of one run in seconds, start-up included; then it is killed."),
) -> None:
    """Make a research workspace: git repo, branch autoresearch/<tag>, both training scripts, program.md.

    train.py (PyTorch) and train_mlx.py (MLX) are both written, with the model size
    suggested for this machine as plain numbers; --backend on `ar run` and `ar loop`
    picks the one that runs (default: the backend chosen here). Everything is committed
    on the new branch only. Settings go to .autoresearch/config.toml. A previous tag's
    results.tsv is archived as results-<old tag>.tsv. Files that already exist are never
    overwritten. Run again with the same tag, it checks the branch out and resumes.
    """
    from autoresearch.workspace.init import init_workspace

    with user_errors():
        report = init_workspace(folder, tag, backend=backend, profile=profile, source=source, source_path=path,
                                budget=budget, kill=kill)
    cfg = report.config
    if report.resumed:
        console.print(f"[green]resumed[/] workspace [bold]{report.path}[/] on [bold]{report.branch}[/] at {report.commit} "
                      "(it exists already; nothing changed)", highlight=False)
        if report.data_warning:
            err_console.print(f"[bold yellow]warning:[/] {report.data_warning}", highlight=False, soft_wrap=True)
        console.print("next: [bold]ar loop[/] to go on, [bold]ar results[/] to see where it stands", highlight=False)
        return
    made = " (new git repository)" if report.created_repo else ""
    console.print(f"[green]initialized[/] workspace [bold]{report.path}[/]{made}", highlight=False)
    console.print(f"  branch:   [bold]{report.branch}[/] at {report.commit}", highlight=False)
    console.print(
        f"  settings: backend {cfg.backend}, profile {cfg.profile}, source {cfg.source}, "
        f"budget {cfg.budget:g} s, kill {cfg.kill:g} s",
        highlight=False,
    )
    console.print(f"  scripts:  train.py (PyTorch), train_mlx.py (MLX); {cfg.editable} runs by default "
                  "(--backend picks); the agent's instructions are in program.md", highlight=False)
    for name, line in report.dials.items():
        console.print(f"  size:     {name}: {line}", highlight=False)
    if report.archived:
        console.print(f"  archived: {', '.join(report.archived)} (the previous tag's results)", highlight=False)
    if report.written:
        console.print(f"  wrote:    {', '.join(report.written)}", highlight=False)
    if report.kept:
        console.print(f"  kept:     {', '.join(report.kept)} (already there, not overwritten)", highlight=False)
    if report.data_warning:
        err_console.print(f"[bold yellow]warning:[/] {report.data_warning}", highlight=False, soft_wrap=True)
    console.print("next: [bold]ar loop[/] (or [bold]ar run[/] to record the baseline by hand)", highlight=False)


@app.command()
def run(
    folder: Path = typer.Option(Path("."), "--dir", "-d", help="The workspace folder."),
    budget: Optional[float] = typer.Option(
        None, "--budget", help="Training seconds for this run only (a smoke test): its row says '(budget N s)' and is judged only against runs of the same budget."
    ),
    kill: Optional[float] = typer.Option(None, "--kill", help="Hard limit in seconds for this run (default: the workspace's)."),
    description: Optional[str] = typer.Option(
        None, "--description", "-m", help="What the experiment tried (default: the commit message; 'baseline' for the first)."
    ),
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", envvar="AUTORESEARCH_BACKEND", show_envvar=True,
        help="mlx runs train_mlx.py; cpu, cuda or mps run train.py (default: the workspace's).",
    ),
    keep_rule: str = typer.Option(
        "test", "--keep-rule", help="As `ar loop` judges: test (a one-sided test at 5% false keeps against the noise "
        "measured so far; a promising result runs again), noise (the earlier noise-floor rule) or strict (any lower "
        "val_bpb is kept)."
    ),
    early_stop: bool = EARLY_STOP,
    no_sandbox: bool = NO_SANDBOX,
) -> None:
    """Train the editable script once, the way the loop does, and record it.

    The row it adds to results.tsv, judged against the rows of the same budget and backend
    on this branch:

    \b
      keep     the first of them (the baseline), or a new best
      discard  val_bpb equal to or worse than their best
      discard  stopped early: its training loss was clearly worse than the best's
      crash    no val_bpb, or killed at the hard limit

    A --budget smoke test shows "(budget N s)" in its description and is judged only
    against runs of that budget. Only in .autoresearch/runs/runs.jsonl,
    not in results.tsv: interrupted runs and runs with uncommitted changes to the script.
    Each run's full output is kept in .autoresearch/runs/<n>-<commit>.log.

    Exit code: 0 with a val_bpb or stopped early, 1 for a crash or timeout, 130 when interrupted.
    """
    from autoresearch.experiment.once import run_once
    from autoresearch.ui.progress import RunBar

    bar = RunBar(console.real)
    on_event = bar.on_event
    try:
        with user_errors():
            outcome = run_once(folder, budget=budget, kill=kill, description=description, backend=backend,
                               keep_rule=keep_rule, early_stop=early_stop, sandbox=not no_sandbox, on_event=on_event)
    finally:
        bar.stop()
    res = outcome.result
    colour = {"keep": "green", "discard": "yellow", "crash": "red"}.get(outcome.recorded or "", "cyan")
    if res.status == "ok":
        console.print(
            f"val_bpb [bold]{res.val_bpb:.6f}[/]  memory {res.memory_gb:.1f} GB  {res.seconds:.1f} s",
            highlight=False,
        )
    elif res.status == "stopped":
        console.print(f"[bold yellow]stopped early[/] after {res.seconds:.1f} s: {res.reason}", highlight=False)
    else:
        console.print(f"[bold red]{res.status}[/] after {res.seconds:.1f} s: {res.reason}", highlight=False)
        for line in res.log_tail[-15:]:
            console.print("  " + line, style="dim", highlight=False, markup=False)
    label = outcome.recorded or "not recorded in results.tsv"
    console.print(f"[{colour}]{label}[/]: {outcome.note}", highlight=False)
    console.print(f"log: {res.log_path}", highlight=False)
    if res.status == "interrupted":
        raise typer.Exit(130)
    if res.status not in ("ok", "stopped"):
        raise typer.Exit(1)


@app.command()
def results(
    folder: Path = typer.Option(Path("."), "--dir", "-d", help="The workspace folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (rows and summary) for scripts."),
    last: Optional[int] = typer.Option(None, "--last", "-n", min=1, help="Show only the last N rows (the summary covers all)."),
) -> None:
    """Show results.tsv: every experiment, its change against the best before it, and a summary.

    On a terminal: the latest rows that fit the window. Piped (`ar results | less`): every
    row, as plain text."""
    import os
    import sys

    from autoresearch.ui.table import results_json, results_plain, results_text
    from autoresearch.ui.view import results_view

    with user_errors():
        view = results_view(folder)
    if as_json:
        typer.echo(results_json(view))
        return
    if not sys.stdout.isatty():
        # a pipe or a file: every row as plain text, streamed (Rich takes seconds on 10,000 rows)
        try:
            sys.stdout.writelines(results_plain(view, last))
            sys.stdout.flush()
        except BrokenPipeError:  # `ar results | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return
    # a terminal: in colour and, without --last, only the latest rows that fit the window
    table, lines = results_text(view, last, height=console.height, width=console.width)
    console.print(table, no_wrap=True, overflow="ellipsis", highlight=False)
    for line in lines:
        console.print(line, highlight=False)


@app.command()
def show(
    ref: str = typer.Argument(..., metavar="N|COMMIT", help="The experiment: its row number in `ar results`, or its commit (7+ hex characters)."),
    folder: Path = typer.Option(Path("."), "--dir", "-d", help="The workspace folder."),
    as_json: bool = typer.Option(False, "--json", help="Print all of it as one JSON object, for scripts."),
) -> None:
    """Show one experiment: its diff, metrics, keep decision, loss curve against the best, log tail and cost."""
    from autoresearch.ui.show import experiment_details, render_show, show_json

    with user_errors():
        details = experiment_details(folder, ref)
    if as_json:
        typer.echo(show_json(details))
        return
    for line in render_show(details):
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
def report(
    folder: Path = typer.Option(Path("."), "--dir", "-d", help="The workspace folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: report.html in the workspace)."),
    serve: bool = typer.Option(False, "--serve", help="Serve the report on 127.0.0.1 instead, rendered afresh at each reload (watch `ar loop`)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="The port of --serve."),
    refresh: int = typer.Option(10, "--refresh", min=1, help="Seconds between reloads of the --serve page."),
) -> None:
    """One self-contained HTML file (opens offline): chart, sortable table, kept diffs, loss curves, noise, cost."""
    from autoresearch.ui.report import serve_report, write_report

    with user_errors():
        if not serve:
            path = write_report(folder, out)
        else:
            server = serve_report(folder, port=port, refresh=refresh)
    if not serve:
        console.print(f"wrote {path}", highlight=False)
        return
    console.print(f"serving the report of {folder} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def plot(
    folder: Path = typer.Option(Path("."), "--dir", "-d", help="The workspace folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: progress.png in the workspace)."),
) -> None:
    """Draw val_bpb over the experiments: kept ones green and labelled, the running best, crashes."""
    from autoresearch.ui.view import workspace_view
    from autoresearch.ui.plot import plot_progress

    with user_errors():
        view = workspace_view(folder)
        path = plot_progress(view, out or folder / "progress.png")
    console.print(f"wrote {path} ({len(view.entries)} experiments)", highlight=False)


@app.command()
def loop(
    folder: Path = typer.Option(Path("."), "--dir", "-d", help="The workspace folder."),
    proposer: Optional[str] = typer.Option(
        None, "--proposer", help="anthropic, openai, optuna or offline (default: anthropic when ANTHROPIC_API_KEY is set, else optuna: "
        "Optuna's TPE over the script's numeric constants, no LLM; offline: a coordinate search over them)."
    ),
    model: Optional[str] = typer.Option(None, "--model", help="The proposer's model (default: the proposer's own)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="The proposer's API endpoint (a proxy, a local OpenAI-compatible server)."),
    max_experiments: Optional[int] = typer.Option(
        None, "--max-experiments", "-n", min=0, help="Stop after this many experiments in this call (the baseline is not counted)."
    ),
    max_hours: Optional[float] = typer.Option(None, "--max-hours", min=0, help="Start no experiment after this many hours."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", min=0, help="Start no experiment once proposals have cost this many USD in this call."),
    keep_rule: str = typer.Option(
        "test", "--keep-rule", help="test: a gain must pass a one-sided test at a 5% false-keep rate against the pooled "
        "run-to-run noise; a promising result runs again under another seed (up to 3 runs), nothing runs up front. "
        "noise: the earlier rule (+2 baseline runs at the start measure a noise floor). "
        "strict: any lower val_bpb is kept (upstream, no extra runs)."
    ),
    early_stop: bool = EARLY_STOP,
    plateau: int = typer.Option(
        8, "--plateau", min=0, help="After this many experiments in a row without a keep, the search takes turns through "
        "modes until one is kept: combine the two best near-misses, ablate a kept change, branch from an earlier good "
        "commit, one plain step. 0: the plain chain only. Modes show in results.tsv's descriptions."
    ),
    no_sandbox: bool = NO_SANDBOX,
    budget: Optional[float] = typer.Option(
        None, "--budget", help="Training seconds per run (a smoke test): rows get '(budget N s)' and are judged only against rows of the same budget."
    ),
    kill: Optional[float] = typer.Option(None, "--kill", help="Hard limit of one run in seconds (default: the workspace's)."),
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", envvar="AUTORESEARCH_BACKEND", show_envvar=True,
        help="mlx runs and edits train_mlx.py; cpu, cuda or mps train.py (default: the workspace's). "
        "Each backend has its own baseline and best.",
    ),
    workers: int = typer.Option(
        1, "--workers", "-w", min=1, help="Experiments in flight at once, each in its own git worktree with its own device: "
        "one GPU each on NVIDIA, an even share of the CPU threads on CPUs."
    ),
    force_workers: bool = typer.Option(False, "--force-workers", help="Allow more workers than GPUs, or several on one Apple GPU."),
    executor: str = typer.Option(
        "local", "--executor", help="local: runs on this machine; ray: each run is a Ray task on a Ray cluster (pip install 'autoresearch[ray]')."
    ),
    ray_address: str = typer.Option(
        "auto", "--ray-address", help="With --executor ray: the cluster's address (auto: the one `ray start` runs here; local: Ray inside this process)."
    ),
) -> None:
    """Run the research loop: propose an edit, commit, train, keep or reset, record; repeat.

    The first run on a branch is the unmodified script (the baseline). Every experiment is a
    row in results.tsv and the branch's HEAD is always the best commit. Ctrl-C (or SIGTERM)
    abandons the running experiment cleanly (its commit reset, nothing in results.tsv) and
    stops; running `ar loop` again resumes, also after a crash or kill -9.

    With --workers N up to N experiments run at once, each in its own git worktree; a win
    measured against an older best is re-applied on the new best and run again before it
    is kept. --executor ray runs them as Ray tasks on a cluster (see docs/scaling.md in the
    autoresearch repository).

    Exit code: 0 when a limit stopped it, 130 when interrupted.
    """
    from autoresearch.session import open_loop
    from autoresearch.ui.display import make_display, print_header, print_report

    with user_errors():
        session = open_loop(
            folder, proposer=proposer, model=model, base_url=base_url, backend=backend, keep_rule=keep_rule,
            early_stop=early_stop, plateau=plateau, sandbox=not no_sandbox, budget=budget, kill=kill, max_experiments=max_experiments,
            max_hours=max_hours, max_cost=max_cost, workers=workers, force_workers=force_workers, executor=executor, ray_address=ray_address,
        )
    print_header(console.real, session, offline_by_default=proposer is None)
    with user_errors(), make_display(console.real) as display:
        report = session.run(on_event=display)
    print_report(console.real, report, session.workspace.head_commit())
    if report.interrupted:
        raise typer.Exit(130)


def main() -> None:  # pragma: no cover
    app()
