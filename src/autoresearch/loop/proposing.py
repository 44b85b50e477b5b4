"""Asking the proposer for the next experiment: what it sees, and what happens when it
gives nothing usable (the reason is fed back; after `patience` failures in a row the loop
waits, doubling the wait each time, never past --max-hours)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from autoresearch.errors import ArError
from autoresearch.workspace.config import PROGRAM_NAME
from autoresearch.workspace.editable import check_editable
from autoresearch.experiment.lab import Lab
from autoresearch.proposers.base import HistoryItem, NoProposal, Proposal, ProposalContext, Proposer
from autoresearch.journal.files import ResultRow


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

    def context(self, rows: list[ResultRow], best: Optional[ResultRow], current: str, in_flight: tuple = ()) -> ProposalContext:
        """What the proposer sees."""
        s = self.lab.s
        return ProposalContext(
            program=self._program(),
            editable_name=s.editable,
            editable_text=current,
            history=tuple(HistoryItem(i, r.commit, r.val_bpb, r.status, r.description) for i, r in enumerate(rows, 1)),
            best=best.val_bpb if best else None,
            hardware=s.hardware,
            profile=s.profile,
            last_crash_tail=self.last_crash_tail,
            feedback=self.feedback,
            in_flight=in_flight,
        )

    def _program(self) -> str:
        # Read every time: the user may tune program.md while the loop runs.
        try:
            return (self.lab.folder / PROGRAM_NAME).read_text(encoding="utf-8")
        except OSError:
            return ""

    def propose(self, ctx: ProposalContext) -> tuple[Optional[Proposal], float]:
        """A usable proposal, or (None, seconds to wait) after recording why not. ArError stops the loop."""
        try:
            proposal = self.proposer.propose(ctx)
            if proposal.new_text == ctx.editable_text:
                raise NoProposal(f"the proposal leaves {ctx.editable_name} unchanged; change something", proposal.usage)
            if not proposal.new_text.strip():
                raise NoProposal(f"the proposal empties {ctx.editable_name}; send the whole file", proposal.usage)
        except NoProposal as e:
            return None, self.no_proposal(e)
        except ArError:
            raise  # a user mistake (no API key, unknown model): say so and stop
        except Exception as e:  # a network hiccup or an SDK bug must not end an overnight run
            return None, self.no_proposal(NoProposal(f"the {self.name} proposer failed: {type(e).__name__}: {e}"))
        with self.lab.lock:
            self.lab.report.cost_usd += proposal.usage.cost_usd
        return proposal, 0.0

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
                wait = min(s.backoff_max, s.backoff * 2 ** (self.failures - s.patience))
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
