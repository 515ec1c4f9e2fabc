"""Pairs written straight through the ORM, and labels on them, for tests that need a dataset to
work on (the importer is tested on its own, in test_import)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services import Services
from storage import queries
from storage.models import Pair

# Pair i's fields (prompt, responses, ...), given i.
PairFields = Callable[[int], dict[str, Any]]


def put_pairs(s: Session, dataset_id: int, count: int, pair: PairFields) -> list[int]:
    """`count` pairs in dataset `dataset_id` inside the caller's transaction, pair i with the
    fields `pair(i)` (and a fresh content hash); their ids, in order."""
    pairs = [
        Pair(dataset_id=dataset_id, content_hash=uuid.uuid4().hex, **pair(i)) for i in range(count)
    ]
    s.add_all(pairs)
    s.flush()
    return [p.id for p in pairs]


def add_pairs(
    factory: sessionmaker[Session],
    dataset: str,
    count: int,
    pair: PairFields,
    **dataset_fields: Any,
) -> list[int]:
    """`count` pairs in the dataset called `dataset` (made if new, with `dataset_fields`), in
    their own transaction; their ids, in order."""
    with factory.begin() as s:
        dataset_id = queries.get_or_create_dataset(s, dataset, **dataset_fields)
        return put_pairs(s, dataset_id, count, pair)


def label_pairs(
    services: Services,
    pair_ids: Sequence[int],
    labels: Sequence[str | None],
    annotator: str = "ann",
) -> None:
    """Each pair labeled with its entry in `labels` by `annotator` (None: left unlabeled)."""
    for pair_id, label in zip(pair_ids, labels, strict=True):
        if label is not None:
            services.save_label(pair_id, annotator, label)


def numbered_pair(i: int) -> dict[str, str]:
    """Pair i of a plain dataset: "question i", "answer a i", "answer b i"."""
    return {"prompt": f"question {i}", "response_a": f"answer a {i}", "response_b": f"answer b {i}"}
