"""A training run snapshots the labels consistently while people keep changing them (issue 6)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid

import pytest

from judges.train import TrainConfig
from services import Services
from storage import queries
from storage.models import Pair

PAIRS = 12
ROUNDS = 6


@pytest.fixture
def services(settings, db, monkeypatch: pytest.MonkeyPatch) -> Services:
    services = Services(settings, db.factory)
    # The snapshot is the subject: no worker process (and no model) is started.
    monkeypatch.setattr(Services, "_spawn_worker", lambda self, run_id, run_dir: None)
    monkeypatch.setattr(Services, "_local_base_model", lambda self: settings.home / "model")
    return services


def labeled_pairs(services: Services) -> list[int]:
    with services.sessions.begin() as s:
        dataset_id = queries.get_or_create_dataset(s, "snapshot")
        pairs = [
            Pair(
                dataset_id=dataset_id,
                external_id=f"s{i}",
                prompt=f"Question {i}?",
                response_a=f"Answer {i}.",
                response_b=f"Other {i}.",
                content_hash=uuid.uuid4().hex,
            )
            for i in range(PAIRS)
        ]
        s.add_all(pairs)
        s.flush()
        ids = [p.id for p in pairs]
    flip_all(services, ids, "A")
    return ids


def flip_all(services: Services, pair_ids: list[int], first_half: str) -> None:
    """One transaction: the first half of the pairs get `first_half`, the rest the other."""
    other = "B" if first_half == "A" else "A"
    half = len(pair_ids) // 2
    with services.sessions.begin() as s:
        for index, pair_id in enumerate(pair_ids):
            queries.save_label(s, pair_id, "ann", first_half if index < half else other)


def end_run(services: Services, run_id: int) -> None:
    with services.sessions.begin() as s:
        queries.update_training_run(s, run_id, status="failed", error="test: no worker")


def test_runs_started_while_labels_change_each_see_one_consistent_state(services) -> None:
    pair_ids = labeled_pairs(services)
    half = PAIRS // 2
    stop = threading.Event()
    flips = [0]

    def keep_flipping() -> None:
        while not stop.is_set():
            flips[0] += 1
            flip_all(services, pair_ids, "B" if flips[0] % 2 else "A")
            time.sleep(0.01)  # people, not a tight loop: SQLite's lock is not fair to others

    flipper = threading.Thread(target=keep_flipping)
    flipper.start()
    seen = set()
    try:
        for _ in range(ROUNDS):
            before = flips[0]
            while flips[0] == before and flipper.is_alive():  # a change between every two runs
                time.sleep(0.005)
            run_id = services.start_training_run(TrainConfig(min_labels=4, method="sft"))
            run = services.training_run(run_id)
            end_run(services, run_id)
            file_text = (services.runs_dir() / str(run_id) / "records.json").read_text()
            records = json.loads(file_text)
            by_pair = {r["pair_id"]: r["label"] for r in records}
            firsts = {by_pair[p] for p in pair_ids[:half]}
            seconds = {by_pair[p] for p in pair_ids[half:]}
            # A snapshot taken between two commits: each half is uniform, the halves differ.
            assert len(firsts) == 1 and len(seconds) == 1 and firsts != seconds, by_pair
            seen.add(firsts.pop())
            snapshot = run["label_snapshot"]
            assert snapshot["pairs"] == PAIRS
            assert snapshot["labels"] == {str(r["label_id"]): r["label"] for r in records}
            assert snapshot["records_sha256"] == hashlib.sha256(file_text.encode()).hexdigest()
    finally:
        stop.set()
        flipper.join()
    assert flips[0] >= ROUNDS and seen == {"A", "B"}, "the runs saw no label changes"


def test_a_label_changed_after_the_snapshot_stays_out_of_the_run(services) -> None:
    pair_ids = labeled_pairs(services)
    run_id = services.start_training_run(TrainConfig(min_labels=4, method="sft"))
    flip_all(services, pair_ids, "B")  # every label changes after the run started
    records = json.loads((services.runs_dir() / str(run_id) / "records.json").read_text())
    assert {r["pair_id"]: r["label"] for r in records}[pair_ids[0]] == "A"
    snapshot = services.training_run(run_id)["label_snapshot"]
    first_label = next(r["label_id"] for r in records if r["pair_id"] == pair_ids[0])
    assert snapshot["labels"][str(first_label)] == "A"
