"""Helpers for the hostile-input tests (issue 6): JSONL bytes and files, hostile rows imported
through the services, a stored judgment, the Label tab's handlers, and the check that markup is
inert (nothing in it runs or fetches)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from markup import elements
from stand_ins import stand_ins

from services import Services
from storage import queries
from webui.label_handlers import LabelHandlers, LabelScreen

GOOD = {"prompt": "p", "response_a": "a", "response_b": "b"}


def jsonl(*rows: Any) -> bytes:
    """JSONL bytes; a bytes row is written as it is (a broken line)."""
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


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


def label_handlers(services: Services) -> LabelHandlers:
    return LabelHandlers(services, stand_ins(LabelScreen))


def viewer(name: str = "viewer") -> SimpleNamespace:
    """What a gr.Request gives the handlers: no login, one browser session."""
    return SimpleNamespace(username=None, session_hash=f"session-{name}")


def dataset_names(services: Services) -> list[str]:
    return sorted(d.name for d in services.datasets())


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
