"""A proposer that needs no LLM: Optuna's TPE sampler over the script's literal constants.

The constants are those the offline proposer changes (`offline.find_constants`: module-level
UPPER_CASE numbers, ``2**k`` powers; the same harness constants skipped). Each call is
stateless: it builds an in-memory study from ``ctx.history``, asks one trial and writes its
values into the current best script in place of the literals (comments and layout kept).

Search space, around the current best's values ``v`` (each range then widened to cover every
value the comparable history ran, so that every past experiment is a trial of the study):

- learning rates, weight decay, other positive floats: log scale, [v/4, 4v];
- betas (``*BETA*``, ``*MOMENTUM*``, ``*EMA*`` or a value in [0.9, 1)): 1-b on a log scale,
  [(1-v)/4, 4(1-v)] capped at 1-b <= 0.5;
- fractions (a float ``*RATIO*``/``*FRAC*``/``*DROPOUT*``, or 0.0 named ``*DECAY*``/``*WARMUP*``):
  linear, [v-0.25, v+0.25] within [0, 1];
- ints below 16 (depth, heads): v-2 .. v+2, not below 1 (0 when v is 0);
- powers of two from 16 up and ``b**k`` literals: the exponent, k-2 .. k+2 (the form is kept);
- other ints: log scale, [v/4, 4v];
- the batch pair (``TOTAL_*BATCH*`` and another ``*BATCH_SIZE``, both powers of two, the
  total a multiple of the other): the total's exponent +-2 and the accumulation
  log2(total / rows) from the current one up to +2, never below: the script asserts that the
  total is a multiple of rows x sequence length, which two free exponents would break.

Sampler: multivariate TPE that treats the current best as the anchor (it is a trial with
``ctx.best`` as its value when the history does not hold it; one start-up trial, so the model
is used from the first proposal) and changes one or two constants per experiment, those the
history varied least first, the rest held at the current best (PartialFixedSampler). Chosen on
a noisy synthetic objective over the template's constants (`benchmarks/offline.py
--synthetic`: 20 experiments under the loop's own `test` rule; true gain of the final best,
mean of 60 loops, standard error ~0.005): every constant at once, random 0.002, Optuna's
default TPE 0.014, multivariate TPE anchored 0.045; one or two least-varied constants with
TPE 0.053 (77% of loops beyond 2 noise sd), random values there 0.043-0.047; offline.py's
coordinate search 0.030 (68%). Ranges half as wide scored 0.058, but that objective's better
region lies within them by construction, so the wider ranges stay. CMA-ES was left out: it
keeps its state between asks, which a study rebuilt from the history at each call does not
have, and it needs the `cmaes` package.

Warm start: every history item whose script is the current one apart from the constants'
values (same code by `ast`; an LLM's structural edit makes older values incomparable; items
without ``text`` are skipped) is one trial: a finished run COMPLETE with its val_bpb, a crash
or rejected run FAIL, a run the loop stopped early PRUNED with its training losses at 25, 50
and 75% as intermediate values: the loop's calibrated early stopper decides the stop and TPE
ranks pruned trials below complete ones. It never proposes what the history ran or what is in
flight; the harness constants are never touched.
"""

from __future__ import annotations

import ast
import functools
import math
import random
import warnings
from dataclasses import dataclass
from typing import Optional

from autoresearch.proposers.base import HistoryItem, NoProposal, Proposal, ProposalContext
from autoresearch.proposers.offline import (
    _BETA_PARTS, _BOUNDED_PARTS, _SKIP_PARTS, _SKIP_PREFIXES, _ZERO_PARTS, DEFAULT_SKIP, Constant,
    _format_float, _has, find_constants, number_of,
)

NAME = "optuna"
SPREAD = 4.0  # log-scale ranges: [v / SPREAD, v * SPREAD]
INT_STEPS = 2  # small ints and exponents: +-2
FRAC_STEP = 0.25
BETA_MAX_GAP = 0.5  # 1 - beta at most
ASKS = 30  # samples tried before giving up on finding a new experiment
_STEPS = (25, 50, 75, 100)  # percent of the budget at which HistoryItem.losses are taken


@dataclass(frozen=True)
class Dim:
    """One searched parameter: a constant's value, or for the batch pair the accumulation."""

    name: str  # the constant's name, or "TOTAL/ROWS" for the pair's accumulation exponent
    kind: str  # log | beta | frac | int | exp
    low: float
    high: float
    base: int = 2  # exp: the power's base


def _is_pow(n: int, base: int = 2) -> bool:
    return n >= 1 and base ** round(math.log(n, base)) == n


def _exp(n: int, base: int = 2) -> int:
    return round(math.log(n, base))


def _kind(c: Constant) -> Optional[str]:
    v = c.value
    if c.base is not None:
        return "exp"
    if isinstance(v, int):
        if v < 0:
            return None
        return "int" if v < 16 else ("exp" if _is_pow(v) else "logint")
    if v == 0.0:
        return "frac" if _has(c.name, _ZERO_PARTS) else None
    if v < 0:
        return None
    if v < 1 and (_has(c.name, _BETA_PARTS) or v >= 0.9):
        return "beta"
    if v <= 1 and _has(c.name, _BOUNDED_PARTS):
        return "frac"
    return "log"


def _pair(constants: dict[str, Constant]) -> Optional[tuple[str, str]]:
    """(total, rows) of the batch pair, or None."""
    total = next((n for n in constants if n.startswith("TOTAL") and "BATCH" in n), None)
    rows = next((n for n in constants if n != total and n.endswith("BATCH_SIZE")), None)
    if total is None or rows is None:
        return None
    t, r = constants[total].value, constants[rows].value
    ok = all(type(x) is int and _is_pow(x) for x in (t, r)) and t % r == 0
    return (total, rows) if ok else None


class _Space:
    """The dimensions of the current script and the mapping between constants and params."""

    def __init__(self, constants: dict[str, Constant], spread: float):
        self.constants = constants
        self.pair = _pair(constants)
        self.dims: dict[str, Dim] = {}
        for c in constants.values():
            if self.pair and c.name == self.pair[1]:
                t, r = constants[self.pair[0]].value, c.value
                a = _exp(t // r)
                self.dims[self.ratio] = Dim(self.ratio, "exp", a, a + INT_STEPS)
                continue
            kind, v = _kind(c), c.value
            if kind in ("log", "logint"):
                self.dims[c.name] = Dim(c.name, kind, v / spread, v * spread)
            elif kind == "beta":
                gap = 1.0 - v
                self.dims[c.name] = Dim(c.name, kind, gap / spread, min(BETA_MAX_GAP, gap * spread))
            elif kind == "frac":
                self.dims[c.name] = Dim(c.name, kind, max(0.0, v - FRAC_STEP), min(1.0, v + FRAC_STEP))
            elif kind == "int":
                self.dims[c.name] = Dim(c.name, kind, max(1 if v >= 1 else 0, v - INT_STEPS), v + INT_STEPS)
            elif kind == "exp":
                base = c.base or 2
                e = c.exp if c.exp is not None else _exp(v, base)
                self.dims[c.name] = Dim(c.name, kind, max(0, e - INT_STEPS), e + INT_STEPS, base)

    @property
    def ratio(self) -> str:
        return f"{self.pair[0]}/{self.pair[1]}" if self.pair else ""

    def params(self, values: dict[str, float]) -> Optional[dict[str, float]]:
        """The params of a script whose constants have `values`; None when one does not fit a kind."""
        out: dict[str, float] = {}
        for name, d in self.dims.items():
            if d.kind == "exp" and name == self.ratio:
                t, r = values[self.pair[0]], values[self.pair[1]]
                if not (t == int(t) and r == int(r) and r >= 1 and t % r == 0 and _is_pow(int(t // r))):
                    return None
                out[name] = _exp(int(t // r))
                continue
            v = values[name]
            if d.kind in ("int", "exp", "logint") and v != int(v):
                return None
            if d.kind == "exp":
                if not _is_pow(int(v), d.base):
                    return None
                out[name] = _exp(int(v), d.base)
            elif d.kind == "beta":
                if not 0 < v < 1:
                    return None
                out[name] = 1.0 - v
            elif d.kind in ("log", "logint") and v <= 0:
                return None
            else:
                out[name] = int(v) if d.kind in ("int", "logint") else float(v)
        return out

    def widen(self, params: dict[str, float]) -> None:
        for name, p in params.items():
            d = self.dims[name]
            if not d.low <= p <= d.high:
                self.dims[name] = Dim(name, d.kind, min(d.low, p), max(d.high, p), d.base)

    def holds(self, params: dict[str, float]) -> bool:
        return all(self.dims[n].low <= p <= self.dims[n].high for n, p in params.items())

    def distributions(self) -> dict:
        from optuna.distributions import FloatDistribution, IntDistribution

        out = {}
        for name, d in self.dims.items():
            if d.kind in ("int", "exp"):
                out[name] = IntDistribution(int(d.low), int(d.high))
            elif d.kind == "logint":
                out[name] = IntDistribution(max(1, math.floor(d.low)), max(1, math.ceil(d.high)), log=True)
            else:
                out[name] = FloatDistribution(d.low, d.high, log=d.kind in ("log", "beta"))
        return out

    def render(self, params: dict[str, float]) -> dict[str, str]:
        """The literal text of each constant for these params (only the searched ones)."""
        out: dict[str, str] = {}
        for name, p in params.items():
            d = self.dims[name]
            if name == self.ratio:
                continue
            c = self.constants[name]
            if d.kind == "exp":
                out[name] = f"{d.base}**{int(p)}" if c.base is not None else str(d.base ** int(p))
            elif d.kind in ("int", "logint"):
                out[name] = str(int(p))
            elif d.kind == "beta":
                out[name] = f"{1.0 - float(f'{p:.3g}'):.10g}"
            else:
                out[name] = _format_float(float(f"{p:.3g}")) if p else "0.0"
        if self.pair:
            total, rows = self.pair
            e = max(0, int(params[total]) - int(params[self.ratio]))
            out[rows] = f"2**{e}" if self.constants[rows].base is not None else str(2**e)
        return out


def _values(constants: list[Constant]) -> dict[str, float]:
    return {c.name: float(c.value) for c in constants}


@functools.lru_cache(maxsize=512)  # the history's scripts are read again at every call
def _read(text: str, names: frozenset[str]) -> Optional[tuple[str, tuple]]:
    """(the script with the searched constants' values blanked, their values); None when one
    of them is not a literal there."""
    constants = [c for c in find_constants(text) if c.name in names]
    if {c.name for c in constants} != names:
        return None
    for c in sorted(constants, key=lambda c: c.start, reverse=True):
        text = text[: c.start] + "0" + text[c.end :]
    return text, tuple((c.name, float(c.value)) for c in constants)


@functools.lru_cache(maxsize=512)
def _code(blanked: str) -> Optional[str]:
    try:
        return ast.dump(ast.parse(blanked))  # comments and layout aside
    except SyntaxError:
        return None


def _comparable(ctx: ProposalContext, names: frozenset[str]) -> list[tuple[HistoryItem, dict[str, float]]]:
    """The history items that ran this script apart from the values of the constants, with their values."""
    mine = _read(ctx.editable_text, names)
    out = []
    for item in ctx.history:
        theirs = None if item.text is None else _read(item.text, names)
        if theirs is not None and (theirs[0] == mine[0] or _code(theirs[0]) == _code(mine[0])):
            out.append((item, dict(theirs[1])))
    return out


def _key(values: dict[str, float]) -> tuple:
    return tuple(sorted((n, float(f"{v:.10g}")) for n, v in values.items()))


class OptunaProposer:
    """Optuna's TPE over the editable script's numeric constants (see the module doc)."""

    name = NAME

    def __init__(self, seed: int = 0, skip: frozenset[str] = DEFAULT_SKIP, *, spread: float = SPREAD,
                 subspace: Optional[int] = 2, order: str = "coverage", n_startup_trials: int = 1,
                 multivariate: bool = True):
        self.seed = seed
        self.skip = frozenset(skip)
        self.spread = spread
        self.subspace = subspace  # at most this many constants changed per experiment (None: all)
        self.order = order  # coverage | random: which constants a subspace holds
        self.n_startup_trials = n_startup_trials
        self.multivariate = multivariate
        self.last_study = None  # the study of the last call (tests and benchmarks read it)

    def _eligible(self, name: str) -> bool:
        return name not in self.skip and not _has(name, _SKIP_PARTS) and not name.startswith(_SKIP_PREFIXES)

    def study(self, ctx: ProposalContext, space: _Space, comparable: list, rng: random.Random):
        """The in-memory study: one trial per comparable history item, plus the current best as
        an anchor when the history does not hold it."""
        import optuna
        from optuna.trial import TrialState, create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        current = space.params(_values(list(space.constants.values())))
        trials: list[tuple[HistoryItem, dict]] = []
        for item, values in comparable:  # an unknown script or another program says nothing about this one
            params = space.params(values)
            if params is not None:
                trials.append((item, params))
        for item, params in trials:
            if _state(item) != "fail":  # a crash far out need not widen the search
                space.widen(params)
        dists = space.distributions()
        study = optuna.create_study(direction="minimize", sampler=self._sampler(rng))
        held = False
        for item, params in trials:
            if not space.holds(params):
                continue  # a failed run outside the ranges
            state = _state(item)
            if state == "complete":
                study.add_trial(create_trial(value=item.val_bpb, params=params, distributions=dists))
                held = held or _key(params) == _key(current)
            elif state == "pruned":
                steps = {s: float(x) for s, x in zip(_STEPS, item.losses) if x is not None and math.isfinite(x)}
                study.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=dists,
                                             intermediate_values=steps))
            else:
                study.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=dists))
        if not held and ctx.best is not None:  # the anchor: the current best is what ctx.best measured
            study.add_trial(create_trial(value=ctx.best, params=current, distributions=dists,
                                         user_attrs={"anchor": True}))
        return study

    def _sampler(self, rng: random.Random):
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE is "experimental"
            return optuna.samplers.TPESampler(seed=rng.randrange(2**31), n_startup_trials=self.n_startup_trials,
                                              multivariate=self.multivariate, constant_liar=True)

    def _free(self, rng: random.Random, current: dict, trials: list) -> set[str]:
        """The constants this ask may change: 1 to `subspace` of them, those the history
        varied least first (ties at random), so that 20 experiments try every constant."""
        names = sorted(current)
        if self.subspace is None or len(names) <= self.subspace:
            return set(names)
        k = rng.randint(1, self.subspace)
        if self.order == "random":
            return set(rng.sample(names, k))
        varied = {n: sum(t.params.get(n) != current[n] for t in trials) for n in names}
        tie = {n: rng.random() for n in names}
        return set(sorted(names, key=lambda n: (varied[n], tie[n]))[:k])

    def propose(self, ctx: ProposalContext) -> Proposal:
        constants = {c.name: c for c in find_constants(ctx.editable_text) if self._eligible(c.name)}
        space = _Space(constants, self.spread)
        if not space.dims:
            raise NoProposal(
                f"{ctx.editable_name} has no module-level UPPER_CASE numeric constants (NAME = 0.04) for the "
                "optuna proposer to tune; use an LLM proposer (set ANTHROPIC_API_KEY or pass --proposer)"
            )
        comparable = _comparable(ctx, frozenset(constants))
        # Deterministic for a seed and a history, yet a new stream at each call.
        rng = random.Random(f"{self.seed}/{len(ctx.history)}/{len(ctx.in_flight)}")
        study = self.study(ctx, space, comparable, rng)
        self.last_study = study
        tpe = study.sampler
        current = space.params(_values(list(constants.values())))
        seen = {_key(values) for _, values in comparable}
        seen.add(_key(_values(list(constants.values()))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PartialFixedSampler is "experimental"
            from optuna.samplers import PartialFixedSampler

            for _ in range(ASKS):
                free = self._free(rng, current, study.trials)
                study.sampler = PartialFixedSampler({n: p for n, p in current.items() if n not in free}, tpe)
                trial = study.ask(space.distributions())
                texts = space.render(trial.params)
                new_values = {n: number_of(t) for n, t in texts.items()}
                changed = [n for n in constants if n in texts and texts[n] != constants[n].text
                           and new_values[n] != float(constants[n].value)]
                description = "optuna: " + ", ".join(f"{n} {constants[n].text} -> {texts[n]}" for n in changed)
                values = {**_values(list(constants.values())), **new_values}
                if not changed or _key(values) in seen or description in ctx.in_flight:
                    continue  # a repeat: the trial stays RUNNING, and the constant liar steers away from it
                new_text = ctx.editable_text
                for n in sorted(changed, key=lambda n: constants[n].start, reverse=True):
                    c = constants[n]
                    new_text = new_text[: c.start] + texts[n] + new_text[c.end :]
                return Proposal(new_text=new_text, description=description)
        raise NoProposal(
            f"the optuna proposer found no untried values of the constants in {ctx.editable_name} in {ASKS} "
            "samples: the search around the current best is exhausted; an LLM proposer can go further"
        )


def _state(item: HistoryItem) -> str:
    if item.outcome == "stopped":
        return "pruned"
    if item.status == "crash" or item.outcome in ("rejected", "crashed", "timeout") or not item.val_bpb:
        return "fail"
    return "complete"
