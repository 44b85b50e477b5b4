"""Git worktrees for `ar loop --workers N`: one checkout of the research branch per worker.

Each worker edits, commits and runs its experiment in its own folder,
`.autoresearch/worktrees/w<i>`, on a detached HEAD (the branch itself stays checked
out in the workspace, which only ever moves to a kept commit). Commits made there land
in the shared object store, so the workspace can fast-forward its branch to them.

Ownership: the process using the worktrees holds an exclusive lock (`flock`) on
`.autoresearch/worktrees/owner.lock` for as long as it runs; the operating system drops
it when the process dies, even with kill -9. On start, worktrees whose lock can be taken
belonged to a dead process and are removed (`git worktree remove --force`, then
`git worktree prune`); a lock held by a live process is a clear error. On a normal exit,
Ctrl-C or an error, everything is removed again.

The folder is listed in the repository's `.git/info/exclude` (local, never committed),
so `git status` never shows it.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Optional

import git

from autoresearch.errors import ArError
from autoresearch.workspace.editable import write_editable
from autoresearch.workspace.git import Workspace, git_output, run_git

WORKTREES_RELDIR = Path(".autoresearch") / "worktrees"
_LOCK = "owner.lock"
_EXCLUDE_LINE = "/.autoresearch/worktrees/"


def _show(repo: git.Repo, rev: str, path: str) -> str:
    """The file `path` as of `rev`, byte for byte."""
    try:
        return git_output(repo, "show", f"{rev}:{path}", strip=False)
    except git.GitCommandError:
        raise ArError(f"git show {rev}:{path} failed in {repo.working_tree_dir}: no such file in that commit") from None


class Worktree:
    """One worker's checkout (detached HEAD)."""

    def __init__(self, path: Path, name: str):
        self.path = Path(path)
        self.name = name
        self.ws = Workspace.open(self.path)

    def head(self) -> Optional[str]:
        return self.ws.head_commit()

    def show(self, rev: str, path: str) -> str:
        """The file `path` as of `rev`, byte for byte."""
        return _show(self.ws.repo, rev, path)

    def checkout(self, commit: str) -> None:
        """Make the tree exactly `commit`: detached, no changes, no files a script left behind."""
        repo = self.ws.repo
        run_git(repo, "checkout", "--quiet", "--force", "--detach", commit)
        run_git(repo, "clean", "-fdxq")

    def ensure_at(self, commit: str) -> None:
        if self.head() != commit[:7] or self.ws.is_dirty(untracked=True):
            self.checkout(commit)

    def commit_change(self, parent: str, editable: str, text: str, message: str) -> Optional[str]:
        """`text` as `editable` on top of `parent`, committed; None when it changes nothing."""
        self.checkout(parent)
        write_editable(self.path, editable, text)
        commit = self.ws.commit([editable], message)
        if commit is None:
            self.checkout(parent)
        return commit

    def reapply(self, commit: str, onto: str, editable: str, message: str) -> tuple[Optional[str], str]:
        """Re-apply `commit`'s change to `editable` on top of `onto` (a 3-way merge, `merge3`).

        Returns (new commit, "") or (None, why): "conflicts with the new best", or
        "its change is already in the new best" when nothing is left to apply.
        """
        repo = self.ws.repo
        base, theirs, ours = (_show(repo, rev, editable) for rev in (f"{commit}^", commit, onto))
        merged = merge3(base, ours, theirs)
        if merged is None:
            return None, "conflicts with the new best"
        if merged == ours:
            return None, "its change is already in the new best"
        new = self.commit_change(onto, editable, merged, message)
        return (new, "") if new else (None, "its change is already in the new best")


def _changes(base: list[str], new: list[str]) -> list[tuple[int, int, list[str]]]:
    """The edits base -> new as (start, end, replacement lines), in base line numbers."""
    sm = difflib.SequenceMatcher(None, base, new, autojunk=False)
    return [(i1, i2, new[j1:j2]) for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"]


def _overlap(a: tuple[int, int, list[str]], b: tuple[int, int, list[str]]) -> bool:
    (a1, a2, _), (b1, b2, _) = a, b
    if a1 == a2 and b1 == b2:
        return a1 == b1  # two insertions at one place: their order is ambiguous
    if a1 == a2:
        return b1 < a1 < b2
    if b1 == b2:
        return a1 < b1 < a2
    return a1 < b2 and b1 < a2


def merge3(base: str, ours: str, theirs: str) -> Optional[str]:
    """`ours` plus the change base -> `theirs`, line by line; None when the two overlap.

    Unlike git's merge it accepts changes on adjacent lines (git calls those a conflict,
    and a block of hyperparameters is all adjacent lines); an identical change made on
    both sides counts once. That is why it is written here: `git merge-file` and the
    merge3 package (PyPI) both need an unchanged line between the two changes.
    """
    b, o, t = (x.splitlines(keepends=True) for x in (base, ours, theirs))
    mine = _changes(b, o)
    todo = [c for c in _changes(b, t) if c not in mine]
    if any(_overlap(m, c) for m in mine for c in todo):
        return None
    out: list[str] = []
    pos = 0
    for i1, i2, lines in sorted(mine + todo, key=lambda c: (c[0], c[1])):
        out += b[pos:i1] + lines
        pos = i2
    return "".join(out + b[pos:])


class WorktreePool:
    """The worktrees of one `ar loop`; use as a context manager (see the module doc)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        self.root = self.folder / WORKTREES_RELDIR
        self.trees: list[Worktree] = []
        self.stale: list[str] = []  # worktrees of a dead process removed by claim()
        self._lock_fd: Optional[int] = None
        self._repo = Workspace.open(self.folder).repo

    # -- ownership

    def _exclude(self) -> None:
        common = Path(run_git(self._repo, "rev-parse", "--git-common-dir"))
        if not common.is_absolute():
            common = self.folder / common
        path = common / "info" / "exclude"
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if _EXCLUDE_LINE not in text.splitlines():
            path.parent.mkdir(parents=True, exist_ok=True)
            sep = "" if not text or text.endswith("\n") else "\n"
            path.write_text(f"{text}{sep}# autoresearch: worker checkouts of `ar loop --workers`\n{_EXCLUDE_LINE}\n", encoding="utf-8")

    def claim(self) -> list[str]:
        """Take the lock and remove stale worktrees; the names of those removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._exclude()
        fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ArError(
                f"another `ar loop --workers` (pid {owner}) is running in {self.folder}; stop it first "
                "(two loops would fight over the branch)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        self._lock_fd = fd
        self.stale = self._remove_all()
        return self.stale

    def release(self) -> None:
        try:
            self._remove_all()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing drops the flock
                self._lock_fd = None
                with contextlib.suppress(OSError):
                    (self.root / _LOCK).unlink()
                with contextlib.suppress(OSError):
                    self.root.rmdir()

    def __enter__(self) -> "WorktreePool":
        self.claim()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- the trees

    def registered(self) -> list[Path]:
        """Worktrees git knows about under our folder (also those of a dead process)."""
        out = []
        for line in run_git(self._repo, "worktree", "list", "--porcelain").splitlines():
            if line.startswith("worktree "):
                path = Path(line[len("worktree ") :])
                with contextlib.suppress(ValueError):
                    path.resolve().relative_to(self.root.resolve())
                    out.append(path)
        return out

    def _remove_all(self) -> list[str]:
        removed = []
        for path in self.registered():
            with contextlib.suppress(git.GitCommandError):
                git_output(self._repo, "worktree", "remove", "--force", "--force", str(path))
            removed.append(path.name)
        if self.root.exists():
            for child in self.root.iterdir():  # folders git no longer knows (a removal cut short)
                if child.name == _LOCK:
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        run_git(self._repo, "worktree", "prune")
        self.trees = []
        return removed

    def create(self, n: int, commit: str) -> list[Worktree]:
        """Worktrees w1..wn at `commit` (claim() first)."""
        if self._lock_fd is None:
            raise RuntimeError("claim() the worktrees before creating them")
        for i in range(1, n + 1):
            path = self.root / f"w{i}"
            run_git(self._repo, "worktree", "add", "--quiet", "--detach", str(path), commit)
            self.trees.append(Worktree(path, f"w{i}"))
        return self.trees


def prune_stale_worktrees(folder: Path) -> list[str]:
    """Remove worker checkouts a dead `ar loop --workers` left behind; their names.

    Does nothing when there is no worktree folder; an ArError when a live loop owns it.
    """
    folder = Path(folder).resolve()
    if not (folder / WORKTREES_RELDIR).exists():
        return []
    pool = WorktreePool(folder)
    removed = pool.claim()
    pool.release()
    return removed
