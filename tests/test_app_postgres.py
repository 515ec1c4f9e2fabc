"""The web app on PostgreSQL, through its API (gradio_client): labels, undo, import, export.

The app runs in-process on GRM_TEST_POSTGRES_URL (the `postgres_app` fixture); every check of
what was stored reads the PostgreSQL database through an engine of its own, not the app's.
Skipped without that server unless GRM_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from sqlalchemy import Engine, func, select

from storage import queries
from storage.db import make_engine, make_session_factory, reading
from storage.models import Dataset, LabelEvent, Pair


@pytest.fixture(scope="module")
def pg(postgres_app) -> Iterator[Engine]:
    """A separate engine on the app's PostgreSQL database, to read what the app stored."""
    engine = make_engine(postgres_app.settings.db_url)
    assert engine.dialect.name == "postgresql"
    yield engine
    engine.dispose()


def _client(app) -> Client:
    return Client(app.url, verbose=False, analytics_enabled=False, download_files=False)


def _pair_id(meta_html: str) -> int | None:
    found = re.search(r'data-pair-id="(\d+)"', meta_html or "")
    return int(found.group(1)) if found else None


def _sign_in(app, name: str) -> tuple[Client, int]:
    """A client labeling as `name`, with its first pair on screen."""
    client = _client(app)
    client.predict(name, api_name="/set_annotator")
    pair_id = _pair_id(client.predict(0, api_name="/next_pair")[0])
    assert pair_id is not None
    return client, pair_id


def _labels(engine: Engine, annotator: str) -> list[tuple[int, str]]:
    with reading(make_session_factory(engine)) as s:
        records = queries.labeled_records(s)
    return [(r["pair_id"], r["label"]) for r in records if r["annotator"] == annotator]


def _events(engine: Engine, annotator: str) -> list[tuple[int, str, str | None]]:
    with reading(make_session_factory(engine)) as s:
        rows = s.execute(
            select(LabelEvent.pair_id, LabelEvent.action, LabelEvent.verdict)
            .where(LabelEvent.annotator == annotator)
            .order_by(LabelEvent.id)
        )
        return [tuple(row) for row in rows]


def _pair_count(engine: Engine) -> int:
    with reading(make_session_factory(engine)) as s:
        return s.scalar(select(func.count(Pair.id)))


def test_two_annotators_label_the_same_pair_each_their_own(postgres_app, pg) -> None:
    ana, first = _sign_in(postgres_app, "pg-ana")
    ben, ben_first = _sign_in(postgres_app, "pg-ben")
    assert ben_first == first  # each has their own queue, both start at the lowest pair
    ana_screen = ana.predict(0, "", "", api_name="/label_A")
    ben.predict(0, "B is right.", "a note", api_name="/label_B")
    second = _pair_id(ana_screen[0])
    ana.predict(0, "", "", api_name="/label_tie")
    assert "Saved" in ana_screen[-1] and second not in (None, first)
    assert _labels(pg, "pg-ana") == [(first, "A"), (second, "tie")]
    assert _labels(pg, "pg-ben") == [(first, "B")]
    with reading(make_session_factory(pg)) as s:
        (ben_label,) = [v for v in queries.current_labels(s, first) if v.annotator == "pg-ben"]
    assert (ben_label.corrected_critique, ben_label.note) == ("B is right.", "a note")


def test_undo_removes_the_label_keeps_the_event_and_reopens_the_pair(postgres_app, pg) -> None:
    client, first = _sign_in(postgres_app, "pg-undo")
    client.predict(0, "", "", api_name="/label_both_bad")
    assert _labels(pg, "pg-undo") == [(first, "both_bad")]
    screen = client.predict(0, api_name="/undo")
    assert _pair_id(screen[0]) == first and "Undid" in screen[-1]
    assert _labels(pg, "pg-undo") == []
    assert _events(pg, "pg-undo") == [(first, "save", "both_bad"), (first, "undo", None)]
    assert _pair_id(client.predict(0, api_name="/next_pair")[0]) == first
    assert "Nothing to undo" in client.predict(0, api_name="/undo")[-1]


def test_next_pair_shows_the_same_pair_until_it_is_labeled(postgres_app, pg) -> None:
    client, first = _sign_in(postgres_app, "pg-next")
    assert _pair_id(client.predict(0, api_name="/next_pair")[0]) == first
    after_save = _pair_id(client.predict(0, "", "", api_name="/label_B")[0])
    assert after_save not in (None, first)
    assert _pair_id(client.predict(0, api_name="/next_pair")[0]) == after_save
    assert _labels(pg, "pg-next") == [(first, "B")]


def test_bad_import_names_the_line_and_stores_nothing(postgres_app, pg, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jsonl"
    good = '{"prompt": "p", "response_a": "a", "response_b": "b"}'
    other = good.replace('"p"', '"p2"')
    bad.write_text(f"{good}\n{other}\n{{not json\n", encoding="utf-8")
    before = _pair_count(pg)
    message, _table = _client(postgres_app).predict(
        handle_file(str(bad)), "pg-broken", "auto", api_name="/import_file"
    )
    assert "nothing stored" in message and "broken.jsonl line 3" in message
    assert _pair_count(pg) == before
    with reading(make_session_factory(pg)) as s:
        assert s.scalar(select(Dataset.id).where(Dataset.name == "pg-broken")) is None


def test_good_import_stores_the_text_byte_exact(postgres_app, pg, tmp_path: Path) -> None:
    row = {"prompt": "naïve — 東京 🙂\nline two", "response_a": "a\u200b1", "response_b": "b1"}
    good = tmp_path / "fresh.jsonl"
    good.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    message, table = _client(postgres_app).predict(
        handle_file(str(good)), "pg-fresh", "auto", api_name="/import_file"
    )
    assert "1 new" in message
    assert "pg-fresh" in [r[1] for r in table["data"]]
    with reading(make_session_factory(pg)) as s:
        stored = s.execute(
            select(Pair.prompt, Pair.response_a, Pair.response_b)
            .join(Dataset, Dataset.id == Pair.dataset_id)
            .where(Dataset.name == "pg-fresh")
        ).all()
    assert [tuple(r) for r in stored] == [(row["prompt"], row["response_a"], row["response_b"])]


def test_export_holds_exactly_the_labels_in_the_database(postgres_app, pg) -> None:
    client, first = _sign_in(postgres_app, "pg-export")
    client.predict(0, "", "", api_name="/label_A")
    message, download = client.predict("jsonl", 0, api_name="/export")
    assert "Exported" in message, message
    path = Path(download["path"] if isinstance(download, dict) else download)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    exported = sorted((r["pair_id"], r["annotator"], r["human_label"]) for r in rows)
    with reading(make_session_factory(pg)) as s:
        records = queries.labeled_records(s)
    stored = sorted((r["pair_id"], r["annotator"], r["label"]) for r in records)
    assert exported == stored
    assert (first, "pg-export", "A") in exported
