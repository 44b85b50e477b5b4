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
from rich.console import Console

from .errors import ArError

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
console = Console()
err_console = Console(stderr=True)


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


@contextlib.contextmanager
def rich_progress() -> Iterator:
    """A progress(label, done, total) callback drawn as Rich progress bars.

    The display starts with the first report, so work that turns out to be done already
    prints nothing."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    tasks: dict[str, int] = {}
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeRemainingColumn(),
        console=console,
    )

    def progress(label: str, done: int, total: Optional[int]) -> None:
        if not tasks:
            bar.start()
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done, total=total)

    try:
        yield progress
    finally:
        if tasks:
            bar.stop()


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
    from .data.prepare import prepare_data
    from .data.profiles import get_profile

    with user_errors():
        prof = get_profile(profile)
        with rich_progress() as progress:
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
    from .backends import choose_backend, detect_hardware, peak_flops, suggest_config
    from .data.profiles import get_profile

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
    from .loop.config import init_workspace

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
        "noise", "--keep-rule", help="As `ar loop` judges: noise (a gain must clear the noise floor a loop measured; "
        "a marginal one runs once more) or strict (any lower val_bpb is kept)."
    ),
) -> None:
    """Train the editable script once, the way the loop does, and record it.

    The row it adds to results.tsv, judged against the rows of the same budget and backend
    on this branch:

    \b
      keep     the first of them (the baseline), or a new best
      discard  val_bpb equal to or worse than their best
      crash    no val_bpb, or killed at the hard limit

    A --budget smoke test shows "(budget N s)" in its description and is judged only
    against runs of that budget. Only in .autoresearch/runs/runs.jsonl,
    not in results.tsv: interrupted runs and runs with uncommitted changes to the script.
    Each run's full output is kept in .autoresearch/runs/<n>-<commit>.log.

    Exit code: 0 with a val_bpb, 1 for a crash or timeout, 130 when interrupted.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .experiment.once import run_once

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )
    task = bar.add_task("training", total=100, info="starting")

    def on_event(event) -> None:
        if event.kind == "run_started":
            seed = f", {event.note}" if event.note else ""
            console.print(f"{event.run_kind} run of {event.commit}{seed}", highlight=False)
            bar.reset(task, total=100, info="starting")
            bar.start()
        elif event.kind == "progress" and event.progress:
            fields, info = event.progress, []
            for key, fmt in (("step", "step {}"), ("loss", "loss {:.4f}"), ("tok_per_s", "{:,.0f} tok/s"), ("remaining_s", "{:.0f} s left")):
                if isinstance(fields.get(key), (int, float)):
                    info.append(fmt.format(fields[key]))
            pct = fields.get("pct")
            bar.update(task, completed=pct if isinstance(pct, (int, float)) else None, info="  ".join(info))
        elif event.kind == "run_finished":
            bar.stop()

    try:
        with user_errors():
            outcome = run_once(folder, budget=budget, kill=kill, description=description, backend=backend,
                               keep_rule=keep_rule, on_event=on_event)
    finally:
        bar.stop()
    res = outcome.result
    colour = {"keep": "green", "discard": "yellow", "crash": "red"}.get(outcome.recorded or "", "cyan")
    if res.status == "ok":
        console.print(
            f"val_bpb [bold]{res.val_bpb:.6f}[/]  memory {res.memory_gb:.1f} GB  {res.seconds:.1f} s",
            highlight=False,
        )
    else:
        console.print(f"[bold red]{res.status}[/] after {res.seconds:.1f} s: {res.reason}", highlight=False)
        for line in res.log_tail[-15:]:
            console.print("  " + line, style="dim", highlight=False, markup=False)
    label = outcome.recorded or "not recorded in results.tsv"
    console.print(f"[{colour}]{label}[/]: {outcome.note}", highlight=False)
    console.print(f"log: {res.log_path}", highlight=False)
    if res.status == "interrupted":
        raise typer.Exit(130)
    if res.status != "ok":
        raise typer.Exit(1)


@app.command()
def results(
    folder: Path = typer.Option(Path("."), "--dir", "-d", help="The workspace folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (rows and summary) for scripts."),
    last: Optional[int] = typer.Option(None, "--last", "-n", min=1, help="Show only the last N rows (the summary covers all)."),
) -> None:
    """Show results.tsv: every experiment, its change against the best before it, and a summary."""
    import json

    from .loop.journal import TABLE_COLUMNS, table_rows, workspace_view

    with user_errors():
        view = workspace_view(folder)
    entries, before = view.entries, view.best_before()
    summary = view.summary()
    ran_on = {e.number: e.worker for e in entries if e.worker}  # `ar loop --workers`: who ran what
    spent = {e.number: e.usage for e in entries if e.usage and any(e.usage.values())}  # LLM tokens and cost
    several = len(view.backends) > 1  # rows of different backends are never compared: say which is which
    total_cost = sum(u.get("cost_usd", 0.0) for u in spent.values())
    total_tokens = {k: sum(u.get(k, 0) for u in spent.values()) for k in ("input_tokens", "output_tokens", "cache_read_tokens")}
    if as_json:
        out = [
            {"n": e.number, **e.row.as_dict(), "best_before": b,
             "delta": (e.row.val_bpb - b) if b is not None and e.row.status != "crash" else None,
             "budget": float(e.budget), "backend": e.backend or None,
             **({"worker": ran_on.get(e.number)} if ran_on else {}),
             "usage": spent.get(e.number)}
            for e, b in zip(entries, before)
        ]
        llm = {**total_tokens, "cost_usd": round(total_cost, 6)}
        typer.echo(json.dumps({"rows": out, "summary": {**summary.as_dict(), "llm": llm}}, indent=1))
        return
    from rich.text import Text

    # One Text with fixed-width columns instead of a rich Table: same look, and 10,000
    # rows render in a fraction of a second.
    cells = table_rows(entries, before)
    columns = TABLE_COLUMNS
    extra = [("backend", lambda e: e.backend)] if several else []
    if ran_on:  # a worker column before the description
        extra.append(("worker", lambda e: e.worker))
    if spent:  # a cost column before the description
        extra.append(("cost", lambda e: f"${spent[e.number].get('cost_usd', 0.0):.4f}" if e.number in spent else ""))
    for name, cell in extra:
        columns = columns[:-1] + (name,) + columns[-1:]
        cells = [c[:-1] + (cell(e),) + c[-1:] for c, e in zip(cells, entries)]
    cells = cells[-last:] if last else cells
    widths = [max([len(name)] + [len(c[k]) for c in cells]) for k, name in enumerate(columns[:-1])]
    right = {0, 2, 3, 4}
    status_style = {"keep": "green", "discard": "bright_black", "crash": "red"}
    text = Text(no_wrap=True, overflow="ellipsis")
    for k, name in enumerate(columns[:-1]):
        text.append((name.rjust if k in right else name.ljust)(widths[k]) + "  ", style="bold")
    text.append(columns[-1] + "\n", style="bold")
    for c in cells:
        for k in range(len(columns) - 1):
            style = status_style[c[5]] if k == 5 else None
            if k == 3 and c[3].strip("+-0."):  # a nonzero change: green is better
                style = "green" if c[3].startswith("-") else "red"
            text.append((c[k].rjust if k in right else c[k].ljust)(widths[k]), style=style)
            text.append("  ")
        text.append(c[-1] + "\n")
    text.rstrip()
    console.print(text, no_wrap=True, overflow="ellipsis", highlight=False)
    line = f"{summary.experiments} experiments, {summary.kept} kept, {summary.discarded} discarded, {summary.crashed} crashed"
    if summary.baseline is not None:
        group = f" ({summary.key[1]}, {summary.key[0]} s)" if several and summary.key else ""
        line += f"; baseline {summary.baseline:.6f} -> best {summary.best:.6f}{group}"
        line += f" ({-summary.improvement:+.6f}, {-summary.improvement_pct:+.2f}%)"
    console.print(line, highlight=False)
    if spent:
        console.print(
            f"LLM: {total_tokens['input_tokens']:,} input, {total_tokens['output_tokens']:,} output, "
            f"{total_tokens['cache_read_tokens']:,} cached tokens; ${total_cost:.2f} in total",
            highlight=False,
        )


@app.command()
def plot(
    folder: Path = typer.Option(Path("."), "--dir", "-d", help="The workspace folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: progress.png in the workspace)."),
) -> None:
    """Draw val_bpb over the experiments: kept ones green and labelled, the running best, crashes."""
    from .loop.journal import workspace_view
    from .plot import plot_progress

    with user_errors():
        view = workspace_view(folder)
        path = plot_progress(view, out or folder / "progress.png")
    console.print(f"wrote {path} ({len(view.entries)} experiments)", highlight=False)


def _hardware_line(backend: str) -> str:
    """One line about this machine for the proposer."""
    from .backends import detect_hardware

    described = detect_hardware().describe()
    return ", ".join(f"{k} {v}" for k, v in described.items()) + f"; backend {backend}"


@app.command()
def loop(
    folder: Path = typer.Option(Path("."), "--dir", "-d", help="The workspace folder."),
    proposer: Optional[str] = typer.Option(
        None, "--proposer", help="anthropic, openai or offline (default: anthropic when ANTHROPIC_API_KEY is set, else offline: no LLM)."
    ),
    model: Optional[str] = typer.Option(None, "--model", help="The proposer's model (default: the proposer's own)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="The proposer's API endpoint (a proxy, a local OpenAI-compatible server)."),
    max_experiments: Optional[int] = typer.Option(
        None, "--max-experiments", "-n", min=0, help="Stop after this many experiments in this call (the baseline is not counted)."
    ),
    max_hours: Optional[float] = typer.Option(None, "--max-hours", min=0, help="Start no experiment after this many hours."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", min=0, help="Start no experiment once proposals have cost this many USD in this call."),
    keep_rule: str = typer.Option(
        "noise", "--keep-rule", help="noise: a gain must clear the measured noise floor (+2 runs at the start, +1 per marginal gain); "
        "strict: any lower val_bpb is kept (upstream, no extra runs)."
    ),
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
    from .data.profiles import get_profile
    from .loop.config import check_limits, load_config, parse_seconds
    from .loop.lab import LoopSettings
    from .loop.script_runner import ScriptRunner
    from .loop.serial import run_loop
    from .loop.display import make_display
    from .loop.keep import NOISE_RUNS, check_rule
    from .loop.proposers import get_proposer
    from .loop.workspace import Workspace

    with user_errors():
        folder = folder.resolve()
        cfg = load_config(folder)
        check_rule(keep_rule)
        run_budget = cfg.budget if budget is None else parse_seconds(budget, "budget")
        run_kill = cfg.kill if kill is None else parse_seconds(kill, "kill")
        check_limits(run_budget, run_kill)
        full_budget, cfg = cfg.budget, cfg.for_backend(backend)
        if executor == "local":  # with Ray the nodes run everything; their data is checked on each
            cfg.run_context().check_prepared()
        ws = Workspace.open(folder)
        if ws.branch is None:
            raise ArError(f"{folder} is on a detached HEAD; check out the run's branch (autoresearch/{cfg.tag}) first")
        chosen = get_proposer(proposer, model=model, base_url=base_url)
        prof = get_profile(cfg.profile)
        settings = LoopSettings(
            editable=cfg.editable,
            budget=run_budget,
            full_budget=full_budget,
            backend=cfg.backend,
            keep_rule=keep_rule,
            max_experiments=max_experiments,
            max_hours=max_hours,
            max_cost=max_cost,
            hardware=_hardware_line(cfg.backend),
            profile=f"{prof.name}: MAX_SEQ_LEN={prof.max_seq_len} TIME_BUDGET={run_budget:g} s "
            f"EVAL_TOKENS={prof.eval_tokens} VOCAB_SIZE={prof.vocab_size}, data {cfg.source}",
        )
        runner = ScriptRunner.for_workspace(folder, cfg, budget=run_budget, kill=run_kill)
        parallel = workers > 1 or executor != "local"
        if parallel:  # worktrees per worker; see autoresearch/loop/parallel.py
            from .loop.parallel import make_executor, run_parallel

            pool = make_executor(folder, cfg, runner, workers=workers, executor=executor, ray_address=ray_address, force=force_workers)
        else:
            from .loop.worktrees import prune_stale_worktrees

            prune_stale_worktrees(folder)  # left by a dead `ar loop --workers`

    console.print(f"ar loop on [bold]{ws.branch}[/] in {folder}", highlight=False)
    console.print(f"  proposer:  {chosen.name}", highlight=False)
    if proposer is None and chosen.name == "offline":
        console.print(
            "  [yellow]no ANTHROPIC_API_KEY set:[/] the offline proposer needs no LLM; it tries changes of the "
            f"numeric constants in {cfg.editable}. Set ANTHROPIC_API_KEY or pass --proposer for an LLM.",
            highlight=False,
            soft_wrap=True,
        )
    rule = (
        f"noise (the baseline runs {NOISE_RUNS} more times to measure the noise floor; a marginal gain runs once more)"
        if keep_rule == "noise"
        else "strict (any lower val_bpb is kept)"
    )
    console.print(f"  keep rule: {rule}", highlight=False, soft_wrap=True)
    smoke = f" (smoke test: judged only against runs of {run_budget:g} s)" if run_budget != full_budget else ""
    console.print(f"  backend:   {cfg.backend}: trains and edits {cfg.editable}", highlight=False)
    console.print(f"  budget:    {run_budget:g} s per run, killed after {run_kill:g} s{smoke}", highlight=False, soft_wrap=True)
    limits = [f"{max_experiments} experiments" if max_experiments is not None else "",
              f"{max_hours:g} hours" if max_hours is not None else "",
              f"${max_cost:g}" if max_cost is not None else ""]
    console.print(f"  limits:    {', '.join(x for x in limits if x) or 'none: Ctrl-C stops it'}", highlight=False)
    if parallel:
        console.print(f"  workers:   {pool.describe()}", highlight=False, soft_wrap=True)

    with user_errors(), make_display(console) as display:
        if parallel:
            report = run_parallel(ws, chosen, pool, settings, workers=workers, on_event=display)
        else:
            report = run_loop(ws, chosen, runner, settings, on_event=display)
    line = f"{report.experiments} experiments, {report.kept} kept, {report.crashed} crashed"
    if report.baseline_run:
        line += " (and the baseline)"
    if report.best is not None:
        at_head = " (HEAD)" if ws.head_commit() == report.best_commit else ""
        line += f"; best val_bpb {report.best:.6f} at {report.best_commit}{at_head}"
    if report.cost_usd:
        line += f"; proposals cost ${report.cost_usd:.2f}"
    console.print(line, highlight=False, soft_wrap=True)
    console.print(f"stopped: {report.stop_reason}. `ar results` shows every experiment; `ar loop` again resumes.", highlight=False, soft_wrap=True)
    if report.interrupted:
        raise typer.Exit(130)


def main() -> None:  # pragma: no cover
    app()
