"""A git workspace with a fake training script, for loop tests that need no `ar init`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from autoresearch.workspace.git import Workspace

GITIGNORE = "results.tsv\n.autoresearch/runs/\n.autoresearch/notes.md\n"


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def git_workspace(folder: Path, script: str, program: str = "# autoresearch\n") -> Workspace:
    """A repository holding train.py, program.md and .gitignore, committed."""
    w = Workspace.init(folder)
    (folder / "train.py").write_text(script)
    (folder / "program.md").write_text(program)
    (folder / ".gitignore").write_text(GITIGNORE)
    w.commit(["train.py", "program.md", ".gitignore"], "fake training script")
    return w
