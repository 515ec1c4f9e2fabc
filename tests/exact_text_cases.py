"""Texts whose meaning is in their characters, for the exact and rendered views (issue 15).

Each case: (id, the stored text, what the rendered view shows of it). None means the rendered
view shows every character as written (no marker); a string is the text left once the markup
the renderer deliberately applies (emphasis, code fences, links, lists) is taken away.
Invisible and direction characters appear in the rendered view as their codes ([U+200B]).
"""

from __future__ import annotations

import re

EXACT_CASES: list[tuple[str, str, str | None]] = [
    ("template-injection", "{{7*7}} ${7*7} <%= 7*7 %>", None),
    ("products", "2*3*4 = 24 and a*b*c", None),
    ("kwargs", "def f(*args, **kwargs): return g(*args, **kwargs)", None),
    ("kwargs-prose", "Pass **kwargs through, and *args too.", None),
    ("snake-case", "call snake_case_names and max_new_tokens here", None),
    ("code-span", "Run `rm -rf *` then ``a`b``", "Run rm -rf * then a`b"),
    ("fenced-code", "```python\nprint(2*3*4)  # _x_\n```", "print(2*3*4) # _x_"),
    ("latex-inline", "Euler: $e^{i\\pi} + 1 = 0$ and $a_1*b_1 + a^*_2$", None),
    ("latex-display", "$$\\sum_{i=1}^n x_i^2 \\\\ \\{a\\}$$", None),
    ("latex-brackets", "\\[ \\frac{a*b}{c*d} \\] and \\(x_i\\)", None),
    ("escapes", "\\*not emphasis\\* and C:\\\\Users\\\\me", None),
    ("dollars", "It costs $5 and $10, not $ 20.", None),
    ("html", "<b>bold?</b> <script>alert(1)</script> <img src=x onerror=alert(1)>", None),
    ("entities", "AT&amp;T &copy; 2024 &lt;tag&gt; &#42;", None),
    ("rtl", "שלום עולם and مرحبا بالعالم (1-2-3)", None),
    ("bidi-override", "Rename \u202egpj.exe\u202c please \u2066iso\u2069 \u061c", None),
    ("zero-width", "pay\u200bpal\u200d \ufeffbom soft\u00adhyphen", None),
    ("whitespace", "a    b\n\n\n  c\td   \n", None),
    ("crlf", "line one\r\nline two\r\n", None),
    ("emphasis", "**bold** and *it* and _it_", "bold and it and it"),
    ("heading-list", "# Title\n- one\n- two", "Title one two"),
    ("link", "[docs](https://example.com/a)", "docs"),
]

HIDDEN = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\u00ad\u061c]")


def with_codes(text: str) -> str:
    """`text` as the rendered view spells it: invisible characters as their codes."""
    return HIDDEN.sub(lambda m: f"[U+{ord(m.group()):04X}]", text)


def squashed(text: str) -> str:
    """Text with each run of whitespace as one space (the rendered view reflows text)."""
    return re.sub(r"\s+", " ", text).strip()


def rendered_text(text: str, rendered: str | None) -> str:
    """What the rendered view must show of `text`, whitespace squashed."""
    return squashed(with_codes(text if rendered is None else rendered))
