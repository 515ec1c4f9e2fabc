"""storage.judgment_runs: a run is stored whole with its samples, and a pair's latest run is
the newest one (a judgment stored without a run, when newer, stands alone)."""

from __future__ import annotations

import pytest
from seeding import add_pairs

from storage import judgment_runs
from storage import queries as q


def _sample(pair_id: int, verdict: str, swapped: bool = False, index: int = 0) -> dict:
    return {"pair_id": pair_id, "protocol": "pairwise", "prompt_version": "v",
            "verdict": verdict, "status": "complete", "swapped": swapped,
            "sample_index": index}  # fmt: skip


def _run(pair_id: int, verdict: str, **more) -> dict:
    return {"pair_id": pair_id, "protocol": "pairwise", "prompt_version": "v",
            "verdict": verdict, **more}  # fmt: skip


@pytest.fixture
def pair_ids(db) -> list[int]:
    return add_pairs(
        db.factory, "runs", 2, lambda _: {"prompt": "q", "response_a": "a", "response_b": "b"}
    )


def test_a_run_is_stored_with_its_samples_and_read_back_newest_first(db, pair_ids) -> None:
    first, second = pair_ids
    with db.factory.begin() as s:
        old = judgment_runs.add_judgment_run(s, _run(first, "A"), [_sample(first, "A")])
        new = judgment_runs.add_judgment_run(
            s,
            _run(first, "tie", k=1, swap=True, votes={"A": 1, "B": 1}, position_consistent=False),
            [_sample(first, "B", swapped=True), _sample(first, "A")],
        )
        latest = judgment_runs.latest_run(s, first)
        assert judgment_runs.latest_run(s, second) is None
    assert new > old
    assert latest["run"]["id"] == new
    assert (latest["run"]["verdict"], latest["run"]["votes"]) == ("tie", {"A": 1, "B": 1})
    assert latest["run"]["position_consistent"] is False
    assert [(r["swapped"], r["verdict"], r["run_id"]) for r in latest["samples"]] == [
        (False, "A", new),  # in plan order: original first
        (True, "B", new),
    ]


def test_a_newer_judgment_stored_without_a_run_stands_alone(db, pair_ids) -> None:
    pair = pair_ids[0]
    with db.factory.begin() as s:
        judgment_runs.add_judgment_run(s, _run(pair, "A"), [_sample(pair, "A")])
        (loose,) = q.add_judgments(s, [_sample(pair, "B")])
        latest = judgment_runs.latest_run(s, pair)
        label = q.save_label(s, pair, "ana", "B", judgment_id=loose)
    assert latest["run"] is None
    assert [r["id"] for r in latest["samples"]] == [loose]
    assert (label.judgment_run_id, label.agreed_with_judge) == (None, True)


@pytest.mark.parametrize(
    ("run", "samples", "error"),
    [
        ({"pair_id": 1, "verdict": "A", "colour": "red"}, [{}], "unknown columns"),
        ({"pair_id": 1, "protocol": "pairwise", "verdict": "A"}, [{}], "missing"),
        (_run(1, "A"), [], "no samples"),
        (_run(1, "A"), [_sample(2, "A")], "samples of pairs"),
    ],
)
def test_a_malformed_run_is_refused_and_nothing_is_stored(
    db, pair_ids, run, samples, error
) -> None:
    run = {**run, "pair_id": pair_ids[0]}
    samples = [{**row, "pair_id": pair_ids[row.get("pair_id", 1) - 1]} for row in samples]
    with db.factory.begin() as s:
        with pytest.raises(ValueError, match=error):
            judgment_runs.add_judgment_run(s, run, samples)
        assert judgment_runs.latest_run(s, pair_ids[0]) is None


def test_a_run_of_an_unknown_pair_is_not_found(db) -> None:
    with db.factory.begin() as s, pytest.raises(q.NotFoundError, match="pair 999"):
        judgment_runs.add_judgment_run(s, _run(999, "A"), [_sample(999, "A")])
