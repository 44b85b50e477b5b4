"""What a proposer receives and returns: the seam between the loop and any LLM.

The loop core only knows these types and the Proposer protocol; the Anthropic, OpenAI
and offline proposers live in loop/proposers/ and are chosen by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

from autoresearch.errors import ArError


@dataclass(frozen=True)
class HistoryItem:
    """One finished experiment as the proposer sees it."""

    number: int
    commit: str
    val_bpb: float  # 0.0 for a crash
    status: str  # keep | discard | crash
    description: str
    parent: str = ""  # the commit it was made from ("" when unknown)
    text: Optional[str] = None  # the editable file as this experiment ran it (None when unknown)
    outcome: str = ""  # "" for a run that finished, else stopped | rejected | crashed | timeout
    reason: str = ""  # one line: why it crashed, was rejected or was stopped
    metrics: tuple[tuple[str, float], ...] = ()  # (name, value): num_steps, total_tokens_M, tok_per_s, ...
    losses: tuple[Optional[float], ...] = ()  # training loss at 25/50/75/100% of the budget
    runs: tuple[float, ...] = ()  # val_bpb of each of its runs (a keep may have been confirmed)
    mode: str = ""  # the search mode that made it ("" for the plain chain): combine | ablate | branch


@dataclass(frozen=True)
class ProposalContext:
    program: str  # program.md: the standing instructions
    editable_name: str  # e.g. "train.py"
    editable_text: str  # the editable file as of the current best commit
    history: tuple[HistoryItem, ...]  # every experiment so far, oldest first
    best: Optional[float]  # best val_bpb so far (None before the baseline)
    hardware: str  # one line: chip, backend, memory
    profile: str  # profile name and its constants, one line
    last_crash_tail: Optional[str] = None  # tail of the last crashed run's log, if the last run crashed
    feedback: Optional[str] = None  # why the previous proposal was rejected before it ran
    in_flight: tuple[str, ...] = ()  # descriptions of experiments running right now (workers)
    notes: str = ""  # the research notes file as it stands (the agent writes it with the notes tool)
    mode: str = ""  # "" for the plain chain; "branch": editable_text is an earlier good commit's, not the best's
    mode_note: str = ""  # one paragraph for the model: what this mode asks and why
    best_commit: str = ""  # the commit of `best` (journal.queries.best_entry: the one definition)


@dataclass
class Usage:
    """LLM usage of one proposal (all zero for the offline proposer)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: "Usage") -> "Usage":
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.cost_usd + other.cost_usd,
        )

    def as_dict(self) -> dict:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


@dataclass
class Proposal:
    new_text: str  # the whole editable file after the edit
    description: str  # one line: what the experiment tries
    usage: Usage = field(default_factory=Usage)
    notes: Optional[str] = None  # the research notes after this turn, when the model rewrote them
    mode: str = ""  # the search mode that made it (loop/plateau.py); "" for the plain chain
    base: str = ""  # the commit whose script it edits, when not the one it is committed on (a branch)


class NoProposal(ArError):
    """The proposer produced no usable edit this time (the loop asks again). Its usage
    still counts towards the cost."""

    def __init__(self, message: str, usage: Optional[Usage] = None, notes: Optional[str] = None):
        super().__init__(message)
        self.usage = usage or Usage()
        self.notes = notes  # notes the model wrote before failing are kept all the same


class Proposer(Protocol):
    name: str

    def propose(self, ctx: ProposalContext) -> Proposal:
        """One experiment: the edited file and a one-line description. Raises NoProposal."""
        ...
