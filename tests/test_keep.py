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
