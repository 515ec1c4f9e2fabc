"""Judge prompts as data: one named, versioned template per protocol, and the truncation they use.

A template's `version` (e.g. "pairwise-v1") is stored with every judgment, so changing a prompt
means registering a new version, never editing an old one in place. The prompts are short and
carry a format example because the embedded judge is a 135M model that copies formats better than
it follows descriptions of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

Messages = list[dict[str, str]]

OMITTED = "[... {n} characters omitted ...]"


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
    protocols) or {response} (one response). Literal braces in the template are doubled.
    Every text is cut to its stated character budget before it is inserted.
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

    def render(self, prompt: str, reference: str | None = None, **responses: str) -> Messages:
        """The chat messages for one judge call; responses by placeholder name (response_a=...)."""
        return self.render_with_cuts(prompt, reference, **responses)[0]

    def render_with_cuts(
        self, prompt: str, reference: str | None = None, **responses: str
    ) -> tuple[Messages, list[Cut]]:
        """`render`'s messages and every cut it made to fit the budgets, in placeholder order
        (responses, the prompt, the reference)."""
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
        try:
            user = self.user.format(**values)
        except KeyError as exc:
            raise ValueError(f"prompt {self.version}: no value for placeholder {exc}") from exc
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": user}]
        return messages, cuts


PAIRWISE_V1 = PromptTemplate(
    name="pairwise",
    version="pairwise-v1",
    system="You are a fair judge. You compare two responses to a question and pick the better one.",
    user="""Which response answers the question better?

[Question]
{prompt}

[Response A]
{response_a}

[Response B]
{response_b}

{reference_block}Judge by what the question asks for: following the instruction, correctness, \
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

POINTWISE_V1 = PromptTemplate(
    name="pointwise",
    version="pointwise-v1",
    system="You are a fair judge. You rate responses to a question with scores from 1 to 10.",
    user="""Rate each response to the question.

[Question]
{prompt}

[Response A]
{response_a}

[Response B]
{response_b}

{reference_block}First write the criteria that matter for this question, then analyse both \
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

VERIFIER_V1 = PromptTemplate(
    name="verifier",
    version="verifier-v1",
    system="You are a careful verifier. You check whether a response answers a question correctly.",
    user="""Is this response a correct and complete answer to the question?

[Question]
{prompt}

[Response]
{response}

{reference_block}Write a short verification, then answer with Yes or No, in this exact format:
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
PAIRWISE_V3 = PromptTemplate(
    name="pairwise",
    version="pairwise-v3",
    system="You are a fair judge. You compare two responses to a question and pick the better one.",
    user="""Which response answers the question better?

[Question]
{prompt}

[Response A]
{response_a}

[Response B]
{response_b}

{reference_block}Judge by what this question asks for, not by the order or the length of the \
responses. Answer in three parts headed Principles, Critique and Verdict: first what matters \
most for this question, then how each response does on it, then [[A]] if Response A is \
better, [[B]] if Response B is better, or [[C]] for a tie.""",
    answer_prefix="Principles:",
)

POINTWISE_V3 = PromptTemplate(
    name="pointwise",
    version="pointwise-v3",
    system="You are a fair judge. You rate responses to a question with scores from 1 to 10.",
    user="""Rate each response to the question.

[Question]
{prompt}

[Response A]
{response_a}

[Response B]
{response_b}

{reference_block}Answer in three parts headed Specific Criteria, Analysis and Scores: first \
what matters for this question, then how each response meets it, then an integer score from \
1 (bad) to 10 (excellent) for each, written as \\boxed{{A's score, B's score}}.""",
    answer_prefix="Specific Criteria:",
)

VERIFIER_V3 = PromptTemplate(
    name="verifier",
    version="verifier-v3",
    system="You are a careful verifier. You check whether a response answers a question correctly.",
    user="""Is this response a correct and complete answer to the question?

[Question]
{prompt}

[Response]
{response}

{reference_block}Check the response against the question step by step under the header \
Verification, then end with the line "Is the answer correct (Yes/No)?" followed by Yes or No.""",
    answer_prefix="Verification:",
)

# Registered by version; `get_prompt(protocol)` returns the latest version of that protocol.
PROMPTS: Mapping[str, PromptTemplate] = MappingProxyType(
    {
        t.version: t
        for t in (
            *(PAIRWISE_V1, POINTWISE_V1, VERIFIER_V1),
            *(PAIRWISE_V2, POINTWISE_V2, VERIFIER_V2),
            *(PAIRWISE_V3, POINTWISE_V3, VERIFIER_V3),
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
