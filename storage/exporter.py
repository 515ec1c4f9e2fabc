"""Export people's labels with their pairs and the judgments they answered, for analysis or TRL.

Formats:

- ``jsonl`` / ``csv`` / ``parquet``: one row per current label (``skip`` is not a decision and is
  left out) with the pair, the label and the judgment it answered; see ``TABLE_COLUMNS``. The
  pair's source label is ``gold_label``, the person's is ``human_label``. Chat turns are a list
  in JSONL and JSON text in CSV/Parquet (``prompt_turns``). These files import again with
  ``format="pairs"``, text byte-exact.
- ``trl-preference`` (JSONL): ``prompt`` / ``chosen`` / ``rejected`` with chosen = the person's
  choice; ties and both-bad labels have no chosen side and are left out. When any exported
  pair has chat turns every row is conversational (prompt = messages, chosen/rejected = one
  assistant message each), because one dataset column cannot mix text and messages.
- ``trl-sft`` (JSONL): one judge-training example per A/B/tie label, ``messages`` = the judge's
  own prompt and the answer it should have given (``taught_reasoning`` and the verdict), built by
  the caller's ``sft_example`` (storage knows neither format). both_bad is left out: a judge
  answers A, B or tie.

CSV cells that a spreadsheet would run as a formula (starting with = + - @ tab CR) get a
leading apostrophe; ``unescape_csv_cell`` (used by the importer) undoes it exactly.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import reading
from storage.judgments import judge_verdict
from storage.models import Dataset, Judgment, JudgmentRun, Label, Pair
from vocabulary import EXPORTED_VERDICTS

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("jsonl", "csv", "parquet", "trl-preference", "trl-sft")
TABLE_COLUMNS = (
    "dataset",
    "pair_id",
    "id",
    "prompt",
    "prompt_turns",
    "response_a",
    "response_b",
    "reference",
    "category",
    "gold_label",
    "annotator",
    "human_label",
    "agreed_with_judge",
    "corrected_critique",
    "note",
    "labeled_at",
    "judgment_id",
    "judge_verdict",
    "judge_principles",
    "judge_critique",
)
CSV_FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# An SFT example for one label, in the judge's own words: the caller (services) builds it with
# the judge's prompt and verdict format, which storage does not know. None leaves the label out.
SftExample = Callable[["LabeledPair"], "list[dict[str, str]] | None"]


@dataclass(frozen=True)
class LabeledPair:
    """One current label with its pair and the judgment it answered, as plain values."""

    dataset: str
    pair_id: int
    external_id: str | None
    prompt: str
    prompt_turns: list[dict[str, str]] | None
    response_a: str
    response_b: str
    reference: str | None
    category: str | None
    gold_label: str | None
    annotator: str
    verdict: str
    agreed_with_judge: bool | None
    corrected_critique: str | None
    note: str | None
    labeled_at: datetime
    judgment_id: int | None
    judge_verdict: str | None  # the decision of the answered judgment's run (its own without one)
    judge_principles: str | None
    judge_critique: str | None
    sample_verdict: str | None = None  # the answered judgment's own: what its critique argues


def export_labels(
    session_factory: sessionmaker[Session],
    out_path: str | Path,
    *,
    format: str,
    dataset: str | None = None,
    annotator: str | None = None,
    sft_example: SftExample | None = None,
) -> int:
    """Write current labels (optionally of one dataset / annotator) to `out_path`; rows written.
    `trl-sft` needs `sft_example`, which writes one label as the judge's prompt and answer."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r} (known: {', '.join(EXPORT_FORMATS)})")
    if format == "trl-sft" and sft_example is None:
        raise ValueError("trl-sft export needs the judge's prompt (export through the services)")
    with reading(session_factory) as session:
        labeled = labeled_pairs(session, dataset=dataset, annotator=annotator)
    if format == "trl-sft":
        examples = (sft_example(item) for item in labeled)  # type: ignore[misc]
        records, write = [{"messages": m} for m in examples if m], _write_jsonl
    else:
        build, write = _FORMATS[format]
        records = build(labeled)
    _write_atomically(Path(out_path), lambda tmp: write(records, tmp))
    log.info("exported %d %s rows to %s", len(records), format, out_path)
    return len(records)


def labeled_pairs(
    session: Session, *, dataset: str | None = None, annotator: str | None = None
) -> list[LabeledPair]:
    """Current labels that are decisions (not skips), in pair order, with pair and judgment;
    the judge's verdict is the answered judgment's run's, as in storage.records."""
    stmt = (
        select(Label, Pair, Dataset.name, Judgment, judge_verdict())
        .join(Pair, Pair.id == Label.pair_id)
        .join(Dataset, Dataset.id == Pair.dataset_id)
        .outerjoin(Judgment, Judgment.id == Label.judgment_id)
        .outerjoin(JudgmentRun, JudgmentRun.id == Judgment.run_id)
        .where(Label.verdict.in_(EXPORTED_VERDICTS))
        .order_by(Pair.dataset_id, Pair.id, Label.annotator)
    )
    if dataset is not None:
        if session.scalar(select(Dataset.id).where(Dataset.name == dataset)) is None:
            raise ValueError(f"no dataset named {dataset!r}")
        stmt = stmt.where(Dataset.name == dataset)
    if annotator is not None:
        stmt = stmt.where(Label.annotator == annotator)
    return [_labeled_pair(*row) for row in session.execute(stmt)]


def _labeled_pair(
    label: Label, pair: Pair, dataset: str, judgment: Judgment | None, decided: str | None
) -> LabeledPair:
    return LabeledPair(
        dataset=dataset,
        pair_id=pair.id,
        external_id=pair.external_id,
        prompt=pair.prompt,
        prompt_turns=pair.prompt_turns or None,
        response_a=pair.response_a,
        response_b=pair.response_b,
        reference=pair.reference,
        category=pair.category,
        gold_label=pair.gold_label,
        annotator=label.annotator,
        verdict=label.verdict,
        agreed_with_judge=label.agreed_with_judge,
        corrected_critique=label.corrected_critique,
        note=label.note,
        labeled_at=label.updated_at,
        judgment_id=label.judgment_id,
        judge_verdict=decided,
        judge_principles=judgment.principles if judgment else None,
        judge_critique=judgment.critique if judgment else None,
        sample_verdict=judgment.verdict if judgment else None,
    )


# --- rows for each format -------------------------------------------------------------------


def _table_rows(labeled: list[LabeledPair]) -> list[dict[str, Any]]:
    return [
        {
            "dataset": item.dataset,
            "pair_id": item.pair_id,
            "id": item.external_id,
            "prompt": item.prompt,
            "prompt_turns": item.prompt_turns,
            "response_a": item.response_a,
            "response_b": item.response_b,
            "reference": item.reference,
            "category": item.category,
            "gold_label": item.gold_label,
            "annotator": item.annotator,
            "human_label": item.verdict,
            "agreed_with_judge": item.agreed_with_judge,
            "corrected_critique": item.corrected_critique,
            "note": item.note,
            "labeled_at": item.labeled_at.isoformat() if item.labeled_at else None,
            "judgment_id": item.judgment_id,
            "judge_verdict": item.judge_verdict,
            "judge_principles": item.judge_principles,
            "judge_critique": item.judge_critique,
        }
        for item in labeled
    ]


def _preference_rows(labeled: list[LabeledPair]) -> list[dict[str, Any]]:
    decided = [item for item in labeled if item.verdict in ("A", "B")]
    conversational = any(item.prompt_turns for item in decided)
    rows = []
    for item in decided:
        chosen, rejected = (item.response_a, item.response_b)
        if item.verdict == "B":
            chosen, rejected = rejected, chosen
        if conversational:
            prompt: Any = item.prompt_turns or [{"role": "user", "content": item.prompt}]
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": item.prompt, "chosen": chosen, "rejected": rejected})
    return rows


def taught_reasoning(item: LabeledPair) -> str | None:
    """The reasoning an SFT example should teach for this label: the person's own critique,
    else the judge's reasoning when the judgment the person answered reached the person's
    verdict (a critique that argued for the other answer must not be taught), else none."""
    if item.corrected_critique and item.corrected_critique.strip():
        return item.corrected_critique
    if item.sample_verdict == item.verdict:
        reasoning = [text for text in (item.judge_principles, item.judge_critique) if text]
        return "\n\n".join(reasoning) or None
    return None


# --- writers --------------------------------------------------------------------------------


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd

    frame = pd.DataFrame(
        [{**row, "prompt_turns": _turns_json(row["prompt_turns"])} for row in rows],
        columns=list(TABLE_COLUMNS),
        dtype=object,
    )
    # Nullable integers, so an absent judgment is empty rather than NaN turning ids into 3.0.
    for column in ("pair_id", "judgment_id"):
        frame[column] = frame[column].astype("Int64")
    return frame


def _turns_json(turns: list[dict[str, str]] | None) -> str | None:
    return json.dumps(turns, ensure_ascii=False) if turns else None


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    frame = _frame(rows)
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(
                lambda v: escape_csv_cell(v) if isinstance(v, str) else v
            )
    # Quote every cell: a lone CR inside text is otherwise written bare and splits the row.
    frame.to_csv(path, index=False, quoting=csv.QUOTE_ALL, lineterminator="\n", encoding="utf-8")


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    _frame(rows).to_parquet(path, index=False)


def escape_csv_cell(value: str) -> str:
    """Prefix an apostrophe to a cell a spreadsheet would run as a formula (CSV injection)."""
    return "'" + value if _needs_formula_escape(value) else value


def unescape_csv_cell(value: str) -> str:
    """Exact inverse of escape_csv_cell: "'=x" -> "=x"; "'Tis" stays as it is."""
    if value.startswith("'") and _needs_formula_escape(value[1:]):
        return value[1:]
    return value


def _needs_formula_escape(value: str) -> bool:
    # Apostrophes already in front are escaped again, so escaping can always be undone.
    return value.lstrip("'").startswith(CSV_FORMULA_TRIGGERS)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write next to `path` and rename: a failed export never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_Build = Callable[[list[LabeledPair]], list[dict[str, Any]]]
_Write = Callable[[list[dict[str, Any]], Path], None]
_FORMATS: dict[str, tuple[_Build, _Write]] = {
    "jsonl": (_table_rows, _write_jsonl),
    "csv": (_table_rows, _write_csv),
    "parquet": (_table_rows, _write_parquet),
    "trl-preference": (_preference_rows, _write_jsonl),
}
