"""The journal as one view, and the one definition of the best.

results.tsv keeps the upstream five columns; what a row does not say (the budget and the
backend it ran with, the worker, the LLM usage, why it was interrupted) lives in the
runs.jsonl record that wrote it: a "finished" record (the loop, its workers, `ar run`) or
a "recovered" one (a row written for an experiment whose process died). Each such record
names its row by number (`row`) and commit, so nothing is ever parsed back out of a
description.

`history()` joins the two into `Entry`s. The best to beat is `best_entry()`: the kept row
with the lowest val_bpb on the branch's ancestry, of the same budget and the same backend.
The loop, its workers, `ar run`, `ar results` and `ar plot` all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence

from autoresearch.journal.files import ResultRow, read_results, read_run_records

ROW_EVENTS = ("finished", "recovered")  # the records that name a results.tsv row


def budget_key(budget: float) -> str:
    """A budget as rows are grouped by it: 300.0 and 300 are the same."""
    return f"{float(budget):g}"


def budget_note(budget: float, full_budget: float) -> str:
    """" (budget N s)" for a run budget other than the workspace's, else "" (rendered, never parsed)."""
    return "" if budget_key(budget) == budget_key(full_budget) else f" (budget {budget_key(budget)} s)"


def render_description(message: str, notes: Iterable[str] = (), *, budget: float, full_budget: float) -> str:
    """The results.tsv description: the message, its notes in brackets, then the budget."""
    text = " ".join((message or "").split()) or "(no description)"
    for note in notes:
        if note:
            text += f" ({note})"
    return text + budget_note(budget, full_budget)


class Entry(NamedTuple):
    """One results.tsv row with what its journal record says about it (a tuple, not a frozen
    dataclass: `ar results` builds 10,000 of them, five times faster)."""

    number: int  # 1-based row number in results.tsv
    row: ResultRow
    budget: str  # budget_key of the run
    backend: str
    worker: str = ""
    usage: Optional[dict] = None
    recovered: bool = False  # written for an experiment whose ar process died
    record: Mapping = MappingProxyType({})  # read-only; join passes each row's own
    sandbox: object = None  # the record's "sandbox" as written (`ar results` shows it; journal/cache.py keeps it)

    @property
    def key(self) -> tuple[str, str]:
        return (self.budget, self.backend)

    @property
    def counts(self) -> bool:
        """A kept result with a value: a candidate for the best."""
        return self.row.status == "keep" and self.row.val_bpb > 0


def join(rows: Sequence[ResultRow], records: Iterable[dict], *, budget: float, backend: str) -> list[Entry]:
    """Rows with their records; a row without one (written by hand, or by an older ar) ran
    with the workspace's `budget` and `backend`."""
    by_row: dict[int, dict] = {}
    for rec in records:
        if rec.get("event") in ROW_EVENTS and isinstance(rec.get("row"), int) and rec.get("commit"):
            by_row[rec["row"]] = rec
    matched = {n: by_row[n] for n, row in enumerate(rows, start=1)
               if n in by_row and str(by_row[n]["commit"])[:7] == row.commit[:7]}
    # results.tsv edited by hand (a line deleted): the records no row claimed, matched by commit
    spare: dict[str, dict] = {}
    used = {id(r) for r in matched.values()}
    for rec in by_row.values():
        if id(rec) not in used:
            spare[str(rec["commit"])[:7]] = rec
    out = []
    keys = {budget: budget_key(budget)}  # a journal has few budgets: format each once
    for n, row in enumerate(rows, start=1):
        rec = matched.get(n) or spare.pop(row.commit[:7], {})
        get = rec.get
        rb = get("budget")
        if not isinstance(rb, (int, float)):
            rb = budget
        if rb not in keys:
            keys[rb] = budget_key(rb)
        usage = get("usage")
        # positional, in Entry's order (number, row, budget, backend, worker, usage, recovered,
        # record, sandbox): a quarter faster than by keyword over a long journal
        out.append(Entry(n, row, keys[rb], str(get("backend") or backend), str(get("worker") or ""),
                         usage if isinstance(usage, dict) else None, get("event") == "recovered", rec, get("sandbox")))
    return out


def history(folder: Path, *, budget: float, backend: str, results_name: str = "results.tsv",
            runs_path: Optional[Path] = None) -> list[Entry]:
    """The workspace's results.tsv joined with its runs.jsonl."""
    folder = Path(folder)
    rows = read_results(folder / results_name)
    runs = runs_path or folder / ".autoresearch" / "runs" / "runs.jsonl"
    return join(rows, read_run_records(runs, events=ROW_EVENTS), budget=budget, backend=backend)


def best_entry(entries: Iterable[Entry], key: tuple[str, str], ancestry: Optional[set[str]] = None) -> Optional[Entry]:
    """THE best to beat: the kept row of `key` (budget, backend) with the lowest val_bpb
    whose commit is on the branch (`ancestry`; None: every row); the first on ties."""
    best = None
    for e in entries:
        if e.counts and e.key == key and (ancestry is None or e.row.commit[:7] in ancestry):
            if best is None or e.row.val_bpb < best.row.val_bpb:
                best = e
    return best


def best_before(entries: Sequence[Entry], ancestry: Optional[set[str]] = None) -> list[Optional[float]]:
    """For each entry, the best of its own (budget, backend) before it (None for the first)."""
    out: list[Optional[float]] = []
    best: dict[tuple[str, str], float] = {}
    for e in entries:
        key = e.key  # once: `ar results` runs this over every row of a long journal
        out.append(best.get(key))
        if e.counts and (ancestry is None or e.row.commit[:7] in ancestry):
            if key not in best or e.row.val_bpb < best[key]:
                best[key] = e.row.val_bpb
    return out


def keys_of(entries: Iterable[Entry]) -> list[tuple[str, str]]:
    """The (budget, backend) groups in order of first appearance."""
    seen: dict[tuple[str, str], None] = {}
    for e in entries:
        seen.setdefault(e.key, None)
    return list(seen)


@dataclass(frozen=True)
class Summary:
    experiments: int
    kept: int
    discarded: int
    crashed: int
    baseline: Optional[float]  # the first kept val_bpb of the group
    best: Optional[float]  # best_entry's val_bpb
    key: Optional[tuple[str, str]] = None  # the (budget, backend) group baseline and best belong to

    @property
    def improvement(self) -> Optional[float]:
        if self.baseline is None or self.best is None:
            return None
        return self.baseline - self.best

    @property
    def improvement_pct(self) -> Optional[float]:
        if self.improvement is None or not self.baseline:
            return None
        return 100.0 * self.improvement / self.baseline

    def as_dict(self) -> dict:
        return {
            "experiments": self.experiments, "kept": self.kept, "discarded": self.discarded, "crashed": self.crashed,
            "baseline": self.baseline, "best": self.best, "improvement": self.improvement,
            "improvement_pct": self.improvement_pct,
            "budget": float(self.key[0]) if self.key else None, "backend": self.key[1] if self.key else None,
        }


def summarize(entries: Sequence[Entry], key: Optional[tuple[str, str]] = None, ancestry: Optional[set[str]] = None,
              *, tally: Optional[Tally] = None) -> Summary:
    """Counts over every row; baseline and best of `key` (default: the group of the first kept row).
    With the `tally` of every row, `entries` need only be the rows that count (Entry.counts)."""
    if key is None:
        key = next((e.key for e in entries if e.counts), None)
    group = [e for e in entries if e.counts and e.key == key and (ancestry is None or e.row.commit[:7] in ancestry)]
    best = best_entry(group, key) if key else None
    t = tally or _counts(entries)
    return Summary(
        experiments=t.rows,
        kept=t.kept,
        discarded=t.discarded,
        crashed=t.crashed,
        baseline=group[0].row.val_bpb if group else None,
        best=best.row.val_bpb if best else None,
        key=key,
    )


TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens")  # the kinds of LLM tokens `ar results` adds up


def spends(e: Entry) -> bool:
    """Whether the row's proposal cost something: a usage with a value."""
    return bool(e.usage) and any(e.usage.values())


class _Counts(NamedTuple):
    rows: int
    kept: int
    discarded: int
    crashed: int


def _counts(entries: Sequence[Entry]) -> _Counts:
    statuses = [e.row.status for e in entries]  # one pass, then counted in C
    return _Counts(len(statuses), statuses.count("keep"), statuses.count("discard"), statuses.count("crash"))


@dataclass(frozen=True)
class Tally:
    """What `ar results` says of all the rows, whichever it lists and whatever the branch:
    the counts, the groups with a result, backends, workers, sandboxes, the LLM's spend."""

    rows: int
    kept: int
    discarded: int
    crashed: int
    groups: list[tuple[str, str]]  # the (budget, backend) groups with a row that counts, in order of appearance
    backends: list[str]  # in order of appearance
    workers: bool  # some row names its worker
    sandboxed: int  # rows whose record names their run's sandbox
    unsandboxed: int  # of those, the runs without one ("none")
    sandboxes: list[str]  # the other names, sorted
    spent: int  # rows whose proposal cost something (spends)
    tokens: dict[str, int]  # of each of TOKENS, in all
    cost_usd: float  # in all


def tally_of(entries: Sequence[Entry]) -> Tally:
    counted = {e.key for e in entries if e.counts}
    named = [e.sandbox for e in entries if e.sandbox]
    usages = [e.usage for e in entries if spends(e)]
    return Tally(
        *_counts(entries),
        groups=[k for k in keys_of(entries) if k in counted],
        backends=list(dict.fromkeys(e.backend for e in entries)),
        workers=any(e.worker for e in entries),
        sandboxed=len(named),
        unsandboxed=named.count("none"),
        sandboxes=sorted({name for name in named if name != "none"}),
        spent=len(usages),
        tokens={k: sum([u.get(k, 0) for u in usages]) for k in TOKENS},
        cost_usd=sum([u.get("cost_usd", 0.0) for u in usages]),
    )
