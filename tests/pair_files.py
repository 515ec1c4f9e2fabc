"""Pair files for the importer and what it stored, shared by the import and export tests:
JSONL written from rows, generated pair rows, the stored pairs of a dataset and their fields,
and a judgment row as storage takes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.models import Dataset, Pair


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def counts(factory: sessionmaker[Session]) -> tuple[int, int]:
    with factory() as s:
        return s.scalar(select(func.count(Dataset.id))), s.scalar(select(func.count(Pair.id)))


def stored_pairs(factory: sessionmaker[Session], dataset: str) -> list[Pair]:
    with factory() as s:
        stmt = select(Pair).join(Dataset).where(Dataset.name == dataset).order_by(Pair.id)
        return list(s.scalars(stmt))


def pair_fields(pair: Pair) -> tuple:
    return (
        pair.prompt,
        pair.prompt_turns,
        pair.response_a,
        pair.response_b,
        pair.reference,
        pair.category,
        pair.gold_label,
        pair.external_id,
    )


def pairs_rows(n: int = 3) -> list[dict[str, Any]]:
    labels = ["A", "B", "tie", None]
    return [
        {
            "id": f"p{i}",
            "prompt": f"prompt {i}",
            "response_a": f"answer a {i}",
            "response_b": f"answer b {i}",
            "label": labels[i % 4],
            "category": "chat",
            "reference": f"ref {i}",
        }
        for i in range(n)
    ]


def judgment(pair_id: int, verdict: str, critique: str) -> dict[str, Any]:
    return {
        "pair_id": pair_id,
        "protocol": "pairwise",
        "prompt_version": "v1",
        "verdict": verdict,
        "status": "complete",
        "principles": "Be correct.",
        "critique": critique,
    }
