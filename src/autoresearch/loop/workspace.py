"""The git layer of a research workspace: a thin adapter over GitPython.

Everything that changes the repository goes through the git command line (`repo.git`),
so what `ar` does is exactly what a person would type, hooks and config included; a git
failure becomes one ArError with git's own message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import git

from ..errors import ArError

# Written to the repository's config only when git config has no identity at all
# (fresh CI machines), so commits never fail with "Please tell me who you are".
FALLBACK_NAME = "autoresearch"
FALLBACK_EMAIL = "autoresearch@localhost"


def valid_branch_name(name: str) -> bool:
    """True if git accepts `name` as a branch name (`git check-ref-format --branch`)."""
    if not name or name.startswith("-") or "@{" in name:
        return False  # "-x" would read as an option; "@{-1}" is resolved, not checked
    try:
        git.Git().check_ref_format("--branch", name)
    except git.GitCommandError:
        return False
    return True


class Workspace:
    """A git repository rooted at `path`."""

    def __init__(self, repo: git.Repo):
        self.repo = repo
        self.path = Path(repo.working_tree_dir)

    @classmethod
    def open(cls, path: Path) -> "Workspace":
        try:
            return cls(git.Repo(path, search_parent_directories=False))
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise ArError(f"{path} is not a git repository; run `ar init <tag>` there first") from None

    @classmethod
    def init(cls, path: Path) -> "Workspace":
        """Open the repository at `path`, creating it (and the folder) if there is none."""
        path.mkdir(parents=True, exist_ok=True)
        try:
            ws = cls(git.Repo(path, search_parent_directories=False))
        except git.InvalidGitRepositoryError:
            ws = cls(git.Repo.init(path))
        return ws

    def ensure_identity(self) -> None:
        """Set a repository-local author when git config has none (GIT_AUTHOR_* still win)."""
        missing = []
        for key, fallback in (("name", FALLBACK_NAME), ("email", FALLBACK_EMAIL)):
            try:
                self.repo.git.config("--get", f"user.{key}")
            except git.GitCommandError:  # unset at every level
                missing.append((key, fallback))
        if missing:
            with self.repo.config_writer() as cw:
                for key, fallback in missing:
                    cw.set_value("user", key, fallback)

    # -- state -------------------------------------------------------------------

    @property
    def branch(self) -> Optional[str]:
        """The checked-out branch, or None when HEAD is detached."""
        try:
            return self.repo.active_branch.name
        except TypeError:
            return None

    def head_commit(self, short: bool = True) -> Optional[str]:
        """HEAD's hash (7 characters when short), or None before the first commit."""
        try:
            sha = self.repo.head.commit.hexsha
        except ValueError:
            return None
        return sha[:7] if short else sha

    def commit_subject(self, rev: str = "HEAD") -> str:
        return self.repo.commit(rev).summary

    def is_dirty(self, paths: Iterable[str] = (), untracked: bool = False) -> bool:
        """Uncommitted changes to tracked files (optionally untracked ones too).

        Ignored files never count. With `paths`, only those paths are looked at.
        """
        args = ["--porcelain", "--untracked-files=" + ("normal" if untracked else "no")]
        out = self.repo.git.status(*args, "--", *paths)
        return bool(out.strip())

    def branch_exists(self, name: str) -> bool:
        try:
            self.repo.git.rev_parse("--verify", "--quiet", f"refs/heads/{name}")
        except git.GitCommandError:
            return False
        return True

    def ancestry(self, rev: str = "HEAD") -> set[str]:
        """Short (7-character) hashes of `rev` and all its ancestors; empty before any commit."""
        if self.head_commit() is None:
            return set()
        return {sha[:7] for sha in self.repo.git.rev_list(rev).split()}

    # -- changes -----------------------------------------------------------------

    def _run(self, command: str, *args: str) -> str:
        """A git command that changes state; its failure becomes one clear ArError."""
        try:
            return getattr(self.repo.git, command)(*args)
        except git.GitCommandError as e:
            lines = [ln.strip().removeprefix("stderr: ").strip("'").strip() for ln in (e.stderr or "").splitlines()]
            lines = [ln for ln in lines if ln]
            # git's own message ("fatal: ...", "error: ...") rather than usage text after it
            fallback = lines[0] if lines else f"exit code {e.status}"
            why = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), fallback)
            raise ArError(f"git {command.replace('_', '-')} failed in {self.path}: {why}") from None

    def commit(self, paths: Iterable[str], message: str) -> Optional[str]:
        """Commit exactly `paths` (other staged changes stay staged).

        Returns the new short hash, or None when those paths had nothing to commit.
        """
        paths = [str(p) for p in paths]
        self.ensure_identity()
        self._run("add", "--", *paths)
        if not self.repo.git.status("--porcelain", "--untracked-files=no", "--", *paths).strip():
            return None
        self._run("commit", "-m", message, "--", *paths)
        return self.head_commit()

    def reset_hard(self, commit: str) -> None:
        self._run("reset", "--hard", commit)

    def create_branch(self, name: str, checkout: bool = True) -> None:
        if not valid_branch_name(name):
            raise ArError(f"{name!r} is not a valid git branch name")
        if self.branch_exists(name):
            raise ArError(f"branch {name} already exists")
        if checkout:
            self._run("checkout", "-b", name)
        else:
            self._run("branch", name)

    def checkout(self, name: str) -> None:
        self._run("checkout", name)
