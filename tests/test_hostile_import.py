"""Hostile input (issue 6), import: every bad file is refused whole with the file, the line (or
row) and the reason, and the database holds nothing new; a huge or oddly escaped file that is
valid is stored intact.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hostile import (
    GOOD,
    dataset_names,
    import_hostile,
    jsonl,
    label_handlers,
    pair_ids,
    viewer,
    write,
)

from services import Services
from storage.importer import ImportFailed
from storage.models import Pair
from webui.render import MAX_DISPLAY_CHARS

LLMBAR = {"input": "i", "output_1": "a", "output_2": "b", "label": 1}


def parquet_bytes(tmp_path: Path, frame: pd.DataFrame) -> bytes:
    path = tmp_path / f"{uuid.uuid4().hex}.parquet"
    frame.to_parquet(path, index=False)
    return path.read_bytes()


def seed(services: Services, tmp_path: Path) -> tuple[list[str], int]:
    """An existing dataset, so a failed import can be seen to leave it as it was."""
    services.import_file(write(tmp_path / "keep.jsonl", jsonl(GOOD, {**GOOD, "prompt": "q"})))
    return dataset_names(services), services.stats()["pairs"]


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
