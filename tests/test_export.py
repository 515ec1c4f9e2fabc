"""Export: labels with their pair and judgment, filters, text kept byte-exact through a round
trip in every format, and CSV cells that cannot run as formulas."""

from __future__ import annotations

import csv
import json
from typing import Any

import pytest
from pair_files import judgment, pair_fields, pairs_rows, stored_pairs, write_jsonl
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.data import sft_example
from storage import queries
from storage.exporter import (
    TABLE_COLUMNS,
    escape_csv_cell,
    export_labels,
    unescape_csv_cell,
)
from storage.importer import import_file
from storage.models import Dataset, Judgment, Pair

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
