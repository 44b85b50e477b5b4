"""Keep rules: strict (upstream) and noise (a gain must clear the measured noise floor)."""

from __future__ import annotations

import pytest

from autoresearch.errors import ArError
from autoresearch.experiment.keep import decide, noise_floor


def test_noise_floor_is_the_spread_of_repeated_runs():
    assert noise_floor([1.000, 1.004, 0.998]) == pytest.approx(0.006)
    assert noise_floor([1.0, None, 1.003]) == pytest.approx(0.003)  # a crashed repeat is left out
    assert noise_floor([1.0]) == 0.0 and noise_floor([None, None]) == 0.0


def test_the_first_result_is_kept_under_both_rules():
    for rule in ("strict", "noise"):
        d = decide(rule, None, [1.3], 0.01)
        assert d.action == "keep" and d.value == 1.3 and "baseline" in d.reason


def test_a_crash_is_a_crash_even_on_the_confirmation_run():
    assert decide("strict", 1.0, [None]).action == "crash"
    d = decide("noise", 1.0, [0.99, None], 0.006)
    assert d.action == "crash" and d.value is None and "confirmation" in d.reason


def test_strict_keeps_anything_strictly_lower():
    assert decide("strict", 1.0, [0.9999], 0.5).action == "keep"  # the floor is ignored
    assert decide("strict", 1.0, [1.0]).action == "discard"  # equal is not better
    assert decide("strict", 1.0, [1.2]).action == "discard"


def test_noise_rule_discards_gains_within_the_floor():
    d = decide("noise", 1.0, [0.995], 0.006)
    assert d.action == "discard" and "noise floor 0.006000" in d.reason
    assert decide("noise", 1.0, [0.994], 0.006).action == "discard"  # exactly the floor does not clear it


def test_noise_rule_confirms_marginal_gains_and_keeps_clear_ones():
    assert decide("noise", 1.0, [0.990], 0.006).action == "confirm"  # gain 0.010: between 1x and 2x
    assert decide("noise", 1.0, [0.988], 0.006).action == "confirm"  # 2x exactly is still marginal
    d = decide("noise", 1.0, [0.980], 0.006)  # gain 0.020 > 2x
    assert d.action == "keep" and d.value == pytest.approx(0.98)


def test_a_confirmation_keeps_only_if_the_mean_still_clears_the_floor():
    kept = decide("noise", 1.0, [0.990, 0.992], 0.006)
    assert kept.action == "keep" and kept.value == pytest.approx(0.991) and "mean of 2 runs" in kept.reason
    lost = decide("noise", 1.0, [0.990, 1.000], 0.006)  # mean 0.995: the first run was luck
    assert lost.action == "discard" and lost.value == pytest.approx(0.995)
    # With two runs there is never a third: a marginal mean is decided.
    assert decide("noise", 1.0, [0.990, 0.990], 0.006).action == "keep"


def test_noise_rule_without_noise_is_strict():
    for floor in (None, 0.0):
        assert decide("noise", 1.0, [0.999999], floor).action == "keep"
        assert decide("noise", 1.0, [1.0], floor).action == "discard"


def test_unknown_rule_and_no_runs_are_errors():
    with pytest.raises(ArError, match="unknown keep rule 'lenient'"):
        decide("lenient", 1.0, [0.9])
    with pytest.raises(ValueError):
        decide("strict", 1.0, [])


# -- the `test` rule: a one-sided test at a stated false-keep rate -------------------------

from autoresearch.experiment.keep import FALSE_KEEP, Noise, decide_test, t_look  # noqa: E402


def test_pooled_noise_uses_every_script_run_more_than_once():
    assert Noise.pooled([[1.0], [None, 1.2]]) is None  # nothing ran twice (a crash does not count)
    n = Noise.pooled([[1.0, 1.002], [0.9, 0.904, 0.902], [0.5]])
    assert n.dof == 3 and n.sigma == pytest.approx(((0.000002 + 0.000008) / 3) ** 0.5)
    assert t_look(1) == pytest.approx(12.706) and t_look(11) == t_look(10) and t_look(500) == pytest.approx(1.980)


def test_no_gain_is_discarded_at_once_and_the_baseline_is_kept():
    assert decide_test(None, [1.3], None).action == "keep"
    d = decide_test([1.0], [1.001], Noise(0.002, 4))
    assert d.action == "discard" and "no better" in d.reason and not d.remeasure


def test_a_promising_first_run_measures_the_noise_when_none_is_known():
    d = decide_test([1.0], [0.99], None)
    assert d.action == "confirm" and "no noise estimate" in d.reason


def test_the_gain_must_clear_the_one_sided_test():
    noise = Noise(0.002, 10)  # t_look = 2.228
    need = 2.228 * 0.002 * (1 / 1 + 1 / 3) ** 0.5  # one run against a best of three: 0.005145
    assert decide_test([1.0, 1.0, 1.0], [1.0 - need - 1e-4], noise).action == "keep"
    assert decide_test([1.0, 1.0, 1.0], [0.996], noise).action == "confirm"  # promising: more runs could clear it
    assert decide_test([1.0, 1.0, 1.0], [0.9995], noise).action == "discard"  # even 3 runs with this mean could not
    kept = decide_test([1.0, 1.0, 1.0], [0.996, 0.995], noise)  # two runs: the bar is lower (0.004068)
    assert kept.action == "keep" and kept.value == pytest.approx(0.9955) and "mean of 2 runs" in kept.reason
    assert f"{FALSE_KEEP:.0%} false keeps" in kept.reason


def test_a_decision_limited_by_a_best_measured_once_asks_to_re_run_the_best():
    noise = Noise(0.002, 4)  # three runs would need 0.0064 against one run of the best, 0.0051 against two
    d = decide_test([1.0], [0.994, 0.994, 0.994], noise)  # three runs, but the best has one
    assert d.action == "discard" and d.remeasure


def test_a_gain_is_run_again_while_the_noise_estimate_is_thin():
    # One re-run of the best, made in a burst of load, gave sd 0.03 on 1 dof: the bar is 13x that.
    thin = Noise(0.03, 1)
    d = decide_test([1.92, 1.89], [1.815], thin)
    assert d.action == "confirm" and "rests on 1 dof" in d.reason  # not discarded on one run
    assert decide_test([1.92, 1.89], [1.815, 1.812], thin).action == "discard"  # two runs: the test decides
    assert decide_test([1.92, 1.89], [1.87], Noise(0.03, 4)).action == "discard"  # enough dof: at once
    assert decide_test([1.92, 1.89], [1.87], thin).action == "confirm"  # the same gain, on 1 dof: again
    assert decide_test([1.92, 1.89], [1.95], thin).action == "discard"  # no gain: at once, whatever the dof


def test_a_deterministic_script_keeps_any_gain():
    assert decide_test([1.0, 1.0], [0.9999], Noise(0.0, 3)).action == "keep"


@pytest.mark.parametrize("scripts", [0, 3])  # 0: the noise rests on the best's and the candidate's runs alone
def test_the_false_keep_rate_holds_on_simulated_noise(scripts):
    # 2,000 candidates identical in effect to the best (gain 0), noise sd 0.01: at most 5% kept,
    # also while the estimate is thin and every gain gets a second run.
    import random

    rng = random.Random(7)
    kept = 0
    for _ in range(2000):
        best = [1.0 + rng.gauss(0, 0.01) for _ in range(2)]
        values = [1.0 + rng.gauss(0, 0.01)]
        history = [[1.0 + rng.gauss(0, 0.01) for _ in range(2)] for _ in range(scripts)]
        while True:
            d = decide_test(best, values, Noise.pooled(history + [best, values]))
            if d.action != "confirm":
                break
            values.append(1.0 + rng.gauss(0, 0.01))
        kept += d.action == "keep"
    assert kept / 2000 <= FALSE_KEEP, kept


def test_runs_under_another_foreign_load_are_not_compared():
    from autoresearch.experiment.keep import same_machine

    best = [(1.0, 0.9), (0.99, 0.8), (0.9, 0.05)]  # (val_bpb, share of the machine other work used)
    assert same_machine(best, 0.85) == ([1.0, 0.99], 0.0)  # only the runs under a similar load
    assert same_machine(best, 0.0) == ([0.9], 0.0)
    values, gap = same_machine(best[:2], 0.05)
    assert values == [] and gap == pytest.approx(0.05 - 0.8)
    assert same_machine([(1.0, None)], 0.5) == ([1.0], 0.0)  # not measured: taken as comparable


def test_repeats_under_nearly_the_same_load_are_pooled_together():
    from autoresearch.experiment.keep import run_noise

    def run(commit, value, load):
        return {"event": "run", "budget": 60, "backend": "cpu", "commit": commit, "status": "ok", "val_bpb": value,
                "machine": load}

    # 0.12 and 0.13 are the same machine (no band edge may split them); 0.9 is another.
    n = run_noise([run("a", 1.0, 0.12), run("a", 1.002, 0.13), run("a", 1.3, 0.9)], ("60", "cpu"))
    assert n is not None and n.dof == 1 and n.sigma == pytest.approx(0.002 / 2 ** 0.5)
    assert run_noise([run("a", 1.0, 0.1), run("a", 1.3, 0.9)], ("60", "cpu")) is None  # the load, not the noise
