"""Rewrite a judgment for the other response order: every name of A becomes B and back.

Training shows every example in both orders (so position carries no signal); the target text
must then say the same thing about the responses in their new places.
"""

from __future__ import annotations

import re

_NOUNS = (
    r"responses?|assistants?|answers?|outputs?|models?|candidates?|options?|completions?"
    r"|replies|reply|solutions?|submissions?"
)
_LETTER = r"\(?[AB]\)?"
_CONNECTOR = r"[ \t]*(?:,|and|or|&|/|vs\.?|versus)[ \t]*"
# "Response A", "Assistant B's", "Responses A and B", "Output (A)"; only the noun ignores case,
# so "the answer a student gives" is left alone.
_NAMED = re.compile(
    rf"\b(?P<noun>(?i:{_NOUNS}))(?P<rest>[ \t]+{_LETTER}(?:{_CONNECTOR}{_LETTER})*(?!\w))"
)
# LLMBar's "Output (a)" / "Output (b)".
_LOWER_PAREN = re.compile(
    rf"\b(?P<noun>(?i:{_NOUNS}))(?P<rest>[ \t]+\([ab]\)(?:{_CONNECTOR}\([ab]\))*)"
)
_BRACKETED = re.compile(r"\[\[([ \t]*)([AaBb])([ \t]*)\]\]")
# "Verdict: A", "Final verdict: **B**", "Verdict: A is better": a bare letter the parser reads.
_VERDICT_LINE = re.compile(
    r"(?P<lead>\b(?i:(?:final[ \t]+)?verdict)[ \t*_]*(?::|is)[ \t*_]*)(?P<v>[AB])"
    r"(?=[ \t*_.!]*$|[ \t]+is[ \t]+better)",
    re.MULTILINE,
)
_ORDINAL = re.compile(rf"\b(first|second)(?=\s+(?:{_NOUNS}|one)\b)", re.IGNORECASE)
_LETTERS = str.maketrans({"A": "B", "B": "A", "a": "b", "b": "a"})
# Pointwise scores are positional: "\boxed{7, 3}" and "Scores: 7, 3" trade places.
_BOXED_SCORES = re.compile(r"(\\boxed\{[ \t]*)(\d+(?:\.\d+)?)([ \t]*[,;/][ \t]*)(\d+(?:\.\d+)?)")
_LINE_SCORES = re.compile(
    r"^([ \t#*_>-]*(?i:(?:final[ \t]+)?scores?)[ \t*_]*:[ \t*_]*)(\d+(?:\.\d+)?)"
    r"([ \t]*(?:[,;/]|and)[ \t]*)(\d+(?:\.\d+)?)(?=[ \t*_.]*$)",
    re.MULTILINE,
)


def swap_labels_in_text(text: str) -> str:
    """The same judgment written for the other order: every name of A becomes B and back.

    Swaps "[[A]]"/"[[B]]" verdict tokens, "Verdict: A" lines, letters after a response noun
    ("Response A", "Assistant B's", "Responses A and B", "Output (a)") and "first/second
    response". Bare letters elsewhere are left alone because "A" is also an English word.
    """
    text = _BRACKETED.sub(lambda m: f"[[{m[1]}{m[2].translate(_LETTERS)}{m[3]}]]", text)
    text = _VERDICT_LINE.sub(lambda m: m.group("lead") + m.group("v").translate(_LETTERS), text)
    text = _NAMED.sub(_swap_rest_upper, text)
    text = _LOWER_PAREN.sub(lambda m: m.group("noun") + m.group("rest").translate(_LETTERS), text)
    return _ORDINAL.sub(_swap_ordinal, text)


def swap_scores_in_text(text: str) -> str:
    """Pointwise judgments: the names swapped as above, and the two positional scores."""
    text = swap_labels_in_text(text)
    for pattern in (_BOXED_SCORES, _LINE_SCORES):
        text = pattern.sub(lambda m: m.group(1) + m.group(4) + m.group(3) + m.group(2), text)
    return text


def _swap_rest_upper(match: re.Match[str]) -> str:
    rest = re.sub(r"\b[AB]\b", lambda m: m.group(0).translate(_LETTERS), match.group("rest"))
    return match.group("noun") + rest


def _swap_ordinal(match: re.Match[str]) -> str:
    word = match.group(1)
    other = "second" if word.lower() == "first" else "first"
    if word.isupper():
        return other.upper()
    return other.capitalize() if word[0].isupper() else other
