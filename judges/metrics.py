"""Judge-versus-human agreement figures: accuracy with a bootstrap interval, kappa, consistency.

Pure functions over plain lists and dicts, shared by the retraining job's evaluation and the web
app's Agreement tab. Verdicts are the strings of `judges.types.Verdict` ("A", "B", "tie",
"none"). Only human labels "A", "B" and "tie" are scored; other labels ("both_bad", "skip")
are left out and counted. A judge that gave no verdict is wrong for accuracy and kappa, and is
also reported on its own as `no_verdict_rate`, so a judge cannot look better by abstaining.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from vocabulary import COMPARING_VERDICTS

SCORED_LABELS: tuple[str, ...] = tuple(COMPARING_VERDICTS)
JUDGE_VERDICTS: tuple[str, ...] = ("A", "B", "tie", "none")
NO_VERDICT = "none"


def normalize_verdict(value: object) -> str:
    """A verdict as its canonical string: Verdict enums, None and case variants are accepted."""
    if value is None:
        return NO_VERDICT
    text = str(getattr(value, "value", value)).strip()
    canonical = {"a": "A", "b": "B", "tie": "tie", "none": NO_VERDICT, "": NO_VERDICT}
    return canonical.get(text.lower(), text)


def _checked_pairs(judge: Sequence[object], human: Sequence[object]) -> tuple[list[str], list[str]]:
    if len(judge) != len(human):
        raise ValueError(
            f"judge and human verdict lists differ in length: {len(judge)} vs {len(human)}"
        )
    return [normalize_verdict(v) for v in judge], [normalize_verdict(v) for v in human]


def bootstrap_interval(
    values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean; seeded so a report reads the same twice."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None, None
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(n_boot, data.size))
    means = data[indices].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def accuracy_with_interval(
    judge: Sequence[object],
    human: Sequence[object],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Share of scored pairs where the judge's verdict equals the human's, with its interval.

    Returns n (scored pairs), correct, accuracy, ci_low, ci_high, no_verdict, no_verdict_rate
    and excluded (pairs whose human label is not A/B/tie). Figures are None when n is 0.
    """
    judge_v, human_v = _checked_pairs(judge, human)
    kept = [(j, h) for j, h in zip(judge_v, human_v, strict=True) if h in SCORED_LABELS]
    correct = [1.0 if j == h else 0.0 for j, h in kept]
    no_verdict = sum(1 for j, _ in kept if j == NO_VERDICT)
    n = len(kept)
    low, high = bootstrap_interval(correct, n_boot=n_boot, seed=seed, level=level)
    return {
        "n": n,
        "correct": int(sum(correct)),
        "accuracy": sum(correct) / n if n else None,
        "ci_low": low,
        "ci_high": high,
        "no_verdict": no_verdict,
        "no_verdict_rate": no_verdict / n if n else None,
        "excluded": len(judge_v) - n,
    }


def cohen_kappa(first: Sequence[object], second: Sequence[object]) -> float | None:
    """Cohen's kappa between two raters over the same items, any category set.

    "none" is a category like any other, so a missing verdict counts as disagreement with a
    human label. Returns None when there are no items; 1.0 when both raters use one and the same
    category throughout (perfect agreement, chance agreement undefined); 0.0 when expected
    agreement is 1 but observed is not (cannot happen with finite data, kept for safety).
    """
    a, b = _checked_pairs(first, second)
    n = len(a)
    if n == 0:
        return None
    observed = sum(1 for x, y in zip(a, b, strict=True) if x == y) / n
    count_a, count_b = Counter(a), Counter(b)
    expected = sum(count_a[c] * count_b[c] for c in set(a) | set(b)) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def mcnemar_exact(first_right: Sequence[bool], second_right: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test: two-sided binomial p of the discordant pairs at 1/2.

    `only_first` pairs only the first rule got right, `only_second` only the second; p is
    min(1, 2 * P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2), 1.0 with no discordant pair
    (the same value as scipy.stats.binomtest(b, b + c).pvalue).
    """
    if len(first_right) != len(second_right):
        raise ValueError("mcnemar_exact: the two lists differ in length")
    b = sum(1 for x, y in zip(first_right, second_right, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first_right, second_right, strict=True) if y and not x)
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n if n else 1.0
    return {"only_first": b, "only_second": c, "p_value": min(1.0, 2.0 * tail)}


def paired_comparison(
    first_right: Sequence[bool], second_right: Sequence[bool], seed: int = 0
) -> dict[str, Any]:
    """Two judges on the same pairs: each accuracy, the difference (second - first) with a
    paired bootstrap 95% interval (pairs resampled together), and McNemar's exact p."""
    first = np.asarray(first_right, dtype=float)
    second = np.asarray(second_right, dtype=float)
    if first.shape != second.shape or first.size == 0:
        raise ValueError("paired_comparison: two non-empty lists of the same length are needed")
    low, high = bootstrap_interval(second - first, seed=seed)
    return {
        "n": int(first.size),
        "first_accuracy": float(first.mean()),
        "second_accuracy": float(second.mean()),
        "difference": float(second.mean() - first.mean()),
        "difference_ci_low": low,
        "difference_ci_high": high,
        **mcnemar_exact(first_right, second_right),
    }


def confusion_matrix(judge: Sequence[object], human: Sequence[object]) -> dict[str, Any]:
    """Counts of (human label, judge verdict); rows are human A/B/tie, columns A/B/tie/none."""
    judge_v, human_v = _checked_pairs(judge, human)
    counts = Counter((h, j) for j, h in zip(judge_v, human_v, strict=True) if h in SCORED_LABELS)
    columns = list(JUDGE_VERDICTS) + sorted({j for j in judge_v if j not in JUDGE_VERDICTS})
    matrix = [[counts[(h, j)] for j in columns] for h in SCORED_LABELS]
    return {"rows": list(SCORED_LABELS), "columns": columns, "matrix": matrix}


def position_consistency(
    original: Sequence[object], swapped_unswapped: Sequence[object]
) -> dict[str, Any]:
    """How often the judge says the same thing when the two responses trade places.

    Both lists hold verdicts in the pair's original order (the swapped-order verdict already
    un-swapped). A pair where either side has no verdict is not counted as consistent or
    inconsistent but reported as `incomplete`; `rate` is consistent / (n - incomplete).
    """
    first, second = _checked_pairs(original, swapped_unswapped)
    complete = [(x, y) for x, y in zip(first, second, strict=True) if NO_VERDICT not in (x, y)]
    return consistency_figures(len(first), [x == y for x, y in complete])


def consistency_figures(n: int, same: Sequence[bool]) -> dict[str, Any]:
    """Position-consistency figures of `n` pairs, `same` holding whether both orders agreed for
    each pair where both gave a verdict (the others are `incomplete`)."""
    consistent = sum(1 for agreed in same if agreed)
    return {
        "n": n,
        "compared": len(same),
        "consistent": consistent,
        "incomplete": n - len(same),
        "rate": consistent / len(same) if same else None,
    }


def agreement_report(
    rows: Iterable[Mapping[str, Any]],
    n_boot: int = 1000,
    seed: int = 0,
    group_by: Sequence[str] = (),
) -> dict[str, Any]:
    """Every judge-vs-human figure for one set of rows, optionally also per group.

    Each row is a dict with "judge" (the verdict scored for accuracy) and "human" verdicts;
    optionally "judge_swapped" (the swapped order's own verdict, un-swapped) and
    "judge_original" (the original order's own verdict; defaults to "judge") for position
    consistency; and any keys named in `group_by` ("category", "judge_version", "annotator").
    """
    rows = list(rows)
    _require_keys(rows, ("judge", "human"))
    judge = [r["judge"] for r in rows]
    human = [r["human"] for r in rows]
    report = accuracy_with_interval(judge, human, n_boot=n_boot, seed=seed)
    scored = [
        (j, h) for j, h in zip(judge, human, strict=True) if normalize_verdict(h) in SCORED_LABELS
    ]
    report["kappa"] = cohen_kappa([j for j, _ in scored], [h for _, h in scored])
    report["confusion"] = confusion_matrix(judge, human)
    swapped_rows = [r for r in rows if r.get("judge_swapped") is not None]
    report["position_consistency"] = position_consistency(
        [r.get("judge_original", r["judge"]) for r in swapped_rows],
        [r["judge_swapped"] for r in swapped_rows],
    )
    for key in group_by:
        report[f"by_{key}"] = accuracy_by_group(rows, key, n_boot=n_boot, seed=seed)
    return report


def accuracy_by_group(
    rows: Iterable[Mapping[str, Any]], key: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Accuracy (with interval), kappa and no-verdict rate per value of `key`, in sorted order.

    Rows missing the key (or with None) are grouped under "(none)".
    """
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        value = row.get(key)
        groups["(none)" if value is None else str(value)].append(row)
    result: dict[str, dict[str, Any]] = {}
    for name in sorted(groups):
        members = groups[name]
        judge = [r["judge"] for r in members]
        human = [r["human"] for r in members]
        figures = accuracy_with_interval(judge, human, n_boot=n_boot, seed=seed)
        scored = [
            (j, h)
            for j, h in zip(judge, human, strict=True)
            if normalize_verdict(h) in SCORED_LABELS
        ]
        figures["kappa"] = cohen_kappa([j for j, _ in scored], [h for _, h in scored])
        result[name] = figures
    return result


def inter_annotator_agreement(
    labels: Iterable[Mapping[str, Any]], annotator_a: str, annotator_b: str
) -> dict[str, Any]:
    """Raw agreement and kappa between two people on the pairs both labeled A/B/tie.

    `labels` rows hold "pair_id", "annotator" and "verdict". A person with two rows for one pair
    is an error (the label table keeps one current label per pair and annotator).
    """
    by_person = _labels_by_annotator(labels)
    first, second = by_person.get(annotator_a, {}), by_person.get(annotator_b, {})
    shared = sorted(
        pid
        for pid in set(first) & set(second)
        if first[pid] in SCORED_LABELS and second[pid] in SCORED_LABELS
    )
    a = [first[p] for p in shared]
    b = [second[p] for p in shared]
    agree = sum(1 for x, y in zip(a, b, strict=True) if x == y)
    return {
        "annotators": [annotator_a, annotator_b],
        "n_shared": len(shared),
        "agreement": agree / len(shared) if shared else None,
        "kappa": cohen_kappa(a, b),
    }


def inter_annotator_table(labels: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`inter_annotator_agreement` for every pair of annotators who share at least one pair."""
    labels = list(labels)
    people = sorted(_labels_by_annotator(labels))
    table = [inter_annotator_agreement(labels, a, b) for a, b in combinations(people, 2)]
    return [row for row in table if row["n_shared"] > 0]


def _labels_by_annotator(labels: Iterable[Mapping[str, Any]]) -> dict[str, dict[Any, str]]:
    by_person: dict[str, dict[Any, str]] = defaultdict(dict)
    for index, row in enumerate(labels):
        for key in ("pair_id", "annotator", "verdict"):
            if key not in row:
                raise ValueError(f"label row {index} has no {key!r}")
        person, pair_id = str(row["annotator"]), row["pair_id"]
        if pair_id in by_person[person]:
            raise ValueError(f"annotator {person!r} has two labels for pair {pair_id!r}")
        by_person[person][pair_id] = normalize_verdict(row["verdict"])
    return by_person


def _require_keys(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> None:
    for index, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"agreement row {index} lacks {', '.join(missing)}")
