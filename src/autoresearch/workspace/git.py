"""The git layer of a research workspace: a thin adapter over GitPython.

Everything goes through the git command line (`git_output` / `run_git`), so what `ar`
does is exactly what a person would type, hooks and config included; a git failure
becomes one ArError with git's own message.

Stopping is the loop's job, never git's: Ctrl-C in a terminal sends SIGINT to the whole
foreground process group, `ar` and its git children alike, and a git child killed
midway (or one of GitPython's long-lived `cat-file --batch` helpers) would make the
clean-up that follows (`git reset --hard` to the best commit) fail. So every git process
starts with the stop signals blocked (`_Git`): one caught in the group's signal simply
finishes, and the loop stops cleanly after it. (They stay in `ar`'s process group, which
is how containment tells them from a training run's orphans.) Object lookups
(`repo.commit(...)`, `repo.head.commit`) are avoided too: they talk to those helpers
over a pipe that an interrupt can leave half read.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterable, Optional, Union

import git

from autoresearch.errors import ArError

# Written to the repository's config only when git config has no identity at all
# (fresh CI machines), so commits never fail with "Please tell me who you are".
FALLBACK_NAME = "autoresearch"
FALLBACK_EMAIL = "autoresearch@localhost"

# The signals the loop turns into a clean stop (experiment/signals.py).
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class _Git(git.Git):
    """GitPython's command runner; its processes start with the stop signals blocked.

    A child inherits the signal mask of the thread that starts it and git keeps it, so the
    signals stay pending until it exits. (A hook run through a shell unblocks them: a
    Ctrl-C at that moment can fail the command, which then says so, but git cleans up.)
    While the mask is set here, `ar` itself still gets the signals through its other
    threads, or right after the command.
    """

    def execute(self, command, *args, **kwargs):
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            return super().execute(command, *args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Repo(git.Repo):
    GitCommandWrapperType = _Git  # also runs `git init` and the cat-file helpers


def open_repo(path: Path) -> git.Repo:
    """The repository at `path` (not a parent's); its git processes ignore Ctrl-C (see _Git)."""
    return _Repo(path, search_parent_directories=False)


def git_output(where: Union[git.Repo, Path], *args: str, strip: bool = True) -> str:
    """`git <args>` in a repository or folder; its stdout. A failure raises git.GitCommandError."""
    runner = where.git if isinstance(where, git.Repo) else _Git(str(where))
    return runner.execute(["git", *args], strip_newline_in_stdout=strip)


def run_git(where: Union[git.Repo, Path], *args: str, strip: bool = True) -> str:
    """`git <args>` in a repository or folder; its failure becomes one clear ArError."""
    try:
        return git_output(where, *args, strip=strip)
    except git.GitCommandError as e:
        lines = [ln.strip().removeprefix("stderr: ").strip("'").strip() for ln in (e.stderr or "").splitlines()]
        lines = [ln for ln in lines if ln]
        # git's own message ("fatal: ...", "error: ...") rather than usage text after it
        fallback = lines[0] if lines else f"exit code {e.status}"
        why = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), fallback)
        folder = where.working_tree_dir if isinstance(where, git.Repo) else where
        raise ArError(f"git {args[0]} failed in {folder}: {why}") from None


def valid_branch_name(name: str) -> bool:
    """True if git accepts `name` as a branch name (`git check-ref-format --branch`)."""
    if not name or name.startswith("-") or "@{" in name:
        return False  # "-x" would read as an option; "@{-1}" is resolved, not checked
    try:
        _Git().execute(["git", "check-ref-format", "--branch", name])
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
            return cls(open_repo(path))
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise ArError(f"{path} is not a git repository; run `ar init <tag>` there first") from None

    @classmethod
    def init(cls, path: Path) -> "Workspace":
        """Open the repository at `path`, creating it (and the folder) if there is none."""
        path.mkdir(parents=True, exist_ok=True)
        try:
            return cls(open_repo(path))
        except git.InvalidGitRepositoryError:
            return cls(_Repo.init(path))

    def ensure_identity(self) -> None:
        """Set a repository-local author when git config has none (GIT_AUTHOR_* still win)."""
        missing = []
        for key, fallback in (("name", FALLBACK_NAME), ("email", FALLBACK_EMAIL)):
            try:
                git_output(self.repo, "config", "--get", f"user.{key}")
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
            sha = git_output(self.repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        except git.GitCommandError:  # no commit yet
            return None
        return sha[:7] if short else sha

    def commit_subject(self, rev: str = "HEAD") -> str:
        """The first line of `rev`'s message."""
        message = run_git(self.repo, "log", "-1", "--format=%B", rev, "--")
        return message.split("\n", 1)[0]

    def is_dirty(self, paths: Iterable[str] = (), untracked: bool = False) -> bool:
        """Uncommitted changes to tracked files (optionally untracked ones too).

        Ignored files never count. With `paths`, only those paths are looked at.
        """
        args = ["--porcelain", "--untracked-files=" + ("normal" if untracked else "no")]
        out = run_git(self.repo, "status", *args, "--", *paths)
        return bool(out.strip())

    def branch_exists(self, name: str) -> bool:
        try:
            git_output(self.repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}")
        except git.GitCommandError:
            return False
        return True

    def ancestry(self, rev: str = "HEAD") -> set[str]:
        """Short (7-character) hashes of `rev` and all its ancestors; empty before any commit."""
        if self.head_commit() is None:
            return set()
        return {sha[:7] for sha in run_git(self.repo, "rev-list", rev, "--").split()}

    # -- changes -----------------------------------------------------------------

    def commit(self, paths: Iterable[str], message: str) -> Optional[str]:
        """Commit exactly `paths` (other staged changes stay staged).

        Returns the new short hash, or None when those paths had nothing to commit.
        """
        paths = [str(p) for p in paths]
        self.ensure_identity()
        run_git(self.repo, "add", "--", *paths)
        if not self.is_dirty(paths):
            return None
        run_git(self.repo, "commit", "-m", message, "--", *paths)
        return self.head_commit()

    def show(self, rev: str, path: str) -> str:
        """The text of `path` as committed at `rev`."""
        return run_git(self.repo, "show", f"{rev}:{path}", strip=False)

    def reset_hard(self, commit: str) -> None:
        run_git(self.repo, "reset", "--hard", commit)

    def create_branch(self, name: str, checkout: bool = True) -> None:
        if not valid_branch_name(name):
            raise ArError(f"{name!r} is not a valid git branch name")
        if self.branch_exists(name):
            raise ArError(f"branch {name} already exists")
        if checkout:
            run_git(self.repo, "checkout", "-b", name)
        else:
            run_git(self.repo, "branch", name)

    def checkout(self, name: str) -> None:
        run_git(self.repo, "checkout", name)
