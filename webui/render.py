"""Turn untrusted text (prompts, responses, judge output) into HTML that can run and fetch nothing.

Markdown is rendered on the server with raw HTML switched off, so `<script>`, `<img onerror>`
and friends arrive in the page as text. Images become text too (a remote image would leave the
machine the moment the page shows it), links keep only http(s)/mailto targets, and invisible or
direction-changing characters are shown as visible codes so a response cannot hide or reorder
what the annotator reads.

Two views of every prompt and response, chosen per person in the browser: **rendered**
(markdown) and **exact** (the stored string, every character and all whitespace kept). The
markdown is set to keep characters: no emphasis from a `*` or `_` inside a word (`2*3*4`,
`{{7*7}}`), backslash escapes shown as typed, `&amp;` shown as typed, and LaTeX-looking spans
(`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`) shown literally. A text whose rendering still
hides some of its characters (its markup) gets a marker pointing to the exact view.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.rules_core.state_core import StateCore
from markdown_it.rules_inline.state_inline import Delimiter, StateInline

MAX_DISPLAY_CHARS = 60_000  # a 1 MB response would freeze the page; show the start and say so
SAFE_LINK = re.compile(r"^(https?:|mailto:)", re.IGNORECASE)
SURROGATE = re.compile(r"[\ud800-\udfff]")
# Bidi controls and zero-width characters: shown as codes, never applied.
# markdown-it drops what lies deeper than its nesting limit; such text is shown plain instead.
TOO_DEEP = re.compile(r"^(?:[ \t]*(?:>|[-*+][ \t]|\d+[.)][ \t])){16}", re.MULTILINE)
HIDDEN_CHARS = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\u00ad\u061c]")
WHITESPACE = re.compile(r"\s+")
# LaTeX-looking spans, shown as typed: (opening, closing) delimiters, longest first.
MATH_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
DIFFERS_MARKER = (
    '<span class="grm-differs" title="Markdown formatting hides some characters of this text '
    '(its markup). Choose Exact above to see it as written.">rendered ≠ written</span>'
)


def _image_as_text(_renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    alt = "".join(child.content for child in token.children or [])
    src = token.attrGet("src") or ""
    return f'<span class="grm-image-text">[image: {html.escape(alt)} — {html.escape(src)}]</span>'


def _link_open(_renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    href = tokens[idx].attrGet("href") or ""
    return f'<a href="{html.escape(href)}" rel="noopener noreferrer nofollow" target="_blank">'


def _emphasis_between_words_only(state: StateInline, silent: bool) -> bool:
    """markdown-it's emphasis rule, except that `*` (like `_`) never opens or closes emphasis
    inside a word: `7*7`, `2*3*4` and `a*b*c` keep their asterisks."""
    marker = state.src[state.pos]
    if silent or marker not in ("_", "*"):
        return False
    scanned = state.scanDelims(state.pos, False)  # False: markers cannot split a word
    for _ in range(scanned.length):
        token = state.push("text", "", 0)
        token.content = marker
        state.delimiters.append(
            Delimiter(
                marker=ord(marker),
                length=scanned.length,
                token=len(state.tokens) - 1,
                end=-1,
                open=scanned.can_open,
                close=scanned.can_close,
            )
        )
    state.pos += scanned.length
    return True


def _math_as_typed(state: StateInline, silent: bool) -> bool:
    """A LaTeX-looking span becomes one literal token: no emphasis, escapes or links inside."""
    src, start = state.src, state.pos
    for opening, closing in MATH_DELIMITERS:
        if not src.startswith(opening, start):
            continue
        end = _math_end(src, start + len(opening), state.posMax, closing)
        if end is None:
            continue
        if not silent:
            state.push("math_as_typed", "", 0).content = src[start:end]
        state.pos = end
        return True
    return False


def _math_end(src: str, inner: int, limit: int, closing: str) -> int | None:
    """Where a math span opened just before `inner` ends, or None. A single `$` follows pandoc:
    no space just inside either `$`, and no digit right after the closing one ($5 and $10)."""
    single = closing == "$"
    if inner >= limit or (single and src[inner] in " \t\n$"):
        return None
    end = src.find(closing, inner, limit)
    while end != -1:
        after = end + len(closing)
        if not single or (
            not src[end - 1].isspace()
            and src[end - 1] != "\\"
            and not (after < limit and src[after].isdigit())
        ):
            return after
        end = src.find(closing, end + 1, limit)
    return None


def _render_math(_renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    return f'<span class="grm-math">{html.escape(tokens[idx].content)}</span>'


def _keep_escapes(state: StateCore) -> None:
    """Show a backslash escape as typed (`\\{`, `\\\\`, `\\*`): it still stops the markup."""
    for block in state.tokens:
        for token in block.children or ():
            if token.type == "text_special" and token.info == "escape":
                token.content = token.markup


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True})
    md.enable(["table", "strikethrough"])
    md.disable("entity")  # "&amp;" is shown as typed, not as "&"
    md.inline.ruler.at("emphasis", _emphasis_between_words_only)
    md.inline.ruler.before("escape", "math_as_typed", _math_as_typed)
    md.core.ruler.before("text_join", "keep_escapes", _keep_escapes)
    md.validateLink = lambda url: bool(SAFE_LINK.match(url.strip()))  # anything else stays text
    md.add_render_rule("image", _image_as_text)
    md.add_render_rule("link_open", _link_open)
    md.add_render_rule("math_as_typed", _render_math)
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
    return _markdown_view(text, limit)[0]


def _markdown_view(text: str | None, limit: int) -> tuple[str, bool]:
    """`safe_markdown`'s HTML and whether its visible text differs from the text as written."""
    text = clean_text(text)
    note = ""
    if len(text) > limit:
        note = _cut_note(limit, len(text))
        text = text[:limit]
    body = None if TOO_DEEP.search(text) else _render_markdown(text)
    if body is None:
        body = f'<pre class="grm-plain">{html.escape(text)}</pre>'
    differs = _squashed(visible_text(body)) != _squashed(text)
    return f'<div class="grm-md" dir="auto">{_show_hidden(body)}{note}</div>', differs


def _cut_note(limit: int, length: int) -> str:
    return f'<p class="grm-note">Showing the first {limit:,} of {length:,} characters.</p>'


def _squashed(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip()


class _TextOf(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def visible_text(markup: str) -> str:
    """The text a browser shows for `markup` (its DOM text): tags dropped, entities decoded."""
    parser = _TextOf()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts)


def exact_html(text: str | None, limit: int = MAX_DISPLAY_CHARS) -> str:
    """The stored text exactly, monospace, whitespace kept: the element's DOM text equals the
    stored string (after `clean_text`). Invisible and direction characters stay in the text, so
    a copy is exact too, each in an isolating mark that shows its code (a CSS ::before, not
    text) and keeps its effect to itself."""
    text = clean_text(text)
    note = _cut_note(limit, len(text)) if len(text) > limit else ""
    body = html.escape(text[:limit], quote=False).replace("\r", "&#13;")  # a raw CR reads as LF
    body = HIDDEN_CHARS.sub(_kept_hidden, body)
    # The parser drops one newline right after <pre>: this one, never the text's own.
    return f'<pre class="grm-exact" dir="auto">\n{body}</pre>{note}'


def _kept_hidden(match: re.Match[str]) -> str:
    code = ord(match.group())
    return (
        f'<span class="grm-hidden-char grm-kept" data-code="[U+{code:04X}]">&#x{code:04X};</span>'
    )


def text_views(text: str | None) -> tuple[str, bool]:
    """Both views of a prompt or response (the page's choice shows one) and whether the
    rendered one hides characters of the text (its markup), for the marker."""
    rendered, differs = _markdown_view(text, MAX_DISPLAY_CHARS)
    views = (
        f'<div class="grm-view-rendered">{rendered}</div>'
        f'<div class="grm-view-exact">{exact_html(text)}</div>'
    )
    return views, differs


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


def pair_panels(prompt: str | list[dict[str, Any]], response_a: str, response_b: str) -> list[str]:
    """A pair as the Label tab shows it: the prompt (a text or chat turns), then A, then B."""
    text, turns = (prompt, None) if isinstance(prompt, str) else ("", prompt)
    views, differs = prompt_views(text, turns)
    shown = [panel("Prompt", views, "grm-box-prompt", differs=differs)]
    for side, response in (("A", response_a), ("B", response_b)):
        views, differs = text_views(response)
        shown.append(panel(f"Response {side}", views, "grm-box-response", differs=differs))
    return shown


def ok_box(text: str) -> str:
    """A tab's message that something was done (escaped: it may quote a person's input)."""
    return f'<div class="grm-msg grm-msg-ok">{safe_text(text)}</div>'


def error_box(text: str) -> str:
    """A tab's message that something was refused or failed, and why."""
    return f'<div class="grm-msg grm-msg-error">{safe_text(text)}</div>'


def chat_html(prompt: str, turns: Sequence[dict[str, Any]] | None) -> str:
    """The prompt in both views: one block per chat turn with its role, or one for a text."""
    return prompt_views(prompt, turns)[0]


def prompt_views(prompt: str, turns: Sequence[dict[str, Any]] | None) -> tuple[str, bool]:
    """The prompt in both views: one block per chat turn with its role, or one block for a text
    prompt; and whether any of it renders differently from how it was written."""
    if not turns:
        return text_views(prompt)
    blocks, differs = [], False
    for turn in turns:
        role = str(turn.get("role", ""))
        views, changed = text_views(str(turn.get("content", "")))
        differs = differs or changed
        blocks.append(
            f'<div class="grm-turn grm-role-{html.escape(role)}">'
            f'<div class="grm-role">{safe_text(role)}</div>{views}</div>'
        )
    return "".join(blocks), differs


def panel(title: str, body_html: str, box_class: str = "", *, differs: bool = False) -> str:
    """A titled, scrolling box around already-safe HTML; `differs` adds the marker that says
    the rendered view hides some characters."""
    marker = DIFFERS_MARKER if differs else ""
    return (
        f'<div class="grm-panel"><div class="grm-panel-title">{safe_text(title)}{marker}</div>'
        f'<div class="grm-box {box_class}">{body_html}</div></div>'
    )
