"""Import pairs from JSONL, CSV or Parquet: validate every row first, then store all or nothing.

Formats (``format="auto"`` picks one from the columns):

- ``pairs``: prompt, response_a, response_b; optional label (A/B/tie; ``gold_label`` as the
  exporter writes it is accepted too), category, reference, id. ``prompt_turns`` (chat turns,
  JSON text in CSV/Parquet) takes the place of ``prompt`` when present, so exports re-import.
- ``chosen-rejected`` (RewardBench, TRL preference data): prompt, chosen, rejected; optional
  subset (-> category), id. Chosen lands in A or B by a coin seeded from ``seed`` and the row's
  content, so position carries no signal and re-importing places it the same way; the gold
  label records where it went. chosen/rejected may be message lists (their last message is the
  response; without a prompt column the shared earlier messages are the prompt).
- ``llmbar``: input, output_1, output_2, label 1/2 (-> gold A/B).

A prompt that is a list of {role, content} is kept as chat turns, never flattened. Text is
stored byte-exact: nothing is stripped or normalised. "Empty" means no text at all; a
whitespace-only response is a (bad) answer people labelled, and is kept.

Line numbers count as people do: JSONL lines from 1; CSV rows as a spreadsheet shows them
(header = row 1, first data row = row 2); Parquet rows from 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from settings import Settings
from storage.db import writing
from storage.exporter import unescape_csv_cell
from storage.models import Dataset, Pair
from storage.queries import get_or_create_dataset

log = logging.getLogger(__name__)

FORMATS = ("pairs", "chosen-rejected", "llmbar")
DEFAULT_MAX_BYTES = Settings.model_fields["max_import_mb"].default * 1024 * 1024
# Columns a row of each format must have (chosen-rejected may carry its prompt in the messages).
_REQUIRED = {
    "pairs": ("prompt", "response_a", "response_b"),
    "chosen-rejected": ("chosen", "rejected"),
    "llmbar": ("input", "output_1", "output_2"),
}
# How `auto` recognises a format, tried in this order.
_SIGNATURES = (
    ("pairs", {"prompt", "response_a", "response_b"}),
    ("pairs", {"prompt_turns", "response_a", "response_b"}),
    ("chosen-rejected", {"chosen", "rejected"}),
    ("llmbar", {"input", "output_1", "output_2"}),
)
_PAIRS_LABELS = {"a": "A", "b": "B", "tie": "tie"}
_LLMBAR_LABELS = {"1": "A", "2": "B"}
_MAX_REPORTED_ERRORS = 100
# Byte-order marks of encodings that are not UTF-8 (Excel's "Unicode text" is UTF-16 LE).
_FOREIGN_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class ImportReport:
    """What an import did. `rejected` is always 0 here: any bad row fails the whole import."""

    dataset: str
    new: int
    duplicate: int
    rejected: int
    format: str


class ImportFailed(ValueError):
    """The file could not be imported; nothing was stored. str(): "f.jsonl line 7: reason"."""

    def __init__(
        self,
        path: str | Path,
        line: int | None,
        reason: str,
        *,
        unit: str = "line",
        errors: list[tuple[int | None, str]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        self.unit = unit  # "line" (JSONL) or "row" (CSV, Parquet)
        self.errors = errors or [(line, reason)]  # every bad row found (first 100)
        where = f" {unit} {line}" if line is not None else ""
        super().__init__(f"{self.path.name}{where}: {reason}")


class _RowError(Exception):
    """A reason one row is refused; the caller adds the file and the row number."""


@dataclass(frozen=True)
class _Source:
    """Records read from a file, each with the number a person would use to find it."""

    records: list[tuple[int, dict[str, Any]]]
    columns: list[str]
    unit: str
    header_line: int | None  # where a missing column is reported (CSV header row)


def import_file(
    session_factory: sessionmaker[Session],
    path: str | Path,
    *,
    dataset: str | None = None,
    format: str = "auto",
    seed: int = 0,
    max_bytes: int | None = None,
) -> ImportReport:
    """Import `path` into `dataset` (default: file stem): every row, or none and ImportFailed."""
    path = Path(path)
    if format != "auto" and format not in FORMATS:
        known = ", ".join(("auto", *FORMATS))
        raise ImportFailed(path, None, f"unknown format {format!r} (known: {known})")
    name = dataset if dataset is not None else path.stem
    if not name.strip() or len(name) > 200:
        raise ImportFailed(path, None, f"dataset name {name!r} must be 1-200 characters")
    source = _read(path, DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
    if not source.records:
        raise ImportFailed(path, None, "the file has no rows", unit=source.unit)
    chosen_format = _detect_format(path, source) if format == "auto" else format
    rows = _validate(path, source, chosen_format, seed)
    new, duplicate = _store(session_factory, name, path, chosen_format, rows)
    log.info("imported %s into %r: %d new, %d duplicate", path.name, name, new, duplicate)
    return ImportReport(name, new, duplicate, 0, chosen_format)


# --- reading --------------------------------------------------------------------------------


def _read(path: Path, max_bytes: int) -> _Source:
    if not path.is_file():
        raise ImportFailed(path, None, "file not found")
    size = path.stat().st_size
    if size > max_bytes:
        raise ImportFailed(path, None, f"file is {_mb(size)}, over the {_mb(max_bytes)} limit")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        text = _decode(path, path.read_bytes())
        if suffix == ".json" and text.lstrip().startswith("["):  # one array of objects
            return _read_json_array(path, text)
        return _read_jsonl(path, text)
    if suffix in (".csv", ".tsv"):
        text = _decode(path, path.read_bytes())
        return _read_csv(path, text, sep="\t" if suffix == ".tsv" else ",")
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    raise ImportFailed(path, None, f"unknown file type {suffix!r} (use .jsonl, .csv or .parquet)")


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def _decode(path: Path, data: bytes) -> str:
    """Strict UTF-8; NUL bytes refused (PostgreSQL text cannot hold them)."""
    for bom, encoding in _FOREIGN_BOMS:  # longest first: a UTF-32 LE mark starts like UTF-16's
        if data.startswith(bom):
            reason = f"the file is {encoding} text (byte-order mark); save it as UTF-8"
            raise ImportFailed(path, 1, reason)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise ImportFailed(path, line, f"not UTF-8 text (byte 0x{bad})") from None
    nul = text.find("\x00")
    if nul >= 0:
        raise ImportFailed(path, text.count("\n", 0, nul) + 1, "contains a NUL byte")
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the first value


def _read_jsonl(path: Path, text: str) -> _Source:
    records, errors, columns = [], [], {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = _loads(line)
        except ValueError as exc:
            errors.append((number, str(exc)))
            continue
        if not isinstance(value, dict):
            errors.append((number, f"expected a JSON object, got {_kind(value)}"))
            continue
        columns.update(dict.fromkeys(value))
        records.append((number, value))
    _raise_first(path, errors, "line")
    return _Source(records, list(columns), "line", None)


def _read_json_array(path: Path, text: str) -> _Source:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFailed(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise ImportFailed(path, None, _json_limit_reason(exc)) from None
    if not isinstance(values, list):
        raise ImportFailed(path, 1, f"expected a JSON array of objects, got {_kind(values)}")
    errors = [
        (i, "expected a JSON object") for i, v in enumerate(values, 1) if not isinstance(v, dict)
    ]
    _raise_first(path, errors, "item")
    columns = dict.fromkeys(key for value in values for key in value)
    return _Source(list(enumerate(values, start=1)), list(columns), "item", None)


def _read_csv(path: Path, text: str, *, sep: str) -> _Source:
    import io

    import pandas as pd

    try:
        # Everything as text, nothing turned into NaN: "NA" or "" in a cell stay what they are.
        frame = pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False
        )
    except pd.errors.EmptyDataError:
        raise ImportFailed(path, 1, "no header row (the file is empty)", unit="row") from None
    except pd.errors.ParserError as exc:
        line = _csv_error_row(str(exc))
        raise ImportFailed(path, line, _csv_parser_reason(str(exc)), unit="row") from None
    records = []
    for index, values in enumerate(frame.to_dict("records")):
        cells = {
            str(k): unescape_csv_cell(v) if isinstance(v, str) else v for k, v in values.items()
        }
        records.append((index + 2, cells))  # header is row 1
    return _Source(records, [str(c) for c in frame.columns], "row", 1)


def _csv_error_row(message: str) -> int | None:
    """The spreadsheet row pandas' message points at (None when it names none)."""
    unclosed = re.search(r"EOF inside string starting at row (\d+)", message)
    if unclosed:  # pandas counts records from 0 with the header as record 0
        return int(unclosed.group(1)) + 1
    found = re.search(r"line (\d+)", message)
    return int(found.group(1)) if found else None


def _csv_parser_reason(message: str) -> str:
    if "EOF inside string" in message:
        return "unclosed quote: the quoted cell starting in this row never ends"
    found = re.search(r"Expected (\d+) fields in line \d+, saw (\d+)", message)
    if found:
        return f"malformed row: expected {found.group(1)} fields, found {found.group(2)}"
    return f"malformed CSV ({message.strip().splitlines()[-1]})"


def _read_parquet(path: Path) -> _Source:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise ImportFailed(path, None, f"not a readable Parquet file ({exc})", unit="row") from None
    records = []
    for index, values in enumerate(frame.to_dict("records")):
        records.append((index + 1, {str(k): _plain(v, pd.isna) for k, v in values.items()}))
    return _Source(records, [str(c) for c in frame.columns], "row", None)


def _plain(value: Any, is_missing: Callable[[Any], bool]) -> Any:
    """numpy arrays and scalars from pandas as plain Python values; NaN / NA as None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v, is_missing) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v, is_missing) for k, v in value.items()}
    return None if is_missing(value) else value


def _raise_first(path: Path, errors: list[tuple[int | None, str]], unit: str) -> None:
    if errors:
        line, reason = errors[0]
        raise ImportFailed(path, line, reason, unit=unit, errors=errors[:_MAX_REPORTED_ERRORS])


def _loads(text: str) -> Any:
    """One JSON value; ValueError with a reason a person can act on, whatever the input."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # 5000-digit numbers, 100k nested brackets
        raise ValueError(_json_limit_reason(exc)) from None


def _json_limit_reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "not accepted: JSON nested too deeply"
    return f"not accepted: {str(exc).split(';')[0]}"


def _kind(value: Any) -> str:
    """How a JSON value is named in an error message."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    names = {list: "a list", str: "a string", dict: "an object", bool: "true/false"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


# --- format detection and validation ----------------------------------------------------------


def _detect_format(path: Path, source: _Source) -> str:
    columns = set(source.columns)
    for fmt, signature in _SIGNATURES:
        if signature <= columns:
            return fmt
    shown = ", ".join(sorted(columns)) or "none"
    expected = "; ".join(f"{fmt}: {', '.join(sorted(sig))}" for fmt, sig in _SIGNATURES)
    reason = f"cannot tell the format from the columns ({shown}); expected {expected}"
    raise ImportFailed(path, source.header_line, reason, unit=source.unit)


def _validate(path: Path, source: _Source, fmt: str, seed: int) -> list[dict[str, Any]]:
    if source.unit == "row":  # a table: a missing column is reported once, at the header
        missing = [c for c in _required_columns(fmt, source.columns) if c not in source.columns]
        if missing:
            reason = f"missing column {', '.join(missing)} (format {fmt})"
            raise ImportFailed(path, source.header_line, reason, unit=source.unit)
    rows, errors = [], []
    convert = {"pairs": _pairs_row, "chosen-rejected": _chosen_rejected_row, "llmbar": _llmbar_row}
    for number, record in source.records:
        try:
            row = convert[fmt](record, seed)
        except _RowError as exc:
            errors.append((number, str(exc)))
            continue
        row["meta"] = _meta(record, fmt, number, source.unit)
        rows.append(row)
    _raise_first(path, errors, source.unit)
    return rows


def _required_columns(fmt: str, columns: list[str]) -> tuple[str, ...]:
    if fmt == "pairs" and "prompt_turns" in columns:  # exports: turns stand in for the prompt
        return ("response_a", "response_b")
    return _REQUIRED[fmt]


def _pairs_row(record: dict[str, Any], seed: int) -> dict[str, Any]:
    prompt, turns = _prompt(record, "prompt")
    label = record.get("label")
    if _is_blank(label) and "gold_label" in record:
        label = record["gold_label"]
    return _row(
        record,
        prompt,
        turns,
        _text(record, "response_a"),
        _text(record, "response_b"),
        gold=_label(label, _PAIRS_LABELS, "A, B or tie"),
        category=_optional_text(record, "category"),
    )


def _chosen_rejected_row(record: dict[str, Any], seed: int) -> dict[str, Any]:
    chosen, chosen_context = _response_or_messages(record, "chosen")
    rejected, rejected_context = _response_or_messages(record, "rejected")
    if not (_is_blank(record.get("prompt")) and _is_blank(record.get("prompt_turns"))):
        prompt, turns = _prompt(record, "prompt")
    elif chosen_context and chosen_context == rejected_context:
        prompt, turns = "", _turns(chosen_context, "chosen")
    else:
        raise _RowError("prompt is missing")
    chosen_first = chosen_goes_first(seed, turns or prompt, chosen, rejected)
    a, b = (chosen, rejected) if chosen_first else (rejected, chosen)
    category = _optional_text(record, "category") or _optional_text(record, "subset")
    return _row(record, prompt, turns, a, b, gold="A" if chosen_first else "B", category=category)


def _llmbar_row(record: dict[str, Any], seed: int) -> dict[str, Any]:
    prompt, turns = _prompt(record, "input")
    return _row(
        record,
        prompt,
        turns,
        _text(record, "output_1"),
        _text(record, "output_2"),
        gold=_label(record.get("label"), _LLMBAR_LABELS, "1 or 2"),
        category=_optional_text(record, "category"),
    )


def _row(
    record: dict[str, Any],
    prompt: str,
    turns: list[dict[str, str]] | None,
    response_a: str,
    response_b: str,
    *,
    gold: str | None,
    category: str | None,
) -> dict[str, Any]:
    raw_id = record.get("id")
    external_id = None if _is_blank(raw_id) else _checked_text("id", str(raw_id))[:200]
    return {
        "external_id": external_id,
        "prompt": prompt,
        "prompt_turns": turns,
        "response_a": response_a,
        "response_b": response_b,
        "reference": _optional_text(record, "reference"),
        "category": category[:200] if category else None,
        "gold_label": gold,
        "content_hash": content_hash(turns or prompt, response_a, response_b),
    }


def _prompt(record: dict[str, Any], key: str) -> tuple[str, list[dict[str, str]] | None]:
    """(text, None) for a text prompt, ("", turns) for chat turns."""
    raw_turns = record.get("prompt_turns")
    if isinstance(raw_turns, str) and raw_turns:  # CSV / Parquet exports carry turns as JSON
        try:
            raw_turns = _loads(raw_turns)
        except ValueError as exc:
            raise _RowError(f"prompt_turns is {exc}") from None
    if not _is_blank(raw_turns):
        return "", _turns(raw_turns, "prompt_turns")
    value = record.get(key)
    if isinstance(value, list):
        return "", _turns(value, key)
    return _text(record, key), None


def _turns(value: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _RowError(f"{key} must be a non-empty list of {{role, content}} messages")
    turns = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not turn["role"]:
            raise _RowError(f"{key} message {i} needs a role")
        _checked_text(f"{key} message {i} content", turn.get("content"))
        _checked_text(f"{key} message {i} role", turn["role"])
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["content"] for t in turns):
        raise _RowError(f"{key} is empty")
    return turns


def _response_or_messages(record: dict[str, Any], key: str) -> tuple[str, list[Any]]:
    """A chosen/rejected value: text, or messages whose last one is the assistant's answer."""
    value = record.get(key)
    if not isinstance(value, list):
        return _text(record, key), []
    if not value or not isinstance(value[-1], dict) or value[-1].get("role") != "assistant":
        raise _RowError(f"{key} as messages must end with an assistant message")
    content = value[-1].get("content")
    if content == "" or content is None:
        raise _RowError(f"{key} is empty")
    return _checked_text(key, content), value[:-1]


def _text(record: dict[str, Any], key: str) -> str:
    if key not in record:
        raise _RowError(f"{key} is missing")
    value = record[key]
    if _is_blank(value):
        raise _RowError(f"{key} is empty")
    return _checked_text(key, value)


def _checked_text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _RowError(f"{key} must be text, got {_kind(value)}")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; refuse it on every database
        raise _RowError(f"{key} contains a NUL character")
    surrogate = _LONE_SURROGATE.search(value)
    if surrogate:  # JSON allows "\ud800"; no database or page can hold half a character
        code = f"U+{ord(surrogate.group()):04X}"
        raise _RowError(f"{key} contains a lone surrogate ({code}), which is not valid Unicode")
    return value


def _optional_text(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if _is_blank(value):
        return None
    return _checked_text(key, value)


def _label(value: Any, allowed: dict[str, str], spelled: str) -> str | None:
    if _is_blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 from a numeric column with gaps
    key = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if key not in allowed:
        raise _RowError(f"label must be {spelled}, got {value!r}")
    return allowed[key]


def _is_blank(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _meta(record: dict[str, Any], fmt: str, number: int, unit: str) -> dict[str, Any]:
    """Where the row came from, plus any extra columns that are plain JSON values."""
    known = {
        "pairs": {"prompt", "prompt_turns", "response_a", "response_b", "label", "gold_label"},
        "chosen-rejected": {"prompt", "prompt_turns", "chosen", "rejected", "subset"},
        "llmbar": {"input", "output_1", "output_2", "label"},
    }[fmt] | {"id", "category", "reference"}
    extra = {
        k: v
        for k, v in record.items()
        if k not in known and _is_json_scalar(k) and _is_json_scalar(v)
    }
    meta: dict[str, Any] = {"source_format": fmt, f"source_{unit}": number}
    if extra:
        meta["extra"] = extra
    return meta


def _is_json_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value and not _LONE_SURROGATE.search(value)
    return value is None or isinstance(value, (int, bool))


# --- hashing and the seeded coin --------------------------------------------------------------


def _canonical(prompt: str | list[dict[str, str]], first: str, second: str) -> bytes:
    body = {"prompt": prompt, "responses": [first, second]}
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def content_hash(prompt: str | list[dict[str, str]], response_a: str, response_b: str) -> str:
    """sha256 over a canonical JSON of the prompt (text or turns) and both responses, in order."""
    return hashlib.sha256(_canonical(prompt, response_a, response_b)).hexdigest()


def chosen_goes_first(
    seed: int, prompt: str | list[dict[str, str]], chosen: str, rejected: str
) -> bool:
    """The per-row coin: True puts chosen in A. Same seed and content, same side, every time."""
    digest = hashlib.sha256(f"{seed}\n".encode() + _canonical(prompt, chosen, rejected)).digest()
    return digest[0] < 128


# --- storing --------------------------------------------------------------------------------


def _store(
    session_factory: sessionmaker[Session],
    name: str,
    path: Path,
    fmt: str,
    rows: list[dict[str, Any]],
) -> tuple[int, int]:
    """One transaction: find or create the dataset, skip hashes it holds, insert the rest."""
    with writing(session_factory) as session:
        dataset_id = get_or_create_dataset(session, name, source=str(path), format=fmt)
        stored = select(Pair.content_hash).where(Pair.dataset_id == dataset_id)
        seen = set(session.scalars(stored))
        fresh = []
        for row in rows:
            if row["content_hash"] not in seen:
                seen.add(row["content_hash"])
                fresh.append({**row, "dataset_id": dataset_id})
        if fresh:
            # Core executemany: the ORM bulk path costs about 2.5x the time for no gain here.
            session.connection().execute(insert(Pair.__table__), fresh)
            count = Dataset.pair_count + len(fresh)
            session.execute(
                update(Dataset).where(Dataset.id == dataset_id).values(pair_count=count)
            )
    return len(fresh), len(rows) - len(fresh)
