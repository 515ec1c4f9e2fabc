"""Pure parsers for judge outputs: sections, the stated decision and the status, whole or streamed.

Rules shared by every protocol (they are what the table-driven tests in tests/test_parsing.py
check):

- A section starts at a header line: the keyword at the start of a line, optionally after
  markdown `#`s, list numbering or bold/italic markers, followed by a colon or alone on its line
  ("Critique:", "## Principles", "**Critique:**", "**Verdict**: [[A]]"). "Critique of A: ..." is
  not a header. A repeated section's texts are joined.
- Text before the first header counts as the critique (verification for the verifier): a judge
  that writes no headers at all has still written a critique; principles must be labelled.
- The decision (pairwise verdict, pointwise scores, verifier Yes/No) may be stated anywhere, in
  an accepted form. Two different decisions in one output -> no decision (`conflict=True`,
  status no_verdict): a judge that says both is never read as either. Repeating the same one is
  fine; text after it is kept in the verdict section and changes nothing.
- Accepted pairwise verdicts: `[[A]]`, `[[B]]`, `[[C]]`, `[[tie]]`, `[[Response A]]` anywhere,
  any case, inner spaces allowed; or a line "Verdict: A" / "Verdict: [B]" / "Verdict: Response B"
  / "Final verdict: **A**" / "Verdict: tie" with an upper-case letter and nothing else on the
  line (optionally "is better"), so "Verdict: A close call, ..." is not read as A, nor an echo of
  the instructions like "Verdict: [C] for a tie.". A verdict is never defaulted.
- Accepted pointwise scores: `\\boxed{a, b}` anywhere or a line "Scores: a, b" with integers 1-10;
  other numbers are ignored. Verifier: "(Yes/No)? Yes" after the question, a line "Answer: No",
  or a finished reply that is only "Yes" / "No."; prose ("The answer is correct.") is not read:
  the verifier protocol then reads P("Yes") after appending the question.
- A line-form decision at the very end of the text counts only when the text is known to be
  complete (finish_reason "stop"): "Verdict: A" may still be growing into "Verdict: A close
  call", and "Scores: 7, 1" into "Scores: 7, 10".
- Status: finish_reason "error" -> error; "length" -> truncated; otherwise complete when a single
  decision was stated, else no_verdict. A decision stated before a truncation or an error is kept
  (the status still says what happened), since text the judge finished writing is its answer.
- Streaming: `StreamingParser.feed` re-parses the text so far (outputs are short; this keeps the
  stream and the whole-text parse one code path) and holds back a last, unfinished line that could
  still become a header, so a panel never flashes "Crit" before the header is recognised.
  `finish()` is exactly `parse(whole_text, finish_reason)`, whatever the chunk sizes. The cost
  grows with the text (measured: about 0.5 ms a piece at 20,000 characters), negligible next to
  generating a token at the default 320 new tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from judges.types import Section, Status, Verdict, verdict_from_scores
from vocabulary import ProtocolName


@dataclass(frozen=True)
class ParseState:
    """What a judge output says so far (streaming) or in the end (status set)."""

    section: Section | None = None  # where the text so far ends; None before anything shown
    principles: str = ""
    critique: str = ""
    verdict_text: str = ""
    verdict: Verdict = Verdict.NONE  # pairwise: stated; pointwise: from the scores
    scores: tuple[int, int] | None = None  # pointwise
    answer: bool | None = None  # verifier: stated Yes (True) / No (False)
    conflict: bool = False  # two different decisions were stated
    decision_offset: int | None = None  # where the deciding token starts in the text
    status: Status | None = None  # None while streaming


@dataclass(frozen=True)
class _Mention:
    value: object  # a Verdict, a (score_a, score_b) tuple or a bool
    offset: int  # start of the deciding token (the letter after "[[", the Yes/No, the first score)


@dataclass(frozen=True)
class Grammar:
    """One protocol's output format: section keywords and how its decision is stated."""

    name: str
    keywords: tuple[tuple[str, Section], ...]  # literal keyword (lower case) -> section
    find_decisions: Callable[[str, bool], list[_Mention]]  # (text, text_is_complete)
    record: Callable[[ParseState, object], ParseState]  # put one agreed decision in the state
    header_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "header_re", _header_regex(self.keywords))

    def section_of(self, keyword: str) -> Section:
        wanted = " ".join(keyword.lower().split())
        by_length = sorted(self.keywords, key=lambda k: -len(k[0]))
        return next(s for k, s in by_length if wanted.startswith(k))


# --- headers -----------------------------------------------------------------------------------

_LEAD = r"^[ \t]*(?:#{1,6}[ \t]*)?(?:(?:\d{1,2}[.)]|[-•>])[ \t]+)?(?:[*_]{1,3}[ \t]*)?"
_MARKUP = "*_#>-•0123456789.) \t"


def _header_regex(keywords: tuple[tuple[str, Section], ...]) -> re.Pattern[str]:
    # Longest first, so "final verdict" wins over "verdict" and "specific criteria" over "criteria".
    alternatives = []
    for literal, _ in sorted(keywords, key=lambda k: -len(k[0])):
        words = r"[ \t]+".join(re.escape(w) for w in literal.split())
        if literal.endswith("?"):  # the verifier's question is its own terminator
            alternatives.append(rf"{words}[ \t]*(?:[*_]{{1,3}})?[ \t]*")
        else:
            end = r"[ \t]*(?:[*_]{1,3})?[ \t]*(?::[ \t]*(?:[*_]{1,3}(?![*_]))?|(?=[ \t]*$))[ \t]*"
            alternatives.append(rf"{words}{end}")
    return re.compile(rf"{_LEAD}(?P<kw>{'|'.join(alternatives)})", re.IGNORECASE | re.MULTILINE)


def _could_become_header(line: str, grammar: Grammar) -> bool:
    """Whether an unfinished last line may still turn into a header as more text arrives."""
    rest = " ".join(line.lstrip(_MARKUP).lower().split())
    if len(line) > 60:
        return False
    for literal, _ in grammar.keywords:
        if literal.startswith(rest):
            return True
        if rest.startswith(literal) and not rest[len(literal) :].strip(" *_"):
            return True  # the keyword is there, its colon or newline may follow
    return False


# --- decisions ---------------------------------------------------------------------------------

_BRACKET_VERDICT = re.compile(
    r"\[\[[ \t]*(?:(?:response|assistant)[ \t]+)?(?P<v>[abc]|tie)[ \t]*\]\]", re.IGNORECASE
)
_LINE_VERDICT = re.compile(
    r"^[ \t#*_>-]*(?i:(?:final[ \t]+)?verdict)[ \t*_]*:[ \t*_]*"
    r"(?:(?i:response|assistant|answer|output)[ \t]+)?\[?(?P<v>A|B|C|[Tt]ie|TIE)\]?"
    r"(?:[ \t]+(?i:is[ \t]+better))?[ \t*_.!]*$",
    re.MULTILINE,
)
_VERDICTS = {"a": Verdict.A, "b": Verdict.B, "c": Verdict.TIE, "tie": Verdict.TIE}

_BOXED_SCORES = re.compile(
    r"\\boxed\{[ \t]*(?P<a>\d+(?:\.\d+)?)[ \t]*[,;/][ \t]*(?P<b>\d+(?:\.\d+)?)[ \t]*\}"
)
_LINE_SCORES = re.compile(
    r"^[ \t#*_>-]*(?i:(?:final[ \t]+)?scores?)[ \t*_]*:[ \t*_]*"
    r"(?P<a>\d+(?:\.\d+)?)[ \t]*(?:[,;/]|(?i:and))[ \t]*(?P<b>\d+(?:\.\d+)?)[ \t*_.]*$",
    re.MULTILINE,
)

_QUESTION = r"is[ \t]+the[ \t]+answer[ \t]+correct[ \t]*\([ \t]*yes[ \t]*/[ \t]*no[ \t]*\)[ \t]*\?"
_ANSWER_AFTER_QUESTION = re.compile(rf"(?i:{_QUESTION})[ \t*_:]*(?P<v>(?i:yes|no))\b", re.MULTILINE)
_LINE_ANSWER = re.compile(
    r"^[ \t#*_>-]*(?i:(?:final[ \t]+)?answer)[ \t*_]*:[ \t*_]*(?P<v>(?i:yes|no))\b[ \t*_.!]*$",
    re.MULTILINE,
)
_BARE_ANSWER = re.compile(r"\A[ \t\n*_]*(?P<v>(?i:yes|no))[ \t\n*_.!]*\Z")
QUESTION_RE = re.compile(_QUESTION, re.IGNORECASE)


def _settled(match: re.Match[str], text: str, complete: bool) -> bool:
    """A line-form decision counts once its line has ended (or the whole text has)."""
    return complete or match.end() < len(text)


def _pairwise_decisions(text: str, complete: bool) -> list[_Mention]:
    found = [
        _Mention(_VERDICTS[m["v"].lower()], m.start("v")) for m in _BRACKET_VERDICT.finditer(text)
    ]
    found += [
        _Mention(_VERDICTS[m["v"].lower()], m.start("v"))
        for m in _LINE_VERDICT.finditer(text)
        if _settled(m, text, complete)
    ]
    return found


def _score_pair(match: re.Match[str]) -> tuple[int, int] | None:
    """Both scores as integers 1-10, or None: other numbers are not a usable statement."""
    try:
        a, b = int(match["a"]), int(match["b"])
    except ValueError:  # a decimal
        return None
    return (a, b) if 1 <= a <= 10 and 1 <= b <= 10 else None


def _pointwise_decisions(text: str, complete: bool) -> list[_Mention]:
    matches = list(_BOXED_SCORES.finditer(text))
    matches += [m for m in _LINE_SCORES.finditer(text) if _settled(m, text, complete)]
    found = []
    for m in matches:
        scores = _score_pair(m)
        if scores is not None:
            found.append(_Mention(scores, m.start("a")))
    return found


def _verifier_decisions(text: str, complete: bool) -> list[_Mention]:
    # "No" at the very end of a growing text may still become "Not sure".
    found = [
        _Mention(m["v"].lower() == "yes", m.start("v"))
        for m in _ANSWER_AFTER_QUESTION.finditer(text)
        if complete or m.end("v") < len(text)
    ]
    found += [
        _Mention(m["v"].lower() == "yes", m.start("v"))
        for m in _LINE_ANSWER.finditer(text)
        if _settled(m, text, complete)
    ]
    bare = _BARE_ANSWER.match(text) if complete else None  # the whole reply is "Yes" or "No."
    if bare:
        found.append(_Mention(bare["v"].lower() == "yes", bare.start("v")))
    return found


def _record_verdict(state: ParseState, value: object) -> ParseState:
    assert isinstance(value, Verdict)
    return replace(state, verdict=value)


def _record_scores(state: ParseState, value: object) -> ParseState:
    a, b = value  # type: ignore[misc]
    return replace(state, scores=(a, b), verdict=verdict_from_scores(a, b))


def _record_answer(state: ParseState, value: object) -> ParseState:
    return replace(state, answer=bool(value))


def _keywords(**by_section: tuple[str, ...]) -> tuple[tuple[str, Section], ...]:
    """(keyword, section) pairs from the keywords of each section, named in lower case."""
    return tuple((k, Section(s)) for s, words in by_section.items() for k in words)


PAIRWISE = Grammar(
    name=ProtocolName.PAIRWISE.value,
    keywords=_keywords(
        principles=("principles", "principle"),
        critique=("critique",),
        verdict=("final verdict", "verdict"),
    ),
    find_decisions=_pairwise_decisions,
    record=_record_verdict,
)
POINTWISE = Grammar(
    name=ProtocolName.POINTWISE.value,
    keywords=_keywords(
        principles=("specific criteria", "criteria", "principles"),
        critique=("analysis", "critique"),
        verdict=("final scores", "scores", "score"),
    ),
    find_decisions=_pointwise_decisions,
    record=_record_scores,
)
VERIFIER = Grammar(
    name=ProtocolName.VERIFIER.value,
    keywords=_keywords(
        critique=("verification", "critique"),
        verdict=("is the answer correct (yes/no)?", "final answer", "answer"),
    ),
    find_decisions=_verifier_decisions,
    record=_record_answer,
)
GRAMMARS = {g.name: g for g in (PAIRWISE, POINTWISE, VERIFIER)}


def get_grammar(protocol: str) -> Grammar:
    try:
        return GRAMMARS[protocol]
    except KeyError:
        raise ValueError(
            f"no parser for protocol {protocol!r}; known: {sorted(GRAMMARS)}"
        ) from None


# --- parsing -----------------------------------------------------------------------------------


def parse(protocol: str | Grammar, text: str, finish_reason: str | None = "stop") -> ParseState:
    """Parse a judge output. finish_reason None means "still streaming" (no status, holdback)."""
    grammar = protocol if isinstance(protocol, Grammar) else get_grammar(protocol)
    streaming = finish_reason is None
    visible = _visible_part(text, grammar) if streaming else text
    state = _sections(visible, grammar)
    complete = finish_reason == "stop"
    state = _decide(state, grammar.find_decisions(visible, complete), grammar)
    if streaming:
        return state
    return replace(state, status=_status(state, finish_reason))


def _visible_part(text: str, grammar: Grammar) -> str:
    """The text minus an unfinished last line that may still become a header."""
    start = text.rfind("\n") + 1
    if start < len(text) and _could_become_header(text[start:], grammar):
        return text[:start]
    return text


def _sections(text: str, grammar: Grammar) -> ParseState:
    parts: dict[Section, list[str]] = {s: [] for s in Section}
    section: Section | None = None
    cursor = 0
    for match in grammar.header_re.finditer(text):
        preamble_or_body = text[cursor : match.start()]
        _add(parts, section or Section.CRITIQUE, preamble_or_body)
        section = grammar.section_of(match["kw"])
        cursor = match.end()
    _add(parts, section or Section.CRITIQUE, text[cursor:])
    if section is None and parts[Section.CRITIQUE]:
        section = Section.CRITIQUE  # text before any header is critique
    return ParseState(
        section=section,
        principles="\n\n".join(parts[Section.PRINCIPLES]),
        critique="\n\n".join(parts[Section.CRITIQUE]),
        verdict_text="\n\n".join(parts[Section.VERDICT]),
    )


def _add(parts: dict[Section, list[str]], section: Section, text: str) -> None:
    cleaned = _clean(text)
    if cleaned:
        parts[section].append(cleaned)


def _clean(text: str) -> str:
    """Strip whitespace and a bold/italic marker left unpaired by a header ("**Critique:** x**")."""
    text = text.strip()
    for marker in ("**", "__"):
        if text.count(marker) % 2 == 1:
            if text.startswith(marker):
                text = text[len(marker) :].strip()
            elif text.endswith(marker):
                text = text[: -len(marker)].strip()
    return text


def _decide(state: ParseState, mentions: list[_Mention], grammar: Grammar) -> ParseState:
    values = {m.value for m in mentions}
    if len(values) > 1:
        return replace(state, conflict=True)
    if not values:
        return state
    # The last statement's token is where a verdict probability is read.
    offset = max(m.offset for m in mentions)
    return replace(grammar.record(state, values.pop()), decision_offset=offset)


def _decided(state: ParseState) -> bool:
    return state.verdict is not Verdict.NONE or state.answer is not None


def _status(state: ParseState, finish_reason: str) -> Status:
    if finish_reason == "error":
        return Status.ERROR
    if finish_reason == "length":
        return Status.TRUNCATED
    return Status.COMPLETE if _decided(state) else Status.NO_VERDICT


class StreamingParser:
    """Feed a judge's text as it arrives; every feed says where it is and what it said so far."""

    def __init__(self, protocol: str | Grammar) -> None:
        self.grammar = protocol if isinstance(protocol, Grammar) else get_grammar(protocol)
        self._text = ""

    @property
    def text(self) -> str:
        return self._text

    def feed(self, piece: str) -> ParseState:
        self._text += piece
        return parse(self.grammar, self._text, finish_reason=None)

    def finish(self, finish_reason: str = "stop") -> ParseState:
        """The final parse of everything fed: identical to parsing the whole text at once."""
        return parse(self.grammar, self._text, finish_reason)
