"""A proposer that needs no LLM and no network: coordinate search over the script's constants.

It finds the module-level UPPER_CASE numeric constants of the editable script
(``MATRIX_LR = 0.04  # comment``, ``DEPTH = 8``, ``TOTAL_BATCH_SIZE = 2**19``) with `ast`,
and changes one per experiment, around the current best file:

- powers of two written ``a**b``: exponent +-1 (then +-2);
- ints below 16 (depth, heads): +-1 (then +-2); larger ints: x2 and /2 (then x1.5, /1.5),
  powers of two stay powers of two;
- betas (``*BETA*``, ``*MOMENTUM*``, ``*EMA*``, or any value in [0.9, 1)): 1-b is doubled
  and halved, so they move away from and toward 1;
- other positive floats (learning rates, weight decay, ratios capped at 1): x2 and /2,
  then finer factors (sqrt 2, 2**(1/4), 2**(1/8));
- a ratio/fraction/decay/warm-up that is 0.0: 0.1, then 0.05, then 0.2.

All the coarse moves of every constant come before any finer move; constants the history
mentions least go first (ties: the main dial DEPTH, then an order fixed by `seed`), and a constant whose last
change was kept is pushed the same way again. It never repeats an experiment it already
ran: its descriptions (``offline: MATRIX_LR 0.04 -> 0.08``) are read back from the history.
With several workers it never proposes an experiment that is running (``ctx.in_flight``),
and counts running experiments as mentions, so workers change different constants.
Harness constants (time budget, sequence length, evaluation, untimed warm-up steps, seeds)
are never touched.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass
from typing import Optional, Union

from autoresearch.proposers.base import HistoryItem, NoProposal, Proposal, ProposalContext

Number = Union[int, float]

NAME = "offline"
DEFAULT_SKIP = frozenset({"TIME_BUDGET", "MAX_SEQ_LEN", "EVAL_TOKENS", "VOCAB_SIZE"})
_SKIP_PARTS = ("SEED", "BUDGET", "UNTIMED")  # harness, timing or reproducibility constants, not hyperparameters
_SKIP_PREFIXES = ("EVAL_",)  # the evaluation is fixed by the harness: changing it measures nothing
_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_DESCRIPTION = re.compile(r"^offline: ([A-Z][A-Z0-9_]*) (\S+) -> (\S+)")
_BETA_PARTS = ("BETA", "MOMENTUM", "EMA")
_BOUNDED_PARTS = ("RATIO", "FRAC", "DROPOUT")  # fractions: never above 1
_ZERO_PARTS = _BOUNDED_PARTS + ("DECAY", "WARMUP")  # worth switching on when 0.0
_FLOAT_LEVELS = 4  # factors 2, 2**(1/2), 2**(1/4), 2**(1/8)
_INT_LEVELS = 2
_ZERO_STEPS = (0.1, 0.05, 0.2)
_DIALS = ("DEPTH",)  # the main dial (model size) goes first among equals


@dataclass(frozen=True)
class Constant:
    """A module-level `NAME = <number>` and where its value is in the text."""

    name: str
    value: Number
    text: str  # the value as written
    start: int  # character offsets of the value in the source
    end: int
    base: Optional[int] = None  # set for the `base**exp` form
    exp: Optional[int] = None


def _line_starts(text: str) -> list[int]:
    """Character offset of each line, with the line breaks Python's tokenizer uses."""
    starts = [0]
    for m in re.finditer(r"\r\n|\r|\n", text):
        starts.append(m.end())
    return starts


def _offset(text: str, starts: list[int], lineno: int, col_bytes: int) -> int:
    # ast columns count UTF-8 bytes, not characters.
    line_start = starts[lineno - 1]
    line_end = starts[lineno] if lineno < len(starts) else len(text)
    prefix = text[line_start:line_end].encode("utf-8")[:col_bytes].decode("utf-8", "replace")
    return line_start + len(prefix)


def _literal(node: ast.AST) -> Optional[tuple[Number, Optional[int], Optional[int]]]:
    """(value, base, exp) of a numeric literal or an int `a**b`; None for anything else."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value, None, None
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Pow)
        and all(isinstance(n, ast.Constant) and type(n.value) is int for n in (node.left, node.right))
        and node.left.value >= 2
        and 0 <= node.right.value <= 64
    ):
        return node.left.value**node.right.value, node.left.value, node.right.value
    return None


def find_constants(text: str) -> list[Constant]:
    """The module-level UPPER_CASE constants assigned a literal number or an int power, in order."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    starts = _line_starts(text)
    out = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target = stmt.target
        else:
            continue
        if not (isinstance(target, ast.Name) and _UPPER.match(target.id)):
            continue
        lit = _literal(stmt.value)
        if lit is None:
            continue
        v = stmt.value
        start = _offset(text, starts, v.lineno, v.col_offset)
        end = _offset(text, starts, v.end_lineno, v.end_col_offset)
        out.append(Constant(target.id, lit[0], text[start:end], start, end, lit[1], lit[2]))
    return out


def number_of(text: str) -> Optional[float]:
    """The value of a literal as written in a description (`0.04`, `2**19`), or None."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None
    lit = _literal(node)
    return float(lit[0]) if lit is not None else None


def _key(name: str, a: float, b: float) -> tuple[str, float, float]:
    return name, float(f"{a:.10g}"), float(f"{b:.10g}")


def _format_float(x: float) -> str:
    s = f"{x:.3g}"
    if not any(c in s for c in ".eE"):
        s += ".0"  # a float stays a float
    return s


def _sig3(x: float) -> float:
    return float(f"{x:.3g}")


@dataclass(frozen=True)
class Move:
    name: str
    up: bool
    old_text: str
    new_text: str
    new_value: Number


def _has(name: str, parts: tuple[str, ...]) -> bool:
    return any(p in name for p in parts)


def moves(c: Constant, level: int) -> list[Move]:
    """The candidate changes of one constant at one step size (level 0 is the coarsest): up, then down."""
    out: list[tuple[bool, Number, str]] = []
    v = c.value
    if c.base is not None:
        if level < _INT_LEVELS:
            for up, e in ((True, c.exp + level + 1), (False, c.exp - level - 1)):
                if e >= 0:
                    out.append((up, c.base**e, f"{c.base}**{e}"))
    elif isinstance(v, int):
        if level < _INT_LEVELS:
            if v < 16:
                low = 1 if v >= 1 else 0
                for up, n in ((True, v + level + 1), (False, v - level - 1)):
                    if n >= low:
                        out.append((up, n, str(n)))
            else:
                power = (v & (v - 1)) == 0
                f = (4 if power else 1.5) if level else 2
                for up, n in ((True, round(v * f)), (False, round(v / f))):
                    if n >= 1 and n != v:
                        out.append((up, n, str(n)))
    elif v == 0.0:
        if level < len(_ZERO_STEPS) and _has(c.name, _ZERO_PARTS):
            x = _ZERO_STEPS[level]
            out.append((True, x, _format_float(x)))
    elif v > 0 and level < _FLOAT_LEVELS:
        f = 2.0 ** (1.0 / 2**level)
        if v < 1 and (_has(c.name, _BETA_PARTS) or v >= 0.9):
            d = 1.0 - v
            for up, nd in ((True, _sig3(d / f)), (False, _sig3(d * f))):
                x = float(f"{1.0 - nd:.10g}")
                if 0 < x < 1:
                    out.append((up, x, f"{x:.10g}"))
        else:
            for up, x in ((True, _sig3(v * f)), (False, _sig3(v / f))):
                if _has(c.name, _BOUNDED_PARTS) and x > 1:
                    continue
                if x > 0:
                    out.append((up, x, _format_float(x)))
    return [Move(c.name, up, c.text, text, value) for up, value, text in out if value != v]


def _tried(history: tuple[HistoryItem, ...]) -> tuple[set, dict[str, tuple[bool, bool]]]:
    """The (name, from, to) experiments already run, and per name its last move: (went up, kept)."""
    tried: set = set()
    last: dict[str, tuple[bool, bool]] = {}
    for item in history:
        m = _DESCRIPTION.match(item.description)
        if not m:
            continue
        a, b = number_of(m.group(2)), number_of(m.group(3))
        if a is None or b is None:
            continue
        tried.add(_key(m.group(1), a, b))
        last[m.group(1)] = (b > a, item.status == "keep")
    return tried, last


class OfflineProposer:
    """Coordinate search over the editable script's numeric constants (see the module doc)."""

    name = NAME

    def __init__(self, seed: int = 0, skip: frozenset[str] = DEFAULT_SKIP):
        self.seed = seed
        self.skip = frozenset(skip)

    def _eligible(self, name: str) -> bool:
        return name not in self.skip and not _has(name, _SKIP_PARTS) and not name.startswith(_SKIP_PREFIXES)

    def candidates(self, ctx: ProposalContext) -> list[Move]:
        """Every move still untried, in the order they would be proposed."""
        constants = [c for c in find_constants(ctx.editable_text) if self._eligible(c.name)]
        tried, last = _tried(ctx.history)
        described = [h.description for h in ctx.history] + list(ctx.in_flight)
        mentions = {c.name: sum(bool(re.search(rf"\b{c.name}\b", d)) for d in described) for c in constants}
        rng = random.Random(self.seed)
        tie = {c.name: rng.random() for c in constants}
        order = sorted(constants, key=lambda c: (mentions[c.name], c.name not in _DIALS, tie[c.name]))
        out = []
        for level in range(max(_FLOAT_LEVELS, _INT_LEVELS, len(_ZERO_STEPS))):
            for c in order:
                ms = moves(c, level)
                went_up, kept = last.get(c.name, (tie[c.name] < 0.5, False))
                first_up = went_up if kept else not went_up  # push a success on, else turn around
                ms.sort(key=lambda m: m.up != first_up)
                out += [m for m in ms if _key(m.name, float(c.value), float(m.new_value)) not in tried]
        return out

    def propose(self, ctx: ProposalContext) -> Proposal:
        constants = {c.name: c for c in find_constants(ctx.editable_text)}
        if not any(self._eligible(n) for n in constants):
            raise NoProposal(
                f"{ctx.editable_name} has no module-level UPPER_CASE numeric constants (NAME = 0.04) for the "
                "offline proposer to change; use an LLM proposer (set ANTHROPIC_API_KEY or pass --proposer)"
            )
        for move in self.candidates(ctx):
            description = f"offline: {move.name} {move.old_text} -> {move.new_text}"
            if description in ctx.in_flight:
                continue  # another worker is running exactly this
            c = constants[move.name]
            new_text = ctx.editable_text[: c.start] + move.new_text + ctx.editable_text[c.end :]
            try:
                ast.parse(new_text)
            except SyntaxError:  # cannot happen with a literal swapped for a literal; be safe
                continue
            return Proposal(new_text=new_text, description=description)
        raise NoProposal(
            f"the offline proposer has tried every change of the constants in {ctx.editable_name} around the "
            "current best; an LLM proposer can go further"
        )
