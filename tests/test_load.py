"""Under load, no acknowledged label is lost: benchmarks/bench_load.py run small, as a test.

The app runs as a subprocess (`python -m cli serve`) and four annotator processes save labels
through gradio_client, steadily then as fast as they can; the database is then compared with
their log of acknowledged saves. On SQLite and on PostgreSQL (GRM_TEST_POSTGRES_URL: a fresh
database is created in that server and dropped afterwards; skipped without it unless
GRM_REQUIRE_POSTGRES=1). No timing is asserted: only that nothing failed or went missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DB_BACKENDS, _postgres_url

from benchmarks.bench_load import LoadConfig, compare_with_database, run_load, write_pairs
from storage import queries
from storage.importer import import_file


@pytest.mark.slow  # starts the app and four client processes: about 45 s
@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_no_acknowledged_label_is_lost_under_load(backend: str, tmp_path: Path) -> None:
    config = LoadConfig(
        db=backend,
        database_url=_postgres_url() if backend == "postgresql" else None,
        annotators=4,
        duration=8,
        burst=5,
        judging=0,
        interval=1.0,
    )
    result = run_load(config, workdir=tmp_path)
    db = result["database"]
    assert result["errors"] == 0, (result["errors_by_kind"], result["error_samples"])
    assert result["phases"]["steady"]["saves_acked"] > 0
    assert result["phases"]["burst"]["saves_acked"] > 0
    assert db["lost_labels"] == 0, db["lost_examples"]
    # Every save the app answered was acknowledged: the database holds no more, no less.
    assert db["labels_in_db"] == db["acked_labels"]
    assert db["label_events_in_db"] == db["acked_labels"]
    assert result["app_log"]["tracebacks"] == 0, result["app_log"]["lines"]
    if backend == "sqlite":
        assert db["sqlite_integrity_check"] == "ok"


def test_the_comparison_counts_a_wrong_or_missing_label_as_lost(db, tmp_path: Path) -> None:
    source = tmp_path / "pairs.jsonl"
    write_pairs(source, 3)
    import_file(db.factory, source, dataset="load")
    with db.factory.begin() as s:
        first, second, third = (queries.next_pair(s, "x").id + i for i in range(3))
        queries.save_label(s, first, "load-00", "A")
        queries.save_label(s, second, "load-00", "B")
        queries.save_label(s, third, "someone-else", "A")  # not the benchmark's: ignored
    acks = [
        {"pair_id": first, "annotator": "load-00", "label": "A", "at": 1.0},
        {"pair_id": second, "annotator": "load-00", "label": "tie", "at": 2.0},  # DB says B
        {"pair_id": third, "annotator": "load-01", "label": "A", "at": 3.0},  # not in the DB
    ]
    found = compare_with_database(db.url, acks)
    assert (found["acked_labels"], found["labels_in_db"], found["lost_labels"]) == (3, 2, 2)
    assert {a["pair_id"] for a in found["lost_examples"]} == {second, third}
    later = [*acks[:1], {**acks[1], "label": "B", "at": 4.0}, *acks[1:2]]  # the later ack wins
    assert compare_with_database(db.url, later)["lost_labels"] == 0


def test_an_annotator_report_with_errors_reads_back_as_written(tmp_path: Path) -> None:
    """A worker that met errors must still leave its report: the errors are the point of it."""
    from benchmarks.load_clients import WorkerReport, _write_report, read_logs

    report = WorkerReport(name="a1")
    report.error("timeout", "no answer in 10 s")
    report.error("timeout", "no answer in 10 s")
    report.error("http 500", "server error")
    _write_report(tmp_path, report)
    _, (read,) = read_logs(tmp_path, ["a1"])
    assert read is not None and read.errors == {"timeout": 2, "http 500": 1}
    assert read.error_samples["timeout"] == ["no answer in 10 s"] * 2
