"""How much of a judgment its judge copied from the prompt's own template words.

A small judge can fill its sections with the instructions or example it was given instead of
reasoning about the pair. A word counts as copied when it sits in a run of at least
`MIN_RUN_WORDS` consecutive words that also stands, in the same order, in the template's fixed
text (the system message and the user message without its {placeholders}: the pair's own texts
are not template words, so quoting the question or a response is not copying).
"""

from __future__ import annotations

import re
import string

from judges.prompts import PromptTemplate

MIN_RUN_WORDS = 6
MOSTLY_COPIED = 0.5  # a judgment above this share is not the judge's own reasoning
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def template_runs(template: PromptTemplate, n: int = MIN_RUN_WORDS) -> set[tuple[str, ...]]:
    """Every n-word run of the template's fixed text; runs never span a placeholder."""
    pieces = [template.system, template.answer_prefix]
    pieces += [literal for literal, *_ in string.Formatter().parse(template.user)]
    runs: set[tuple[str, ...]] = set()
    for piece in pieces:
        ws = words(piece)
        runs.update(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))
    return runs


def copied_share(text: str, template: PromptTemplate, n: int = MIN_RUN_WORDS) -> float:
    """The share of `text`'s words that lie in an n-word run found in the template (0 to 1)."""
    ws = words(text)
    if not ws:
        return 0.0
    runs = template_runs(template, n)
    copied = [False] * len(ws)
    for i in range(len(ws) - n + 1):
        if tuple(ws[i : i + n]) in runs:
            copied[i : i + n] = [True] * n
    return sum(copied) / len(ws)
