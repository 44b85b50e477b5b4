"""What every scheduler does around its experiments: start (recover, check, load), the
baseline and the noise floor before the first experiment, the limits, the report.

The serial and parallel schedulers both call these; the baseline is `run_experiment` with
no proposal, in the workspace's own checkout (or worker 1's device).
"""

from __future__ import annotations

import uuid
from typing import Callable, Optional

from autoresearch.errors import ArError
from autoresearch.experiment.step import Checkout, Outcome, Runner, Plan, run_experiment, run_once
from autoresearch.experiment.keep import noise_floor
from autoresearch.experiment.lab import Lab
from autoresearch.proposers.base import Usage
from autoresearch.experiment.recovery import recover


def start(lab: Lab, proposer_name: str, **details) -> None:
    """Recover, check the tree, load the floor, record "loop_started" (with `details`)."""
    with lab.critical():
        lab.report.recovered = recover(lab)
    if lab.ws.is_dirty():
        raise ArError(
            f"{lab.folder} has uncommitted changes to tracked files; commit or discard them first "
            "(the loop resets experiments with git reset --hard)"
        )
    rows = lab.rows()
    best = lab.best_row(rows)
    lab.floor = lab.recorded_floor()
    s = lab.s
    lab.record("loop_started", proposer=proposer_name, keep_rule=s.keep_rule, budget=s.budget, backend=s.backend,
               max_experiments=s.max_experiments, max_hours=s.max_hours, max_cost=s.max_cost, rows=len(rows),
               head=lab.ws.head_commit(), **details)
    lab.emit("resumed", number=len(rows), best=best.val_bpb if best else None, note=proposer_name)


def limit_reached(lab: Lab, started: float, clock: Callable[[], float], in_flight: int = 0) -> Optional[str]:
    s, r = lab.s, lab.report
    if s.max_experiments is not None and r.experiments + in_flight >= s.max_experiments:
        n = s.max_experiments
        return f"ran {n} experiment{'' if n == 1 else 's'} (--max-experiments {n})"
    if s.max_hours is not None and clock() - started >= s.max_hours * 3600:
        return f"ran for {s.max_hours:g} hours (--max-hours)"
    if s.max_cost is not None and r.cost_usd >= s.max_cost:
        return f"spent ${r.cost_usd:.2f} on proposals (--max-cost {s.max_cost:g})"
    return None


def prepare(lab: Lab, checkout: Checkout, runner: Runner, limit: Callable[[], Optional[str]]) -> bool:
    """The baseline and the noise floor, one run at a time; False when a limit says stop."""
    while True:
        rows = lab.rows()
        best = lab.best_row(rows)
        if best is None and _needs_baseline(lab, rows):
            lab.report.baseline_run = True
            outcome = run_experiment(lab, checkout, runner, None, number=len(rows) + 1, rows_before=len(rows),
                                     floor=lab.floor, kind="baseline")
            finished(lab, outcome, "baseline")
            continue
        reason = limit()
        if reason:
            lab.report.stop_reason = lab.report.stop_reason or reason
            return False
        if best is not None and lab.s.keep_rule == "noise" and lab.floor is None:
            measure_noise(lab, runner, rows, best)
            continue
        if best is not None and lab.s.keep_rule == "test" and (lab.remeasure or _maybe_lucky(lab, rows, best)):
            remeasure_best(lab, runner, len(rows))
            continue
        return True


LUCKY_AFTER = 3  # non-keeps in a row against a best measured once: re-run it (it may be a lucky draw)


def _maybe_lucky(lab: Lab, rows, best) -> bool:
    """A best measured once that LUCKY_AFTER experiments in a row failed to beat: a lucky draw
    would block real gains, so it is re-run (one run, at most once per LUCKY_AFTER experiments)."""
    if len([v for v in lab.runs_of(best.commit) if v is not None]) != 1:
        return False
    mine = lab.mine(rows)
    at = max((i for i, e in enumerate(mine) if e.row.commit == best.commit and e.row.status == "keep"), default=None)
    return at is not None and len(mine) - at - 1 >= LUCKY_AFTER


def _needs_baseline(lab: Lab, rows) -> bool:
    """No result of this budget and backend on the branch, and HEAD has not crashed as it is."""
    head = lab.ws.head_commit()
    return not any(e.row.commit == head and e.row.status == "crash" and not e.recovered for e in lab.mine(rows))


def measure_noise(lab: Lab, runner: Runner, rows, best) -> None:
    """Run HEAD `noise_runs` more times under other seeds; the spread is the noise floor."""
    head = lab.ws.head_commit()
    values: list[Optional[float]] = [e.row.val_bpb for e in lab.mine(rows) if e.row.commit == head and e.row.status == "keep"][-1:]
    plan = Plan(uuid.uuid4().hex[:12], len(rows), "noise", "noise floor", Usage(), None)
    n = lab.s.noise_runs
    for seed in range(1, n + 1):
        plan.message = f"noise floor: run {seed} of {n}"
        result = run_once(lab, runner, plan, head, "noise", seed)
        values.append(result.val_bpb if result.status == "ok" else None)
    lab.floor = noise_floor(values)
    lab.record("noise_floor", id=plan.xid, commit=head, budget=lab.s.budget, budget_key=lab.key[0], backend=lab.key[1],
               values=values, floor=lab.floor)
    lab.emit("noise_floor", commit=head or "", val_bpb=lab.floor, best=best.val_bpb,
             note=", ".join("crash" if v is None else f"{v:.6f}" for v in values))


def remeasure_best(lab: Lab, runner: Runner, number: int) -> None:
    """The `test` rule: the best has one run and a decision needed more; run it once more
    under another seed. Its mean is then the best to beat, and its spread feeds the noise."""
    lab.remeasure = False
    head = lab.ws.head_commit()
    seed = len(lab.runs_of(head))  # 1, 2, ...: the first run had the script's own seed
    plan = Plan(uuid.uuid4().hex[:12], number, "remeasure", f"re-run of the best {head} (seed {seed})", Usage(), None)
    run_once(lab, runner, plan, head, "remeasure", seed)
    values = lab.runs_of(head)
    noise = lab.noise()
    sd = f"noise sd {noise.sigma:.6f} ({noise.dof} dof)" if noise else "no noise estimate yet"
    lab.record("remeasured", id=plan.xid, commit=head, values=values, noise_sd=noise.sigma if noise else None,
               noise_dof=noise.dof if noise else 0, budget=lab.s.budget, backend=lab.s.backend)
    lab.emit("noise", commit=head or "", val_bpb=noise.sigma if noise else None,
             note=f"the best {head} re-run: " + ", ".join("crash" if v is None else f"{v:.6f}" for v in values) + f"; {sd}")


def finished(lab: Lab, outcome: Optional[Outcome], kind: str) -> None:
    """Count an outcome in the report and tell the display."""
    if outcome is None:
        return
    with lab.lock:
        if kind != "baseline":  # the report counts experiments; the baseline is reported apart
            lab.report.experiments += 1
            lab.report.kept += outcome.status == "keep"
            lab.report.crashed += outcome.status == "crash"
        best = lab.best_row()
    lab.emit("finished", number=outcome.row, description=outcome.description, commit=outcome.commit, run_kind=kind,
             status=outcome.status, val_bpb=outcome.value, best=best.val_bpb if best else None, note=outcome.decision.reason)


def stop(lab: Lab) -> None:
    """The report's best, the "loop_stopped" record and event."""
    r = lab.report
    best = lab.best_row()
    r.best = best.val_bpb if best else None
    r.best_commit = best.commit if best else None
    r.noise_floor = lab.floor
    noise = lab.noise() if lab.s.keep_rule == "test" else None
    r.noise_sd = noise.sigma if noise else None
    lab.record("loop_stopped", reason=r.stop_reason, experiments=r.experiments, kept=r.kept,
               cost_usd=round(r.cost_usd, 6), head=lab.ws.head_commit())
    lab.emit("stopped", note=r.stop_reason, best=r.best)
