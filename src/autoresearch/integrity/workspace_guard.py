"""WorkspaceGuard, around each run: before, the workspace must hold nothing but the
committed state (strict, the loop: no changed tracked file, no untracked file Python could
import) and the editable file must be a regular file, not a symbolic link; results.tsv,
runs.jsonl, the tracked files and the control files of .git are copied, everything else is
listed. After, every difference is undone where possible (files restored from the copies,
new files removed, a symlink replaced by the file) and reported; the run is then rejected.
A change to the installed harness (autoresearch/data) cannot be undone safely from here:
the run is rejected and the next run refuses to start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from autoresearch.errors import ArError
from autoresearch.workspace.editable import check_editable

# -- the workspace around a run ----------------------------------------------------------------

_IMPORTABLE = (".py", ".pyc", ".pyd", ".so", ".pth", ".dylib")
# What `ar plot` and `ar report` write in the workspace, maybe while a run is going on:
# never the run's doing, and nothing the judge or a later run reads.
_AR_OUTPUTS = ("progress.png", "report.html")
_COPY_LIMIT = 1 << 20  # .git files up to this size are copied (packs are only listed)


@dataclass(frozen=True)
class _Entry:
    kind: str  # file | dir | link
    size: int
    mtime: int
    mode: int
    data: Optional[bytes] = None
    target: str = ""  # a symlink's target


def _entry(path: Path, copy: bool) -> Optional[_Entry]:
    try:
        st = path.lstat()
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return _Entry("link", 0, st.st_mtime_ns, st.st_mode, target=os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return _Entry("dir", 0, 0, st.st_mode)
    data = None
    if copy:
        with contextlib.suppress(OSError):
            data = path.read_bytes()
    return _Entry("file", st.st_size, st.st_mtime_ns, st.st_mode, data)


def _walk(root: Path, skip: Iterable[str] = ()) -> Iterable[Path]:
    skip = set(skip)
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    p = Path(e.path)
                    if p.relative_to(root).as_posix() in skip:
                        continue
                    yield p
                    if e.is_dir(follow_symlinks=False):
                        stack.append(p)
        except OSError:
            continue


def _git_lines(folder: Path, *args: str) -> list[str]:
    from autoresearch.workspace.git import run_git  # git started with the stop signals held (workspace.py)

    return [line for line in run_git(folder, *args, strip=False).split("\0") if line]


def harness_dir() -> Path:
    """The installed harness (autoresearch/data): what every run's measurement executes."""
    from autoresearch import data

    return Path(data.__file__).resolve().parent


def compile_harness() -> None:
    """Write the harness's byte code now, for every optimisation level, so that neither a
    run nor `ar` itself writes it later (which would look like a change to the harness).
    Silently nothing where the package is not writable (then no run can change it either)."""
    import compileall

    with contextlib.suppress(OSError):
        compileall.compile_dir(str(harness_dir()), quiet=2, optimize=[0, 1, 2])


def harness_state() -> dict[str, tuple]:
    root = harness_dir()
    out = {}
    for p in _walk(root):
        if "__pycache__" in p.relative_to(root).parts:
            continue  # Python writes these on first import; the sources are what is checked
        with contextlib.suppress(OSError):
            st = p.lstat()
            if not stat.S_ISDIR(st.st_mode):
                out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


class WorkspaceGuard:
    """Snapshot the workspace before a run; after it, undo and report what the run changed."""

    def __init__(self, folder: Path, editable: str, log_path: Path, *, strict: bool = True,
                 harness_baseline: Optional[dict] = None):
        self.folder = Path(folder).resolve()
        self.editable = editable
        self.log_rel = Path(log_path).resolve().relative_to(self.folder).as_posix() if \
            Path(log_path).resolve().is_relative_to(self.folder) else None
        self.strict = strict
        self.harness_baseline = harness_baseline
        self.files: dict[str, _Entry] = {}
        self.tracked: set[str] = set()
        self.git: dict[str, _Entry] = {}
        self.harness: dict[str, tuple] = {}

    # before

    def before(self) -> None:
        """Check and snapshot. ArError when the run must not start."""
        check_editable(self.folder, self.editable)
        if self.harness_baseline is not None:
            changed = _diff_keys(self.harness_baseline, harness_state())
            if changed:
                raise ArError(f"the installed harness changed since this loop started ({', '.join(changed[:3])} in "
                              f"{harness_dir()}); a run may have tampered with it: reinstall autoresearch "
                              "(pip install --force-reinstall autoresearch) and start again")
        if self.strict:
            # Changed tracked files, and untracked files Python could import (the script's
            # folder is first on sys.path: a stray torch.py would shadow torch). Other
            # untracked files (notes, progress.png) may stay; the run cannot change them.
            dirty = [line[3:] for line in _git_lines(self.folder, "status", "--porcelain", "-z", "--untracked-files=all")
                     if not line.startswith("??") or line.endswith(_IMPORTABLE)]
            if dirty:
                raise ArError(f"{self.folder} has changes besides the committed experiment ({', '.join(dirty[:5])}); "
                              "an experiment runs in the committed workspace only: commit or remove them")
        # Copied: tracked and untracked (not ignored) files, results.tsv and runs.jsonl.
        # Ignored files (logs, a virtualenv) are only listed.
        self.tracked = set(_git_lines(self.folder, "ls-files", "-z", "--cached", "--others", "--exclude-standard"))
        for p in _walk(self.folder, skip=[".git"]):
            rel = p.relative_to(self.folder).as_posix()
            copy = rel in self.tracked or rel in ("results.tsv", ".autoresearch/runs/runs.jsonl")
            always = rel in ("results.tsv", ".autoresearch/runs/runs.jsonl", self.editable)
            e = _entry(p, copy)
            if e is not None and e.kind == "file" and e.size > _COPY_LIMIT and not always:
                e = _entry(p, copy=False)  # a big data file kept in the workspace: listed only
            if e is not None:
                self.files[rel] = e
        git_dir = self.folder / ".git"
        for p in _walk(git_dir):
            rel = p.relative_to(git_dir).as_posix()
            # Control files (HEAD, refs, config, hooks, index, logs) are copied; objects,
            # of which there may be many, only listed (content-addressed: rarely touched).
            e = _entry(p, copy=not rel.startswith("objects/"))
            if e is not None and e.kind == "file" and e.size > _COPY_LIMIT:
                e = _entry(p, copy=False)
            if e is not None:
                self.git[rel] = e
        self.harness = harness_state()

    # after

    def after(self) -> list[str]:
        """Undo what the run changed; one line per thing it did (empty: nothing)."""
        problems: list[str] = []
        self._restore(self.folder, self.files, problems, skip={".git"}, label="")
        self._restore(self.folder / ".git", self.git, problems, skip=set(), label=".git/")
        changed = _diff_keys(self.harness, harness_state())
        if changed:
            problems.append(f"changed the installed harness ({', '.join(changed[:3])}); it was not undone and the "
                            "next run will not start")
        return problems

    def _restore(self, root: Path, before: dict[str, _Entry], problems: list[str], skip: set, label: str) -> None:
        now: dict[str, _Entry] = {}
        for p in _walk(root, skip=skip):
            rel = p.relative_to(root).as_posix()
            e = _entry(p, copy=False)
            if e is not None:
                now[rel] = e
        # New things first, deepest first, so a new folder is empty when it is removed.
        for rel in sorted(set(now) - set(before), key=lambda r: -r.count("/")):
            if label == "" and (rel == self.log_rel or rel in _AR_OUTPUTS):
                continue
            path = root / rel
            if now[rel].kind == "dir":
                shutil.rmtree(path, ignore_errors=True)
                if path.exists():
                    continue
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            if "/" not in rel or (rel.rsplit("/", 1)[0] in before):
                problems.append(f"created {label}{rel} (removed)")
        for rel, old in sorted(before.items()):
            if label == "" and (rel == self.log_rel or rel in _AR_OUTPUTS):
                continue
            cur = now.get(rel)
            if cur is not None and cur.kind == old.kind and cur.target == old.target and (
                old.kind == "dir" or (cur.size, cur.mtime, cur.mode) == (old.size, old.mtime, old.mode)
            ):
                continue
            if cur is not None and old.kind == "dir" and cur.kind == "dir":
                continue
            problems.append(self._put_back(root / rel, old, cur, f"{label}{rel}"))

    @staticmethod
    def _put_back(path: Path, old: _Entry, cur: Optional[_Entry], name: str) -> str:
        what = "deleted" if cur is None else "replaced by a symbolic link" if cur.kind == "link" and old.kind != "link" \
            else "modified"
        try:
            if cur is not None and (cur.kind != old.kind or cur.kind == "link"):
                if cur.kind == "dir":
                    shutil.rmtree(path)
                else:
                    path.unlink()
            if old.kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
            elif old.kind == "link":
                path.symlink_to(old.target)
            elif old.data is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(old.data)
                os.chmod(path, stat.S_IMODE(old.mode))
                os.utime(path, ns=(old.mtime, old.mtime))
            else:
                return f"{what} {name} (could not be undone)"
        except OSError as e:
            return f"{what} {name} (could not be undone: {e})"
        return f"{what} {name} (restored)"


def _diff_keys(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
