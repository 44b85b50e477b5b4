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
    help="autoresearch: an LLM proposes edits to one training script, `ar` trains each for a fixed "
    "budget and keeps what lowers val_bpb.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> "typer.Exit":
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
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
    """A progress(label, done, total) callback drawn as Rich progress bars."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    tasks: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:

        def progress(label: str, done: int, total: Optional[int]) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        yield progress


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
        None, "--num-shards", "-n", min=1, help="Training shards to download (remote sources); the validation shard is always fetched."
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


def main() -> None:  # pragma: no cover
    app()
