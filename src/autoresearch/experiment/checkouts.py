"""Where an experiment's commit lives, and what keep and discard do to the branch.

- `InPlace`: the workspace's own checkout (the serial loop, the baseline, `ar run`). The
  commit is made on the branch; a discard resets it to the parent, so HEAD is always the
  best. `ar run` passes `reset_discards=False`: as in upstream's manual loop, the person
  (or agent) who committed resets.
- `InWorktree`: a worker's detached worktree (the parallel loop). The commit is made
  there; the branch in the workspace's checkout only ever fast-forwards to a keep.
"""

from __future__ import annotations

from typing import Optional

from autoresearch.workspace.editable import write_editable
from autoresearch.workspace.git import Workspace
from autoresearch.workspace.worktrees import Worktree


class InPlace:
    in_worktree = False

    def __init__(self, ws: Workspace, *, reset_discards: bool = True):
        self.ws = ws
        self.reset_discards = reset_discards

    def head(self) -> Optional[str]:
        return self.ws.head_commit()

    def show(self, rev: str, editable: str) -> str:
        return self.ws.show(rev, editable)

    def commit(self, parent: str, editable: str, text: str, message: str) -> Optional[str]:
        write_editable(self.ws.path, editable, text)
        commit = self.ws.commit([editable], message)
        if commit is None:
            self.ws.reset_hard(parent)  # nothing to commit: put the file back as it was
        return commit

    def moved(self, parent: str) -> bool:
        return False  # nobody else moves this branch while the experiment runs

    def keep(self, commit: str, parent: str) -> None:
        return None  # HEAD is the commit already

    def discard(self, commit: str, parent: str) -> None:
        if self.reset_discards and commit != parent:
            self.ws.reset_hard(parent)

    def abandon(self, commit: Optional[str], parent: str) -> None:
        if self.reset_discards and (self.ws.head_commit() != parent[:7] or self.ws.is_dirty()):
            self.ws.reset_hard(parent)

    def reapply(self, commit: str, onto: str, editable: str, message: str) -> tuple[Optional[str], str]:
        raise AssertionError("the workspace's own checkout never moves under an experiment")


class InWorktree:
    in_worktree = True

    def __init__(self, ws: Workspace, tree: Worktree):
        self.ws = ws  # the branch
        self.tree = tree  # where the experiment is committed and run

    def head(self) -> Optional[str]:
        return self.ws.head_commit()

    def show(self, rev: str, editable: str) -> str:
        return self.tree.show(rev, editable)

    def commit(self, parent: str, editable: str, text: str, message: str) -> Optional[str]:
        return self.tree.commit_change(parent, editable, text, message)

    def moved(self, parent: str) -> bool:
        return self.ws.head_commit() != parent[:7]

    def keep(self, commit: str, parent: str) -> None:
        self.ws.reset_hard(commit)  # a fast-forward: its parent is the branch's HEAD

    def discard(self, commit: str, parent: str) -> None:
        return None  # it only ever lived in the worktree

    def abandon(self, commit: Optional[str], parent: str) -> None:
        return None

    def reapply(self, commit: str, onto: str, editable: str, message: str) -> tuple[Optional[str], str]:
        return self.tree.reapply(commit, onto, editable, message)
