"""A training run snapshots the labels consistently while people keep changing them (issue 6)."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
from seeding import add_pairs

from judges.train import TrainConfig
from services import Services
from services.training_runs import TrainingRuns
from storage import queries

PAIRS = 12
ROUNDS = 6


@pytest.fixture
def services(settings, db, monkeypatch: pytest.MonkeyPatch) -> Services:
    services = Services(settings, db.factory)
    # The snapshot is the subject: no worker process (and no model) is started.
    monkeypatch.setattr(TrainingRuns, "spawn_worker", lambda self, run_id, run_dir: None)
    monkeypatch.setattr(TrainingRuns, "local_base_model", lambda self: settings.home / "model")
    return services


def labeled_pairs(services: Services) -> list[int]:
    ids = add_pairs(
        services.sessions,
        "snapshot",
        PAIRS,
        lambda i: {
            "external_id": f"s{i}",
            "prompt": f"Question {i}?",
            "response_a": f"Answer {i}.",
            "response_b": f"Other {i}.",
        },
    )
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


def sft_config() -> TrainConfig:
    return TrainConfig(min_labels=4, method="sft")


def snapshot_of(services: Services, run_id: int, pair_ids: list[int]) -> str:
    """The state the run's records saw: one verdict for the first half, the other for the rest
    (a snapshot between two commits), returned as the first half's verdict."""
    run = services.training_run(run_id)
    end_run(services, run_id)
    file_text = (services.runs_dir() / str(run_id) / "records.json").read_text()
    records = json.loads(file_text)
    by_pair = {r["pair_id"]: r["label"] for r in records}
    half = PAIRS // 2
    firsts = {by_pair[p] for p in pair_ids[:half]}
    seconds = {by_pair[p] for p in pair_ids[half:]}
    assert len(firsts) == 1 and len(seconds) == 1 and firsts != seconds, by_pair
    snapshot = run["label_snapshot"]
    assert snapshot["pairs"] == PAIRS
    assert snapshot["labels"] == {str(r["label_id"]): r["label"] for r in records}
    assert snapshot["records_sha256"] == hashlib.sha256(file_text.encode()).hexdigest()
    return firsts.pop()


class Flipper:
    """Flips every label, one transaction per flip, in its own thread while told to churn.
    `flipped` is set after each commit, so a test knows a change really happened; `idle` after
    churning stops, so no flip can land after the test's own commit."""

    def __init__(self, services: Services, pair_ids: list[int]) -> None:
        self.services, self.pair_ids = services, pair_ids
        self.churning, self.done, self.flipped, self.idle = (threading.Event() for _ in range(4))
        self.flips = 0
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            if not self.churning.is_set():
                self.idle.set()  # seen only between flips: no commit is in flight
                self.churning.wait(timeout=0.05)
                continue
            self.flips += 1
            flip_all(self.services, self.pair_ids, "B" if self.flips % 2 else "A")
            self.flipped.set()
            time.sleep(0.005)  # people, not a tight loop: SQLite's lock is not fair to others

    def start_churning(self) -> None:
        self.flipped.clear()
        self.churning.set()
        assert self.flipped.wait(timeout=30), "the flipper committed nothing"

    def stop_churning(self) -> None:
        self.churning.clear()
        self.idle.clear()
        assert self.idle.wait(timeout=30), "the flipper did not stop"

    def close(self) -> None:
        self.done.set()
        self.thread.join()


def test_runs_started_while_labels_change_each_see_one_consistent_state(services) -> None:
    """Runs taken while another thread commits flips see one committed state, never a mix;
    runs taken between flips see exactly the last committed state (alternating A and B)."""
    pair_ids = labeled_pairs(services)
    flipper = Flipper(services, pair_ids)
    seen_quiet = []
    try:
        for round_index in range(ROUNDS):
            flipper.start_churning()  # flips are being committed while this run starts
            snapshot_of(services, services.start_training_run(sft_config()), pair_ids)
            flipper.stop_churning()
            expected = "A" if round_index % 2 else "B"
            flip_all(services, pair_ids, expected)  # the last commit before a quiet run
            seen = snapshot_of(services, services.start_training_run(sft_config()), pair_ids)
            seen_quiet.append((expected, seen))
    finally:
        flipper.close()
    assert flipper.flips >= ROUNDS
    assert all(expected == seen for expected, seen in seen_quiet), seen_quiet


def test_a_label_changed_after_the_snapshot_stays_out_of_the_run(services) -> None:
    pair_ids = labeled_pairs(services)
    run_id = services.start_training_run(TrainConfig(min_labels=4, method="sft"))
    flip_all(services, pair_ids, "B")  # every label changes after the run started
    records = json.loads((services.runs_dir() / str(run_id) / "records.json").read_text())
    assert {r["pair_id"]: r["label"] for r in records}[pair_ids[0]] == "A"
    snapshot = services.training_run(run_id)["label_snapshot"]
    first_label = next(r["label_id"] for r in records if r["pair_id"] == pair_ids[0])
    assert snapshot["labels"][str(first_label)] == "A"
