"""Whether a run's val_bpb can be believed.

The number comes from the harness, not from the script's printout: each run gets a
fresh Channel (a private result file and a random key, passed in the environment and
taken out of it by the harness at import, see autoresearch.data.integrity); evaluate_bpb
appends one signed record per evaluation. `judge` then compares that record with the
script's summary block, the workspace's constants and the time budget.

Rejected (first reason found wins):
  forged result              a line in the result file without a valid signature
  non-causal                 the harness's causality probe failed
  tampered harness           the harness found its functions, constants or data changed
  evaluated more than once   more than one evaluate_bpb result
  trained on validation data the script read the validation split
  wrong evaluation data      sequence length, rows, EVAL_TOKENS, vocabulary, the validation
                             rows' or token lengths' digest, or TIME_BUDGET differ from
                             what the workspace's profile gives
  over budget                training (first training batch to the start of the evaluation,
                             both timed by the harness) longer than
                             budget * (1 + BUDGET_SLACK) + warm-up allowance; or the run's
                             wall clock (measured here) minus the evaluation longer than that
                             plus the start-up allowance
  val_bpb not from the harness  a printed val_bpb without a harness result
  no summary                 a harness result but no printed val_bpb (exit code 0)
  printed val_bpb differs    the printed value is not the harness's (to PRINT_TOLERANCE)

Allowances (workspace config keys, seconds): `warmup_allowance` (default 30 on cuda,
where torch.compile compiles during the first steps, else 10) is training time beyond
the budget that the first, untimed steps may take; `startup_allowance` (default 120) is
for imports, data and model set-up before the first batch.
"""

from __future__ import annotations

import math
import secrets
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from autoresearch.data import integrity
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
    _expected: Optional[dict] = None

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
        return self.budget * (1 + BUDGET_SLACK) + self.warmup

    def expected(self) -> dict:
        """The evaluation data as the harness must see it, computed here, outside the
        experiment's process (once per policy)."""
        if self._expected is None:
            from autoresearch.data.loader import data_spec, validation_rows

            spec = data_spec(self.ctx)
            rows = validation_rows(spec)
            self._expected = {
                "seq_len": int(rows.shape[1]) - 1,
                "n_rows": int(rows.shape[0]),
                "eval_tokens": int(spec.eval_tokens),
                "vocab": int(spec.tokenizer.vocab_size),
                "rows_sha256": integrity.array_digest(rows),
                "token_bytes_sha256": integrity.array_digest(spec.tokenizer.token_bytes),
            }
        return self._expected


class Channel:
    """A private result file and a fresh key for one run."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ar-result-"))  # mode 0700
        self.path = self.dir / "result.jsonl"
        self.key = secrets.token_bytes(32)

    def env(self) -> dict[str, str]:
        return {integrity.RESULT_FILE_ENV: str(self.path), integrity.RESULT_KEY_ENV: self.key.hex()}

    def read(self) -> tuple[list[dict], list[str]]:
        return integrity.read_records(str(self.path), self.key)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class Judgement:
    rejection: Optional[tuple[str, str]]  # (category, why) when rejected
    val_bpb: Optional[float]  # the harness's value when there is one and nothing is wrong
    record: Optional[dict]  # the harness's evaluation record, if any


_DATA_KEYS = (
    ("seq_len", "sequence length"),
    ("n_rows", "number of validation rows"),
    ("eval_tokens", "EVAL_TOKENS"),
    ("vocab", "vocabulary size"),
    ("rows_sha256", "validation rows (digest)"),
    ("token_bytes_sha256", "token byte lengths (digest)"),
)


def _fmt(v) -> str:
    return f"{v:.6f}" if isinstance(v, float) else repr(v)


def judge(summary: dict, status: str, returncode: Optional[int], wall: float, records: list[dict], bad: list[str],
          policy: TrustPolicy) -> Judgement:
    """The verdict on one finished run (see the module doc). `wall` is the runner's own
    measure of the run, from start to the script's exit."""
    evals = [r for r in records if r.get("kind") == "eval"]
    rec = evals[0] if evals else None

    def no(category: str, why: str) -> Judgement:
        return Judgement((category, why), None, rec)

    if bad:
        return no("forged result", f"the result file holds {len(bad)} line(s) the harness did not sign ({bad[0]}); "
                                   "only evaluate_bpb may write it")
    for r in evals:
        if r.get("verdict") == "non-causal":
            return no("non-causal", str(r.get("detail")))
        if r.get("verdict") != "ok":
            return no("tampered harness", str(r.get("detail") or r.get("verdict")))
    if len(evals) > 1:
        return no("evaluated more than once", f"evaluate_bpb returned {len(evals)} results; evaluate once, at the end")
    if status in ("timeout", "interrupted"):
        return Judgement(None, None, rec)
    printed = summary.get("val_bpb")
    if rec is None:
        if "val_bpb" in summary:
            return no("val_bpb not from the harness", f"the script printed val_bpb {printed} but evaluate_bpb never "
                                                      "returned a result; the metric must come from evaluate_bpb")
        return Judgement(None, None, None)
    if rec.get("val_split_used"):
        return no("trained on validation data", "the script read the validation split (split='val'); train on the "
                                                "training split only")
    expected = policy.expected()
    for key, label in _DATA_KEYS:
        if rec.get(key) != expected[key]:
            got = "different" if key.endswith("sha256") else _fmt(rec.get(key))
            want = "the workspace's" if key.endswith("sha256") else _fmt(expected[key])
            return no("wrong evaluation data", f"evaluate_bpb used {label} {got}, but profile {policy.ctx.profile.name} "
                                               f"gives {want}; evaluate with the context from load_context()")
    budget = rec.get("time_budget")
    if isinstance(budget, (int, float)) and abs(float(budget) - policy.budget) > 1e-9:
        return no("wrong evaluation data", f"the script's context has TIME_BUDGET {budget:g} s but this run's budget "
                                           f"is {policy.budget:g} s")
    over = _over_budget(rec, wall, policy)
    if over:
        return no("over budget", over)
    value = rec.get("val_bpb")
    if not isinstance(value, (int, float)):
        return no("tampered harness", "the harness record has no val_bpb")
    if "val_bpb" not in summary:
        if returncode:  # it failed after evaluating: a crash, not a result
            return Judgement(None, None, rec)
        return no("no summary", f"evaluate_bpb returned {value:.6f} but the script printed no val_bpb")
    if not isinstance(printed, (int, float)) or not (
        abs(printed - value) <= PRINT_TOLERANCE or (math.isnan(printed) and math.isnan(value))
    ):
        return no("printed val_bpb differs", f"the script printed val_bpb {printed} but evaluate_bpb returned "
                                             f"{value:.6f}")
    return Judgement(None, float(value), rec)


def _over_budget(rec: dict, wall: float, policy: TrustPolicy) -> Optional[str]:
    limit = policy.training_limit
    train = rec.get("train_seconds")
    if isinstance(train, (int, float)) and train > limit:
        return (f"trained for {train:.1f} s (from the first training batch to the evaluation, timed by the harness) "
                f"but the budget is {policy.budget:g} s (at most {limit:.1f} s with the warm-up allowance); stop "
                "training when TIME_BUDGET is used up")
    evaluating = rec.get("eval_seconds") if isinstance(rec.get("eval_seconds"), (int, float)) else 0.0
    if wall - evaluating > limit + policy.startup:
        return (f"ran for {wall:.1f} s, {evaluating:.1f} s of it evaluating, but at most {limit + policy.startup:.1f} s "
                f"are allowed (budget {policy.budget:g} s + warm-up {policy.warmup:g} s + start-up "
                f"{policy.startup:g} s)")
    return None
