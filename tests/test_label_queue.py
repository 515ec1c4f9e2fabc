"""The label queue through the labeling room: lowest unlabeled pair first, the same pair order
whether the walk starts at the frontier or from the beginning, undo puts a pair back in front,
and a label removed behind the room's back is still served (at the end)."""

from __future__ import annotations

import pytest
from sqlalchemy import delete
from test_storage import add_pairs

from services.labeling import Labeling
from storage import queries
from storage.db import writing
from storage.models import Label

PAIRS = 6


@pytest.fixture
def queue(db) -> tuple[Labeling, list[int]]:
    with writing(db.factory) as s:
        ids = add_pairs(s, queries.get_or_create_dataset(s, "queue"), PAIRS)
    return Labeling(db.factory), ids


def label_in_order(labels: Labeling, who: str, count: int) -> list[int]:
    served = []
    for _ in range(count):
        pair = labels.next_item(who)
        served.append(pair.id)
        labels.save(pair.id, who, "A")
    return served


def test_the_queue_serves_every_pair_once_in_order(queue) -> None:
    labels, ids = queue
    assert label_in_order(labels, "ann", PAIRS) == ids
    assert labels.next_item("ann") is None
    assert labels.next_item("other").id == ids[0]  # each person has a queue of their own


def test_undo_puts_the_pair_back_in_front(queue) -> None:
    labels, ids = queue
    label_in_order(labels, "ann", 4)
    assert labels.undo_last("ann") == ids[3]
    assert labels.next_item("ann").id == ids[3]
    label_in_order(labels, "ann", 1)
    assert labels.next_item("ann").id == ids[4]


def test_a_label_removed_elsewhere_is_served_after_the_rest(queue, db) -> None:
    labels, ids = queue
    label_in_order(labels, "ann", 3)
    with writing(db.factory) as s:  # another app process undoes pair 1 for this person
        s.execute(delete(Label).where(Label.pair_id == ids[1], Label.annotator == "ann"))
    assert label_in_order(labels, "ann", 3) == ids[3:]
    assert labels.next_item("ann").id == ids[1]
    # A fresh room (a restarted app) walks from the start and agrees.
    assert Labeling(db.factory).next_item("ann").id == ids[1]
