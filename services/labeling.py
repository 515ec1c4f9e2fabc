"""The labeling room: the queue a person works through, their decisions (saved, undone) and what
the Label tab shows beside a pair (its history, the person's progress)."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.records import as_dict
from storage import queries
from storage.db import reading, writing
from vocabulary import QueueOrder


class Labeling:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        # (annotator, dataset id) -> a pair id below which that person has labeled every pair.
        # The queue's walk starts there, so the next pair costs the same at 50k labels done as
        # at 0. Labels are only removed by undo, which moves the frontier back; a pair undone
        # in another app process is found by the full walk once the rest of the queue is done.
        self._frontier: dict[tuple[str, int | None], int] = {}
        self._frontier_lock = threading.Lock()

    def next_item(
        self, annotator: str, dataset_id: int | None = None, order: str = QueueOrder.IN_ORDER
    ) -> queries.PairView | None:
        if order != QueueOrder.IN_ORDER:
            with reading(self.sessions) as s:
                return queries.next_pair(s, annotator, dataset_id=dataset_id, order=order)
        key = (annotator, dataset_id)
        with self._frontier_lock:
            start = self._frontier.get(key, 0)
        # Reads never queue behind a writer (SQLite: no BEGIN IMMEDIATE), so the queue still
        # shows while another process holds the write lock.
        with reading(self.sessions) as s:
            view = queries.next_pair(s, annotator, dataset_id=dataset_id, from_id=start)
            if view is None and start:
                view = queries.next_pair(s, annotator, dataset_id=dataset_id)
        with self._frontier_lock:
            self._frontier[key] = view.id if view is not None else 0
        return view

    def save(self, pair_id: int, annotator: str, verdict: str, **details: Any) -> Any:
        """Save a person's decision (upsert + history event) in its own write transaction.
        SaveFailed / DatabaseBusy when the database refuses it (nothing stored)."""
        with writing(self.sessions) as s:
            return queries.save_label(s, pair_id, annotator, verdict, **details)

    def undo_last(self, annotator: str, dataset_id: int | None = None) -> int | None:
        with writing(self.sessions) as s:
            pair_id = queries.undo_last_label(s, annotator, dataset_id=dataset_id)
        if pair_id is not None:
            with self._frontier_lock:  # that pair is back in this person's queue
                for key, start in self._frontier.items():
                    if key[0] == annotator:
                        self._frontier[key] = min(start, pair_id)
        return pair_id

    def queue_counts(self, annotator: str, dataset_id: int | None = None) -> Any:
        with reading(self.sessions) as s:
            return queries.queue_counts(s, annotator, dataset_id=dataset_id)

    def progress(self, annotator: str, dataset_id: int | None = None) -> dict[str, int]:
        """Labeled / remaining for one person and how often they agreed with the judge."""
        with reading(self.sessions) as s:
            counts = queries.queue_counts(s, annotator, dataset_id=dataset_id)
            compared, agreed = queries.judge_agreement_counts(s, annotator, dataset_id)
        return {
            "done": counts.done,
            "remaining": counts.remaining,
            "total": counts.total,
            "compared": compared,
            "agreed": agreed,
        }

    def stats(self) -> dict[str, Any]:
        with reading(self.sessions) as s:
            return queries.stats(s)

    def datasets(self) -> list[queries.DatasetInfo]:
        """Every dataset with its pair, labeled and judged counts."""
        with reading(self.sessions) as s:
            return queries.list_datasets(s)

    def pair(self, pair_id: int) -> queries.PairView:
        with reading(self.sessions) as s:
            return queries.get_pair(s, pair_id)

    def pair_history(self, pair_id: int) -> dict[str, Any]:
        """A pair's judgments (with version names), label events and current labels."""
        with reading(self.sessions) as s:
            return {
                "judgments": queries.pair_judgments(s, pair_id),
                "events": queries.label_history(s, pair_id),
                "labels": [as_dict(v) for v in queries.current_labels(s, pair_id)],
            }
