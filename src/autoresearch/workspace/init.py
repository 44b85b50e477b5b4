"""`ar init <tag>`: a research workspace on a fresh branch autoresearch/<tag>."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from autoresearch.data.context import CONFIG_RELPATH, read_workspace_config
from autoresearch.errors import ArError
from autoresearch.workspace.config import (BACKENDS, BRANCH_PREFIX, DEFAULT_KILL, GITIGNORE_LINES, PROGRAM_NAME,
                                           RESULTS_NAME, RUNS_RELDIR, SCRIPTS, WorkspaceConfig, _script_for, check_limits,
                                           load_config, parse_seconds, template_bytes, write_config)


@dataclass
class InitReport:
    path: Path
    branch: str
    commit: str
    config: WorkspaceConfig
    created_repo: bool
    written: list[str] = field(default_factory=list)  # files put there by this init
    kept: list[str] = field(default_factory=list)  # files that already existed and were left alone
    data_warning: Optional[str] = None  # the `ar prepare` hint when data is missing
    resumed: bool = False  # the branch existed: `ar init` run again, nothing changed
    archived: list[str] = field(default_factory=list)  # the previous tag's results, moved aside
    dials: dict = field(default_factory=dict)  # script -> the size line written into it


def _resolve_backend(backend: Optional[str], hw) -> str:
    if backend in BACKENDS:
        return backend
    if backend not in (None, "auto"):
        raise ArError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)} or auto")
    from autoresearch.backends import choose_backend

    return choose_backend(None, hw)


def _ensure_gitignore(folder: Path) -> bool:
    """Add our ignore lines to .gitignore; True if it changed."""
    path = folder / ".gitignore"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    present = {line.strip() for line in text.splitlines()}
    missing = [line for line in GITIGNORE_LINES if line not in present and "/" + line not in present]
    if not missing:
        return False
    if text and not text.endswith("\n"):
        text += "\n"
    path.write_text(text + "# autoresearch: per-machine results, chart and run logs\n" + "\n".join(missing) + "\n", encoding="utf-8")
    return True


_DIAL = re.compile(r"^(DEPTH|DEVICE_BATCH_SIZE|TOTAL_BATCH_SIZE) = [^#\n]*?(\s*#.*)?$", re.M)
_SIZE_NOTE = re.compile(r"^# Size: .*$", re.M)


def _literal(n: int) -> str:
    """2**12 for a power of two from 1024 up (as upstream writes batch sizes), else the number."""
    return f"2**{n.bit_length() - 1}" if n >= 1024 and n & (n - 1) == 0 else str(n)


def write_dials(text: str, suggestion, note: str) -> str:
    """The template with the suggested DEPTH / DEVICE_BATCH_SIZE / TOTAL_BATCH_SIZE as plain
    numbers and a comment naming the machine and profile they suit."""
    values = {"DEPTH": suggestion.depth, "DEVICE_BATCH_SIZE": suggestion.device_batch_size,
              "TOTAL_BATCH_SIZE": suggestion.total_batch_size}
    text = _DIAL.sub(lambda m: f"{m.group(1)} = {_literal(values[m.group(1)])}{m.group(2) or ''}", text)
    return _SIZE_NOTE.sub(f"# Size: {note}".replace("\\", "\\\\"), text, count=1)


def _template_text(name: str, backend: str, hw, prof) -> tuple[str, str]:
    """A training template with the dials for `backend` on this machine; (text, size line)."""
    from autoresearch.backends import suggest_config

    sugg = suggest_config(hw, backend, prof)
    note = f"suggested by `ar init` for {hw.chip or hw.kind} ({backend}), profile {prof.name}"
    text = write_dials(template_bytes(name).decode("utf-8"), sugg, note)
    return text, f"DEPTH = {sugg.depth}, DEVICE_BATCH_SIZE = {sugg.device_batch_size}, TOTAL_BATCH_SIZE = {_literal(sugg.total_batch_size)}"


def _archive(folder: Path, tag: str) -> list[str]:
    """Move the previous tag's results.tsv and runs.jsonl aside (never deleted)."""
    from autoresearch.journal.files import read_results

    moved = []
    results = folder / RESULTS_NAME
    try:
        has_rows = bool(read_results(results))
    except ArError:
        has_rows = results.exists()
    if not has_rows:
        return moved
    for path, stem, ext in ((results, "results", ".tsv"), (folder / RUNS_RELDIR / "runs.jsonl", "runs", ".jsonl")):
        if not path.exists():
            continue
        target = path.with_name(f"{stem}-{tag}{ext}")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{stem}-{tag}.{n}{ext}")
        os.replace(path, target)
        moved.append(str(target.relative_to(folder)))
    return moved


def init_workspace(
    folder: Path,
    tag: str,
    *,
    backend: Optional[str] = None,
    profile: str = "tiny",
    source: Optional[str] = None,
    source_path: Optional[Path] = None,
    budget: Optional[float] = None,
    kill: float = DEFAULT_KILL,
    hardware=None,
) -> InitReport:
    """Set up `folder` as a research workspace on a fresh branch autoresearch/<tag>.

    The branch is made from the current commit (or is the first branch of a new
    repository), and the templates, .gitignore and config are committed on it only: the
    branch you were on is left as it was. Existing files are never overwritten. The
    previous tag's results.tsv and runs.jsonl are archived as results-<tag>.tsv and
    runs-<tag>.jsonl. If the branch exists already (the quick start run again), it is
    checked out and nothing else changes.
    """
    from autoresearch.backends import detect_hardware
    from autoresearch.data.profiles import get_profile
    from autoresearch.data.sources import local_cache_name
    from autoresearch.journal.files import create_results
    from autoresearch.workspace.git import Workspace, valid_branch_name

    folder = Path(folder).resolve()
    branch = BRANCH_PREFIX + tag
    if not tag or not valid_branch_name(branch):
        raise ArError(f"tag {tag!r} does not make a valid git branch name ({branch}); use letters, digits, - or _, e.g. mar5")
    created_repo = not (folder / ".git").exists()
    if not created_repo:
        ws = Workspace.open(folder)
        if ws.branch_exists(branch):
            return _resume(ws, folder, branch, tag)
    prof = get_profile(profile)
    budget = parse_seconds(prof.time_budget if budget is None else budget, "budget")
    kill = parse_seconds(kill, "kill")
    check_limits(budget, kill)
    source = source or prof.source
    if source == "local" or source_path is not None:
        if source_path is None:
            raise ArError("--source local needs --path FOLDER: the folder of .parquet, .jsonl or .txt files to train on")
        if source not in ("local", local_cache_name(source_path)):
            raise ArError(f"--path is only for --source local, not for {source}")
        source_path = Path(source_path).expanduser().resolve()
        source = local_cache_name(source_path)
    hw = hardware or detect_hardware()
    chosen = _resolve_backend(backend, hw)

    ws = Workspace.init(folder)
    if ws.is_dirty():
        raise ArError(f"{folder} has uncommitted changes; commit or stash them before `ar init`")
    if ws.head_commit() is not None and ws.branch is None:
        raise ArError(f"{folder} is on a detached HEAD; check out a branch before `ar init`")
    previous = read_workspace_config(folder).get("tag")
    archived = _archive(folder, str(previous or "previous"))
    ws.create_branch(branch, checkout=True)  # on a new repository: the first branch, no commit yet

    written, kept, dials = [], [], {}
    torch_backend = chosen if chosen != "mlx" else ("mps" if hw.kind == "apple" else "cpu")
    for name in SCRIPTS + (PROGRAM_NAME,):
        target = folder / name
        if target.exists():  # never overwrite work: a later tag starts from the current scripts
            kept.append(name)
            continue
        if name == PROGRAM_NAME:
            target.write_bytes(template_bytes(name))
        else:
            text, dials[name] = _template_text(name, "mlx" if name == "train_mlx.py" else torch_backend, hw, prof)
            target.write_text(text, encoding="utf-8")
        written.append(name)
    if _ensure_gitignore(folder):
        written.append(".gitignore")
    cfg = WorkspaceConfig(tag=tag, backend=chosen, profile=prof.name, source=source, budget=budget, kill=kill,
                          editable=_script_for(chosen), source_path=str(source_path or ""))
    write_config(folder, cfg)
    written.append(str(CONFIG_RELPATH))
    commit = ws.commit([*SCRIPTS, PROGRAM_NAME, ".gitignore", str(CONFIG_RELPATH)], f"autoresearch: start run {tag}")
    (folder / RUNS_RELDIR).mkdir(parents=True, exist_ok=True)
    if create_results(folder / RESULTS_NAME):
        written.append(RESULTS_NAME)
    return InitReport(
        path=folder, branch=branch, commit=commit or ws.head_commit() or "", config=cfg, created_repo=created_repo,
        written=written, kept=kept, data_warning=_data_warning(cfg), archived=archived, dials=dials,
    )


def _data_warning(cfg: WorkspaceConfig) -> Optional[str]:
    try:
        cfg.run_context().check_prepared()
    except ArError as e:
        return str(e)
    return None


def _resume(ws, folder: Path, branch: str, tag: str) -> InitReport:
    """`ar init <tag>` again: check the branch out (when the tree allows) and go on."""
    if ws.branch != branch:
        if ws.is_dirty():
            raise ArError(f"branch {branch} already exists and {folder} has uncommitted changes; "
                          f"commit or stash them, then `git checkout {branch}` (or pick a new tag)")
        ws.checkout(branch)
    cfg = load_config(folder)
    if cfg.tag != tag:
        raise ArError(f"branch {branch} exists but its config names tag {cfg.tag!r}; pick a new tag")
    from autoresearch.journal.files import create_results

    created = create_results(folder / RESULTS_NAME)
    return InitReport(path=folder, branch=branch, commit=ws.head_commit() or "", config=cfg, created_repo=False,
                      written=[RESULTS_NAME] if created else [], data_warning=_data_warning(cfg), resumed=True)
