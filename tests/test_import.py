"""Import: LLMBar files, the pairs and chosen-rejected formats from JSONL, CSV and Parquet,
bad input refused whole, and the demo data."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pair_files import counts, pair_fields, pairs_rows, stored_pairs, write_jsonl
from sqlalchemy import select

from storage.demo import load_demo_if_empty
from storage.importer import ImportFailed, chosen_goes_first, import_file
from storage.models import Dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
LLMBAR_FILES = sorted(p.name for p in (REPO_ROOT.parent / "shared/data/llmbar").glob("*.jsonl"))
DEMO_PATH = REPO_ROOT / "assets" / "demo_pairs.jsonl"


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False, quoting=csv.QUOTE_ALL, lineterminator="\n")
    else:
        frame.to_parquet(path, index=False)
    return path


# --- LLMBar ---------------------------------------------------------------------------------


def test_all_shared_llmbar_files_are_found() -> None:
    # If the shared folder moved, the parametrized test below would silently run nothing.
    assert len(LLMBAR_FILES) >= 6, LLMBAR_FILES


@pytest.mark.parametrize("name", LLMBAR_FILES)
def test_llmbar_file_imports_whole_and_exact(factory, llmbar_dir: Path, name: str) -> None:
    path = llmbar_dir / name
    source = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]

    report = import_file(factory, path)

    assert (report.format, report.new, report.duplicate, report.rejected) == (
        "llmbar",
        len(source),
        0,
        0,
    )
    assert report.dataset == path.stem
    stored = stored_pairs(factory, path.stem)
    assert [(p.prompt, p.response_a, p.response_b) for p in stored] == [
        (r["input"], r["output_1"], r["output_2"]) for r in source
    ]
    assert [p.gold_label for p in stored] == [{1: "A", 2: "B"}[r["label"]] for r in source]
    again = import_file(factory, path)
    assert (again.new, again.duplicate) == (0, len(source))


# --- formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_pairs_format_from_each_file_type(factory, tmp_path: Path, suffix: str) -> None:
    rows = pairs_rows(4)
    path = tmp_path / f"mine{suffix}"
    write_jsonl(path, rows) if suffix == ".jsonl" else write_table(path, rows)

    report = import_file(factory, path, dataset="mine")

    assert (report.format, report.new, report.duplicate) == ("pairs", 4, 0)
    stored = stored_pairs(factory, "mine")
    assert [pair_fields(p) for p in stored] == [
        (
            r["prompt"],
            None,
            r["response_a"],
            r["response_b"],
            r["reference"],
            "chat",
            r["label"],
            r["id"],
        )
        for r in rows
    ]
    with factory() as s:
        dataset = s.scalar(select(Dataset).where(Dataset.name == "mine"))
        assert (dataset.format, dataset.pair_count) == ("pairs", 4)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"prompt": "p", "response_a": "a", "response_b": "b"}, "pairs"),
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "chosen-rejected"),
        ({"input": "p", "output_1": "a", "output_2": "b", "label": 2}, "llmbar"),
    ],
)
def test_auto_detects_format_from_columns(factory, tmp_path, columns, expected) -> None:
    report = import_file(factory, write_jsonl(tmp_path / "x.jsonl", [columns]))
    assert report.format == expected


def test_chosen_rejected_records_gold_where_chosen_landed(factory, tmp_path) -> None:
    rows = [
        {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "subset": "math-prm"}
        for i in range(40)
    ]
    import_file(factory, write_jsonl(tmp_path / "rb.jsonl", rows), seed=7)

    stored = stored_pairs(factory, "rb")
    assert len(stored) == 40
    for pair, row in zip(stored, rows, strict=True):
        chosen = pair.response_a if pair.gold_label == "A" else pair.response_b
        rejected = pair.response_b if pair.gold_label == "A" else pair.response_a
        assert (chosen, rejected, pair.category) == (row["chosen"], row["rejected"], "math-prm")
    assert {p.gold_label for p in stored} == {"A", "B"}


def test_seeded_coin_is_deterministic_and_balanced(factory, tmp_path) -> None:
    rows = [{"prompt": f"question {i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(400)]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    import_file(factory, path, dataset="seed0", seed=0)
    import_file(factory, path, dataset="seed0-again", seed=0)
    import_file(factory, path, dataset="seed1", seed=1)

    gold = {
        name: [p.gold_label for p in stored_pairs(factory, name)]
        for name in ("seed0", "seed0-again", "seed1")
    }
    assert gold["seed0"] == gold["seed0-again"]
    assert gold["seed0"] != gold["seed1"]
    share_a = gold["seed0"].count("A") / len(rows)
    assert 0.4 < share_a < 0.6, share_a
    # The coin follows content, not row order: the same row placed alone lands the same way.
    assert chosen_goes_first(0, "question 5", "c5", "r5") == (gold["seed0"][5] == "A")


def test_chosen_rejected_as_messages_keeps_the_prompt_as_turns(factory, tmp_path) -> None:
    user = {"role": "user", "content": "Hi \u200b there"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "Hello!"}],
        "rejected": [user, {"role": "assistant", "content": "Go away."}],
    }
    import_file(factory, write_jsonl(tmp_path / "conv.jsonl", [row]))

    (pair,) = stored_pairs(factory, "conv")
    assert (pair.prompt, pair.prompt_turns) == ("", [user])
    assert {pair.response_a, pair.response_b} == {"Hello!", "Go away."}


def test_chat_prompt_is_kept_as_turns(factory, tmp_path) -> None:
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
    ]
    row = {"prompt": turns, "response_a": "Red.", "response_b": "Green is a colour, as is red."}
    for name in ("chat.jsonl", "chat.parquet"):
        path = tmp_path / name
        write_jsonl(path, [row]) if name.endswith("jsonl") else write_table(path, [row])
        import_file(factory, path, dataset=name)
        (pair,) = stored_pairs(factory, name)
        assert (pair.prompt, pair.prompt_turns) == ("", turns)


def test_dedupe_within_file_and_dataset_but_not_across_datasets(factory, tmp_path) -> None:
    rows = pairs_rows(3)
    path = write_jsonl(tmp_path / "d.jsonl", [*rows, rows[1]])

    first = import_file(factory, path, dataset="one")
    second = import_file(factory, path, dataset="one")
    other = import_file(factory, path, dataset="two")

    assert (first.new, first.duplicate) == (3, 1)
    assert (second.new, second.duplicate) == (0, 4)
    assert (other.new, other.duplicate) == (3, 1)
    assert counts(factory) == (2, 6)


def test_bom_crlf_jsonl_and_json_array_import(factory, tmp_path) -> None:
    row = {"prompt": "p\r\nq", "response_a": "a ", "response_b": " b"}
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\r\n\r\n")
    array = tmp_path / "array.json"
    array.write_text(json.dumps([row, {**row, "response_a": "other"}]), "utf-8")

    assert import_file(factory, crlf).new == 1
    assert import_file(factory, array).new == 2
    (pair,) = stored_pairs(factory, "crlf")
    assert (pair.prompt, pair.response_a, pair.response_b) == ("p\r\nq", "a ", " b")
    array.write_text(json.dumps([row, "oops"]), "utf-8")
    with pytest.raises(ImportFailed, match=r"^array\.json item 2: expected a JSON object"):
        import_file(factory, array, dataset="array2")


def test_swapped_responses_are_a_different_pair(factory, tmp_path) -> None:
    row = {"prompt": "p", "response_a": "x", "response_b": "y"}
    swapped = {**row, "response_a": "y", "response_b": "x"}
    report = import_file(factory, write_jsonl(tmp_path / "s.jsonl", [row, swapped]))
    assert (report.new, report.duplicate) == (2, 0)


def test_whitespace_only_response_is_kept_not_stripped(factory, tmp_path) -> None:
    # Processed_LLMEval_2 has a labelled answer that is only whitespace; it must import as is.
    row = {"input": "code?", "output_1": "print(1)", "output_2": "    \n            ", "label": 1}
    import_file(factory, write_jsonl(tmp_path / "ws.jsonl", [row]))
    (pair,) = stored_pairs(factory, "ws")
    assert pair.response_b == "    \n            "


# --- bad input: fails whole, names file, line and reason, stores nothing --------------------

GOOD = {"prompt": "p", "response_a": "a", "response_b": "b"}


def _jsonl_bytes(*rows: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def bad(case: str, content: bytes, line: int | None, reason: str, name="f.jsonl", **kwargs):
    """One bad-input case: file content, the line the error must name, a regex for the reason."""
    return pytest.param(name, content, kwargs, line, reason, id=case)


HALF_LINE = b'{"prompt": "p", "response_a": '
CSV_HEAD = b"prompt,response_a,response_b\n"
LLMBAR_ROW = {"input": "i", "output_1": "a", "output_2": "b", "label": 3}
# fmt: off
BAD_INPUTS = [
    bad("malformed-json", _jsonl_bytes(GOOD, HALF_LINE), 2, "not valid JSON"),
    bad("not-an-object", _jsonl_bytes(GOOD, [1, 2]), 2, "expected a JSON object, got a list"),
    bad("missing-key", _jsonl_bytes(GOOD, GOOD, {"prompt": "p", "response_a": "a"}), 3,
        "^response_b is missing$"),
    bad("empty-response", _jsonl_bytes(GOOD, {**GOOD, "response_b": ""}), 2,
        "^response_b is empty$"),
    bad("null-response", _jsonl_bytes({**GOOD, "response_a": None}), 1, "^response_a is empty$"),
    bad("number-response", _jsonl_bytes({**GOOD, "response_a": 42}), 1, "response_a must be text"),
    bad("bad-label", _jsonl_bytes(GOOD, {**GOOD, "label": "C"}), 2, "label must be A, B or tie"),
    bad("bad-llmbar-label", _jsonl_bytes(LLMBAR_ROW), 1, "label must be 1 or 2"),
    bad("bad-turns", _jsonl_bytes({**GOOD, "prompt": [{"content": "no role"}]}), 1,
        "prompt message 1 needs a role"),
    bad("non-utf8", _jsonl_bytes(GOOD, GOOD) + b'{"prompt": "caf\xe9"}\n', 3, "not UTF-8"),
    bad("nul-byte", _jsonl_bytes(GOOD) + b'{"prompt": "a\x00b"}\n', 2, "NUL"),
    bad("escaped-nul", _jsonl_bytes(GOOD, {**GOOD, "response_a": "a\u0000b"}), 2,
        "response_a contains a NUL"),
    bad("csv-missing-column", b"prompt,response_a\np,a\n", 1, "missing column response_b",
        name="f.csv", format="pairs"),
    bad("csv-empty-cell", CSV_HEAD + b"p,a,b\np,a,\n", 3, "^response_b is empty$", name="f.csv"),
    bad("csv-malformed-row", CSV_HEAD + b"p,a,b\np,a,b,extra\n", 3, "malformed row",
        name="f.csv"),
    bad("csv-non-utf8", CSV_HEAD + b"\xff\xfe,a,b\n", 2, "not UTF-8", name="f.csv"),
    bad("unknown-columns", _jsonl_bytes({"question": "q", "answer": "a"}), None,
        "cannot tell the format"),
    bad("wrong-format", _jsonl_bytes(GOOD), 1, "^input is missing$", format="llmbar"),
    bad("unknown-format", _jsonl_bytes(GOOD), None, "unknown format 'rlhf'", format="rlhf"),
    bad("too-big", _jsonl_bytes(GOOD, GOOD), None, "over the .* limit", max_bytes=10),
    bad("empty-file", b"\n\n", None, "no rows"),
    bad("unknown-file-type", b"PK", None, "unknown file type", name="f.xlsx"),
]
# fmt: on


@pytest.mark.parametrize(("name", "content", "kwargs", "line", "reason"), BAD_INPUTS)
def test_bad_input_fails_whole_and_stores_nothing(
    factory, tmp_path, name, content, kwargs, line, reason
):
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(ImportFailed) as caught:
        import_file(factory, path, **kwargs)

    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.path, error.line) == (path, line)
    assert re.search(reason, error.reason), error.reason
    where = f" {error.unit} {line}" if line is not None else ""
    assert str(error) == f"{name}{where}: {error.reason}"
    assert counts(factory) == (0, 0)


def test_error_message_reads_like_the_spec(factory, tmp_path) -> None:
    rows = [GOOD] * 6 + [{**GOOD, "response_b": ""}]
    path = tmp_path / "file.jsonl"
    path.write_bytes(_jsonl_bytes(*rows))
    with pytest.raises(ImportFailed, match=r"^file\.jsonl line 7: response_b is empty$"):
        import_file(factory, path)


def test_every_bad_row_is_listed(factory, tmp_path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_bytes(_jsonl_bytes({**GOOD, "response_a": ""}, GOOD, {**GOOD, "response_b": ""}))
    with pytest.raises(ImportFailed) as caught:
        import_file(factory, path)
    assert caught.value.errors == [(1, "response_a is empty"), (3, "response_b is empty")]


def test_bad_file_into_existing_dataset_changes_nothing(factory, tmp_path) -> None:
    import_file(factory, write_jsonl(tmp_path / "ok.jsonl", pairs_rows(2)), dataset="keep")
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,response_a,response_b\nnew,x,y\nnew2,x,\n", "utf-8")

    with pytest.raises(ImportFailed):
        import_file(factory, bad, dataset="keep")

    assert counts(factory) == (1, 2)
    with factory() as s:
        assert s.scalar(select(Dataset.pair_count).where(Dataset.name == "keep")) == 2


# --- demo data ------------------------------------------------------------------------------


def test_demo_pairs_are_varied_short_and_labelled() -> None:
    rows = [json.loads(line) for line in DEMO_PATH.read_text("utf-8").splitlines()]
    assert 20 <= len(rows) <= 30
    categories = {r["category"] for r in rows}
    assert categories == {"chat", "reasoning", "coding", "safety", "instruction-following"}
    assert {r["label"] for r in rows} == {"A", "B"}
    for row in rows:
        for key in ("response_a", "response_b"):
            assert len(row[key].split()) < 120, (row["id"], key)
    longer_is_worse = [
        r
        for r in rows
        if len(r["response_a" if r["label"] == "A" else "response_b"])
        < len(r["response_b" if r["label"] == "A" else "response_a"])
    ]
    assert len(longer_is_worse) >= 5


def test_demo_loads_only_into_an_empty_database(factory, tmp_path) -> None:
    report = load_demo_if_empty(factory, DEMO_PATH)

    assert report is not None
    assert (report.dataset, report.format, report.duplicate) == ("demo", "pairs", 0)
    assert report.new == len(DEMO_PATH.read_text("utf-8").splitlines())
    assert all(p.gold_label in ("A", "B") for p in stored_pairs(factory, "demo"))
    assert load_demo_if_empty(factory, DEMO_PATH) is None
    assert counts(factory) == (1, report.new)


def test_demo_is_not_loaded_next_to_other_data(factory, tmp_path) -> None:
    import_file(factory, write_jsonl(tmp_path / "mine.jsonl", pairs_rows(1)))
    assert load_demo_if_empty(factory, DEMO_PATH) is None
    assert counts(factory) == (1, 1)
