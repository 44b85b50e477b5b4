"""Finish what a dead `ar` process left open (kill -9, a power cut).

An experiment with a "proposing" or "started" record and no "finished", "abandoned" or
"recovered" one was cut short. If it had started and its row is missing, a crash row
"... (interrupted: the previous ar process died)" is written, named by its "recovered"
record like any row (journal.join). Git is put back:

- in the workspace's own checkout, its commit is reset when HEAD is still at it (or the
  editable file is dirty);
- in a worker's worktree (`worktree` in its records), the branch was never at it, unless
  its row says keep and the process died before the branch moved: then it is moved.
"""

from __future__ import annotations

from autoresearch.journal.queries import render_description
from autoresearch.experiment.lab import DIED, Lab
from autoresearch.journal.files import ResultRow, append_result

_TERMINAL = ("finished", "abandoned", "recovered")


def recover(lab: Lab) -> int:
    """Clean up the experiments a dead process left open; how many."""
    records: dict[str, dict[str, dict]] = {}
    for r in lab.records():
        xid = r.get("id")
        if xid and r.get("event") in ("proposing", "started") + _TERMINAL:
            records.setdefault(xid, {})[r["event"]] = r
    count = 0
    for xid, recs in records.items():
        if any(k in recs for k in _TERMINAL) or not ({"proposing", "started"} & recs.keys()):
            continue
        _recover_one(lab, xid, recs)
        count += 1
    return count


def _recover_one(lab: Lab, xid: str, recs: dict[str, dict]) -> None:
    ws = lab.ws
    started, proposing = recs.get("started"), recs.get("proposing")
    base = started or proposing
    parent = base.get("parent")
    commit = started.get("commit") if started else None
    in_tree = bool(base.get("worktree"))
    status, fields, reset, moved = None, {}, False, False
    if started:
        rows = lab.rows()
        written = [r for r in rows[int(started.get("rows_before", 0)):] if r.commit == str(commit)[:7]]
        if written:
            status = written[0].status
        else:
            status = "crash"
            budget = started.get("budget", lab.s.full_budget)
            desc = render_description(started.get("message") or "", [DIED], budget=budget, full_budget=lab.s.full_budget)
            append_result(lab.results_path, ResultRow(str(commit), 0.0, 0.0, "crash", desc))
            fields = dict(row=len(rows) + 1, budget=budget, backend=started.get("backend", lab.s.backend),
                          worker=started.get("worker"))
        head = ws.head_commit()
        if in_tree:
            if status == "keep" and head == str(parent)[:7]:
                ws.reset_hard(commit)  # it died between the row and the branch move
                moved = True
        elif status != "keep" and head == commit and parent and parent != commit:
            ws.reset_hard(parent)
            reset = True
        elif ws.is_dirty([lab.s.editable]) and head in (commit, parent):
            ws.reset_hard(head)
            reset = True
    elif parent and not in_tree:
        # It died before its run started: the commit (if made) never ran, so no row.
        head = ws.head_commit()
        ours = head != parent and ws.commit_subject() == proposing.get("message", "") and parent in ws.ancestry()
        if ours or (head == parent and ws.is_dirty([lab.s.editable])):
            ws.reset_hard(parent)
            reset = True
    where = f" on {base.get('worker')}" if in_tree and base.get("worker") else ""
    note = (
        f"the previous ar process died during experiment {commit or '(not yet committed)'}{where}: "
        + ("recorded as a crash" if fields else f"its row ({status}) was already written" if started else "it never ran")
        + ("; reset" if reset else "") + ("; the branch moved to it" if moved else "")
    )
    lab.record("recovered", id=xid, commit=commit, parent=parent, status=status, reset=reset, moved=moved, note=note, **fields)
    lab.emit("recovered", commit=commit or "", note=note, description=base.get("description", ""))
