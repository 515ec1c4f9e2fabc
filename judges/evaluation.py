"""Evaluate a judge version against human labels: judge held-out pairs, then score agreement.

Used by the retraining job for the before/after table (the same protocol and options for both
versions) and by `grm evaluate`. The judging is `judges.judge.judge_pairs`; the figures are
`judges.metrics.agreement_report`, so the Agreement tab and the job count alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from judges.backends.base import Backend
from judges.judge import JudgeOptions, judge_pairs
from judges.metrics import agreement_report, paired_comparison
from judges.scaling import combined_verdict
from judges.training_data import SampleMore, TrainingRecord
from judges.types import AggregateJudgment, Judgment, PairInput
from vocabulary import COMPARING_VERDICTS

SCORED = tuple(v.value for v in COMPARING_VERDICTS)


def evaluate_judge(
    backend: Backend,
    heldout_pairs: Sequence[PairInput],
    labels: Sequence[str] | Mapping[int, str],
    options: JudgeOptions,
    *,
    categories: Sequence[str | None] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    judge_version: str = "",
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Judge every pair and report accuracy (95% bootstrap interval), kappa, no-verdict rate,
    position consistency (when options.swap) and, given categories, accuracy per category.

    `labels` are the human verdicts, aligned with the pairs or keyed by pair_id. The result also
    lists each pair's verdicts under "per_pair" so they can be stored and compared.
    """
    human = _aligned_labels(heldout_pairs, labels)
    aggregates = judge_pairs(backend, heldout_pairs, options, judge_version, on_progress)
    rows = evaluation_rows(heldout_pairs, human, aggregates, categories)
    report = agreement_report(rows, n_boot=n_boot, seed=seed, group_by=_groups(categories))
    report["per_pair"] = rows
    report["model"] = backend.model_name
    report["options"] = options.model_dump()
    return report


def before_after(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any] | None:
    """The two evaluations of one run paired on the pairs both scored (human A, B or tie):
    each accuracy, the difference with a paired bootstrap CI, and McNemar's exact p."""
    first = {r["pair_id"]: r for r in before.get("per_pair", []) if r["human"] in SCORED}
    second = {r["pair_id"]: r for r in after.get("per_pair", []) if r["human"] in SCORED}
    shared = [pair_id for pair_id in first if pair_id in second]
    if not shared:
        return None
    return paired_comparison(
        [first[p]["judge"] == first[p]["human"] for p in shared],
        [second[p]["judge"] == second[p]["human"] for p in shared],
    )


def significantly_worse(paired: Mapping[str, Any] | None, level: float = 0.05) -> bool:
    """True when the later judge lost accuracy and McNemar's test says it is no accident."""
    return bool(paired) and paired["difference"] < 0 and paired["p_value"] < level


def evaluation_rows(
    pairs: Sequence[PairInput],
    human: Sequence[str],
    aggregates: Sequence[AggregateJudgment],
    categories: Sequence[str | None] | None = None,
) -> list[dict[str, Any]]:
    """One metrics row per pair: the human label, the judge's verdict, the swapped-order verdict."""
    if not len(pairs) == len(human) == len(aggregates):
        raise ValueError(
            f"{len(pairs)} pairs, {len(human)} labels and {len(aggregates)} judgments differ"
        )
    rows = []
    for index, (pair, label, result) in enumerate(zip(pairs, human, aggregates, strict=True)):
        original, swapped = _order_verdicts(result.samples)
        row: dict[str, Any] = {
            "pair_id": pair.pair_id,
            "human": label,
            "judge": result.verdict.value,
            "judge_original": original,
            "judge_swapped": swapped,
        }
        if categories is not None:
            row["category"] = categories[index]
        rows.append(row)
    return rows


def _order_verdicts(samples: Sequence[Judgment]) -> tuple[str, str | None]:
    """Each order's own verdict (the swapped one un-swapped); None when only one order ran."""
    original = combined_verdict([j for j in samples if not j.swapped]).value
    flipped = [j for j in samples if j.swapped]
    return original, combined_verdict(flipped).value if flipped else None


def _aligned_labels(
    pairs: Sequence[PairInput], labels: Sequence[str] | Mapping[int, str]
) -> list[str]:
    if isinstance(labels, Mapping):
        missing = [p.pair_id for p in pairs if p.pair_id not in labels]
        if missing:
            raise ValueError(f"no human label for pairs {missing[:10]}")
        return [str(labels[p.pair_id]) for p in pairs]  # type: ignore[index]
    if len(labels) != len(pairs):
        raise ValueError(f"{len(labels)} labels for {len(pairs)} pairs")
    return [str(label) for label in labels]


def _groups(categories: Sequence[str | None] | None) -> tuple[str, ...]:
    return ("category",) if categories is not None else ()


def heldout_inputs(
    pairs: Sequence[TrainingRecord], pair_ids: Sequence[int]
) -> tuple[list[PairInput], list[str], list[str | None]]:
    """The held-out pairs, their labels and categories, in `pair_ids` order."""
    by_id = {p.pair_id: p for p in pairs}
    chosen = [by_id[pid] for pid in pair_ids]
    return [p.pair for p in chosen], [p.label for p in chosen], [p.category for p in chosen]


def judgment_record(judgment: Judgment) -> dict[str, Any]:
    """A judgment as the plain dict the training-data builder reads."""
    return {
        "verdict": judgment.verdict.value,
        "raw_text": judgment.raw_text,
        "swapped": judgment.swapped,
        "protocol": judgment.protocol,
        "status": judgment.status.value,
    }


def make_sampler(backend: Backend, options: JudgeOptions, seed_offset: int = 1000) -> SampleMore:
    """The rejective fine-tuning hook: n sampled judgments per pair from this backend.

    Sampling is forced on (k > 1 raises temperature; with n = 1 it is set to 0.7 here) and the
    seeds are moved past the ones used for the stored judgments, so samples are new ones.
    """

    def sample_more(pairs: list[PairInput], n: int) -> list[list[dict[str, Any]]]:
        settings = options.model_dump() | {
            "k": n,
            "swap": False,
            "seed": options.seed + seed_offset,
        }
        settings["temperature"] = settings["temperature"] or 0.7
        results = judge_pairs(backend, pairs, JudgeOptions(**settings))
        return [[judgment_record(j) for j in result.samples] for result in results]

    return sample_more
