"""Whether a run's val_bpb can be believed.

The number comes from the judge (judge/referee.py), a thread of `ar` outside the run's
process and sandbox: it holds the validation rows and the token byte lengths, hands the
run's model one batch of inputs at a time over a socket, computes the cross-entropy and
val_bpb itself, checks the run's committed losses against full logit rows at secret
positions, and probes causality (docs/judge.md). `judge` below turns its result, the
script's summary block and the time budget into the run's verdict.

Rejected (first reason found wins):
  <the judge's category>     protocol, invalid values, inconsistent, non-causal,
                             evaluated more than once: the judge's reason says what
  over budget                from the first training batch to the first evaluation request
                             (as the run reports it to the judge, with the request) longer
                             than budget * (1 + BUDGET_SLACK) + warm-up allowance; or, timed
                             by the judge itself, from the launch to that request longer
                             than that plus the start-up allowance
  val_bpb not from the harness  a printed val_bpb without an evaluation by the judge
  no summary                 a judged val_bpb but no printed val_bpb (exit code 0)
  printed val_bpb differs    the printed value is not the judge's (to PRINT_TOLERANCE)

Allowances (workspace config keys, seconds): `warmup_allowance` (default 30 on cuda,
where torch.compile compiles during the first steps, else 10) is training time beyond
the budget that the first, untimed steps may take; `startup_allowance` (default 120) is
for imports, data and model set-up before the first batch. The first training batch is
the run's own report (a script written to lie could say it started later); the judge's
own clock, from the launch, bounds what such a script gains: the start-up allowance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from autoresearch.data.context import RunContext

BUDGET_SLACK = 0.05
DEFAULT_WARMUP = 10.0
DEFAULT_WARMUP_CUDA = 30.0
DEFAULT_STARTUP = 120.0
PRINT_TOLERANCE = 1e-5  # the template prints 6 decimals


@dataclass
class TrustPolicy:
    """What one workspace's runs are checked against."""

    ctx: RunContext  # the workspace's constants, with this run budget
    warmup: float = DEFAULT_WARMUP
    startup: float = DEFAULT_STARTUP
    _data: Optional[tuple] = None  # the validation rows and token byte lengths, read once

    @classmethod
    def for_config(cls, cfg, budget: float) -> Optional["TrustPolicy"]:
        """The policy for a workspace config (loop.config.WorkspaceConfig); None when the
        workspace takes val_bpb from the printout (metric = "printed")."""
        if getattr(cfg, "metric", "harness") == "printed":
            return None
        warmup = cfg.warmup_allowance
        if warmup is None:
            warmup = DEFAULT_WARMUP_CUDA if cfg.backend == "cuda" else DEFAULT_WARMUP
        startup = DEFAULT_STARTUP if cfg.startup_allowance is None else cfg.startup_allowance
        return cls(replace(cfg.run_context(), time_budget=float(budget)), float(warmup), float(startup))

    @property
    def budget(self) -> float:
        return self.ctx.time_budget

    @property
    def training_limit(self) -> float:
        """First training batch to the first evaluation request, at most."""
        return self.budget * (1 + BUDGET_SLACK) + self.warmup

    @property
    def run_limit(self) -> float:
        """Launch to the first evaluation request, at most."""
        return self.budget * (1 + BUDGET_SLACK) + self.warmup + self.startup

    def judge(self):
        """A fresh judge for one run (judge.referee.Judge), holding the evaluation data that
        is read here, outside the run, once per policy."""
        from autoresearch.data.loader import data_spec, validation_rows
        from autoresearch.judge import Judge

        if self._data is None:
            self._data = (validation_rows(self.ctx), data_spec(self.ctx).tokenizer.token_bytes)
        return Judge(*self._data)


@dataclass(frozen=True)
class Judgement:
    rejection: Optional[tuple[str, str]]  # (category, why) when rejected
    val_bpb: Optional[float]  # the judge's value when there is one and nothing is wrong
    record: Optional[dict]  # what the judge measured (runs.jsonl keeps it with the run)


def judge(summary: dict, status: str, returncode: Optional[int], result, policy: TrustPolicy) -> Judgement:
    """The verdict on one finished run from the judge's `result` (judge.referee.JudgeResult)."""
    rec = None
    if result.status != "none":
        rec = {"judge": result.status, "val_bpb": result.val_bpb, "training_seconds": result.training_seconds,
               "eval_seconds": result.eval_seconds, **{k: v for k, v in result.details.items() if k != "val_bpb"}}

    def no(category: str, why: str) -> Judgement:
        return Judgement((category, why), None, rec)

    if result.status == "rejected":
        return no(result.category, result.reason)
    if status in ("timeout", "interrupted"):
        return Judgement(None, None, rec)
    printed = summary.get("val_bpb")
    if result.status == "none":
        if "val_bpb" in summary:
            return no("val_bpb not from the harness", f"the script printed val_bpb {printed} but never asked for an "
                                                      "evaluation; the metric must come from evaluate_bpb")
        return Judgement(None, None, None)
    over = _over_budget(result, policy)
    if over:
        return no("over budget", over)
    if result.status != "ok":  # it asked, then died or hung up during the evaluation: a crash
        return Judgement(None, None, rec)
    value = float(result.val_bpb)
    if "val_bpb" not in summary:
        if returncode:  # it failed after evaluating: a crash, not a result
            return Judgement(None, None, rec)
        return no("no summary", f"evaluate_bpb returned {value:.6f} but the script printed no val_bpb")
    if not isinstance(printed, (int, float)) or not (
        abs(printed - value) <= PRINT_TOLERANCE or (math.isnan(printed) and math.isnan(value))
    ):
        return no("printed val_bpb differs", f"the script printed val_bpb {printed} but evaluate_bpb returned "
                                             f"{value:.6f}")
    return Judgement(None, value, rec)


def _over_budget(result, policy: TrustPolicy) -> Optional[str]:
    train = result.reported_training
    if train is not None and train > policy.training_limit:
        return (f"trained for {train:.1f} s (from the first training batch to the evaluation) but the budget is "
                f"{policy.budget:g} s (at most {policy.training_limit:.1f} s with the warm-up allowance); stop "
                "training when TIME_BUDGET is used up")
    seconds = result.training_seconds
    if seconds is not None and seconds > policy.run_limit:
        return (f"asked for the evaluation {seconds:.1f} s after it started (timed by ar's judge), but at most "
                f"{policy.run_limit:.1f} s are allowed (budget {policy.budget:g} s + 5% + warm-up {policy.warmup:g} s "
                f"+ start-up {policy.startup:g} s); stop training when TIME_BUDGET is used up")
    return None
