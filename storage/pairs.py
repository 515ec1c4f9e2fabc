"""Datasets, pairs and the label queue: which pair a person labels next, and how many are left.

Every function takes the session first and leaves the transaction to the caller; pairs come
out as PairView values (see storage.rows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Select, case, cast, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.models import Dataset, Judgment, JudgmentRun, Label, Pair
from storage.rows import FAILED_JUDGMENT_STATUS, SKIP, NotFoundError, in_dataset
from vocabulary import QueueOrder

# A fixed permutation of pair ids per person (multiplying by a per-person factor modulo a prime):
# "random" order, the same on every call, different for each annotator, cheap in SQL on SQLite
# and PostgreSQL alike.
SHUFFLE_MODULUS = 4294967291


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    source: str
    format: str
    pair_count: int
    labeled: int  # pairs with at least one non-skip label
    judged: int  # pairs with at least one judgment that did not fail


@dataclass(frozen=True)
class PairView:
    id: int
    dataset_id: int
    dataset: str
    external_id: str | None
    prompt: str | list[dict[str, Any]]  # text, or chat turns [{role, content}, ...]
    response_a: str
    response_b: str
    reference: str | None
    category: str | None
    gold_label: str | None
    meta: dict[str, Any] | None

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass(frozen=True)
class QueueCounts:
    done: int
    remaining: int
    total: int


# --- datasets -------------------------------------------------------------------------------


def get_or_create_dataset(s: Session, name: str, source: str = "", format: str = "") -> int:
    """The id of dataset `name`, creating it (with source and format) when new."""
    if not name or not name.strip():
        raise ValueError("dataset name is empty")
    found = s.scalar(select(Dataset.id).where(Dataset.name == name))
    if found is not None:
        return found
    try:
        with s.begin_nested():  # another writer (PostgreSQL) may create it first
            dataset = Dataset(name=name, source=source, format=format, pair_count=0)
            s.add(dataset)
        return dataset.id
    except IntegrityError:
        return s.scalar(select(Dataset.id).where(Dataset.name == name))


def dataset_id(s: Session, name: str) -> int:
    """The id of dataset `name`; NotFoundError (listing the known names) when there is none."""
    found = s.scalar(select(Dataset.id).where(Dataset.name == name))
    if found is None:
        known = s.scalars(select(Dataset.name).order_by(Dataset.id).limit(20)).all()
        raise NotFoundError(f"dataset {name!r} not found (known: {', '.join(known) or 'none'})")
    return found


def list_datasets(s: Session) -> list[DatasetInfo]:
    """Every dataset with its pair, labeled and judged counts, in creation order."""
    pairs = _count_by_dataset(s, select(Pair.dataset_id, func.count(Pair.id)))
    labeled = _count_by_dataset(s, _labeled_pairs_by_dataset())
    judged = _count_by_dataset(s, _judged_pairs_by_dataset())
    rows = s.execute(select(Dataset).order_by(Dataset.id)).scalars()
    return [
        DatasetInfo(
            id=d.id,
            name=d.name,
            source=d.source,
            format=d.format,
            pair_count=pairs.get(d.id, 0),
            labeled=labeled.get(d.id, 0),
            judged=judged.get(d.id, 0),
        )
        for d in rows
    ]


def _count_by_dataset(s: Session, stmt: Select) -> dict[int, int]:
    return dict(s.execute(stmt.group_by(Pair.dataset_id)).all())


def _labeled_pairs_by_dataset() -> Select:
    has_label = exists().where(Label.pair_id == Pair.id, Label.verdict != SKIP)
    return select(Pair.dataset_id, func.count(Pair.id)).where(has_label)


def _judged_pairs_by_dataset() -> Select:
    has_judgment = exists().where(
        Judgment.pair_id == Pair.id, Judgment.status != FAILED_JUDGMENT_STATUS
    )
    return select(Pair.dataset_id, func.count(Pair.id)).where(has_judgment)


# --- pairs and the label queue --------------------------------------------------------------


def pair_views(s: Session, stmt: Select) -> list[PairView]:
    """The pairs `stmt` (a select of Pair) finds, with their dataset's name."""
    rows = s.execute(stmt.add_columns(Dataset.name).join(Dataset, Dataset.id == Pair.dataset_id))
    return [_to_pair_view(pair, dataset) for pair, dataset in rows]


def _to_pair_view(pair: Pair, dataset: str) -> PairView:
    return PairView(
        id=pair.id,
        dataset_id=pair.dataset_id,
        dataset=dataset,
        external_id=pair.external_id,
        prompt=list(pair.prompt_turns) if pair.prompt_turns is not None else pair.prompt,
        response_a=pair.response_a,
        response_b=pair.response_b,
        reference=pair.reference,
        category=pair.category,
        gold_label=pair.gold_label,
        meta=dict(pair.meta) if pair.meta is not None else None,
    )


def gold_labeled_pairs(s: Session, dataset_id: int) -> list[PairView]:
    """The dataset's pairs that were imported with a label (e.g. LLMBar's human one), by id."""
    stmt = select(Pair).where(Pair.dataset_id == dataset_id, Pair.gold_label.is_not(None))
    return pair_views(s, stmt.order_by(Pair.id))


def get_pair(s: Session, pair_id: int) -> PairView:
    """One pair; NotFoundError when the id is unknown."""
    views = pair_views(s, select(Pair).where(Pair.id == pair_id))
    if not views:
        raise NotFoundError(f"pair {pair_id} not found")
    return views[0]


def _unlabeled_by(annotator: str):
    # NOT EXISTS probes the (annotator, pair_id) index once per candidate pair.
    return ~exists().where(Label.annotator == annotator, Label.pair_id == Pair.id)


def next_pair(
    s: Session,
    annotator: str,
    dataset_id: int | None = None,
    from_id: int = 0,
    order: str = QueueOrder.IN_ORDER,
) -> PairView | None:
    """The next pair this annotator has neither labeled nor skipped, None when done: the lowest
    id (from `from_id` on), or in the annotator's own shuffled order, or the pair its judge is
    least sure about (`order`, a QueueOrder). The in-order walk costs one index probe per
    labeled pair it passes, so a caller that knows every pair below some id is labeled passes
    that id (see services.labeling)."""
    stmt = select(Pair).where(_unlabeled_by(annotator))
    if order == QueueOrder.LEAST_SURE:
        stmt = _least_sure_first(stmt)
    elif order == QueueOrder.RANDOM:
        wide_id = cast(Pair.id, BigInteger)  # PostgreSQL: id x factor overflows an integer
        stmt = stmt.order_by((wide_id * _shuffle_factor(annotator)) % SHUFFLE_MODULUS, Pair.id)
    else:
        stmt = stmt.where(Pair.id >= from_id).order_by(Pair.id)
    views = pair_views(s, in_dataset(stmt.limit(1), dataset_id))
    return views[0] if views else None


def _shuffle_factor(annotator: str) -> int:
    """A factor in [1, SHUFFLE_MODULUS) drawn from the person's name (never 0 modulo the prime,
    so multiplying by it permutes the ids)."""
    seed = int.from_bytes(hashlib.sha256(annotator.encode()).digest()[:4], "big")
    return seed % (SHUFFLE_MODULUS - 1) + 1


def _least_sure_first(stmt: Select) -> Select:
    """Pairs by how unsure their latest judgment run was: the two orders disagreed first, then
    the smallest |margin| (mean log-odds), then a stated verdict's probability nearest 1/2;
    pairs never judged come last, each group in id order."""
    latest = select(func.max(JudgmentRun.id)).where(JudgmentRun.pair_id == Pair.id)
    run = stmt.outerjoin(JudgmentRun, JudgmentRun.id == latest.correlate(Pair).scalar_subquery())
    return run.order_by(
        case((JudgmentRun.position_consistent.is_(False), 0), else_=1),
        func.abs(JudgmentRun.margin).nulls_last(),
        func.abs(JudgmentRun.verdict_probability - 0.5).nulls_last(),
        Pair.id,
    )


def queue_counts(s: Session, annotator: str, dataset_id: int | None = None) -> QueueCounts:
    """How many pairs this annotator has labeled or skipped, and how many are left."""
    total = s.scalar(in_dataset(select(func.count(Pair.id)), dataset_id))
    done_stmt = select(func.count(Label.id)).where(Label.annotator == annotator)
    if dataset_id is not None:
        done_stmt = done_stmt.join(Pair, Pair.id == Label.pair_id).where(
            Pair.dataset_id == dataset_id
        )
    done = s.scalar(done_stmt)
    return QueueCounts(done=done, remaining=total - done, total=total)
