"""Beyond one greedy chain: what the loop does after a plateau.

After PLATEAU experiments in a row without a keep (config key `plateau`, flag
`--plateau N`, 0 turns it off), the loop stops asking only for the next step from the best
and takes turns through these modes until something is kept:

- **combine**: the two best near-misses (discards that ran to the end, lowest val_bpb
  first) applied together onto the best, by 3-way merge; a pair that conflicts or that was
  already run is skipped. Two edits that each fell short can add up.
- **ablate**: one kept change on the path to the best undone (3-way merge of its reverse
  onto the best; never the latest keep, whose undoing is its parent, already run). It is
  kept when two runs average no worse than the best (experiment/keep.py:
  decide_ablation): equal val_bpb with less code is a win.
- **branch**: the proposer works from one of the BRANCH_FROM best kept commits other than
  the best itself; with several workers each takes a different one.
- **chain**: one ordinary step from the best, so the plain chain keeps a share.

combine and ablate need no proposer: they are built here from the journal. The branch's
HEAD stays the best confirmed commit: every experiment is committed on top of it (a branch
experiment's commit holds the earlier commit's script plus the edit) and only a keep moves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from autoresearch.proposers.base import HistoryItem
from autoresearch.workspace.worktrees import merge3

PLATEAU = 8  # experiments without a keep before the mode changes
MODES = ("combine", "ablate", "branch", "chain")
NEAR_MISSES = 4  # the best discards considered for combining
BRANCH_FROM = 3  # the best kept commits (besides the best) a branch may start from
_DESCRIPTION_PART = 60  # characters of each description quoted in a combine's


@dataclass(frozen=True)
class Step:
    """What the mode asks for: a script built here (combine, ablate), or the proposer
    working from `text` (branch, chain)."""

    mode: str  # combine | ablate | branch | chain
    text: str  # the script: the candidate itself (built), or where the proposer starts
    description: str = ""  # set when built here
    built: bool = False  # True: run `text` as it is; False: ask the proposer to edit `text`
    note: str = ""  # for the model (branch): what the mode asks and why
    base: Optional[HistoryItem] = None  # branch: the commit it starts from


def since_keep(history: Sequence[HistoryItem]) -> int:
    """Experiments at the end of the history without a keep."""
    n = 0
    for it in reversed(history):
        if it.status == "keep":
            break
        n += 1
    return n


def mode_for(history: Sequence[HistoryItem], plateau: int, offset: int = 0) -> str:
    """The mode of the next experiment ("" before a plateau). `offset`: a worker's slot, so
    workers on a plateau take different modes at the same time."""
    n = since_keep(history)
    if plateau <= 0 or n < plateau:
        return ""
    return MODES[(n - plateau + offset) % len(MODES)]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DESCRIPTION_PART else text[: _DESCRIPTION_PART - 3] + "..."


def _texts(history: Sequence[HistoryItem]) -> dict[str, str]:
    return {it.commit[:7]: it.text for it in history if it.text is not None}


def near_misses(history: Sequence[HistoryItem], best: HistoryItem) -> list[HistoryItem]:
    """Discards that ran to the end, made after the best was kept, lowest val_bpb first."""
    after = [it for it in history if it.number > best.number and it.status == "discard" and not it.outcome
             and it.val_bpb > 0 and it.text is not None and it.parent]
    return sorted(after, key=lambda it: (it.val_bpb, it.number))[:NEAR_MISSES]


def combine(history: Sequence[HistoryItem], best: HistoryItem, best_text: str,
            is_new: Callable[[str], bool]) -> Optional[Step]:
    texts = _texts(history)
    misses = near_misses(history, best)
    for i, a in enumerate(misses):
        for b in misses[i + 1:]:
            text = best_text
            for it in (a, b):
                base = texts.get(it.parent[:7])
                text = merge3(base, text, it.text) if base is not None and text is not None else None
            if text is None or text == best_text or not is_new(text):
                continue
            return Step("combine", text, f"combine #{a.number} + #{b.number}: {_short(a.description)}; "
                        f"{_short(b.description)}", built=True)
    return None


def path_to(history: Sequence[HistoryItem], best: HistoryItem) -> list[HistoryItem]:
    """The kept experiments from the first kept row to `best`, following parents."""
    by_commit = {it.commit[:7]: it for it in history}
    out, it, seen = [], best, set()
    while it is not None and it.commit[:7] not in seen:
        seen.add(it.commit[:7])
        out.append(it)
        it = by_commit.get(it.parent[:7]) if it.parent else None
    return list(reversed(out))


def ablate(history: Sequence[HistoryItem], best: HistoryItem, best_text: str,
           is_new: Callable[[str], bool]) -> Optional[Step]:
    texts = _texts(history)
    # not the first (the baseline: nothing to undo) nor the best (undoing it gives its parent)
    for it in reversed(path_to(history, best)[1:-1]):
        parent = texts.get(it.parent[:7])
        if it.text is None or parent is None:
            continue
        text = merge3(it.text, best_text, parent)  # the change, reversed, onto the best
        if text is None or text == best_text or not is_new(text):
            continue
        return Step("ablate", text, f"ablate #{it.number}: drop {_short(it.description)}", built=True)
    return None


def branch(history: Sequence[HistoryItem], best: HistoryItem, offset: int = 0) -> Optional[Step]:
    kept = sorted((it for it in history if it.status == "keep" and it.val_bpb > 0 and it.text is not None
                   and it.commit[:7] != best.commit[:7]), key=lambda it: (it.val_bpb, it.number))[:BRANCH_FROM]
    if not kept:
        return None
    base = kept[offset % len(kept)]
    note = (f"The last experiments made no progress from the best (#{best.number}, val_bpb {best.val_bpb:.6f}). "
            f"This experiment branches: it starts from experiment #{base.number} ({base.description}; val_bpb "
            f"{base.val_bpb:.6f}), shown below as the current file, and tries a different direction from there. "
            "Your change is run on that version; if it beats the best, it becomes the new best.")
    return Step("branch", base.text, note=note, base=base)


def next_step(history: Sequence[HistoryItem], best_commit: str, best_text: str, plateau: int,
              is_new: Callable[[str], bool], offset: int = 0) -> Optional[Step]:
    """The next experiment's mode on a plateau (None: the plain chain). A mode with nothing
    to offer (no two near-misses, nothing left to ablate) passes to the next one."""
    mode = mode_for(history, plateau, offset)
    best = next((it for it in history if it.commit[:7] == best_commit[:7]), None)
    if not mode or best is None:
        return None
    start = MODES.index(mode)
    for mode in MODES[start:] + MODES[:start]:
        if mode == "chain":
            return Step("chain", best_text)
        if mode == "combine":
            step = combine(history, best, best_text, is_new)
        elif mode == "ablate":
            step = ablate(history, best, best_text, is_new)
        else:
            step = branch(history, best, offset)
        if step is not None:
            return step
    return None
