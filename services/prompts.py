"""The prompts room: a dataset's guidelines, judge prompts as stored versions, and the protocol a
stored pair is judged with.

Guidelines are a dataset's markdown text, stored as written (HTML and braces included: the UI
escapes what it shows, and the judge's prompt inserts them as a value, never as a template), up
to MAX_GUIDELINES_CHARS; the judge reads them in a "[Team guidelines]" block before its
instructions and starts its principles with their first rule (judges.prompts, judges.protocols).

Prompt versions: the built-in templates (judges.prompts.PROMPTS) are stored read-only on first
use; a new version is a copy of a built-in or stored one with edits, checked by
judges.prompts.template_problems and refused with the reasons, never stored half-way and never
edited in place. A version travels as a small JSON file (EXPORT_FORMAT). Comparing two judge
setups on the same labels is services.comparing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from judges.judge import JudgeOptions
from judges.prompts import (
    BUDGETS,
    PROMPTS,
    VERSION_RE,
    PromptTemplate,
    template_fields,
    template_from_fields,
    template_problems,
)
from judges.protocols import Protocol, get_protocol
from storage import prompt_versions, queries
from storage.db import reading, writing

MAX_GUIDELINES_CHARS = 20_000  # stored; the judge reads up to the template's guidelines budget
MAX_NOTE_CHARS = 2_000
MAX_PROMPT_FILE_BYTES = 64_000  # an exported version is a few KB; the texts' own limits apply
EXPORT_FORMAT = "grm-prompt-version/1"
EDITABLE = ("system", "user", "answer_prefix")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class PromptRefused(ValueError):
    """Guidelines or a prompt version that were not stored, with the reasons; nothing changed."""


def guidelines_problem(text: str) -> str | None:
    """Why `text` cannot be a dataset's guidelines, or None."""
    if len(text) > MAX_GUIDELINES_CHARS:
        return f"guidelines have {len(text):,} characters; at most {MAX_GUIDELINES_CHARS:,}"
    if _CONTROL_RE.search(text):
        return "guidelines hold control characters (only newlines and tabs are allowed)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "guidelines are not valid Unicode text"
    return None


def resolve_template(s: Session, version: str) -> PromptTemplate:
    """A version's template: the built-in one of that name, else the stored one."""
    if version in PROMPTS:
        return PROMPTS[version]
    row = prompt_versions.get_prompt_version(s, version)
    if row is None:
        raise queries.NotFoundError(f"prompt version {version!r} not found (grm prompts list)")
    return template_from_fields(row)


def judge_protocol(s: Session, options: JudgeOptions, dataset_id: int | None) -> Protocol:
    """The protocol a pair of `dataset_id` is judged with: the options' prompt version (built
    in or stored) and the dataset's guidelines."""
    template = resolve_template(s, options.prompt_version) if options.prompt_version else None
    guidelines = ""
    if dataset_id is not None:
        guidelines = prompt_versions.dataset_guidelines(s, dataset_id) or ""
    return get_protocol(options.protocol, template, guidelines)


def dataset_key(s: Session, dataset: str | int) -> int:
    """A dataset's id from its id or its name (NotFoundError naming the known ones)."""
    if isinstance(dataset, int):
        prompt_versions.dataset_guidelines(s, dataset)  # NotFoundError for an unknown id
        return dataset
    return queries.dataset_id(s, dataset)


class Prompts:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # --- guidelines ----------------------------------------------------------------------------

    def guidelines(self, dataset: str | int) -> str:
        """The dataset's guidelines as stored ("" when none)."""
        with reading(self.sessions) as s:
            return prompt_versions.dataset_guidelines(s, dataset_key(s, dataset)) or ""

    def set_guidelines(self, dataset: str | int, text: str | None) -> dict[str, Any]:
        """Replace the dataset's guidelines (None or blank clears them); PromptRefused with
        the reason for text that cannot be stored."""
        text = text if text and text.strip() else None
        problem = guidelines_problem(text) if text else None
        if problem:
            raise PromptRefused(problem)
        with writing(self.sessions) as s:
            dataset_id = dataset_key(s, dataset)
            prompt_versions.set_dataset_guidelines(s, dataset_id, text)
        return {"dataset_id": dataset_id, "characters": len(text or "")}

    # --- prompt versions -----------------------------------------------------------------------

    def store_built_ins(self) -> None:
        """Store the built-in templates read-only where they are not stored yet."""
        rows = [
            {**template_fields(t), "read_only": True, "note": "built in"} for t in PROMPTS.values()
        ]
        with reading(self.sessions) as s:
            stored = {row["version"] for row in prompt_versions.list_prompt_versions(s)}
        if not set(PROMPTS) <= stored:
            with writing(self.sessions) as s:
                prompt_versions.add_missing_prompt_versions(s, rows)

    def versions(self, protocol: str | None = None) -> list[dict[str, Any]]:
        """Every version (of one protocol), built-ins first, oldest first."""
        self.store_built_ins()
        with reading(self.sessions) as s:
            return prompt_versions.list_prompt_versions(s, protocol)

    def version(self, version: str) -> dict[str, Any]:
        """One version's stored row; NotFoundError when there is none."""
        self.store_built_ins()
        with reading(self.sessions) as s:
            row = prompt_versions.get_prompt_version(s, version)
        if row is None:
            raise queries.NotFoundError(f"prompt version {version!r} not found (grm prompts list)")
        return row

    def new_version(
        self,
        version: str,
        parent: str,
        *,
        budgets: Mapping[str, int] | None = None,
        note: str | None = None,
        **texts: str | None,
    ) -> dict[str, Any]:
        """A new version: `parent` (built in or stored) copied with the given edits (system,
        user, answer_prefix, budgets); PromptRefused with every reason it cannot judge."""
        unknown = sorted(set(texts) - set(EDITABLE)) + sorted(set(budgets or {}) - set(BUDGETS))
        if unknown:
            known = ", ".join((*EDITABLE, *BUDGETS))
            raise PromptRefused(f"cannot edit {unknown}; editable: {known}")
        self.store_built_ins()
        with reading(self.sessions) as s:
            original = resolve_template(s, parent)
        edits = {key: value for key, value in texts.items() if value is not None}
        template = replace(original, version=version, **edits, **dict(budgets or {}))
        if replace(template, version=parent) == original:
            raise PromptRefused(f"{version!r} would be {parent!r} unchanged: edit something")
        return self._store(template, parent_version=parent, note=note)

    def _store(
        self, template: PromptTemplate, parent_version: str | None, note: str | None
    ) -> dict[str, Any]:
        problems = template_problems(template)
        if template.version in PROMPTS:
            problems.insert(0, f"{template.version!r} is a built-in version's name")
        if note and len(note) > MAX_NOTE_CHARS:
            problems.append(f"the note has {len(note):,} characters; at most {MAX_NOTE_CHARS:,}")
        if problems:
            raise PromptRefused("; ".join(problems))
        row = {**template_fields(template), "parent_version": parent_version, "note": note}
        try:
            with writing(self.sessions) as s:
                prompt_versions.add_prompt_version(s, {**row, "read_only": False})
        except prompt_versions.VersionExists as exc:
            raise PromptRefused(f"{exc}; versions are never replaced: choose a new name") from None
        return self.version(template.version)

    def export_json(self, version: str) -> str:
        """The version as the JSON text of a small file (EXPORT_FORMAT)."""
        row = self.version(version)
        record = {"format": EXPORT_FORMAT, **template_fields(template_from_fields(row))}
        record.update(parent_version=row["parent_version"], note=row["note"])
        return json.dumps(record, indent=2, ensure_ascii=False) + "\n"

    def export_version(self, version: str, path: Path) -> Path:
        path.write_text(self.export_json(version), encoding="utf-8")
        return path

    def import_version(self, path: Path) -> dict[str, Any]:
        """Store the version a file exported; PromptRefused with the reason otherwise."""
        if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
            raise PromptRefused(f"{path.name} is over {MAX_PROMPT_FILE_BYTES:,} bytes")
        try:
            return self.import_json(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise PromptRefused(f"{path.name} is not UTF-8 text") from None

    def import_json(self, text: str) -> dict[str, Any]:
        """`import_version` for the file's text: {"version", "stored": False when that very
        version (same texts and budgets) was already here}."""
        template, parent, note = _read_export(text)
        self.store_built_ins()
        with reading(self.sessions) as s:
            existing = prompt_versions.get_prompt_version(s, template.version)
        if existing is not None:
            if template_from_fields(existing) == template:
                return {"version": template.version, "stored": False}
            raise PromptRefused(
                f"{template.version!r} is already here with other text; versions are never "
                "replaced: give the file's version a new name"
            )
        self._store(template, parent_version=parent, note=note)
        return {"version": template.version, "stored": True}


def _read_export(text: str) -> tuple[PromptTemplate, str | None, str | None]:
    """The template, parent version and note of an exported file's text."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PROMPT_FILE_BYTES:
        raise PromptRefused(f"a prompt file over {MAX_PROMPT_FILE_BYTES:,} bytes")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptRefused(f"not JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise PromptRefused(f'not an exported prompt version (no "format": "{EXPORT_FORMAT}")')
    parent, note = record.get("parent_version"), record.get("note")
    if parent is not None and not (isinstance(parent, str) and VERSION_RE.fullmatch(parent)):
        raise PromptRefused("parent_version must be a version name or null")
    if note is not None and not isinstance(note, str):
        raise PromptRefused("note must be text or null")
    try:
        return template_from_fields(record), parent, note
    except (TypeError, ValueError) as exc:
        raise PromptRefused(str(exc)) from None
