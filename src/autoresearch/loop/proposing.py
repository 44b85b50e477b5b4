"""Asking the proposer for the next experiment: what it sees, and what happens when it
gives nothing usable (the reason is fed back; after `patience` failures in a row the loop
waits, doubling the wait each time, never past --max-hours)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from autoresearch.errors import ArError
from autoresearch.workspace.config import PROGRAM_NAME
from autoresearch.workspace.editable import check_editable
from autoresearch.experiment.lab import Lab
from autoresearch.proposers.base import HistoryItem, NoProposal, Proposal, ProposalContext, Proposer
from autoresearch.journal.files import ResultRow
from autoresearch.journal.queries import join
from autoresearch.loop import history, plateau
from autoresearch.proposers.notes import read_notes, write_notes


def repeat_message(same: HistoryItem, name: str) -> str:
    """For the model: which experiment its proposal repeats, and what that one came to."""
    result = "crashed" if same.status == "crash" else f"val_bpb {same.val_bpb:.6f}, {same.status}"
    return (f"this {name} is the same program as experiment #{same.number} ({same.description}; {result}), "
            "apart from comments and formatting, so it was not run again; propose a different experiment")


def _tail_of(path: Path, lines: int = 50) -> Optional[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:]) or None


class Proposing:
    def __init__(self, lab: Lab, proposer: Proposer, *, clock: Callable[[], float], started: float):
        self.lab = lab
        self.proposer = proposer
        self.name = getattr(proposer, "name", type(proposer).__name__)
        self.clock = clock
        self.started = started
        self.failures = 0  # consecutive NoProposals
        self.feedback: Optional[str] = None
        self.last_crash_tail: Optional[str] = None
        self._scripts: dict[str, Optional[str]] = {}  # commit -> the editable script
        self._normal: dict[str, str] = {}  # commit -> its normalised script (history.normalise)

    def read_editable(self) -> str:
        lab = self.lab
        try:
            return check_editable(lab.folder, lab.s.editable).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ArError(
                f"the editable script {lab.s.editable} is missing from {lab.folder}; "
                f"restore it with `git checkout -- {lab.s.editable}`"
            ) from None

    def load_crash_tail(self, rows: list[ResultRow]) -> None:
        """The log tail of the last row if it crashed (shown to the proposer after a restart)."""
        if not rows or rows[-1].status != "crash":
            return
        for r in reversed(self.lab.records()):
            if r.get("commit") == rows[-1].commit and r.get("log"):
                self.last_crash_tail = _tail_of(self.lab.folder / r["log"])
                return

    def script_of(self, commit: str) -> Optional[str]:
        """The editable script as `commit` has it (cached: a commit never changes); None when
        git no longer has it."""
        key = commit[:7]
        if key not in self._scripts:
            try:
                self._scripts[key] = self.lab.ws.show(commit, self.lab.s.editable)
            except Exception:  # a commit git collected, or a row written by hand
                self._scripts[key] = None
        return self._scripts[key]

    def history(self, rows: list[ResultRow]) -> tuple[HistoryItem, ...]:
        lab = self.lab
        records = lab.records()
        entries = join(rows, records, budget=lab.s.full_budget, backend=lab.s.backend)
        return history.build(entries, records, self.script_of)

    def context(self, rows: list[ResultRow], best: Optional[ResultRow], current: str, in_flight: tuple = ()) -> ProposalContext:
        """What the proposer sees."""
        s = self.lab.s
        return ProposalContext(
            program=self._program(),
            editable_name=s.editable,
            editable_text=current,
            history=self.history(rows),
            best=best.val_bpb if best else None,
            best_commit=best.commit if best else "",
            hardware=s.hardware,
            profile=s.profile,
            last_crash_tail=self.last_crash_tail,
            feedback=self.feedback,
            in_flight=in_flight,
            notes=read_notes(self.lab.folder),
        )

    def _program(self) -> str:
        # Read every time: the user may tune program.md while the loop runs.
        try:
            return (self.lab.folder / PROGRAM_NAME).read_text(encoding="utf-8")
        except OSError:
            return ""

    def next(self, ctx: ProposalContext, offset: int = 0) -> tuple[Optional[Proposal], float]:
        """The next experiment: on a plateau, what its mode builds or asks for (loop/plateau.py);
        otherwise the proposer's next step from the best. `offset`: the worker's slot."""
        step = None
        if ctx.best_commit and self.lab.s.plateau > 0:
            step = plateau.next_step(ctx.history, ctx.best_commit, ctx.editable_text, self.lab.s.plateau,
                                     lambda text: self.repeat_of(text, ctx.history) is None, offset)
        if step is None or step.mode == "chain":
            return self.propose(ctx)
        n = plateau.since_keep(ctx.history)
        what = step.description or f"from #{step.base.number} ({step.base.description})"
        self.lab.emit("mode", description=f"{step.mode} ({n} experiments without a keep)", note=what)
        if step.built:
            return Proposal(step.text, step.description, mode=step.mode), 0.0
        proposal, wait = self.propose(dataclasses.replace(ctx, editable_text=step.text, mode=step.mode, mode_note=step.note))
        if proposal is not None and step.base is not None:
            proposal.mode, proposal.base = step.mode, step.base.commit
            proposal.description = f"branch from #{step.base.number}: {proposal.description}"
        return proposal, wait

    def propose(self, ctx: ProposalContext) -> tuple[Optional[Proposal], float]:
        """A usable proposal, or (None, seconds to wait) after recording why not. ArError stops the loop."""
        try:
            proposal = self.proposer.propose(ctx)
            self.keep_notes(proposal.notes)
            if proposal.new_text == ctx.editable_text:
                raise NoProposal(f"the proposal leaves {ctx.editable_name} unchanged; change something", proposal.usage)
            if not proposal.new_text.strip():
                raise NoProposal(f"the proposal empties {ctx.editable_name}; send the whole file", proposal.usage)
            same = self.repeat_of(proposal.new_text, ctx.history)
            if same is not None:
                raise NoProposal(repeat_message(same, ctx.editable_name), proposal.usage)
        except NoProposal as e:
            self.keep_notes(e.notes)
            return None, self.no_proposal(e)
        except ArError:
            raise  # a user mistake (no API key, unknown model): say so and stop
        except Exception as e:  # a network hiccup or an SDK bug must not end an overnight run
            return None, self.no_proposal(NoProposal(f"the {self.name} proposer failed: {type(e).__name__}: {e}"))
        with self.lab.lock:
            self.lab.report.cost_usd += proposal.usage.cost_usd
        return proposal, 0.0

    def keep_notes(self, notes: Optional[str]) -> None:
        """Write the notes the model rewrote (at once: they survive a crash of the run)."""
        if notes is not None:
            write_notes(self.lab.folder, notes)

    def repeat_of(self, text: str, items: tuple[HistoryItem, ...]) -> Optional[HistoryItem]:
        """The past experiment that ran this program already (comments and formatting aside)."""
        key = history.normalise(text)
        for item in items:
            if item.text is None:
                continue
            if item.commit[:7] not in self._normal:
                self._normal[item.commit[:7]] = history.normalise(item.text)
            if self._normal[item.commit[:7]] == key:
                return item
        return None

    def accepted(self) -> None:
        with self.lab.lock:
            self.failures, self.feedback = 0, None

    def no_proposal(self, e: NoProposal) -> float:
        """Record why there is no experiment; the seconds to wait before asking again."""
        lab, s = self.lab, self.lab.s
        with lab.lock:
            lab.report.cost_usd += e.usage.cost_usd
            self.failures += 1
            self.feedback = str(e)
            wait = 0.0
            if self.failures >= s.patience:
                wait = min(s.backoff_max, s.backoff * 2.0 ** min(self.failures - s.patience, 30))  # no overflow after many
                if s.max_hours is not None:  # never sleep past the time limit
                    wait = max(0.0, min(wait, self.started + s.max_hours * 3600 - self.clock()))
            lab.record("no_proposal", proposer=self.name, reason=str(e), usage=e.usage.as_dict(),
                       consecutive=self.failures, wait_s=wait)
            n = self.failures
        lab.emit("no_proposal", note=str(e), val_bpb=None,
                 description=f"{n} in a row; waiting {wait:g} s" if wait else f"{n} in a row")
        return wait

    def no_proposal_unchanged(self) -> float:
        return self.no_proposal(NoProposal(f"the proposal leaves {self.lab.s.editable} unchanged; change something"))

    def after(self, outcome) -> None:
        """Remember a crash's log tail for the next proposal."""
        failed = next((r for r in outcome.results if r.status != "ok"), None)
        self.last_crash_tail = "\n".join(failed.log_tail) if outcome.status == "crash" and failed else None
        flagged = next((r.advice for r in outcome.results if r.advice), "")
        if flagged:  # the static check's advice reaches the model whatever the run came to
            self.feedback = (f"the static check flagged your last edit ({flagged}); it ran anyway and was "
                             "judged by ar's judge: leave the harness, the metric and the environment alone")
