"""Records for metrics and training: each current label with its pair and the judge's verdict
to compare it with, and the counts `grm stats` prints.

Every function takes the session first and leaves the transaction to the caller; records are
plain dicts (see storage.rows).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.judgments import judge_verdict
from storage.models import Dataset, Judgment, JudgmentRun, Label, LabelEvent, Pair
from storage.pairs import list_datasets
from storage.rows import FAILED_JUDGMENT_STATUS, SKIP, aware, chunks, in_dataset


def labeled_records(
    s: Session, dataset_id: int | None = None, judge_version_id: int | None = None
) -> list[dict[str, Any]]:
    """Each current non-skip label with its pair and a judge verdict to compare it with.

    The judgment is the one the person answered (label.judgment_id) if any, else the pair's
    latest judgment that did not fail; with `judge_version_id`, the latest of that version.
    The judge's verdict is that judgment's run's (the aggregated decision), its own when it has
    no run. Judge fields are None when the pair has no such judgment.
    """
    compared = _compared_judgment_id(judge_version_id).label("compared_judgment_id")
    stmt = (
        select(Label, Pair, Dataset.name, compared)
        .join(Pair, Pair.id == Label.pair_id)
        .join(Dataset, Dataset.id == Pair.dataset_id)
        .where(Label.verdict != SKIP)
        .order_by(Label.id)
    )
    rows = s.execute(in_dataset(stmt, dataset_id)).all()
    judgments = _judgment_fields(s, {row[3] for row in rows if row[3] is not None})
    return [
        _record(label, pair, dataset, judgments.get(judgment_id))
        for label, pair, dataset, judgment_id in rows
    ]


def _compared_judgment_id(judge_version_id: int | None):
    latest = select(func.max(Judgment.id)).where(
        Judgment.pair_id == Label.pair_id, Judgment.status != FAILED_JUDGMENT_STATUS
    )
    if judge_version_id is not None:
        return latest.where(Judgment.judge_version_id == judge_version_id).scalar_subquery()
    return func.coalesce(Label.judgment_id, latest.scalar_subquery())


def _judgment_fields(s: Session, ids: set[int]) -> dict[int, dict[str, Any]]:
    columns = (
        Judgment.id,
        judge_verdict().label("verdict"),
        Judgment.status,
        Judgment.judge_version_id,
        Judgment.protocol,
        Judgment.swapped,
        Judgment.run_id,
        JudgmentRun.swap,
        JudgmentRun.position_consistent,
    )
    stmt = select(*columns).outerjoin(JudgmentRun, JudgmentRun.id == Judgment.run_id)
    found: dict[int, dict[str, Any]] = {}
    for chunk in chunks(ids):
        for row in s.execute(stmt.where(Judgment.id.in_(chunk))):
            found[row.id] = dict(row._mapping)
    return found


def _record(
    label: Label, pair: Pair, dataset: str, judgment: dict[str, Any] | None
) -> dict[str, Any]:
    judgment = judgment or {}
    return {
        "label_id": label.id,
        "pair_id": pair.id,
        "dataset_id": pair.dataset_id,
        "dataset": dataset,
        "annotator": label.annotator,
        "label": label.verdict,
        "agreed_with_judge": label.agreed_with_judge,
        "corrected_critique": label.corrected_critique,
        "note": label.note,
        "labeled_at": aware(label.updated_at),
        "label_judgment_id": label.judgment_id,
        "external_id": pair.external_id,
        "prompt": list(pair.prompt_turns) if pair.prompt_turns is not None else pair.prompt,
        "response_a": pair.response_a,
        "response_b": pair.response_b,
        "reference": pair.reference,
        "category": pair.category,
        "gold_label": pair.gold_label,
        "judgment_id": judgment.get("id"),
        "judge_verdict": judgment.get("verdict"),
        "judge_status": judgment.get("status"),
        "judge_version_id": judgment.get("judge_version_id"),
        "judge_protocol": judgment.get("protocol"),
        "judge_swapped": judgment.get("swapped"),
        "judge_run_id": judgment.get("run_id"),
        "judge_swap": judgment.get("swap"),  # the run judged both orders
        "judge_position_consistent": judgment.get("position_consistent"),
    }


def stats(s: Session) -> dict[str, Any]:
    """Counts for `grm stats`: datasets, pairs, labeled and judged pairs, per annotator."""
    per_annotator = s.execute(
        select(
            Label.annotator,
            func.count(Label.id).filter(Label.verdict != SKIP),
            func.count(Label.id).filter(Label.verdict == SKIP),
            func.max(Label.updated_at),
        )
        .group_by(Label.annotator)
        .order_by(Label.annotator)
    )
    datasets = list_datasets(s)
    return {
        "datasets": len(datasets),
        "pairs": sum(d.pair_count for d in datasets),
        "labeled": sum(d.labeled for d in datasets),
        "judged": sum(d.judged for d in datasets),
        "labels": s.scalar(select(func.count(Label.id)).where(Label.verdict != SKIP)),
        "judgments": s.scalar(select(func.count(Judgment.id))),
        "label_events": s.scalar(select(func.count(LabelEvent.id))),
        "per_annotator": [
            {"annotator": a, "labeled": n, "skipped": k, "last_label_at": aware(last)}
            for a, n, k, last in per_annotator
        ],
        "per_dataset": [asdict(d) for d in datasets],
    }
