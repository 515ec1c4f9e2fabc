"""The web app through its API (gradio_client) against a launched app with the embedded judge."""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import RunningApp, free_port, store_judgments, textbook_kappa
from gradio_client import Client, handle_file
from gradio_client.exceptions import AuthenticationError

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
    annotator = f"api-export-{fmt}"
    first = _start(client, annotator)
    critique = f"A answers the question; B does not ({uuid.uuid4().hex[:8]})."
    note = f"exported as {fmt}"
    client.predict(0, critique, note, api_name="/label_A")
    message, download = client.predict(fmt, 0, api_name="/export")
    exported = int(re.search(r"Exported (\d+) labeled rows", message).group(1))
    path = Path(download["path"])  # the app runs in this process: its file is on this disk
    pair = running_app.services.pair(first)
    if fmt in ("jsonl", "csv", "parquet"):
        frame = _read_table(path, fmt)
        assert len(frame) == exported
        mine = frame[frame["annotator"] == annotator]
        got = [
            (int(r.pair_id), r.human_label, r.note, r.corrected_critique) for r in mine.itertuples()
        ]
        assert got == [(first, "A", note, critique)]
        return
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == exported
    if fmt == "trl-preference":
        assert all(set(r) == {"prompt", "chosen", "rejected"} for r in records)
        if isinstance(records[0]["prompt"], list):  # one chat pair makes every row chat
            turns = pair.prompt if pair.is_chat else [{"role": "user", "content": pair.prompt}]
            expected = {
                "prompt": turns,
                "chosen": [{"role": "assistant", "content": pair.response_a}],
                "rejected": [{"role": "assistant", "content": pair.response_b}],
            }
        else:
            expected = {
                "prompt": pair.prompt,
                "chosen": pair.response_a,
                "rejected": pair.response_b,
            }
        assert expected in records  # the person chose A
        return
    # The judge's own prompt (system, user) and the answer it should have given.
    roles = ["system", "user", "assistant"]
    assert all([m["role"] for m in r["messages"]] == roles for r in records)
    (mine,) = [r["messages"] for r in records if r["messages"][2]["content"].startswith(critique)]
    assert mine[2]["content"] == f"{critique}\n\nVerdict: [[A]]"  # the person's critique
    question = mine[1]["content"]
    assert f"[Response A]\n{pair.response_a}" in question
    assert f"[Response B]\n{pair.response_b}" in question


def _read_table(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if fmt == "csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_parquet(path)


# The judge's stored verdicts and a person's labels on the same six pairs, in file order.
JUDGE_SAID = ["A", "B", "A", "tie", "B", "A"]
PERSON_SAID = ["A", "B", "B", "tie", "A", "A"]
VERDICT_COLUMNS = ["A", "B", "tie", "none"]


@pytest.fixture
def scored_app(tmp_path: Path) -> Iterator[tuple[RunningApp, int, dict[int, int]]]:
    """A second app (no judge loaded) with a dataset of its own whose six pairs carry stored
    judgments (JUDGE_SAID), plus a judged, labeled demo pair that must not count for that
    dataset. Its dataset id and {pair id: line index}. The app is built after the import:
    through the API a dataset can only be one of the choices the app was built with."""
    from app import build_app, serve
    from services import Services
    from settings import load_settings

    settings = load_settings(home=tmp_path / "scored-home", database_url=None, port=free_port())
    services = Services.open(settings)
    services.load_demo_if_empty()
    name = f"scored-{uuid.uuid4().hex[:6]}"
    source = tmp_path / f"{name}.jsonl"
    lines = [
        {"prompt": f"Question {i}?", "response_a": f"answer A{i}", "response_b": f"answer B{i}"}
        for i in range(len(JUDGE_SAID))
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    services.import_file(source, dataset=name)
    dataset_id = next(d.id for d in services.datasets() if d.name == name)
    with services.sessions.begin() as s:
        pairs = queries.pending_pairs(s, None, "pairwise", dataset_id=dataset_id)
        demo_pair = queries.pending_pairs(s, None, "pairwise", dataset_id=None, limit=1)[0].id
    line_of = {p.id: int(p.prompt.split()[1].rstrip("?")) for p in pairs}
    by_line = sorted(line_of, key=line_of.get)
    store_judgments(services, by_line, JUDGE_SAID)
    (noise,) = store_judgments(services, [demo_pair], ["A"])
    services.save_label(demo_pair, "someone-else", "B", judgment_id=noise)
    demo = build_app(services)
    _, url = serve(demo, settings, prevent_thread_lock=True, quiet=True)
    yield RunningApp(url, services, settings, demo), dataset_id, line_of
    demo.close()


def _cards(cards_html: str) -> dict[str, tuple[str, str]]:
    """The agreement cards as {title: (value, note)}."""
    found = re.findall(
        r'grm-card-title">(.*?)</div><div class="grm-card-value">(.*?)</div>'
        r'<div class="grm-card-note">(.*?)</div>',
        cards_html,
    )
    return {html.unescape(t): (html.unescape(v), html.unescape(n)) for t, v, n in found}


def test_agreement_report_counts_labels(scored_app) -> None:
    app, dataset_id, line_of = scored_app
    client = _client(app)
    client.predict("api-agreement", api_name="/set_annotator")
    screen = client.predict(dataset_id, api_name="/next_pair")
    for _ in JUDGE_SAID:
        pair_id = _pair_id(screen[0])
        verdict = PERSON_SAID[line_of[pair_id]]
        screen = client.predict(dataset_id, "", "", api_name=f"/label_{verdict}")
        assert f"Saved #{pair_id}: {verdict}." in screen[-1], screen[-1]
    assert _pair_id(screen[0]) is None, "the dataset's queue should be empty"
    # Each label points at the judgment shown with its pair.
    labels = {r["pair_id"]: r for r in _labels(app, "api-agreement")}
    assert {p: (r["label"], r["judge_verdict"]) for p, r in labels.items()} == {
        p: (PERSON_SAID[i], JUDGE_SAID[i]) for p, i in line_of.items()
    }
    assert all(r["judgment_id"] is not None for r in labels.values())

    cards_html, confusion, *_ = client.predict(dataset_id, api_name="/agreement")
    cards = _cards(cards_html)
    n = len(PERSON_SAID)
    correct = sum(j == h for j, h in zip(JUDGE_SAID, PERSON_SAID, strict=True))
    kappa = textbook_kappa(JUDGE_SAID, PERSON_SAID)
    assert cards["Accuracy"][0] == f"{correct / n:.1%}" == "66.7%"
    assert cards["Cohen's κ"] == (f"{kappa:.3f}", f"{n} labels compared")
    assert cards["Cohen's κ"][0] == "0.455"  # (4/6 - 14/36) / (1 - 14/36)
    assert cards["Not judged"] == ("0", f"of {n} labels")
    expected = [
        [f"human {h}"]
        + [
            sum(p == h and j == c for j, p in zip(JUDGE_SAID, PERSON_SAID, strict=True))
            for c in VERDICT_COLUMNS
        ]
        for h in ("A", "B", "tie")
    ]
    assert confusion["headers"][1:] == [f"judge {c}" for c in VERDICT_COLUMNS]
    assert confusion["data"] == expected
    assert expected == [["human A", 2, 1, 0, 0], ["human B", 1, 1, 0, 0], ["human tie", 0, 0, 1, 0]]


def test_judge_tab_shows_the_loaded_model(running_app, embedded_backend) -> None:
    status = _client(running_app).predict(api_name="/load_judge")
    seconds = embedded_backend.load_seconds
    assert (
        f"<b>transformers</b> · SmolLM2-135M-Instruct (embedded) · loaded in {seconds:.1f} s"
        in status
    ), status
    assert "not loaded" not in status


@pytest.fixture
def auth_app(tmp_path: Path):
    """A second app with login on (two users); no judge is needed for labeling."""
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
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(url, verbose=False, analytics_enabled=False).predict(0, api_name="/next_pair")
    client = Client(url, auth=("ana", "pw-a"), verbose=False, analytics_enabled=False)
    client.predict("mallory", api_name="/set_annotator")  # pretends to be someone else
    first = _pair_id(client.predict(0, api_name="/next_pair")[0])
    client.predict(0, "", "", api_name="/label_B")
    with services.sessions.begin() as s:
        records = queries.labeled_records(s)
    assert [(r["pair_id"], r["annotator"], r["label"]) for r in records] == [(first, "ana", "B")]
