"""The journal as `ar results`, `ar plot` and reports read it: every row with its record,
the branch's ancestry and the workspace's own group (budget, default backend)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from autoresearch.errors import ArError
from autoresearch.journal.queries import Entry, Summary, best_before, budget_key, history, summarize
from autoresearch.workspace.config import load_config


@dataclass(frozen=True)
class View:
    """What `ar results`, `ar plot` and reports read: the entries, the branch, the default group."""

    entries: list[Entry]
    ancestry: Optional[set[str]]  # None outside a git repository: every row counts
    key: Optional[tuple[str, str]]  # the workspace's budget and default backend

    @property
    def backends(self) -> list[str]:
        return list(dict.fromkeys(e.backend for e in self.entries))

    def summary(self) -> Summary:
        key = self.key if any(e.key == self.key and e.counts for e in self.entries) else None
        return summarize(self.entries, key, self.ancestry)

    def best_before(self) -> list[Optional[float]]:
        return best_before(self.entries, self.ancestry)


def workspace_view(folder: Path) -> View:
    """The journal of the workspace at `folder` (a bare results.tsv folder works too)."""
    folder = Path(folder)
    try:
        cfg = load_config(folder)
        budget, backend = cfg.budget, cfg.backend
    except ArError:
        cfg, budget, backend = None, 0.0, ""
    entries = history(folder, budget=budget, backend=backend)
    return View(entries, _ancestry(folder), (budget_key(budget), backend) if cfg else None)


def _ancestry(folder: Path) -> Optional[set[str]]:
    """Short hashes of HEAD and its ancestors; None outside a repository or before a commit.

    One `git rev-list` of our own rather than workspace.git's: importing GitPython and its
    two git processes were a third of `ar results --last`'s 0.2 s target, and a read that a
    Ctrl-C interrupts needs none of that adapter's clean-up care.
    """
    if not (folder / ".git").exists():  # the repository at `folder`, never a parent's
        return None
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    env["GIT_CEILING_DIRECTORIES"] = str(folder.resolve().parent)  # a broken .git: no search above
    try:
        git = subprocess.run(["git", "rev-list", "HEAD", "--"], cwd=folder, env=env, capture_output=True, text=True)
    except OSError:  # no git on PATH
        return None
    if git.returncode != 0:  # no commit yet (or not a repository after all)
        return None
    return {sha[:7] for sha in git.stdout.split()} or None


TABLE_COLUMNS = ("#", "commit", "val_bpb", "vs best", "memory", "status", "description")


def table_rows(entries: Sequence[Entry], before: Sequence[Optional[float]]) -> list[tuple[str, ...]]:
    """The cells of `ar results` as text, one tuple per row in TABLE_COLUMNS order.

    "vs best" is the change against the best of the row's budget and backend before it
    (empty for the first and for crashes), so a negative number is an improvement.
    """
    out = []
    for e, b in zip(entries, before):
        r = e.row
        crashed = r.status == "crash" or r.val_bpb <= 0  # a crash, or a discard stopped early: no value
        out.append((
            str(e.number), r.commit, "-" if crashed else f"{r.val_bpb:.6f}",
            f"{r.val_bpb - b:+.6f}" if b is not None and not crashed else "",
            "-" if crashed else f"{r.memory_gb:.1f} GB", r.status, r.description,
        ))
    return out
