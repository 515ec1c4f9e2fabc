"""A pair's history as HTML: every judgment (by version and protocol, reasoning on demand) and
every label event, so a person can see why a judge decided as it did and who changed what."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from webui.render import safe_markdown, safe_text


def render(history: Mapping[str, Any]) -> str:
    """Judgments first (newest first, each expandable to its reasoning), then label events."""
    judgments = list(reversed(history.get("judgments") or []))
    events = list(reversed(history.get("events") or []))
    parts = [f"<h4>Judgments ({len(judgments)})</h4>"]
    parts += [_judgment(j) for j in judgments] or ["<p class='grm-note'>Never judged.</p>"]
    parts.append(f"<h4>Label events ({len(events)})</h4>")
    parts.append(_events(events) if events else "<p class='grm-note'>No labels yet.</p>")
    return f'<div class="grm-history">{"".join(parts)}</div>'


def _judgment(row: Mapping[str, Any]) -> str:
    order = "swapped" if row.get("swapped") else "original"
    p = row.get("verdict_probability")
    summary = " · ".join(
        [
            _when(row.get("created_at")),
            str(row.get("judge_version_name") or row.get("judge_version_id") or "?"),
            f"{row.get('protocol')} ({row.get('prompt_version')})",
            f"sample {row.get('sample_index', 0) + 1}, {order}",
            f"verdict {row.get('verdict')}" + (f" p={p:.2f}" if p is not None else ""),
            str(row.get("status")),
        ]
    )
    body = (
        f"<b>Principles</b>{safe_markdown(row.get('principles'))}"
        f"<b>Critique</b>{safe_markdown(row.get('critique'))}"
    )
    if row.get("error"):
        body += f"<p class='grm-error'>{safe_text(row['error'])}</p>"
    return f"<details><summary>{safe_text(summary)}</summary>{body}</details>"


def _events(events: list[Mapping[str, Any]]) -> str:
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{safe_text(str(v))}</td>"
            for v in (
                _when(e.get("created_at")),
                e.get("annotator"),
                e.get("action"),
                e.get("verdict") or "—",
                e.get("previous_verdict") or "—",
                e.get("note") or "",
            )
        )
        + "</tr>"
        for e in events
    )
    head = "".join(f"<th>{h}</th>" for h in ("when", "who", "action", "verdict", "was", "note"))
    return f"<table class='grm-table'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value or "")
