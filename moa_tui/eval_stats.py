"""Statistics for `moa eval`: can a system be told apart from its best single member?

One seed on 45 questions cannot tell systems apart (three settings of one model spread over 7
points), so every comparison is paired (the same questions, the same seeds) and comes with an
interval. Results are boolean matrices, seeds x questions (a flat list is one seed).

- The difference in accuracy gets a 95% percentile bootstrap interval that resamples *questions*
  and keeps each question's seeds together: seeds of one question are not independent draws, the
  questions are what we want to generalise over.
- McNemar's exact test (a two-sided binomial test on the discordant pairs) is a second view; it
  counts every (seed, question) pair as independent, so with several seeds it is optimistic.
- One accuracy gets a Wilson score interval (good at small n and near 0 or 1, unlike the normal
  approximation), over all question x seed trials.

Choosing the best member on the same data favours the member, which makes the comparison
conservative for the system. Pure functions; the charts are returned as strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from rich.cells import cell_len, set_cell_size

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal
Results = Sequence[bool] | Sequence[Sequence[bool]]  # questions, or seeds x questions


def as_matrix(results: Results) -> np.ndarray:
    """Results as a boolean array of shape (seeds, questions); a flat list is one seed."""
    matrix = np.asarray(results, dtype=bool)
    if matrix.ndim == 1:
        matrix = matrix[np.newaxis, :]
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError("results must be a non-empty list of booleans (questions) or of such lists (seeds)")
    return matrix


def _paired(system: Results, baseline: Results) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_matrix(system), as_matrix(baseline)
    if a.shape != b.shape:
        raise ValueError(f"paired results must have the same seeds x questions: {a.shape} vs {b.shape}")
    return a, b


# -- one accuracy ---------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes ({successes}) must be between 0 and trials ({trials})")
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


@dataclass(frozen=True)
class Accuracy:
    """Correct answers out of question x seed trials, with a 95% Wilson interval."""

    correct: int
    trials: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.correct / self.trials if self.trials else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {"correct": self.correct, "trials": self.trials, "accuracy": round(self.value, 4),
                "low": round(self.low, 4), "high": round(self.high, 4)}


def accuracy(results: Results) -> Accuracy:
    matrix = as_matrix(results)
    correct, trials = int(matrix.sum()), int(matrix.size)
    return Accuracy(correct, trials, *wilson_interval(correct, trials))


# -- paired comparison ----------------------------------------------------------------------------


@dataclass(frozen=True)
class McNemar:
    """Discordant pairs: `system_only` right where the baseline was wrong, `baseline_only` the reverse."""

    system_only: int
    baseline_only: int
    p_value: float


def mcnemar_exact(system: Results, baseline: Results) -> McNemar:
    """McNemar's exact test: two-sided binomial(n = discordant pairs, 1/2); p = 1 without discordant pairs."""
    a, b = _paired(system, baseline)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    p = min(1.0, 2 * tail / 2**n) if n else 1.0
    return McNemar(only_a, only_b, p)


def paired_bootstrap(system: Results, baseline: Results, *, resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy difference, resampling questions (seeds kept together).

    Seeded, so one eval gives one interval. The percentiles are values the bootstrap actually took
    (numpy's "inverted_cdf"), so an interval of a small set lands on attainable differences.
    """
    a, b = _paired(system, baseline)
    per_question = (a.astype(float) - b.astype(float)).mean(axis=0)
    n = per_question.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bounded memory for large sets
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = per_question[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """A system against a baseline on the same questions and seeds."""

    system: str
    baseline: str
    seeds: int
    questions: int
    system_accuracy: float
    baseline_accuracy: float
    low: float  # 95% bootstrap interval of the difference
    high: float
    mcnemar: McNemar
    seed_differences: tuple[float, ...]

    @property
    def difference(self) -> float:
        return self.system_accuracy - self.baseline_accuracy

    @property
    def verdict(self) -> str:
        """"better" / "worse" when the interval excludes zero, else "no clear difference"."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no clear difference"

    def to_dict(self) -> dict[str, object]:
        return {
            "system": self.system, "baseline": self.baseline, "seeds": self.seeds, "questions": self.questions,
            "system_accuracy": round(self.system_accuracy, 4), "baseline_accuracy": round(self.baseline_accuracy, 4),
            "difference": round(self.difference, 4), "low": round(self.low, 4), "high": round(self.high, 4),
            "verdict": self.verdict, "mcnemar_p": round(self.mcnemar.p_value, 6),
            "system_only": self.mcnemar.system_only, "baseline_only": self.mcnemar.baseline_only,
            "seed_differences": [round(d, 4) for d in self.seed_differences],
        }


def compare(system: str, system_results: Results, baseline: str, baseline_results: Results, *,
            resamples: int = 10_000, seed: int = 0) -> Comparison:
    a, b = _paired(system_results, baseline_results)
    low, high = paired_bootstrap(a, b, resamples=resamples, seed=seed)
    seed_differences = tuple(float(d) for d in a.mean(axis=1) - b.mean(axis=1))
    return Comparison(system, baseline, a.shape[0], a.shape[1], float(a.mean()), float(b.mean()), low, high,
                      mcnemar_exact(a, b), seed_differences)


def best_member(members: Mapping[str, Results]) -> str:
    """The member with the highest accuracy; the one given first on ties."""
    if not members:
        raise ValueError("no members to choose from")
    return max(members, key=lambda name: (as_matrix(members[name]).mean(), -list(members).index(name)))


def compare_to_best(systems: Mapping[str, Results], members: Mapping[str, Results], *,
                    resamples: int = 10_000, seed: int = 0) -> list[Comparison]:
    """Every system against the best single member, in the order given."""
    best = best_member(members)
    return [compare(name, results, best, members[best], resamples=resamples, seed=seed)
            for name, results in systems.items()]


# -- terminal charts ------------------------------------------------------------------------------

_MIN_BAR = 10


def _fit(text: str, width: int) -> str:
    """`text` cut (with "…") or padded to exactly `width` cells."""
    if cell_len(text) > width:
        return set_cell_size(text, max(width - 1, 0)) + "…" if width > 0 else ""
    return set_cell_size(text, width)


def _layout(names: Sequence[str], labels: Sequence[str], width: int) -> tuple[int, int, int] | None:
    """Cells for the name, bar and label columns (bar 0 when there is no room for one), or None
    when even name and label do not fit side by side: then each row takes two lines."""
    label = max(cell_len(s) for s in labels)
    name = min(max(cell_len(s) for s in names), max(8, width // 4))
    bar = width - name - label - 2
    if bar >= _MIN_BAR:
        return name, bar, label
    if width - label - 1 >= 8:
        return min(name, width - label - 1), 0, label
    return None


def _row(name: str, bar: str, label: str, cols: tuple[int, int, int]) -> str:
    name_w, bar_w, label_w = cols
    parts = [_fit(name, name_w)] + ([bar] if bar_w else []) + [label.rjust(label_w)]
    return " ".join(parts).rstrip()


def _stacked(names: Sequence[str], labels: Sequence[str], width: int) -> str:
    """Rows too wide for one line: the name, then the figures indented below it."""
    lines = []
    for name, label in zip(names, labels, strict=True):
        lines += [_fit(name, width).rstrip(), ("  " + _fit(label.strip(), max(width - 2, 0))).rstrip()]
    return "\n".join(lines)


def _percent_label(a: Accuracy) -> str:
    return f"{a.value:4.0%} [{a.low:.0%}-{a.high:.0%}]"


def accuracy_chart(rows: Mapping[str, Accuracy], width: int = 80) -> str:
    """Horizontal bars, one per system: █ up to the interval's low end, ▓ up to the accuracy, ░ up to
    the high end (95% Wilson interval), on a 0-100% axis; each line at most `width` cells."""
    if not rows:
        return ""
    labels = [_percent_label(a) for a in rows.values()]
    cols = _layout(list(rows), labels, width)
    if cols is None:
        return _stacked(list(rows), labels, width)
    name_w, bar_w, _ = cols
    lines = []
    for (name, a), label in zip(rows.items(), labels, strict=True):
        cells = []
        for c in range(bar_w):
            middle = (c + 0.5) / bar_w
            cells.append("█" if middle < a.low else "▓" if middle < a.value else "░" if middle < a.high else " ")
        lines.append(_row(name, "".join(cells), label, cols))
    if bar_w:
        axis = list(" " * bar_w)
        for text, at in (("0%", 0), ("50%", bar_w // 2 - 1), ("100%", bar_w - 4)):
            axis[at:at + len(text)] = text
        lines.append(" " * (name_w + 1) + "".join(axis).rstrip())
        lines.append(" " * (name_w + 1) + _fit("█▓ accuracy, ▓░ 95% interval", bar_w).rstrip())
    return "\n".join(lines)


def _difference_label(c: Comparison) -> str:
    return f"{c.difference * 100:+5.1f} [{c.low * 100:+.1f}, {c.high * 100:+.1f}] p={c.mcnemar.p_value:.2f}"


def _axis_reach(comparisons: Sequence[Comparison]) -> float:
    reach = max(max(abs(c.low), abs(c.high), abs(c.difference)) for c in comparisons)
    return next((step for step in (0.05, 0.1, 0.2, 0.3, 0.5) if reach <= step), 1.0)


def difference_chart(comparisons: Sequence[Comparison], width: int = 80) -> str:
    """One line per system: its difference in accuracy from the baseline in points (●) with the 95%
    bootstrap interval (├─┤), on an axis centred on zero (│), then McNemar's p; at most `width` cells."""
    if not comparisons:
        return ""
    baselines = sorted({c.baseline for c in comparisons})
    title = _fit(f"accuracy difference vs {', '.join(baselines)} in points: ● difference, ├─┤ 95% bootstrap "
                 "interval, p McNemar", width).rstrip()
    names = [c.system for c in comparisons]
    labels = [_difference_label(c) for c in comparisons]
    cols = _layout(names, labels, width)
    if cols is None:
        return title + "\n" + _stacked(names, labels, width)
    name_w, bar_w, _ = cols
    reach = _axis_reach(comparisons)

    def at(x: float) -> int:
        return min(bar_w - 1, max(0, round((x + reach) / (2 * reach) * (bar_w - 1))))

    lines = [title]
    for c, label in zip(comparisons, labels, strict=True):
        cells = [" "] * bar_w
        if bar_w:
            low, high, zero = at(c.low), at(c.high), at(0.0)
            for i in range(low, high + 1):
                cells[i] = "─"
            cells[zero] = "┼" if low < zero < high else "│"
            cells[low], cells[high] = ("├", "┤") if low < high else ("│", "│")
            cells[at(c.difference)] = "●"
        lines.append(_row(c.system, "".join(cells), label, cols))
    if bar_w:
        axis = list(" " * bar_w)
        left, right = f"-{reach * 100:.0f}", f"+{reach * 100:.0f}"
        axis[at(0.0)] = "0"
        axis[:len(left)] = left
        axis[bar_w - len(right):] = right
        lines.append(" " * (name_w + 1) + "".join(axis).rstrip())
    return "\n".join(lines)
