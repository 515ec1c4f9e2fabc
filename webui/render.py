"""Turn untrusted text (prompts, responses, judge output) into HTML that can run and fetch nothing.

Markdown is rendered on the server with raw HTML switched off, so `<script>`, `<img onerror>`
and friends arrive in the page as text. Images become text too (a remote image would leave the
machine the moment the page shows it), links keep only http(s)/mailto targets, and invisible or
direction-changing characters are shown as visible codes so a response cannot hide or reorder
what the annotator reads.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt

MAX_DISPLAY_CHARS = 60_000  # a 1 MB response would freeze the page; show the start and say so
SAFE_LINK = re.compile(r"^(https?:|mailto:)", re.IGNORECASE)
SURROGATE = re.compile(r"[\ud800-\udfff]")
# Bidi controls and zero-width characters: shown as codes, never applied.
# markdown-it drops what lies deeper than its nesting limit; such text is shown plain instead.
TOO_DEEP = re.compile(r"^(?:[ \t]*(?:>|[-*+][ \t]|\d+[.)][ \t])){16}", re.MULTILINE)
HIDDEN_CHARS = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\u00ad]")


def _image_as_text(_renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    alt = "".join(child.content for child in token.children or [])
    src = token.attrGet("src") or ""
    return f'<span class="grm-image-text">[image: {html.escape(alt)} — {html.escape(src)}]</span>'


def _link_open(_renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    href = tokens[idx].attrGet("href") or ""
    return f'<a href="{html.escape(href)}" rel="noopener noreferrer nofollow" target="_blank">'


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True})
    md.enable(["table", "strikethrough"])
    md.validateLink = lambda url: bool(SAFE_LINK.match(url.strip()))  # anything else stays text
    md.add_render_rule("image", _image_as_text)
    md.add_render_rule("link_open", _link_open)
    return md


def clean_text(text: str | None) -> str:
    """Text that can travel as JSON: lone surrogates and NULs replaced by U+FFFD."""
    if not text:
        return ""
    return SURROGATE.sub("\ufffd", text).replace("\x00", "\ufffd")


def _show_hidden(rendered: str) -> str:
    return HIDDEN_CHARS.sub(
        lambda m: f'<span class="grm-hidden-char">[U+{ord(m.group()):04X}]</span>', rendered
    )


def safe_markdown(text: str | None, limit: int = MAX_DISPLAY_CHARS) -> str:
    """Markdown rendered to HTML with no raw HTML, no images, no script links."""
    text = clean_text(text)
    note = ""
    if len(text) > limit:
        note = f'<p class="grm-note">Showing the first {limit:,} of {len(text):,} characters.</p>'
        text = text[:limit]
    body = None if TOO_DEEP.search(text) else _render_markdown(text)
    if body is None:
        body = f'<pre class="grm-plain">{html.escape(text)}</pre>'
    return f'<div class="grm-md" dir="auto">{_show_hidden(body)}{note}</div>'


def _render_markdown(text: str) -> str | None:
    """Rendered HTML, or None when the text nests so deep that markdown-it would drop the rest
    (it stops at its nesting limit: list items indented one level more each, line by line)."""
    md = _markdown()
    tokens = md.parse(text)
    if any(token.level >= md.options["maxNesting"] - 1 for token in tokens):
        return None
    return md.renderer.render(tokens, md.options, {})


def safe_text(text: str | None) -> str:
    """Plain text as escaped HTML (names, categories, error messages)."""
    return _show_hidden(html.escape(clean_text(text)))


def chat_html(prompt: str, turns: Sequence[dict[str, Any]] | None) -> str:
    """The prompt: one block per chat turn with its role, or one block for a text prompt."""
    if not turns:
        return safe_markdown(prompt)
    blocks = [
        f'<div class="grm-turn grm-role-{html.escape(str(t.get("role", "")))}">'
        f'<div class="grm-role">{safe_text(str(t.get("role", "")))}</div>'
        f"{safe_markdown(str(t.get('content', '')))}</div>"
        for t in turns
    ]
    return "".join(blocks)


def panel(title: str, body_html: str, box_class: str = "") -> str:
    """A titled, scrolling box around already-safe HTML."""
    return (
        f'<div class="grm-panel"><div class="grm-panel-title">{safe_text(title)}</div>'
        f'<div class="grm-box {box_class}">{body_html}</div></div>'
    )
