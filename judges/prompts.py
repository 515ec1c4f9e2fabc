"""Judge prompts as data: one named, versioned template per protocol, and the truncation they use.

A template's `version` (e.g. "pairwise-v1") is stored with every judgment, so changing a prompt
means registering a new version, never editing an old one in place. The prompts are short and
carry a format example because the embedded judge is a 135M model that copies formats better than
it follows descriptions of them.

The built-in templates live here (PROMPTS); a team's own versions are stored data that the
services turn into PromptTemplate values (`template_from_fields`) after `template_problems` has
found nothing wrong with them. A dataset's guidelines enter a rendered prompt as a "[Team
guidelines]" block right before the instructions (see `PromptTemplate.render_with_cuts`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from string import Formatter
from types import MappingProxyType
from typing import Any

Messages = list[dict[str, str]]

OMITTED = "[... {n} characters omitted ...]"
# A dataset's guidelines as the judge reads them: where the template has {guidelines_block},
# else right after {reference_block}, which every built-in template puts before its instructions.
GUIDELINES_BLOCK = "[Team guidelines]\n{guidelines}\n\n"


@dataclass(frozen=True)
class Cut:
    """How one text was shortened for a judge prompt: what the judge saw of it.

    `field` names the placeholder it filled ("prompt", "reference", "response_a", ...);
    `kept_head` characters from the start and `kept_tail` from the end reached the judge.
    """

    field: str
    length: int
    kept_head: int
    kept_tail: int

    @property
    def omitted(self) -> int:
        return self.length - self.kept_head - self.kept_tail


def truncate_middle(text: str, budget: int) -> str:
    """`text` cut to at most `budget` characters, keeping the head and the tail.

    The middle is replaced by "[... N characters omitted ...]" (N counts exactly what was cut);
    the head keeps about two thirds of the room because instructions and answers usually start
    with what matters, the tail keeps how the response ends (a final answer, a conclusion).
    Cuts move back to a whitespace boundary when one is near, so words are not split.
    """
    return cut_middle(text, budget)[0]


def cut_middle(text: str, budget: int, field: str = "") -> tuple[str, Cut | None]:
    """`truncate_middle`'s text and the cut it made (None when the text fit): one function
    makes both, so what the page says the judge saw is what the judge saw."""
    if budget <= 0:
        raise ValueError(f"truncate_middle: budget must be positive, got {budget}")
    if len(text) <= budget:
        return text, None
    # The marker's length depends on N, which depends on the marker: size it for the worst case.
    room = budget - len(OMITTED.format(n=len(text))) - 2  # two newlines around the marker
    if room < 2:
        return text[:budget], Cut(field, len(text), budget, 0)
    head_end = _snap_back(text, (room * 2) // 3)
    tail_start = _snap_forward(text, len(text) - (room - head_end))
    omitted = tail_start - head_end
    shown = f"{text[:head_end]}\n{OMITTED.format(n=omitted)}\n{text[tail_start:]}"
    return shown, Cut(field, len(text), head_end, len(text) - tail_start)


def _snap_back(text: str, index: int) -> int:
    """Move a head cut back to just after whitespace, if there is some within 10% of it."""
    floor = index - max(1, index // 10)
    for i in range(index, max(floor, 0), -1):
        if text[i - 1].isspace():
            return i
    return index


def _snap_forward(text: str, index: int) -> int:
    """Move a tail cut forward to just after whitespace, if there is some within 10% of the tail."""
    ceiling = index + max(1, (len(text) - index) // 10)
    for i in range(index, min(ceiling, len(text))):
        if text[i].isspace():
            return i + 1
    return index


@dataclass(frozen=True)
class PromptTemplate:
    """One protocol's prompt: a system message and a user message with {placeholders}.

    Placeholders: {prompt}, {reference_block}, and {response_a} {response_b} (two-response
    protocols) or {response} (one response); optionally {guidelines_block}. Literal braces in
    the template are doubled. Every text is cut to its stated character budget before it is
    inserted.
    `answer_prefix` starts the judge's answer for it, where the backend can continue an
    assistant turn: a small judge then writes its sections in order from the first token.
    """

    name: str  # the protocol it serves: "pairwise" | "pointwise" | "verifier"
    version: str  # stored with every judgment: "pairwise-v1"
    system: str
    user: str
    max_prompt_chars: int = 1500
    max_response_chars: int = 1200
    max_reference_chars: int = 800
    answer_prefix: str = ""
    max_guidelines_chars: int = 1000

    def render(
        self, prompt: str, reference: str | None = None, *, guidelines: str = "", **responses: str
    ) -> Messages:
        """The chat messages for one judge call; responses by placeholder name (response_a=...)."""
        return self.render_with_cuts(prompt, reference, guidelines=guidelines, **responses)[0]

    def render_with_cuts(
        self, prompt: str, reference: str | None = None, *, guidelines: str = "", **responses: str
    ) -> tuple[Messages, list[Cut]]:
        """`render`'s messages and every cut it made to fit the budgets, in placeholder order
        (responses, the prompt, the reference, the guidelines).

        `guidelines` (a dataset's, as written) go in a "[Team guidelines]" block: at
        {guidelines_block} where the template has it, else right after the reference block."""
        cuts: list[Cut] = []

        def fitted(text: str, budget: int, field: str) -> str:
            shown, cut = cut_middle(text, budget, field)
            cuts.extend([cut] if cut else [])
            return shown

        values = {
            key: fitted(text, self.max_response_chars, key) for key, text in responses.items()
        }
        values["prompt"] = fitted(prompt, self.max_prompt_chars, "prompt")
        values["reference_block"] = ""
        if reference:
            reference = fitted(reference, self.max_reference_chars, "reference")
            values["reference_block"] = f"[Reference answer]\n{reference}\n\n"
        values["guidelines_block"] = ""
        if guidelines.strip():
            shown = fitted(guidelines.strip(), self.max_guidelines_chars, "guidelines")
            block = GUIDELINES_BLOCK.format(guidelines=shown)
            slot = "guidelines_block" if "guidelines_block" in _field_names(self.user) else None
            values[slot or "reference_block"] += block
        try:
            user = self.user.format(**values)
        except KeyError as exc:
            raise ValueError(f"prompt {self.version}: no value for placeholder {exc}") from exc
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": user}]
        return messages, cuts


# The pair as every built-in template shows it (the versions differ in what they ask after it).
TWO_RESPONSES = """[Question]
{prompt}

[Response A]
{response_a}

[Response B]
{response_b}

"""
ONE_RESPONSE = """[Question]
{prompt}

[Response]
{response}

"""


# What every version of a protocol's prompt opens with: (system message, the question put to
# the judge, the pair as shown). The versions differ in how they ask to be answered.
_OPENINGS = {
    "pairwise": (
        "You are a fair judge. You compare two responses to a question and pick the better one.",
        "Which response answers the question better?",
        TWO_RESPONSES,
    ),
    "pointwise": (
        "You are a fair judge. You rate responses to a question with scores from 1 to 10.",
        "Rate each response to the question.",
        TWO_RESPONSES,
    ),
    "verifier": (
        "You are a careful verifier. You check whether a response answers a question correctly.",
        "Is this response a correct and complete answer to the question?",
        ONE_RESPONSE,
    ),
}


def _template(name: str, version: str, instructions: str, **more: Any) -> PromptTemplate:
    """Protocol `name`'s opening, the reference (where there is one), then `instructions`."""
    system, question, pair_block = _OPENINGS[name]
    user = f"{question}\n\n{pair_block}{{reference_block}}{instructions}"
    return PromptTemplate(name=name, version=version, system=system, user=user, **more)


PAIRWISE_V1 = _template(
    "pairwise",
    "pairwise-v1",
    """\
Judge by what the question asks for: following the instruction, correctness, \
helpfulness. Ignore the order and the length of the responses.
Write three short sections in this exact format:
Principles: the 2 or 3 things that matter most for this question.
Critique: the strengths and weaknesses of Response A, then of Response B.
Verdict: [[A]] if Response A is better, [[B]] if Response B is better, [[C]] for a tie.

Example:
Principles: Follow the instruction exactly. Be correct.
Critique: Response A is correct but ignores the word limit. Response B is correct and short.
Verdict: [[B]]""",
)

POINTWISE_V1 = _template(
    "pointwise",
    "pointwise-v1",
    """\
First write the criteria that matter for this question, then analyse both \
responses, then give each an integer score from 1 (bad) to 10 (excellent).
Write three short sections in this exact format:
Specific Criteria: the 2 or 3 criteria for this question.
Analysis: how well Response A, then Response B, meets them.
Scores: \\boxed{{score of A, score of B}}

Example:
Specific Criteria: Correct facts. Answers the exact question.
Analysis: Response A is correct but vague. Response B has a factual error.
Scores: \\boxed{{7, 3}}""",
)

VERIFIER_V1 = _template(
    "verifier",
    "verifier-v1",
    """\
Write a short verification, then answer with Yes or No, in this exact format:
Verification: check the response against the question, step by step, briefly.
Is the answer correct (Yes/No)? Yes or No

Example:
Verification: The question asks for the capital of France. The response says Paris. That is right.
Is the answer correct (Yes/No)? Yes""",
)

# v2: the same words, with the answer started at its first header. The embedded 135M judge
# otherwise skips "Principles:" and writes a bare critique (so the principles panel stayed
# empty), and rarely reached a stated verdict.
PAIRWISE_V2 = replace(PAIRWISE_V1, version="pairwise-v2", answer_prefix="Principles:")
POINTWISE_V2 = replace(POINTWISE_V1, version="pointwise-v2", answer_prefix="Specific Criteria:")
VERIFIER_V2 = replace(VERIFIER_V1, version="verifier-v2", answer_prefix="Verification:")

# v3: no example and no "Header: description" lines. A 135M judge copied v2's example and its
# section descriptions word for word ("Follow the instruction exactly. Be correct."), so its
# principles and critique were the prompt's, not its own. The format is said once in prose;
# the prefilled first header starts the answer, and the headers are all the judge sees of it.
PAIRWISE_V3 = _template(
    "pairwise",
    "pairwise-v3",
    """\
Judge by what this question asks for, not by the order or the length of the \
responses. Answer in three parts headed Principles, Critique and Verdict: first what matters \
most for this question, then how each response does on it, then [[A]] if Response A is \
better, [[B]] if Response B is better, or [[C]] for a tie.""",
    answer_prefix="Principles:",
)

POINTWISE_V3 = _template(
    "pointwise",
    "pointwise-v3",
    """\
Answer in three parts headed Specific Criteria, Analysis and Scores: first \
what matters for this question, then how each response meets it, then an integer score from \
1 (bad) to 10 (excellent) for each, written as \\boxed{{A's score, B's score}}.""",
    answer_prefix="Specific Criteria:",
)

VERIFIER_V3 = _template(
    "verifier",
    "verifier-v3",
    """\
Check the response against the question step by step under the header \
Verification, then end with the line "Is the answer correct (Yes/No)?" followed by Yes or No.""",
    answer_prefix="Verification:",
)

# The verdict alone: v3's words with the answer started at its verdict bracket, so the judge's
# next token is its verdict (A, B or C) and one forward pass decides a pair. The `verdict`
# retraining method trains exactly this position; it is also the fast way to judge a batch.
# Its budgets keep about 450 tokens (both ends of each text), so a batch is judged and trained
# fast: one forward pass per pair and order.
PAIRWISE_V3_VERDICT = replace(
    PAIRWISE_V3,
    version="pairwise-v3-verdict",
    answer_prefix="Verdict: [[",
    max_prompt_chars=500,
    max_response_chars=700,
)

# Registered by version; `get_prompt(protocol)` returns the latest version of that protocol.
PROMPTS: Mapping[str, PromptTemplate] = MappingProxyType(
    {
        t.version: t
        for t in (
            *(PAIRWISE_V1, POINTWISE_V1, VERIFIER_V1),
            *(PAIRWISE_V2, POINTWISE_V2, VERIFIER_V2),
            *(PAIRWISE_V3, POINTWISE_V3, VERIFIER_V3),
            PAIRWISE_V3_VERDICT,
        )
    }
)
LATEST: Mapping[str, str] = MappingProxyType(
    {"pairwise": "pairwise-v2", "pointwise": "pointwise-v2", "verifier": "verifier-v2"}
)


def get_prompt(name_or_version: str) -> PromptTemplate:
    """A template by exact version ("pairwise-v1") or by protocol name (its latest version)."""
    version = LATEST.get(name_or_version, name_or_version)
    try:
        return PROMPTS[version]
    except KeyError:
        known = ", ".join(sorted(PROMPTS))
        raise ValueError(f"unknown prompt {name_or_version!r}; known: {known}") from None


# --- templates as data: checks, plain fields, the guidelines' first principle ---------------

# The placeholders each protocol's user message must hold; {guidelines_block} is optional.
REQUIRED_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "pairwise": ("prompt", "response_a", "response_b", "reference_block"),
        "pointwise": ("prompt", "response_a", "response_b", "reference_block"),
        "verifier": ("prompt", "response", "reference_block"),
    }
)
OPTIONAL_FIELDS = ("guidelines_block",)
BUDGETS = ("max_prompt_chars", "max_response_chars", "max_reference_chars", "max_guidelines_chars")
BUDGET_RANGE = (100, 100_000)  # characters; below 100 the omission marker leaves no text
MAX_SYSTEM_CHARS = 4_000
MAX_USER_CHARS = 16_000
MAX_ANSWER_PREFIX_CHARS = 200
MAX_PRINCIPLE_CHARS = 160
# 40: the width of judgment.prompt_version, where every judgment records its version.
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LIST_MARK_RE = re.compile(r"^(?:[-*+>]\s+|\d+[.)]\s+)+")


@lru_cache(maxsize=256)
def _field_names(user: str) -> frozenset[str]:
    """The placeholder names of a user message (a malformed one has none)."""
    try:
        return frozenset(f for _, f, _, _ in Formatter().parse(user) if f is not None)
    except ValueError:
        return frozenset()


def template_problems(template: PromptTemplate) -> list[str]:
    """Why `template` cannot judge, each reason a sentence; [] when it can.

    Checked: the protocol, the version name, the texts' sizes and control characters, the user
    message's placeholders (the protocol's required ones present, no unknown ones, no format
    spec or conversion, no stray brace), the budgets; then one trial render.
    """
    required = REQUIRED_FIELDS.get(template.name)
    if required is None:
        return [f"unknown protocol {template.name!r}; known: {', '.join(REQUIRED_FIELDS)}"]
    problems = _name_problems(template.version) + _text_problems(template)
    problems += _placeholder_problems(template.user, required)
    problems += _budget_problems(template)
    if not problems:
        sides = {f: f"<{f}>" for f in required if f.startswith("response")}
        try:
            template.render("<prompt>", "<reference>", guidelines="<guidelines>", **sides)
        except (ValueError, KeyError, IndexError) as exc:
            problems.append(f"the template does not render: {exc}")
    return problems


def _name_problems(version: str) -> list[str]:
    if VERSION_RE.fullmatch(version):
        return []
    return [
        f"version name {version[:60]!r} must be 1 to 40 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    ]


def _text_problems(template: PromptTemplate) -> list[str]:
    problems = []
    limits = (
        ("system", template.system, MAX_SYSTEM_CHARS),
        ("user", template.user, MAX_USER_CHARS),
        ("answer_prefix", template.answer_prefix, MAX_ANSWER_PREFIX_CHARS),
    )
    for name, text, limit in limits:
        if len(text) > limit:
            problems.append(f"the {name} text has {len(text):,} characters; at most {limit:,}")
        if _CONTROL_RE.search(text):
            problems.append(f"the {name} text holds control characters (only newlines and tabs)")
    if not template.user.strip():
        problems.append("the user message is empty")
    known = REQUIRED_FIELDS[template.name] + OPTIONAL_FIELDS
    in_system = [f"{{{f}}}" for f in known if f"{{{f}}}" in template.system]
    if in_system:
        problems.append(
            f"the system message is sent as written: {', '.join(in_system)} works only in the "
            "user message"
        )
    return problems


def _placeholder_problems(user: str, required: tuple[str, ...]) -> list[str]:
    try:
        parsed = list(Formatter().parse(user))
    except ValueError as exc:
        return [f"stray brace in the user message ({exc}); write a literal brace twice: {{{{ }}}}"]
    allowed = required + OPTIONAL_FIELDS
    problems, seen = [], set()
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        seen.add(field_name)
        if field_name not in allowed:
            known = " ".join(f"{{{f}}}" for f in allowed)
            problems.append(f"unknown placeholder {{{field_name}}}; this protocol's: {known}")
        elif spec or conversion:
            problems.append(f"placeholder {{{field_name}}} takes no format spec or conversion")
    missing = [f"{{{f}}}" for f in required if f not in seen]
    if missing:
        problems.append(f"the user message misses {', '.join(missing)}")
    return problems


def _budget_problems(template: PromptTemplate) -> list[str]:
    low, high = BUDGET_RANGE
    problems = []
    for name in BUDGETS:
        value = getattr(template, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{name} must be a whole number from {low:,} to {high:,}")
    return problems


def template_fields(template: PromptTemplate) -> dict[str, Any]:
    """A template as plain fields (a stored row's and an exported file's shape)."""
    return {
        "version": template.version,
        "protocol": template.name,
        "system": template.system,
        "user": template.user,
        "answer_prefix": template.answer_prefix,
        "budgets": {name: getattr(template, name) for name in BUDGETS},
    }


def template_from_fields(data: Mapping[str, Any]) -> PromptTemplate:
    """`template_fields`' shape back as a template; ValueError naming a missing or non-text
    field or an unknown budget. (Whether it can judge is `template_problems`' question.)"""
    values: dict[str, Any] = {}
    for key in ("version", "protocol", "system", "user", "answer_prefix"):
        value = data.get(key, "" if key == "answer_prefix" else None)
        if not isinstance(value, str):
            raise ValueError(f"prompt field {key!r} must be text, not {type(value).__name__}")
        values[key] = value
    budgets = data.get("budgets") or {}
    if not isinstance(budgets, Mapping):
        raise ValueError("prompt field 'budgets' must be an object of character budgets")
    unknown = sorted(set(budgets) - set(BUDGETS))
    if unknown:
        raise ValueError(f"unknown budgets {unknown}; known: {', '.join(BUDGETS)}")
    values["name"] = values.pop("protocol")
    return PromptTemplate(**values, **budgets)


def first_principle(guidelines: str) -> str:
    """The guidelines' first rule as one short line: the first line that is not a heading,
    a rule or a fence, without list marks or emphasis, cut to about 160 characters at a word.

    It starts the judge's principles (see judges.protocols.Protocol.answer_prefix): a small
    judge then carries the team's first rule into its own principles and goes on from there.
    """
    for line in guidelines.splitlines():
        text = " ".join(line.split())
        if not text or text.startswith(("#", "```", "~~~")) or not text.strip("-*_=| "):
            continue
        text = _LIST_MARK_RE.sub("", text).replace("**", "").replace("__", "").strip("*_ ")
        if len(text) > MAX_PRINCIPLE_CHARS:
            cut = text.rfind(" ", 0, MAX_PRINCIPLE_CHARS)
            text = text[: cut if cut > MAX_PRINCIPLE_CHARS // 2 else MAX_PRINCIPLE_CHARS]
        return text.rstrip(" ,;:")
    return ""
