"""The web app through its API (gradio_client) against a launched app with the embedded judge."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from storage import queries

pytestmark = pytest.mark.slow  # loads the embedded judge once per session


def _client(running_app) -> Client:
    return Client(running_app.url, verbose=False, analytics_enabled=False, download_files=False)


def _pair_id(meta_html: str) -> int | None:
    found = re.search(r'data-pair-id="(\d+)"', meta_html or "")
    return int(found.group(1)) if found else None


def _start(client: Client, name: str) -> int:
    """Sign in as `name` for this client's session and open the first pair; its id."""
    client.predict("", api_name="/set_annotator")  # an empty name is refused
    client.predict(name, api_name="/set_annotator")
    screen = client.predict(0, api_name="/next_pair")
    pair_id = _pair_id(screen[0])
    assert pair_id is not None, screen
    return pair_id


def _labels(running_app, annotator: str) -> list:
    with running_app.services.sessions.begin() as s:
        records = queries.labeled_records(s)
    return [r for r in records if r["annotator"] == annotator]


def _has_text(panels_html: str) -> bool:
    panels = panels_html or ""
    return panels.count('class="grm-empty"') < panels.count('class="grm-panel"')


def _finished(badge_html: str) -> bool:
    return bool(re.search(r'data-state="(done|none)"', badge_html or ""))


def test_judge_streams_sections_before_the_verdict(running_app) -> None:
    client = _client(running_app)
    pair_id = _start(client, "api-judge")
    # outputs: principles, critique, verdict, badge, samples, status (the State is not sent)
    updates = list(client.submit(api_name="/judge"))
    assert len(updates) >= 3, "the judgment arrived in one piece instead of streaming"
    assert _finished(updates[-1][3]), updates[-1][3]
    # The principles grow over several updates before the badge is filled (the judge's answer
    # is started at "Principles:", so the embedded SmolLM2 writes them first).
    early = [u[0] for u in updates[:-1] if not _finished(u[3]) and _has_text(u[0])]
    assert len(set(early)) >= 2, "the principles did not arrive in pieces before the verdict"
    stored = running_app.services.latest_judgment_run(pair_id)
    assert stored and all(row["pair_id"] == pair_id for row in stored)


def test_save_label_stores_it_and_shows_the_next_pair(running_app) -> None:
    client = _client(running_app)
    first = _start(client, "api-label")
    screen = client.predict(0, "", "", api_name="/label_A")
    second = _pair_id(screen[0])
    assert second is not None and second != first
    assert "Saved" in screen[-1]
    labels = _labels(running_app, "api-label")
    assert [(r["pair_id"], r["label"]) for r in labels] == [(first, "A")]


def test_correction_keeps_the_edited_critique_and_note(running_app) -> None:
    client = _client(running_app)
    first = _start(client, "api-correct")
    client.predict(0, "B is right: A ignores the question.", "checked twice", api_name="/label_B")
    (label,) = _labels(running_app, "api-correct")
    assert (label["pair_id"], label["label"]) == (first, "B")
    assert label["corrected_critique"] == "B is right: A ignores the question."
    assert label["note"] == "checked twice"


def test_next_item_after_undo_is_the_undone_pair(running_app) -> None:
    client = _client(running_app)
    first = _start(client, "api-undo")
    client.predict(0, "", "", api_name="/label_tie")
    screen = client.predict(0, api_name="/undo")
    assert _pair_id(screen[0]) == first
    assert _labels(running_app, "api-undo") == []
    assert _pair_id(client.predict(0, api_name="/next_pair")[0]) == first


def test_agree_without_a_judge_verdict_stores_nothing(running_app) -> None:
    client = _client(running_app)
    _start(client, "api-agree-early")
    screen = client.predict(0, api_name="/next_pair")
    while 'data-state="idle"' not in screen[7]:  # skip pairs other tests already judged
        screen = client.predict(0, "", "", api_name="/label_skip")
    unjudged = _pair_id(screen[0])
    screen = client.predict(0, "", "", api_name="/label_agree")
    assert "No judge verdict" in screen[-1]
    assert unjudged not in {r["pair_id"] for r in _labels(running_app, "api-agree-early")}
    assert _pair_id(client.predict(0, api_name="/next_pair")[0]) == unjudged


def test_labels_need_a_name_first(running_app) -> None:
    client = _client(running_app)
    screen = client.predict(0, "", "", api_name="/label_A")
    assert "Nothing to label" in screen[-1]


def test_bad_import_names_the_line_and_stores_nothing(running_app, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jsonl"
    good = '{"prompt": "p", "response_a": "a", "response_b": "b"}'
    bad.write_text(f"{good}\n{{not json\n{good}\n", encoding="utf-8")
    before = running_app.services.stats()["pairs"]
    message, _table = _client(running_app).predict(
        handle_file(str(bad)), "broken", "auto", api_name="/import_file"
    )
    assert "nothing stored" in message and "broken.jsonl line 2" in message
    assert running_app.services.stats()["pairs"] == before
    assert "broken" not in {d.name for d in running_app.services.datasets()}


def test_good_import_appears_in_the_datasets_table(running_app, tmp_path: Path) -> None:
    good = tmp_path / "fresh.jsonl"
    good.write_text('{"prompt": "p", "response_a": "a1", "response_b": "b1"}\n', encoding="utf-8")
    message, table = _client(running_app).predict(
        handle_file(str(good)), "fresh", "auto", api_name="/import_file"
    )
    assert "1 new" in message
    assert "fresh" in [row[1] for row in table["data"]]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "trl-preference", "trl-sft"])
def test_export_downloads_every_format(running_app, fmt: str) -> None:
    client = _client(running_app)
    _start(client, f"api-export-{fmt}")
    client.predict(0, "", "", api_name="/label_A")
    message, download = client.predict(fmt, 0, api_name="/export")
    assert "Exported" in message, message
    assert download and Path(download["path"] if isinstance(download, dict) else download).name


def test_agreement_report_counts_labels(running_app) -> None:
    cards, *_ = _client(running_app).predict(0, api_name="/agreement")
    assert "Accuracy" in cards and "Cohen" in cards


def test_judge_tab_shows_the_loaded_model(running_app) -> None:
    status = _client(running_app).predict(api_name="/load_judge")
    assert "transformers" in status and "loaded" in status


@pytest.fixture
def auth_app(tmp_path: Path):
    """A second app with login on (two users); no judge is needed for labeling."""
    from conftest import free_port

    from app import build_app, serve
    from services import Services
    from settings import load_settings

    settings = load_settings(
        home=tmp_path / "auth-home", database_url=None, port=free_port(), auth="ana:pw-a,ben:pw-b"
    )
    services = Services.open(settings)
    services.load_demo_if_empty()
    demo = build_app(services)
    _, url = serve(demo, settings, prevent_thread_lock=True, quiet=True)
    yield url, services
    demo.close()


def test_with_login_labels_carry_the_user_not_a_name_sent_to_the_api(auth_app) -> None:
    url, services = auth_app
    with pytest.raises(Exception):  # noqa: B017 (any refusal will do: no login, no app)
        Client(url, verbose=False, analytics_enabled=False).predict(0, api_name="/next_pair")
    client = Client(url, auth=("ana", "pw-a"), verbose=False, analytics_enabled=False)
    client.predict("mallory", api_name="/set_annotator")  # pretends to be someone else
    first = _pair_id(client.predict(0, api_name="/next_pair")[0])
    client.predict(0, "", "", api_name="/label_B")
    with services.sessions.begin() as s:
        records = queries.labeled_records(s)
    assert [(r["pair_id"], r["annotator"], r["label"]) for r in records] == [(first, "ana", "B")]
