"""The journal as `ar results`, `ar plot` and reports read it: every row with its record,
the branch's ancestry and the workspace's own group (budget, default backend). `ar results`
reads it through the journal's cache (results_view): a partial view, without the records."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from autoresearch.errors import ArError
from autoresearch.journal.queries import Entry, Summary, Tally, best_before, budget_key, history, summarize, tally_of

if TYPE_CHECKING:
    from autoresearch.journal.cache import Settings


class View:
    """What `ar results`, `ar plot` and reports read: the entries, the branch, the default group.

    `ar results` gets a partial view (View.partial, from journal/cache.py): `known` holds
    every row that counts (Entry.counts: all the best needs) and every row from number
    `first` on, and `tally` what the journal says of all its rows; `entries` loads them all,
    when asked. tail, best_before, summary and summarize answer from `known` where they can."""

    def __init__(self, entries: list[Entry], ancestry: Optional[set[str]], key: Optional[tuple[str, str]]) -> None:
        self.ancestry = ancestry  # None outside a git repository: every row counts
        self.key = key  # the workspace's budget and default backend
        self.known, self.first, self.total = entries, 1, len(entries)
        self._entries: Optional[list[Entry]] = entries
        self._load: Optional[Callable[[], list[Entry]]] = None
        self._tally: Optional[Tally] = None
        self._partial = False
        self._counted: Optional[list[Entry]] = None

    @classmethod
    def partial(cls, known: list[Entry], first: int, tally: Tally, load: Callable[[], list[Entry]],
                ancestry: Optional[set[str]], key: Optional[tuple[str, str]]) -> View:
        view = cls(known, ancestry, key)
        view.first, view.total, view._tally, view._partial = first, tally.rows, tally, True
        if first > 1:
            view._entries, view._load = None, load
        return view

    @property
    def entries(self) -> list[Entry]:
        if self._entries is None:
            self._entries = self._load()
        return self._entries

    @property
    def tally(self) -> Tally:
        if self._tally is None:
            self._tally = tally_of(self.entries)
        return self._tally

    @property
    def counted(self) -> list[Entry]:
        """The entries that count (Entry.counts), in order."""
        if self._counted is None:
            self._counted = [e for e in self.known if e.counts]
        return self._counted

    @property
    def backends(self) -> list[str]:
        return list(dict.fromkeys(e.backend for e in self.entries))

    def tail(self, last: Optional[int] = None) -> list[Entry]:
        """The last `last` entries (None: all)."""
        n = self.total if last is None else min(last, self.total)
        if self.total - n + 1 >= self.first:  # all in `known`, as its last n
            return self.known[len(self.known) - n:]
        return self.entries[self.total - n:]

    def best_before(self, start: int = 0) -> list[Optional[float]]:
        """For each entry from index `start` on, the best of its own group before it (queries.best_before)."""
        if start + 1 >= self.first:  # from `known`: the rows before `start` that count, then the rest
            split = len(self.known) - (self.total - start)
            head = [e for e in self.known[:split] if e.counts]
            return best_before(head + self.known[split:], self.ancestry)[len(head):]
        return best_before(self.entries, self.ancestry)[start:]

    def summary(self) -> Summary:
        """The summary of the workspace's group, or of the first kept row's if it has none."""
        key = self.key if any(e.key == self.key for e in self.counted) else None
        return self.summarize(key)

    def summarize(self, key: Optional[tuple[str, str]]) -> Summary:
        """queries.summarize over every row (of a partial view: from the rows that count and the tally)."""
        if self._partial:
            return summarize(self.counted, key, self.ancestry, tally=self._tally)
        return summarize(self.entries, key, self.ancestry)


def workspace_view(folder: Path) -> View:
    """The journal of the workspace at `folder` (a bare results.tsv folder works too)."""
    folder = Path(folder)
    git = _Ancestry(folder)  # git walks the history while we read the journal
    try:
        found = _settings(folder)
        budget, backend = found or (0.0, "")
        entries = history(folder, budget=budget, backend=backend)
    finally:
        ancestry = git.result()
    return View(entries, ancestry, _key(found))


def results_view(folder: Path) -> View:
    """workspace_view for `ar results`: a partial view, from the journal's cache (journal/cache.py)
    where it is fresh, so a repeat call parses nothing. Its entries carry no records (Entry.record)."""
    folder = Path(folder)
    git = _Ancestry(folder)
    try:
        from autoresearch.journal.cache import cached_history  # here: after git has started

        j = cached_history(folder, lambda: _settings(folder))
    finally:
        ancestry = git.result()
    return View.partial(j.known, j.first, j.tally, j.load, ancestry, _key(j.settings))


def _key(found: Settings) -> Optional[tuple[str, str]]:
    return (budget_key(found[0]), found[1]) if found else None


def _settings(folder: Path) -> Settings:
    """The workspace's budget and default backend; None where it has no (valid) config."""
    from autoresearch.workspace.config import load_config  # its imports: only when no cache answers

    try:
        cfg = load_config(folder)
    except ArError:
        return None
    return cfg.budget, cfg.backend


class _Ancestry:
    """Short hashes of HEAD and its ancestors; None outside a repository or before a commit.

    One `git rev-list` of our own rather than workspace.git's: importing GitPython and its
    two git processes were a third of `ar results --last`'s 0.2 s target, and a read that a
    Ctrl-C interrupts needs none of that adapter's clean-up care. Started at once and read
    by a thread (its output outgrows a pipe's buffer), so it runs beside the journal's read.
    """

    def __init__(self, folder: Path) -> None:
        self._proc, self._out = None, []
        if not (folder / ".git").exists():  # the repository at `folder`, never a parent's
            return
        env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
        env["GIT_CEILING_DIRECTORIES"] = str(folder.resolve().parent)  # a broken .git: no search above
        try:
            self._proc = subprocess.Popen(["git", "rev-list", "HEAD", "--"], cwd=folder, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:  # no git on PATH
            return
        self._reader = threading.Thread(target=lambda: self._out.append(self._proc.stdout.read()), daemon=True)
        self._reader.start()

    def result(self) -> Optional[set[str]]:
        if self._proc is None:
            return None
        self._reader.join()
        self._proc.stdout.close()
        if self._proc.wait() != 0:  # no commit yet (or not a repository after all)
            return None
        return {sha[:7] for sha in self._out[0].split()} or None


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
