"""`eval_stats`: intervals and tests on fixed examples whose answers were computed independently.

- Wilson intervals: the published worked examples of Newcombe (Statistics in Medicine 1998, "Two-
  sided confidence intervals for the single proportion", method 3) and closed forms for 0/n and n/n.
- McNemar: exact binomial tails written out by hand (math.comb is not used for the expected value).
- Bootstrap: the exact distribution of a bootstrap mean is multinomial; `_exact_cdf` enumerates it
  with fractions, and the examples were chosen so that no quantile lies within 0.009 of 2.5% or
  97.5% (over 5 standard errors of a 10,000-resample estimate), so the seeded Monte Carlo interval
  must land exactly on the exact one.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from fractions import Fraction

import numpy as np
import pytest
from rich.cells import cell_len

from moa_tui.eval_stats import (
    Accuracy,
    accuracy,
    accuracy_chart,
    as_matrix,
    best_member,
    compare,
    compare_to_best,
    difference_chart,
    mcnemar_exact,
    paired_bootstrap,
    wilson_interval,
)


def _exact_cdf(values: list[Fraction]) -> list[tuple[Fraction, Fraction]]:
    """(mean, P(bootstrap mean <= mean)) of the mean of len(values) draws with replacement."""
    n = len(values)
    counts = Counter(values)
    keys = list(counts)
    dist: dict[Fraction, Fraction] = defaultdict(Fraction)

    def spread(i: int, left: int, taken: list[int]) -> None:
        if i == len(keys) - 1:
            taken = [*taken, left]
            p = Fraction(math.factorial(n))
            for key, k in zip(keys, taken, strict=True):
                p *= Fraction(counts[key], n) ** k / math.factorial(k)
            dist[sum((key * k for key, k in zip(keys, taken, strict=True)), Fraction(0)) / n] += p
            return
        for k in range(left + 1):
            spread(i + 1, left - k, [*taken, k])

    spread(0, n, [])
    out, total = [], Fraction(0)
    for mean in sorted(dist):
        total += dist[mean]
        out.append((mean, total))
    return out


def _quantile(cdf: list[tuple[Fraction, Fraction]], p: Fraction) -> Fraction:
    return next(x for x, c in cdf if c >= p)


def _pairs(*kinds: tuple[str, int]) -> tuple[list[bool], list[bool]]:
    """(system, baseline) results from counts of "10" (system only right), "01", "11", "00"."""
    system, baseline = [], []
    for kind, n in kinds:
        system += [kind[0] == "1"] * n
        baseline += [kind[1] == "1"] * n
    return system, baseline


# -- Wilson ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, n, low, high", [
    (81, 263, 0.2553, 0.3662),  # Newcombe 1998, Table I
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombes_worked_examples(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_closed_forms_at_the_ends():
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 20) == pytest.approx((0.0, z2 / (20 + z2)))
    assert wilson_interval(20, 20) == pytest.approx((20 / (20 + z2), 1.0))
    assert wilson_interval(1, 1) == pytest.approx((1 / (1 + z2), 1.0))  # n = 1
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no trials: no information
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_accuracy_counts_question_seed_trials():
    a = accuracy([[True, False, True, True], [False, False, True, True]])
    assert (a.correct, a.trials, a.value) == (5, 8, 0.625)
    assert (a.low, a.high) == pytest.approx(wilson_interval(5, 8))
    assert a.to_dict()["accuracy"] == 0.625


# -- McNemar --------------------------------------------------------------------------------------


def test_mcnemar_exact_on_a_fixed_example():
    system, baseline = _pairs(("10", 7), ("01", 1), ("11", 6), ("00", 6))
    test = mcnemar_exact(system, baseline)
    # n = 8 discordant pairs, k = 1: p = 2 * (C(8,0) + C(8,1)) / 2^8 = 2 * 9 / 256
    assert (test.system_only, test.baseline_only) == (7, 1)
    assert test.p_value == pytest.approx(18 / 256)


def test_mcnemar_is_symmetric_and_capped_at_one():
    system, baseline = _pairs(("10", 3), ("01", 3), ("11", 2))
    # n = 6, k = 3: 2 * (1 + 6 + 15 + 20) / 64 = 84 / 64 > 1, capped
    assert mcnemar_exact(system, baseline).p_value == 1.0
    a, b = _pairs(("10", 2), ("01", 8))
    assert mcnemar_exact(a, b).p_value == mcnemar_exact(b, a).p_value == pytest.approx(2 * 56 / 1024)


def test_mcnemar_without_discordant_pairs_is_one():
    system, baseline = _pairs(("11", 4), ("00", 3))
    test = mcnemar_exact(system, baseline)
    assert (test.system_only, test.baseline_only, test.p_value) == (0, 0, 1.0)


# -- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_interval_equals_the_exact_one_on_one_seed():
    system, baseline = _pairs(("10", 7), ("01", 1), ("11", 6), ("00", 6))
    cdf = _exact_cdf([Fraction(int(s) - int(b)) for s, b in zip(system, baseline, strict=True)])
    exact = (_quantile(cdf, Fraction(1, 40)), _quantile(cdf, Fraction(39, 40)))
    assert exact == (Fraction(1, 20), Fraction(11, 20))
    assert paired_bootstrap(system, baseline, resamples=10_000, seed=0) == pytest.approx((0.05, 0.55))
    assert paired_bootstrap(system, baseline, resamples=10_000, seed=7) == pytest.approx((0.05, 0.55))


def test_bootstrap_over_seeds_resamples_questions_not_cells():
    # 12 questions x 2 seeds; four questions go to the system and one to the baseline on both seeds.
    system, baseline = _pairs(("10", 4), ("01", 1), ("11", 3), ("00", 4))
    sys2, base2 = [system, system], [baseline, baseline]
    per_question = [Fraction(int(s) - int(b)) for s, b in zip(system, baseline, strict=True)]
    exact = _exact_cdf(per_question)
    assert (_quantile(exact, Fraction(1, 40)), _quantile(exact, Fraction(39, 40))) == (Fraction(-1, 12),
                                                                                        Fraction(7, 12))
    # Treating the 24 cells as independent would claim a narrower interval that excludes zero:
    cells = _exact_cdf(per_question * 2)
    assert (_quantile(cells, Fraction(1, 40)), _quantile(cells, Fraction(39, 40))) == (0, Fraction(1, 2))
    low, high = paired_bootstrap(sys2, base2, resamples=10_000, seed=0)
    assert (low, high) == pytest.approx((-1 / 12, 7 / 12))

    result = compare("vote", sys2, "smollm2", base2)
    assert (result.seeds, result.questions) == (2, 12)
    assert result.difference == pytest.approx(0.25)
    assert (result.low, result.high) == pytest.approx((-1 / 12, 7 / 12))
    assert result.verdict == "no clear difference"
    assert result.seed_differences == pytest.approx((0.25, 0.25))
    # McNemar counts cells: b = 8, c = 2, p = 2 * (1 + 10 + 45) / 1024
    assert result.mcnemar.p_value == pytest.approx(112 / 1024)


def test_bootstrap_edge_cases():
    same = [True, False, True]
    assert paired_bootstrap(same, same) == (0.0, 0.0)
    one = compare("s", [True], "b", [False])  # n = 1: the only resample is the data itself
    assert (one.difference, one.low, one.high, one.verdict) == (1.0, 1.0, 1.0, "better")
    assert one.mcnemar.p_value == 1.0  # one discordant pair proves nothing
    worse = compare("s", [False] * 10, "b", [True] * 10)
    assert (worse.low, worse.high, worse.verdict) == (-1.0, -1.0, "worse")
    with pytest.raises(ValueError, match="same seeds x questions"):
        compare("s", [True, False], "b", [True])
    with pytest.raises(ValueError, match="non-empty"):
        as_matrix([])


def test_bootstrap_is_seeded_and_bounded_in_memory():
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 5000)) < 0.5, rng.random((2, 5000)) < 0.45
    first = paired_bootstrap(a, b, resamples=2000, seed=1)
    assert first == paired_bootstrap(a, b, resamples=2000, seed=1)
    assert first[0] < float(a.mean() - b.mean()) < first[1]


def test_best_member_and_compare_to_best():
    members = {"gemma": [True, False, False, True], "smol": [True, True, False, True],
               "twin": [True, True, True, False]}
    assert best_member(members) == "smol"  # smol and twin tie at 75%: the one given first
    results = compare_to_best({"vote": [True, True, True, True]}, members)
    assert [(r.system, r.baseline) for r in results] == [("vote", "smol")]
    assert results[0].to_dict()["difference"] == 0.25
    with pytest.raises(ValueError):
        best_member({})


# -- charts ---------------------------------------------------------------------------------------


def _rows() -> dict[str, Accuracy]:
    return {"smollm2": Accuracy(14, 45, *wilson_interval(14, 45)),
            "gemma3-270m-a-long-model-name": Accuracy(9, 45, *wilson_interval(9, 45)),
            "tiny (vote)": Accuracy(45, 45, *wilson_interval(45, 45)),
            "tiny (synthesize)": Accuracy(0, 45, *wilson_interval(0, 45))}


@pytest.mark.parametrize("width", [20, 30, 44, 60, 80, 120, 200])
def test_charts_fit_the_width(width):
    rows = _rows()
    members = {"smollm2": [True] * 14 + [False] * 31}
    systems = {"tiny (vote)": [True] * 20 + [False] * 25, "tiny (synthesize)": [True] * 5 + [False] * 40}
    for chart in (accuracy_chart(rows, width), difference_chart(compare_to_best(systems, members), width)):
        assert chart
        assert all(cell_len(line) <= width for line in chart.splitlines()), chart


def test_accuracy_bars_are_proportional():
    chart = accuracy_chart(_rows(), width=100)
    lines = chart.splitlines()
    bar_width = 100 - len("gemma3-270m-a-long-model-name"[:25]) - len("100% [92%-100%]") - 2
    for name, a in _rows().items():
        line = next(line for line in lines if line.startswith(name[:10]))
        filled = sum(line.count(ch) for ch in "█▓")
        assert abs(filled - a.value * bar_width) <= 1, (name, line)
        assert f"{a.value:.0%}" in line
    assert "0%" in lines[-2] and "100%" in lines[-2]


def test_difference_chart_puts_point_and_interval_around_zero():
    members = {"smollm2": [True] * 10 + [False] * 30}
    systems = {"better": [True] * 30 + [False] * 10, "same": [True] * 10 + [False] * 30,
               "worse": [False] * 40}
    chart = difference_chart(compare_to_best(systems, members), width=100)
    lines = {line.split()[0]: line for line in chart.splitlines()[1:-1]}
    axis = chart.splitlines()[-1]
    zero = lines["same"].index("●")  # a difference of exactly 0
    assert axis[zero] == "0" and axis.split() == ["-100", "0", "+100"]
    assert lines["better"].index("●") > zero and lines["better"][zero] == "│"  # the interval leaves zero out
    assert lines["worse"].index("●") < zero and lines["worse"][zero] == "│"
    assert "+50.0" in lines["better"] and "-25.0" in lines["worse"]
    assert accuracy_chart({}) == difference_chart([]) == ""
