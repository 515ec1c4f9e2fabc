"""Storage core: migrations, SQLite settings, the label queue, label history, judgments."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from seeding import numbered_pair, put_pairs
from sqlalchemy import func, inspect, select, text

from storage import queries as q
from storage.db import (
    READ_ONLY_OPTION,
    current_revision,
    head_revision,
    init_db,
    make_alembic_config,
    make_engine,
    make_session_factory,
    open_database,
    reading,
)
from storage.models import Base, Dataset, Label, LabelEvent, Pair

TABLES = {
    "dataset",
    "pair",
    "judge_version",
    "judging_job",
    "judgment",
    "judgment_run",
    "label",
    "label_event",
    "prompt_version",
    "training_run",
}


def add_pairs(s, dataset_id: int, count: int, start: int = 0) -> list[int]:
    """Insert simple generated pairs straight through the ORM (the importer is tested elsewhere)."""
    return put_pairs(
        s,
        dataset_id,
        count,
        lambda i: {
            **numbered_pair(start + i),
            "external_id": f"p{start + i}",
            "gold_label": "A",
            "category": "chat",
        },
    )


@pytest.fixture
def seeded(db):
    """One dataset of five pairs; returns (factory, dataset_id, pair_ids)."""
    with db.factory.begin() as s:
        dataset_id = q.get_or_create_dataset(s, "demo", source="test", format="pairs")
        pair_ids = add_pairs(s, dataset_id, 5)
    return db.factory, dataset_id, pair_ids


# --- schema and engine ------------------------------------------------------------------------


def test_upgrade_from_empty_database_creates_every_table_and_is_idempotent(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    assert current_revision(engine) is None
    init_db(engine)
    assert TABLES | {"alembic_version"} == set(inspect(engine).get_table_names())
    assert current_revision(engine) == head_revision() == "0006_run_sampling"

    factory = make_session_factory(engine)
    with factory.begin() as s:
        q.get_or_create_dataset(s, "kept")
    init_db(engine)  # second upgrade: nothing to do, nothing lost
    assert current_revision(engine) == head_revision()
    with factory.begin() as s:
        assert [d.name for d in q.list_datasets(s)] == ["kept"]
    engine.dispose()


def test_migrated_schema_matches_the_models(db):
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_to_base_then_upgrade_again(db):
    config = make_alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    init_db(db.engine)
    assert TABLES <= set(inspect(db.engine).get_table_names())


def test_open_database_returns_a_ready_engine_and_factory(tmp_path):
    engine, factory = open_database(f"sqlite:///{tmp_path / 'sub' / 'grm.sqlite3'}")
    with factory.begin() as s:
        assert q.stats(s)["pairs"] == 0
    engine.dispose()


def _sqlite_only(db) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite pragmas")


def test_sqlite_pragmas_are_set_on_every_connection(db):
    _sqlite_only(db)
    # Several connections at once: every pooled connection is configured, including the
    # one init_db used with foreign keys switched off for the migration.
    # (Read-only connections: three writers would queue behind each other's BEGIN IMMEDIATE.)
    connections = [
        db.engine.connect().execution_options(**{READ_ONLY_OPTION: True}) for _ in range(3)
    ]
    try:
        for connection in connections:
            values = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
            # synchronous 2 = FULL: an acknowledged label is on disk.
            assert values == {
                "journal_mode": "wal",
                "synchronous": 2,
                "foreign_keys": 1,
                "busy_timeout": 5000,
            }
    finally:
        for connection in connections:
            connection.close()


def test_foreign_keys_are_enforced(db):
    with pytest.raises(Exception, match="(?i)foreign key"):
        with db.factory.begin() as s:
            s.add(
                Pair(dataset_id=999, prompt="p", response_a="a", response_b="b", content_hash="x")
            )


def test_read_session_does_not_wait_for_a_writer(seeded):
    factory, dataset_id, _ = seeded
    if factory.kw["bind"].dialect.name != "sqlite":
        pytest.skip("SQLite locking")
    with factory.begin() as writer:  # holds the write lock (BEGIN IMMEDIATE) ...
        add_pairs(writer, dataset_id, 2, start=100)
        with reading(factory) as reader:  # ... yet a reader gets the committed snapshot
            assert reader.scalar(select(func.count(Pair.id))) == 5
    with reading(factory) as reader:
        assert reader.scalar(select(func.count(Pair.id))) == 7


# --- label queue ------------------------------------------------------------------------------


def test_label_queue_with_two_annotators(seeded):
    factory, dataset_id, ids = seeded
    with factory.begin() as s:
        assert q.next_pair(s, "alice").id == ids[0]
        q.save_label(s, ids[0], "alice", "A")
        q.save_label(s, ids[1], "alice", "B")
    with factory.begin() as s:
        assert q.next_pair(s, "alice").id == ids[2]
        assert q.next_pair(s, "bob").id == ids[0]  # alice's labels do not move bob's queue
        q.save_label(s, ids[0], "bob", "tie")
        assert q.next_pair(s, "bob").id == ids[1]
        assert q.queue_counts(s, "alice", dataset_id) == q.QueueCounts(2, 3, 5)
        assert q.queue_counts(s, "bob") == q.QueueCounts(1, 4, 5)
        assert q.queue_counts(s, "carol") == q.QueueCounts(0, 5, 5)
        assert {v.annotator: v.verdict for v in q.current_labels(s, ids[0])} == {
            "alice": "A",
            "bob": "tie",
        }


def test_queue_runs_out_and_filters_by_dataset(seeded):
    factory, dataset_id, ids = seeded
    with factory.begin() as s:
        other = q.get_or_create_dataset(s, "other")
        other_ids = add_pairs(s, other, 2, start=50)
        for pair_id in ids:
            q.save_label(s, pair_id, "alice", "A")
        assert q.next_pair(s, "alice", dataset_id) is None
        assert q.next_pair(s, "alice").id == other_ids[0]
        assert q.next_pair(s, "bob", other).id == other_ids[0]
        assert q.queue_counts(s, "alice", dataset_id).remaining == 0
        assert q.queue_counts(s, "alice") == q.QueueCounts(5, 2, 7)


def test_get_or_create_dataset_returns_the_same_id(db):
    with db.factory.begin() as s:
        first = q.get_or_create_dataset(s, "d", source="a.jsonl", format="pairs")
        assert q.get_or_create_dataset(s, "d") == first
        with pytest.raises(ValueError, match="empty"):
            q.get_or_create_dataset(s, "  ")
        assert q.dataset_id(s, "d") == first
        with pytest.raises(q.NotFoundError, match="dataset 'nope' not found \\(known: d\\)"):
            q.dataset_id(s, "nope")


def test_pair_view_keeps_chat_turns_and_text(db):
    turns = [
        {"role": "user", "content": "hi \u202e rtl zero\u200bwidth"},
        {"role": "assistant", "content": "yo"},
    ]
    with db.factory.begin() as s:
        dataset_id = q.get_or_create_dataset(s, "chat")
        pair = Pair(
            dataset_id=dataset_id,
            prompt="",
            prompt_turns=turns,
            response_a="a",
            response_b="b",
            meta={"k": 1},
            content_hash="h",
        )
        s.add(pair)
        s.flush()
        pair_id = pair.id
    with db.factory.begin() as s:
        view = q.get_pair(s, pair_id)
    assert view.is_chat and view.prompt == turns
    assert view.dataset == "chat" and view.meta == {"k": 1}
    with db.factory.begin() as s, pytest.raises(q.NotFoundError, match="pair 999"):
        q.get_pair(s, 999)


# --- saving labels ----------------------------------------------------------------------------


def test_double_submit_keeps_one_label_and_both_events(seeded):
    factory, _, ids = seeded
    for _ in range(2):  # two requests carrying the same token, e.g. a double click
        with factory.begin() as s:
            view = q.save_label(s, ids[0], "alice", "B", note="n", client_token="tok-1")
    assert view.verdict == "B" and view.duplicate
    with factory.begin() as s:
        assert s.scalar(select(func.count(Label.id))) == 1
        history = q.label_history(s, ids[0])
    assert [e["action"] for e in history] == ["save", "duplicate"]
    assert all(e["client_token"] == "tok-1" for e in history)


def test_late_replay_does_not_overwrite_a_newer_label(seeded):
    factory, _, ids = seeded
    with factory.begin() as s:
        q.save_label(s, ids[0], "alice", "A", client_token="t1")
        q.save_label(s, ids[0], "alice", "B", client_token="t2")
        replay = q.save_label(s, ids[0], "alice", "A", client_token="t1")
    assert replay.verdict == "B" and replay.duplicate
    with factory.begin() as s:
        assert [e["verdict"] for e in q.label_history(s, ids[0])] == ["A", "B", "B"]


def test_submit_without_token_twice_updates_one_label(seeded):
    factory, _, ids = seeded
    with factory.begin() as s:
        first = q.save_label(s, ids[0], "alice", "A")
    with factory.begin() as s:
        second = q.save_label(s, ids[0], "alice", "both_bad", corrected_critique="neither")
        history = q.label_history(s, ids[0])
    assert second.id == first.id and second.verdict == "both_bad"
    assert second.corrected_critique == "neither" and not second.duplicate
    assert second.created_at == first.created_at <= second.updated_at
    assert [(e["verdict"], e["previous_verdict"]) for e in history] == [
        ("A", None),
        ("both_bad", "A"),
    ]


@pytest.mark.parametrize("verdict", ["a", "C", "", "none", "Tie"])
def test_bad_verdict_is_refused_and_nothing_stored(seeded, verdict):
    factory, _, ids = seeded
    with pytest.raises(ValueError, match="verdict"):
        with factory.begin() as s:
            q.save_label(s, ids[0], "alice", verdict)
    with factory.begin() as s:
        assert s.scalar(select(func.count(Label.id))) == 0
        assert s.scalar(select(func.count(LabelEvent.id))) == 0


@pytest.mark.parametrize("annotator", ["", "   ", "x" * 201])
def test_bad_annotator_is_refused(seeded, annotator):
    factory, _, ids = seeded
    with factory.begin() as s, pytest.raises(ValueError, match="annotator"):
        q.save_label(s, ids[0], annotator, "A")


def test_label_on_unknown_pair_is_refused(seeded):
    factory, _, _ = seeded
    with factory.begin() as s, pytest.raises(q.NotFoundError, match="pair 12345"):
        q.save_label(s, 12345, "alice", "A")


def test_skip_leaves_the_queue_but_is_not_a_label(seeded):
    factory, dataset_id, ids = seeded
    with factory.begin() as s:
        q.save_label(s, ids[0], "alice", "skip")
        q.save_label(s, ids[1], "alice", "A")
        assert q.next_pair(s, "alice").id == ids[2]
        assert q.queue_counts(s, "alice").done == 2
        assert [r["pair_id"] for r in q.labeled_records(s)] == [ids[1]]
        stats = q.stats(s)
    assert stats["labeled"] == 1 and stats["labels"] == 1
    assert stats["per_annotator"][0] | {"last_label_at": None} == {
        "annotator": "alice",
        "labeled": 1,
        "skipped": 1,
        "last_label_at": None,
    }


def test_undo_restores_pairs_in_reverse_order(seeded):
    factory, _, ids = seeded
    with factory.begin() as s:
        assert q.undo_last_label(s, "alice") is None
        q.save_label(s, ids[0], "alice", "A")
    with factory.begin() as s:
        q.save_label(s, ids[1], "alice", "B")
        q.save_label(s, ids[0], "bob", "tie")
    with factory.begin() as s:
        assert q.undo_last_label(s, "alice") == ids[1]
        assert q.next_pair(s, "alice").id == ids[1]
        assert q.undo_last_label(s, "alice") == ids[0]
        assert q.undo_last_label(s, "alice") is None
        assert q.next_pair(s, "bob").id == ids[1]  # bob's label untouched
        history = q.label_history(s, ids[1])
    assert [(e["action"], e["verdict"], e["previous_verdict"]) for e in history] == [
        ("save", "B", None),
        ("undo", None, "B"),
    ]


def test_undo_is_limited_to_the_dataset(seeded):
    factory, dataset_id, ids = seeded
    with factory.begin() as s:
        other = q.get_or_create_dataset(s, "other")
        (other_pair,) = add_pairs(s, other, 1, start=70)
        q.save_label(s, ids[0], "alice", "A")
        q.save_label(s, other_pair, "alice", "B")
        assert q.undo_last_label(s, "alice", dataset_id) == ids[0]
        assert q.queue_counts(s, "alice", other).done == 1


def test_replay_of_an_undone_label_does_not_bring_it_back(seeded):
    factory, _, ids = seeded
    with factory.begin() as s:
        q.save_label(s, ids[0], "alice", "A", client_token="t")
        q.undo_last_label(s, "alice")
        assert q.save_label(s, ids[0], "alice", "A", client_token="t") is None
        assert q.next_pair(s, "alice").id == ids[0]
        assert [e["action"] for e in q.label_history(s, ids[0])] == ["save", "undo", "duplicate"]


def test_label_event_history_records_every_change(seeded):
    factory, _, ids = seeded
    steps = [("alice", "A"), ("bob", "B"), ("alice", "tie"), ("alice", "skip")]
    for annotator, verdict in steps:
        with factory.begin() as s:
            q.save_label(s, ids[2], annotator, verdict, note=f"{annotator}-{verdict}")
    with factory.begin() as s:
        q.undo_last_label(s, "alice")
        history = q.label_history(s, ids[2])
    assert [(e["annotator"], e["action"], e["verdict"]) for e in history] == [
        ("alice", "save", "A"),
        ("bob", "save", "B"),
        ("alice", "save", "tie"),
        ("alice", "save", "skip"),
        ("alice", "undo", None),
    ]
    assert [e["note"] for e in history[:4]] == ["alice-A", "bob-B", "alice-tie", "alice-skip"]
    assert history[0]["created_at"].tzinfo is not None
    assert [e["id"] for e in history] == sorted(e["id"] for e in history)


def test_label_linked_to_a_judgment_records_agreement(seeded):
    factory, _, ids = seeded
    with factory.begin() as s:
        version = q.ensure_judge_version(s, "v0", "smollm2", "transformers")
        (jid,) = q.add_judgments(s, [_judgment(ids[0], version, verdict="A")])
        (other_jid,) = q.add_judgments(s, [_judgment(ids[1], version, verdict="A")])
        assert q.save_label(s, ids[0], "alice", "A", judgment_id=jid).agreed_with_judge is True
        assert q.save_label(s, ids[0], "bob", "B", judgment_id=jid).agreed_with_judge is False
        with pytest.raises(ValueError, match=f"belongs to pair {ids[1]}"):
            q.save_label(s, ids[0], "carol", "A", judgment_id=other_jid)
        with pytest.raises(q.NotFoundError, match="judgment 999"):
            q.save_label(s, ids[0], "carol", "A", judgment_id=999)


# --- concurrency ------------------------------------------------------------------------------

THREADS = 8
LABELS_PER_THREAD = 15


def _run_threads(target, count: int) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def wrapped(index: int) -> None:
        try:
            start.wait()  # release every thread at the same moment
            target(index)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_concurrent_label_saves_lose_nothing(db):
    with db.factory.begin() as s:
        dataset_id = q.get_or_create_dataset(s, "load")
        ids = add_pairs(s, dataset_id, LABELS_PER_THREAD)

    def annotate(index: int) -> None:
        for pair_id in ids:  # every thread labels every pair: maximum contention
            with db.factory.begin() as s:
                q.save_label(s, pair_id, f"annotator-{index}", "AB"[pair_id % 2])

    _run_threads(annotate, THREADS)
    expected = THREADS * LABELS_PER_THREAD
    with db.factory.begin() as s:
        assert s.scalar(select(func.count(Label.id))) == expected
        assert s.scalar(select(func.count(LabelEvent.id))) == expected
        for index in range(THREADS):
            assert q.queue_counts(s, f"annotator-{index}").remaining == 0


def test_two_tabs_saving_the_same_pairs_keep_one_label_each(db):
    with db.factory.begin() as s:
        dataset_id = q.get_or_create_dataset(s, "tabs")
        ids = add_pairs(s, dataset_id, LABELS_PER_THREAD)

    def tab(index: int) -> None:
        for pair_id in ids:
            with db.factory.begin() as s:
                q.save_label(s, pair_id, "alice", "A", client_token=f"{pair_id}-{index}")

    _run_threads(tab, 2)
    with db.factory.begin() as s:
        assert s.scalar(select(func.count(Label.id))) == LABELS_PER_THREAD
        assert s.scalar(select(func.count(LabelEvent.id))) == 2 * LABELS_PER_THREAD


# --- judgments and judge versions -------------------------------------------------------------


def _judgment(pair_id: int, version: int | None, **overrides) -> dict:
    row = {
        "pair_id": pair_id,
        "judge_version_id": version,
        "protocol": "pairwise",
        "prompt_version": "pairwise-v1",
        "verdict": "A",
        "status": "complete",
        "critique": "A is right.",
    }
    return row | overrides


def test_pending_pairs_by_version_and_protocol(seeded):
    factory, dataset_id, ids = seeded
    with factory.begin() as s:
        v1 = q.ensure_judge_version(s, "v1", "smollm2", "transformers")
        v2 = q.ensure_judge_version(s, "v2", "smollm2", "transformers", adapter_path="/a")
        q.add_judgments(
            s,
            [
                _judgment(ids[0], v1),
                _judgment(ids[1], v1, status="no_verdict", verdict="none"),
                _judgment(ids[2], v1, status="error", verdict="none", error="timeout"),
                _judgment(ids[3], v1, protocol="pointwise"),
                _judgment(ids[4], v2),
            ],
        )
        pending = [p.id for p in q.pending_pairs(s, v1, "pairwise")]
        assert pending == [ids[2], ids[3], ids[4]]  # a failed judgment is retried
        assert [p.id for p in q.pending_pairs(s, v1, "pairwise", limit=1)] == [ids[2]]
        assert [p.id for p in q.pending_pairs(s, v2, "pairwise")] == ids[:4]
        assert len(q.pending_pairs(s, None, "pairwise", dataset_id=dataset_id)) == 5
        assert q.list_datasets(s)[0].judged == 4


def test_add_judgments_refuses_bad_rows_whole(seeded):
    factory, _, ids = seeded
    with factory.begin() as s:
        with pytest.raises(ValueError, match="row 1: unknown columns \\['scores'\\]"):
            q.add_judgments(s, [_judgment(ids[0], None), _judgment(ids[1], None, scores=(1, 2))])
        with pytest.raises(ValueError, match="row 0: missing 'verdict'"):
            q.add_judgments(s, [_judgment(ids[0], None, verdict=None)])
        with pytest.raises(q.NotFoundError, match="4242"):
            q.add_judgments(s, [_judgment(4242, None)])
        assert q.pair_judgments(s, ids[0]) == []


def test_pair_judgments_carry_the_version_name(seeded):
    factory, _, ids = seeded
    with factory.begin() as s:
        version = q.ensure_judge_version(s, "base", "smollm2", "transformers")
        first, second = q.add_judgments(
            s, [_judgment(ids[0], version), _judgment(ids[0], version, swapped=True, verdict="B")]
        )
        rows = q.pair_judgments(s, ids[0])
    assert [(r["id"], r["verdict"], r["swapped"]) for r in rows] == [
        (first, "A", False),
        (second, "B", True),
    ]
    assert rows[0]["judge_version_name"] == "base" and rows[0]["critique"] == "A is right."


def test_judge_versions_register_once_and_one_is_active(db):
    with db.factory.begin() as s:
        assert q.active_judge_version(s) is None
        base = q.ensure_judge_version(s, "base", "smollm2", "transformers", activate=True)
        assert q.ensure_judge_version(s, "base", "smollm2", "transformers") == base
        with pytest.raises(ValueError, match="already exists"):
            q.ensure_judge_version(s, "base", "other-model", "transformers")
        tuned = q.ensure_judge_version(
            s, "tuned", "smollm2", "transformers", adapter_path="/x", parent_id=base
        )
        assert q.active_judge_version(s)["id"] == base
        q.set_active_version(s, tuned)
        versions = q.list_judge_versions(s)
        with pytest.raises(q.NotFoundError):
            q.set_active_version(s, 999)
    assert [(v["name"], v["is_active"]) for v in versions] == [("base", False), ("tuned", True)]
    assert versions[1]["parent_id"] == base


def test_labeled_records_pick_the_answered_or_latest_judgment(seeded):
    factory, _, ids = seeded
    with factory.begin() as s:
        v1 = q.ensure_judge_version(s, "v1", "m", "transformers")
        v2 = q.ensure_judge_version(s, "v2", "m", "transformers", adapter_path="/a")
        answered, _, _ = q.add_judgments(
            s,
            [
                _judgment(ids[0], v1, verdict="A"),
                _judgment(ids[0], v2, verdict="B"),
                _judgment(ids[1], v1, verdict="B", status="error"),
            ],
        )
        q.save_label(s, ids[0], "alice", "A", judgment_id=answered)
        q.save_label(s, ids[1], "alice", "B")
        q.save_label(s, ids[2], "alice", "skip")
        records = q.labeled_records(s)
        by_v2 = q.labeled_records(s, judge_version_id=v2)
    assert [(r["pair_id"], r["label"], r["judge_verdict"]) for r in records] == [
        (ids[0], "A", "A"),  # the judgment alice answered, not the newer v2 one
        (ids[1], "B", None),  # only a failed judgment: nothing to compare with
    ]
    assert records[0]["prompt"] == "question 0" and records[0]["dataset"] == "demo"
    assert [(r["judge_verdict"], r["judge_version_id"]) for r in by_v2] == [("B", v2), (None, None)]


def test_stats_and_dataset_counts(seeded):
    factory, dataset_id, ids = seeded
    with factory.begin() as s:
        q.save_label(s, ids[0], "alice", "A")
        q.save_label(s, ids[0], "bob", "B")
        q.save_label(s, ids[1], "bob", "tie")
        q.add_judgments(s, [_judgment(ids[0], None)])
        info = q.list_datasets(s)
        stats = q.stats(s)
    assert info == [q.DatasetInfo(dataset_id, "demo", "test", "pairs", 5, 2, 1)]
    assert {k: stats[k] for k in ("datasets", "pairs", "labeled", "judged", "labels")} == {
        "datasets": 1,
        "pairs": 5,
        "labeled": 2,
        "judged": 1,
        "labels": 3,
    }
    assert [(a["annotator"], a["labeled"]) for a in stats["per_annotator"]] == [
        ("alice", 1),
        ("bob", 2),
    ]


def test_deleting_a_dataset_cascades_to_pairs_and_labels(seeded):
    factory, dataset_id, ids = seeded
    with factory.begin() as s:
        q.save_label(s, ids[0], "alice", "A")
    with factory.begin() as s:
        s.execute(text("DELETE FROM dataset WHERE id = :id"), {"id": dataset_id})
    with factory.begin() as s:
        assert s.scalar(select(func.count(Pair.id))) == 0
        assert s.scalar(select(func.count(Label.id))) == 0
        assert s.scalar(select(func.count(Dataset.id))) == 0
