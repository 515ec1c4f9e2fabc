"""The label queue through the labeling room: lowest unlabeled pair first, the same pair order
whether the walk starts at the frontier or from the beginning, undo puts a pair back in front,
and a label removed behind the room's back is still served (at the end)."""

from __future__ import annotations

import pytest
from sqlalchemy import delete
from test_judgment_runs import _run, _sample
from test_storage import add_pairs

from services.labeling import Labeling
from storage import queries
from storage.db import writing
from storage.judgment_runs import add_judgment_run
from storage.models import Label
from vocabulary import QueueOrder

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


def test_least_sure_first_serves_disagreements_then_the_smallest_margin(queue, db) -> None:
    labels, ids = queue
    runs = {  # pair index -> (margin, the two orders agreed?, verdict probability)
        0: (2.0, True, None),
        1: (0.1, True, None),
        2: (1.5, False, None),  # the orders disagreed: first, whatever its margin
        3: (None, True, 0.55),  # a vote-rule run: by its probability, after every margin
        4: (0.8, True, None),
    }  # pair 5 is never judged: last
    with writing(db.factory) as s:
        for index, (margin, consistent, probability) in runs.items():
            run = _run(ids[index], "A", margin=margin, position_consistent=consistent)
            add_judgment_run(
                s, {**run, "verdict_probability": probability}, [_sample(ids[index], "A")]
            )
    served = []
    for _ in range(PAIRS):
        pair = labels.next_item("ann", order=QueueOrder.LEAST_SURE)
        served.append(ids.index(pair.id))
        labels.save(pair.id, "ann", "A")
    assert served == [2, 1, 4, 0, 3, 5]
    assert labels.next_item("ann", order=QueueOrder.LEAST_SURE) is None


def test_random_order_is_a_fixed_shuffle_per_person(queue) -> None:
    labels, ids = queue
    first = [p.id for p in _drain(labels, "ann", QueueOrder.RANDOM)]
    assert sorted(first) == ids and first != ids  # every pair once, not in id order
    others = [p.id for p in _drain(labels, "bob", QueueOrder.RANDOM)]
    assert sorted(others) == ids and others != first  # another person, another order


def _drain(labels: Labeling, who: str, order: str) -> list:
    served = []
    while (pair := labels.next_item(who, order=order)) is not None:
        served.append(pair)
        labels.save(pair.id, who, "skip")
    return served
