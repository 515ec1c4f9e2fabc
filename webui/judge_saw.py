"""What the judge was shown: which texts its prompt cut, and the exact prompt it received.

The Label tab shows this beside the responses after a judgment: a text longer than the prompt's
budget reaches the judge as its head and tail with "[... N characters omitted ...]" between, and
a person weighing the judge's verdict should know that. The cuts come from the function that
made them (`judges.prompts.cut_middle`, via `Services.prompt_cuts`); the prompt is the one
stored with the judgment, shown exactly.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from webui.render import exact_html, safe_text

FIELD_NAMES = {
    "prompt": "the question",
    "reference": "the reference answer",
    "response_a": "Response A",
    "response_b": "Response B",
}
ORDER_TITLES = {
    False: "as shown (Response A first)",
    True: "order swapped (the pair's Response B was shown to the judge as Response A)",
}
SAW_ALL = "The judge saw the whole question and both responses."
CANNOT_TELL = "Whether the judge's prompt cut this pair cannot be told here (unknown prompt)."
PREFILL_LABEL = "assistant (the start of the judge's answer, written for it)"
NOT_STORED = "This judgment was stored before the judge's prompts were kept."


def cut_sentence(cut: Any) -> str:
    """One cut in words: "the judge saw the first 800 and last 400 characters of Response B"."""
    name = FIELD_NAMES.get(cut.field, cut.field)
    if cut.kept_tail:
        seen = f"the first {cut.kept_head:,} and last {cut.kept_tail:,} characters"
    else:
        seen = f"the first {cut.kept_head:,} characters"
    return (
        f"The judge saw {seen} of {name} ({cut.omitted:,} of its {cut.length:,} characters "
        "were left out)."
    )


def judge_saw_html(run: Sequence[Mapping[str, Any]], cuts: Sequence[Any] | None) -> str:
    """The notice and the exact prompts for a pair's latest judging run ("" when none)."""
    if not run:
        return ""
    if cuts is None:
        lines = [CANNOT_TELL]
    else:
        lines = [cut_sentence(cut) for cut in cuts] or [SAW_ALL]
    state = "cut" if cuts else "whole" if cuts is not None else "unknown"
    notes = "".join(f'<div class="grm-cut-note">{safe_text(line)}</div>' for line in lines)
    return f'<div class="grm-judge-saw" data-state="{state}">{notes}{_prompts_html(run)}</div>'


def _prompts_html(run: Sequence[Mapping[str, Any]]) -> str:
    """Each distinct prompt of the run (k samples of one order send the same one), exactly."""
    shown: dict[str, tuple[bool, list[Mapping[str, str]]]] = {}
    for row in run:
        messages = row.get("prompt_messages")
        if messages:
            shown.setdefault(json.dumps(messages), (bool(row.get("swapped")), messages))
    if not shown:
        return f'<div class="grm-note">{safe_text(NOT_STORED)}</div>'
    blocks = "".join(_prompt_block(swapped, messages) for swapped, messages in shown.values())
    return (
        '<details class="grm-judge-prompt"><summary>The exact prompt the judge received'
        f"</summary>{blocks}</details>"
    )


def _prompt_block(swapped: bool, messages: Sequence[Mapping[str, str]]) -> str:
    calls = _calls(messages)
    body = "".join(
        (f'<div class="grm-prompt-call">Call {number}</div>' if len(calls) > 1 else "")
        + "".join(_message_html(m) for m in call)
        for number, call in enumerate(calls, start=1)
    )
    order = "swapped" if swapped else "shown"
    return (
        f'<div class="grm-prompt" data-order="{order}">'
        f'<div class="grm-prompt-order">{safe_text(ORDER_TITLES[swapped])}</div>{body}</div>'
    )


def _calls(messages: Sequence[Mapping[str, str]]) -> list[list[Mapping[str, str]]]:
    """Stored messages split into judge calls: each call starts with its system message."""
    calls: list[list[Mapping[str, str]]] = []
    for message in messages:
        if not calls or (message.get("role") == "system" and calls[-1]):
            calls.append([])
        calls[-1].append(message)
    return calls


def _message_html(message: Mapping[str, str]) -> str:
    role = str(message.get("role", ""))
    label = PREFILL_LABEL if role == "assistant" else role
    return (
        f'<div class="grm-prompt-message" data-role="{html.escape(role)}">'
        f'<div class="grm-role">{safe_text(label)}</div>'
        f"{exact_html(str(message.get('content', '')))}</div>"
    )
