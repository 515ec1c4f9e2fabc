"""What a training run and an evaluation read of the labels: one TrainingRecord per labeled pair
with the judge's judgments of it (built here from the database rows, the only place that knows
both shapes), and the snapshot a run keeps of them."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy.orm import Session

from judges.split import Split
from judges.training_data import JudgmentRecord, TrainingRecord, chat_turns
from judges.types import Verdict
from storage import queries


def version_row(s: Session, version_id: int) -> dict[str, Any]:
    versions = queries.list_judge_versions(s)
    chosen = [v for v in versions if v["id"] == version_id]
    if not chosen:
        raise queries.NotFoundError(f"judge version {version_id} not found")
    return chosen[0]


def training_records(
    s: Session, version_id: int | None, protocol: str, dataset_id: int | None = None
) -> list[TrainingRecord]:
    """One record per labeled pair (its latest label) with the version's judgments of it in
    `protocol`."""
    latest: dict[int, dict[str, Any]] = {}
    for record in queries.labeled_records(s, dataset_id=dataset_id):
        latest[record["pair_id"]] = record  # ordered by label id: the newest label wins
    judgments = queries.version_judgments(s, list(latest), version_id) if version_id else {}
    return [_training_record(r, judgments.get(r["pair_id"], []), protocol) for r in latest.values()]


def snapshot_record(records: list[TrainingRecord], snapshot: str, split: Split) -> dict[str, Any]:
    """What a run records of the labels it trains on: each label id with the verdict it had
    (a label changed later keeps its id), a hash of the exact records file it was given, and
    the train / held-out split its checks made (which the worker then trains on).

    The records come from one SELECT (one consistent view of the labels on SQLite and on
    PostgreSQL alike), and the worker reads only that file, so labels changed while the run
    goes on do not leak into it."""
    return {
        "pairs": len(records),
        "label_ids": [r.label_id for r in records],
        "labels": {str(r.label_id): r.label for r in records},
        "records_sha256": hashlib.sha256(snapshot.encode()).hexdigest(),
        "split": split.as_record(),
    }


def _training_record(
    record: dict[str, Any], judgments: list[dict[str, Any]], protocol: str
) -> TrainingRecord:
    prompt = record["prompt"]
    return TrainingRecord(
        pair_id=record["pair_id"],
        label=record["label"],
        prompt=prompt if isinstance(prompt, str) else chat_turns(prompt),
        response_a=record["response_a"],
        response_b=record["response_b"],
        reference=record["reference"],
        category=record["category"],
        corrected_critique=record["corrected_critique"],
        label_id=record["label_id"],
        judgments=tuple(_judgment(j) for j in judgments if j["protocol"] == protocol),
    )


def _judgment(row: dict[str, Any]) -> JudgmentRecord:
    return JudgmentRecord(
        verdict=Verdict(row["verdict"]),
        raw_text=row["raw_text"] or "",
        swapped=bool(row["swapped"]),
        protocol=row["protocol"],
        status=row["status"],
        judgment_id=row["id"],
    )
