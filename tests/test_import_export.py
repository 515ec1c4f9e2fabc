"""Import (pairs, chosen-rejected, llmbar; JSONL/CSV/Parquet), export, TRL formats and demo data."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tiny_llama import tiny_llama

from judges.protocols import get_protocol
from judges.types import PairInput
from services.data import sft_example
from storage import queries
from storage.demo import load_demo_if_empty
from storage.exporter import (
    TABLE_COLUMNS,
    escape_csv_cell,
    export_labels,
    unescape_csv_cell,
)
from storage.importer import ImportFailed, chosen_goes_first, import_file
from storage.models import Dataset, Judgment, Pair

REPO_ROOT = Path(__file__).resolve().parent.parent
LLMBAR_FILES = sorted(p.name for p in (REPO_ROOT.parent / "shared/data/llmbar").glob("*.jsonl"))
DEMO_PATH = REPO_ROOT / "assets" / "demo_pairs.jsonl"

# Text that breaks naive pipelines: bidi overrides, zero-width characters, emoji sequences,
# decomposed accents, every newline kind, spreadsheet formula starts, and strings that CSV or
# pandas readers like to turn into something else.
TRICKY = [
    "\u202eexe.txt\u202c reversed by a right-to-left override",
    "zero\u200bwidth\u200djoiner and a \ufeff mid-text BOM",
    "emoji 👩‍💻 🏳️‍🌈 and e\u0301 (decomposed) next to é",
    "  leading and trailing spaces  \n",
    "crlf\r\nlone cr\rline separator\u2028next line\u0085end",
    '=HYPERLINK("http://example.com","click")',
    "-starts with a minus",
    "+1 starts with a plus",
    "@SUM(A1:A2)",
    "\tstarts with a tab",
    "'=looks escaped already",
    "'Tis an apostrophe",
    "NA",
    "null",
    "0123",
    "עברית مرحبا mixed right-to-left scripts",
    '"quoted", with, commas',
    "\x7f\x1b[31mcontrol characters\x1b[0m",
]


# --- helpers --------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False, quoting=csv.QUOTE_ALL, lineterminator="\n")
    else:
        frame.to_parquet(path, index=False)
    return path


def counts(factory: sessionmaker[Session]) -> tuple[int, int]:
    with factory() as s:
        return s.scalar(select(func.count(Dataset.id))), s.scalar(select(func.count(Pair.id)))


def stored_pairs(factory: sessionmaker[Session], dataset: str) -> list[Pair]:
    with factory() as s:
        stmt = select(Pair).join(Dataset).where(Dataset.name == dataset).order_by(Pair.id)
        return list(s.scalars(stmt))


def pair_fields(pair: Pair) -> tuple:
    return (
        pair.prompt,
        pair.prompt_turns,
        pair.response_a,
        pair.response_b,
        pair.reference,
        pair.category,
        pair.gold_label,
        pair.external_id,
    )


def pairs_rows(n: int = 3) -> list[dict[str, Any]]:
    labels = ["A", "B", "tie", None]
    return [
        {
            "id": f"p{i}",
            "prompt": f"prompt {i}",
            "response_a": f"answer a {i}",
            "response_b": f"answer b {i}",
            "label": labels[i % 4],
            "category": "chat",
            "reference": f"ref {i}",
        }
        for i in range(n)
    ]


@pytest.fixture
def factory(db) -> sessionmaker[Session]:
    return db.factory


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


# --- export ---------------------------------------------------------------------------------

VERDICT_CYCLE = ["A", "B", "tie", "both_bad", "skip"]


def tricky_rows() -> list[dict[str, Any]]:
    n = len(TRICKY)
    rows = [
        {
            "id": f"t{i}",
            "prompt": TRICKY[i],
            "response_a": TRICKY[(i + 1) % n],
            "response_b": TRICKY[(i + 2) % n] + f" #{i}",
            "label": ["A", "B", "tie", None][i % 4],
            "category": TRICKY[(i + 3) % n][:40],
            "reference": TRICKY[(i + 4) % n] if i % 2 else None,
        }
        for i in range(n)
    ]
    turns = [{"role": "user", "content": TRICKY[0]}, {"role": "assistant", "content": TRICKY[4]}]
    rows.append({**rows[0], "id": "chat", "prompt": turns + [{"role": "user", "content": "=1+1"}]})
    return rows


def label_everything(factory: sessionmaker[Session], dataset: str) -> None:
    """Label the dataset's pairs in a verdict cycle as alice; bob also labels the first pair."""
    with factory.begin() as s:
        ids = s.scalars(
            select(Pair.id).join(Dataset).where(Dataset.name == dataset).order_by(Pair.id)
        )
        for i, pair_id in enumerate(ids.all()):
            queries.save_label(s, pair_id, "alice", VERDICT_CYCLE[i % len(VERDICT_CYCLE)])
            if i == 0:
                queries.save_label(s, pair_id, "bob", "B", note="=bob's note")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_round_trip_keeps_text_byte_exact(factory, tmp_path, fmt) -> None:
    rows = tricky_rows()
    import_file(factory, write_jsonl(tmp_path / "src.jsonl", rows), dataset="src")
    label_everything(factory, "src")
    out = tmp_path / f"labels.{fmt}"

    written = export_labels(factory, out, format=fmt)

    skipped = sum(1 for i in range(len(rows)) if VERDICT_CYCLE[i % 5] == "skip")
    assert written == len(rows) - skipped + 1  # + bob's label
    report = import_file(factory, out, dataset="again")
    assert (report.format, report.new, report.duplicate) == ("pairs", written - 1, 1)
    # Compare with the Python strings written to the source file, not with what was stored
    # the first time: a pipeline that altered text on both imports would pass otherwise.
    expected = {row["id"]: source_fields(row) for row in rows}
    assert {p.external_id: pair_fields(p) for p in stored_pairs(factory, "src")} == expected
    again = stored_pairs(factory, "again")
    assert len(again) == written - 1
    for pair in again:
        assert pair_fields(pair) == expected[pair.external_id]
    assert any(p.prompt_turns for p in again)


def source_fields(row: dict[str, Any]) -> tuple:
    """pair_fields() as the importer should store a source row: turns kept, "" when chat."""
    chat = isinstance(row["prompt"], list)
    return (
        "" if chat else row["prompt"],
        row["prompt"] if chat else None,
        row["response_a"],
        row["response_b"],
        row.get("reference"),
        row.get("category"),
        row.get("label"),
        row.get("id"),
    )


def test_export_rows_carry_pair_label_and_judgment(factory, tmp_path) -> None:
    import_file(factory, write_jsonl(tmp_path / "j.jsonl", pairs_rows(2)), dataset="j")
    with factory.begin() as s:
        first, second = s.scalars(select(Pair.id).order_by(Pair.id)).all()
        (judgment_id,) = queries.add_judgments(s, [judgment(first, "A", "A is right.")])
        queries.save_label(s, first, "alice", "A", judgment_id=judgment_id)
        queries.save_label(s, second, "alice", "skip")
    out = tmp_path / "j-out.jsonl"

    assert export_labels(factory, out, format="jsonl") == 1
    (row,) = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert list(row) == list(TABLE_COLUMNS)
    assert row["pair_id"] == first and row["dataset"] == "j" and row["id"] == "p0"
    assert (row["human_label"], row["gold_label"], row["agreed_with_judge"]) == ("A", "A", True)
    assert (row["judgment_id"], row["judge_verdict"]) == (judgment_id, "A")
    assert (row["judge_critique"], row["judge_principles"]) == ("A is right.", "Be correct.")


def test_export_gives_the_runs_verdict_not_the_answered_samples(factory, tmp_path) -> None:
    # A swap run: the sample the person answered said A, the other order said B, and the run
    # decided B. The export's judge_verdict is the run's decision, as labeled_records says.
    from storage.judgment_runs import add_judgment_run

    import_file(factory, write_jsonl(tmp_path / "s.jsonl", pairs_rows(1)), dataset="s")
    with factory.begin() as s:
        pair_id = s.scalar(select(Pair.id))
        run = {"pair_id": pair_id, "protocol": "pairwise", "prompt_version": "v1",
               "verdict": "B", "swap": True}  # fmt: skip
        samples = [judgment(pair_id, "A", "A is right."),
                   {**judgment(pair_id, "B", "B is right."), "swapped": True}]  # fmt: skip
        run_id = add_judgment_run(s, run, samples)
        answered = s.scalar(
            select(func.min(Judgment.id)).where(Judgment.run_id == run_id, Judgment.verdict == "A")
        )
        queries.save_label(s, pair_id, "alice", "B", judgment_id=answered)
        (record,) = queries.labeled_records(s)

    out = tmp_path / "s-out.jsonl"
    assert export_labels(factory, out, format="jsonl") == 1
    (row,) = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert (row["judgment_id"], row["judge_verdict"]) == (answered, "B")
    assert row["judge_verdict"] == record["judge_verdict"] == "B"
    assert (row["agreed_with_judge"], row["judge_critique"]) == (True, "A is right.")
    sft = tmp_path / "s-sft.jsonl"
    assert export_labels(factory, sft, format="trl-sft", sft_example=sft_example) == 1
    (example,) = [json.loads(line) for line in sft.read_text("utf-8").splitlines()]
    # The answered sample argued for A: its critique is not taught as the reason for B.
    assert example["messages"][-1]["content"] == "Verdict: [[B]]"


def test_export_filters_by_dataset_and_annotator(factory, tmp_path) -> None:
    import_file(factory, write_jsonl(tmp_path / "src.jsonl", tricky_rows()), dataset="src")
    import_file(factory, write_jsonl(tmp_path / "other.jsonl", pairs_rows(3)), dataset="other")
    label_everything(factory, "src")
    label_everything(factory, "other")
    out = tmp_path / "f.jsonl"

    assert export_labels(factory, out, format="jsonl", annotator="bob") == 2
    assert export_labels(factory, out, format="jsonl", dataset="other") == 4
    assert {json.loads(r)["dataset"] for r in out.read_text().splitlines()} == {"other"}
    assert export_labels(factory, out, format="csv", dataset="other", annotator="bob") == 1
    with pytest.raises(ValueError, match="no dataset named 'nope'"):
        export_labels(factory, out, format="jsonl", dataset="nope")
    with pytest.raises(ValueError, match="unknown export format"):
        export_labels(factory, out, format="xlsx")


@pytest.mark.parametrize(
    ("cell", "escaped"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("'=x", "''=x"),  # already looks escaped: escaped again, so it round-trips
        ("''-x", "'''-x"),
        ("'Tis", "'Tis"),
        ("plain = text", "plain = text"),
        ("", ""),
        ("'", "'"),
    ],
)
def test_csv_formula_escaping_is_exactly_reversible(cell: str, escaped: str) -> None:
    assert escape_csv_cell(cell) == escaped
    assert unescape_csv_cell(escaped) == cell


def test_csv_export_escapes_formula_cells(factory, tmp_path) -> None:
    rows = [
        {
            "prompt": "=cmd|' /C calc'!A0",
            "response_a": "-2+3",
            "response_b": "@user",
            "category": "+x",
        }
    ]
    import_file(factory, write_jsonl(tmp_path / "f.jsonl", rows))
    label_everything(factory, "f")
    out = tmp_path / "f.csv"

    export_labels(factory, out, format="csv", annotator="alice")

    with out.open(newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["prompt"] == "'=cmd|' /C calc'!A0"
    assert (row["response_a"], row["response_b"], row["category"]) == ("'-2+3", "'@user", "'+x")
    assert row["annotator"] == "alice" and row["human_label"] == "A"


# --- TRL formats ----------------------------------------------------------------------------


def judgment(pair_id: int, verdict: str, critique: str) -> dict[str, Any]:
    return {
        "pair_id": pair_id,
        "protocol": "pairwise",
        "prompt_version": "v1",
        "verdict": verdict,
        "status": "complete",
        "principles": "Be correct.",
        "critique": critique,
    }


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A byte-level tokenizer with a ChatML template, built here: no model hub needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


def load_json_dataset(path: Path, tmp_path: Path):
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


def labeled_pairs_for_trl(factory, tmp_path, *, with_chat: bool) -> list[dict[str, Any]]:
    rows = [
        {"prompt": "2+2?", "response_a": "4", "response_b": "5"},
        {"prompt": "Capital of France?", "response_a": "Lyon", "response_b": "Paris \u202e🙂"},
        {"prompt": "Say hi", "response_a": "hi", "response_b": "hello"},
        {"prompt": "Pick one", "response_a": "x", "response_b": "y"},
    ]
    if with_chat:
        turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        rows.append(
            {
                "prompt": turns + [{"role": "user", "content": "Bye?"}],
                "response_a": "Bye!",
                "response_b": "No.",
            }
        )
    import_file(factory, write_jsonl(tmp_path / "trl.jsonl", rows), dataset="trl")
    verdicts = ["A", "B", "tie", "both_bad", "A"]
    with factory.begin() as s:
        ids = s.scalars(select(Pair.id).order_by(Pair.id)).all()
        for pair_id, verdict in zip(ids, verdicts, strict=False):
            queries.save_label(s, pair_id, "alice", verdict)
    return rows


def test_trl_preference_text_prompts(factory, tmp_path) -> None:
    from trl.data_utils import is_conversational, maybe_extract_prompt

    labeled_pairs_for_trl(factory, tmp_path, with_chat=False)
    out = tmp_path / "pref.jsonl"

    assert export_labels(factory, out, format="trl-preference") == 2  # tie and both_bad left out
    data = load_json_dataset(out, tmp_path)
    assert data.column_names == ["prompt", "chosen", "rejected"]
    assert data[0] == {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    assert data[1] == {
        "prompt": "Capital of France?",
        "chosen": "Paris \u202e🙂",
        "rejected": "Lyon",
    }
    for example in data:
        assert not is_conversational(example)
        assert maybe_extract_prompt(example) == example  # explicit prompt, taken as is


def test_trl_preference_with_chat_turns_is_conversational(
    factory, tmp_path, tiny_tokenizer
) -> None:
    from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_extract_prompt

    labeled_pairs_for_trl(factory, tmp_path, with_chat=True)
    out = tmp_path / "pref.jsonl"

    assert export_labels(factory, out, format="trl-preference") == 3
    data = load_json_dataset(out, tmp_path)
    last = data[2]
    assert last["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye?"},
    ]
    assert last["chosen"] == [{"role": "assistant", "content": "Bye!"}]
    assert data[0]["prompt"] == [{"role": "user", "content": "2+2?"}]
    for example in data:
        assert is_conversational(example)
        assert maybe_extract_prompt(example) == example
        rendered = maybe_apply_chat_template(example, tiny_tokenizer)
        assert rendered["prompt"].endswith("<|im_start|>assistant\n")
        assert rendered["chosen"].startswith(example["chosen"][0]["content"])
    assert "Paris \u202e🙂" in maybe_apply_chat_template(data[1], tiny_tokenizer)["chosen"]


@pytest.mark.slow
@pytest.mark.parametrize("with_chat", [False, True], ids=["text", "chat"])
def test_trl_preference_export_prepares_in_dpo_trainer(
    factory, tmp_path, tiny_tokenizer, with_chat
):
    """TRL's own DPO dataset preparation accepts the export and finds the chosen text."""
    import copy

    from trl import DPOConfig, DPOTrainer

    labeled_pairs_for_trl(factory, tmp_path, with_chat=with_chat)
    out = tmp_path / "pref.jsonl"
    export_labels(factory, out, format="trl-preference")
    data = load_json_dataset(out, tmp_path)
    model = tiny_llama(tiny_tokenizer, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), report_to="none", use_cpu=True, bf16=False)
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=data,
        processing_class=tiny_tokenizer,
    )

    prepared = trainer.train_dataset
    assert len(prepared) == len(data)
    chosen_text = tiny_tokenizer.decode(prepared[1]["chosen_ids"])
    assert "Paris \u202e🙂" in chosen_text


def test_trl_sft_targets_follow_the_human(factory, tmp_path, tiny_tokenizer) -> None:
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    rows = [
        {
            "prompt": f"q{i}",
            "response_a": f"a{i}",
            "response_b": f"b{i}",
            "reference": "ref" if i == 0 else None,
        }
        for i in range(5)
    ]
    import_file(factory, write_jsonl(tmp_path / "sft.jsonl", rows), dataset="sft")
    with factory.begin() as s:
        ids = s.scalars(select(Pair.id).order_by(Pair.id)).all()
        j = queries.add_judgments(
            s, [judgment(pid, "A", f"critique {i}") for i, pid in enumerate(ids)]
        )
        queries.save_label(s, ids[0], "alice", "A", judgment_id=j[0])  # agrees with the judge
        queries.save_label(
            s, ids[1], "alice", "B", judgment_id=j[1], corrected_critique="b1 is right."
        )
        queries.save_label(s, ids[2], "alice", "B", judgment_id=j[2])  # disagrees, no critique
        queries.save_label(s, ids[3], "alice", "both_bad", judgment_id=j[3])
        queries.save_label(s, ids[4], "alice", "tie")
    out = tmp_path / "sft-out.jsonl"

    with pytest.raises(ValueError, match="needs the judge's prompt"):
        export_labels(factory, out, format="trl-sft")  # storage alone knows no judge format
    assert export_labels(factory, out, format="trl-sft", sft_example=sft_example) == 4
    data = load_json_dataset(out, tmp_path)  # both_bad left out
    targets = [example["messages"][-1]["content"] for example in data]
    assert targets == [
        "Be correct.\n\ncritique 0\n\nVerdict: [[A]]",
        "b1 is right.\n\nVerdict: [[B]]",
        "Verdict: [[B]]",
        "Verdict: [[C]]",  # a tie as the judge writes it
    ]
    # The prompt is the one the judge is sent for that pair, word for word.
    pair = PairInput("q0", "a0", "b0", "ref")
    (sent,) = get_protocol("pairwise").conversations(pair)
    assert data[0]["messages"][:-1] == sent
    assert [m["role"] for m in data[0]["messages"]] == ["system", "user", "assistant"]
    for example in data:
        assert is_conversational(example)
        assert "Verdict: [[" in maybe_apply_chat_template(example, tiny_tokenizer)["text"]


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
