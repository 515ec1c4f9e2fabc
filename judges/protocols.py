"""Judging protocols: each turns a pair into judge conversations and the answers into a Judgment.

A protocol is pure: `conversations(pair)` gives the chat messages to send, `probes(pair,
generations)` the next-token log-probability requests it would like (to read a verdict's
probability, or a verdict the text did not state), and `judgment(pair, generations, results)`
the typed result. The orchestrator (judges/judge.py) decides whether and how to run the probes
(batched, or not at all when the backend has no log-probabilities), so everything here is
testable with plain strings.

Verdict sources, never mixed up:
- "text": the judge stated it (the probability, when known, is read at that position: P(A) vs
  P(B) normalised over the two, token variants " A"/"A"/"[[A" merged; a tie is P(C) over all);
- "logprobs": the text stated none, so the letter was read from the next-token distribution after
  the verdict prefix ("...\\n\\nVerdict: [[") or, for the verifier, P("Yes") after the question;
  the status is then complete (or truncated), and the source says it was not written;
- "scores": pointwise, from the stated scores; "none": no verdict.
A judge that stated two different verdicts gets no probe: its status stays no_verdict.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import replace

from judges.backends.base import Backend, Generation, Messages, TokenLogprob
from judges.parsing import PAIRWISE as PAIRWISE_GRAMMAR
from judges.parsing import POINTWISE, QUESTION_RE, Grammar, ParseState, StreamingParser, parse
from judges.parsing import VERIFIER as VERIFIER_GRAMMAR
from judges.prompts import Cut, PromptTemplate, first_principle, get_prompt
from judges.types import Judgment, PairInput, Section, Status, Verdict, verdict_from_scores
from vocabulary import ProtocolName

Probe = tuple[Messages, str]  # (conversation, assistant prefix) for Backend.next_token_logprobs
ProbeResult = Mapping[str, float] | None  # token -> log-probability, None when unavailable
Generations = Sequence[Generation]  # one sample's calls, in the order `rendered` gives them
ProbeResults = Sequence[ProbeResult]  # in the order `probes` asked them

VERDICT_PREFIX = "Verdict: [["
VERIFIER_QUESTION = "Is the answer correct (Yes/No)?"
PROBE_TOP_K = 20
_VERDICT_TOKENS = {"a": "A", "b": "B", "c": "C", "tie": "C"}
_LETTER_VERDICTS = {"A": Verdict.A, "B": Verdict.B, "C": Verdict.TIE}
_ANSWER_TOKENS = {"yes": "yes", "no": "no"}
_TOKEN_MARKUP = "[]*_:\"'`"


# --- reading probabilities from tokens --------------------------------------------------------


def normalise_token(token: str) -> str:
    """A token's text without spacing, markup or tokenizer space marks: " A", "▁A", "[[A" -> "A"."""
    token = token.replace("\u2581", " ").replace("\u0120", " ")
    return token.strip().strip(_TOKEN_MARKUP).strip()


def choice_probabilities(
    distribution: Mapping[str, float], choices: Mapping[str, str], *, ignore_case: bool = True
) -> dict[str, float] | None:
    """Probabilities of `choices` (token text -> choice) summed over token variants, normalised.

    " A", "A" and "[[A" (and "a" unless ignore_case is False) are one choice; None when no
    choice appears among the tokens.
    """
    mass: dict[str, float] = {}
    for token, logprob in distribution.items():
        text = normalise_token(token)
        choice = choices.get(text.lower())
        if choice is None or not math.isfinite(logprob):
            continue
        if not ignore_case and len(text) == 1 and not text.isupper():
            continue  # a lower-case "a" outside "[[" is the article
        mass[choice] = mass.get(choice, 0.0) + math.exp(logprob)
    total = sum(mass.values())
    if total <= 0.0:
        return None
    return {choice: mass.get(choice, 0.0) / total for choice in sorted(set(choices.values()))}


def distribution_at(generation: Generation, offset: int) -> dict[str, float] | None:
    """The alternatives of the generated token at text `offset`, where the backend gave them.

    Only when the tokens join to exactly the generation's text and the token holds nothing but
    markup before the offset ("[[A" is fine, "x A" is not); otherwise None (the caller probes).
    """
    tokens: list[TokenLogprob] | None = generation.token_logprobs
    if not tokens or "".join(t.token for t in tokens) != generation.text:
        return None
    start = 0
    for token in tokens:
        end = start + len(token.token)
        if start <= offset < end:
            if generation.text[start:offset].strip(" \t" + _TOKEN_MARKUP):
                return None
            if not token.top:
                return None  # only the chosen token's own probability: nothing to compare
            return {**token.top, token.token: token.logprob}
        start = end
    return None


def verdict_share(probs: Mapping[str, float], letter: str) -> float | None:
    """P(letter) as the verdict probability: A and B against each other, a tie (C) against all.

    "How sure is the judge that B beats A" is P(B) / (P(A) + P(B)); the chance of a tie token
    at that position does not make the judge less sure which response is better.
    """
    pool = ("A", "B", "C") if letter == "C" else ("A", "B")
    total = sum(probs.get(c, 0.0) for c in pool)
    return probs.get(letter, 0.0) / total if total > 0 else None


def _in_brackets(text: str, offset: int) -> bool:
    """Whether the token at `offset` follows "[[" (any case is a verdict there).

    After "Verdict: " a lower-case "a" is the article ("a close call"), not a verdict.
    """
    return text[:offset].rstrip(" \t").endswith("[[")


# --- protocols ---------------------------------------------------------------------------------


class Protocol(ABC):
    """A prompt template plus the parser for its outputs; pure functions of strings."""

    name: str = ""
    grammar: Grammar
    calls_per_sample: int = 1  # how many conversations `conversations(pair)` returns

    def __init__(
        self, prompt_version: str | PromptTemplate | None = None, guidelines: str = ""
    ) -> None:
        """`prompt_version`: a built-in version's name, a template given as data (a stored
        version the services read), or None for the protocol's latest; `guidelines`: the
        dataset's, given to the judge as its starting principles."""
        if isinstance(prompt_version, PromptTemplate):
            self.template: PromptTemplate = prompt_version
        else:
            self.template = get_prompt(prompt_version or self.name)
        if self.template.name != self.name:
            raise ValueError(
                f"prompt {self.template.version} is for {self.template.name}, not {self.name}"
            )
        self.guidelines = guidelines

    @property
    def prompt_version(self) -> str:
        return self.template.version

    @property
    def answers_with_verdict_alone(self) -> bool:
        """Whether the template starts the answer at the verdict bracket ("Verdict: [["), so
        the judge's whole answer is one verdict letter."""
        return self.template.answer_prefix.rstrip().endswith("[[")

    @property
    def answer_prefix(self) -> str:
        """How the judge's answer starts: the template's prefix and, where that prefix opens
        the principles section, the guidelines' first rule after it, so a small judge starts
        from the team's principle and adds its own. Left out when the rule would read as more
        than principles (a header, a verdict) to this protocol's parser."""
        prefix, lead = self.template.answer_prefix, first_principle(self.guidelines)
        if not prefix or not lead or parse(self.grammar, prefix).section is not Section.PRINCIPLES:
            return prefix
        started = f"{prefix} {lead}"
        state = parse(self.grammar, started)
        if state.section is Section.PRINCIPLES and state.verdict is Verdict.NONE:
            if not state.conflict and state.scores is None and state.answer is None:
                return started
        return prefix

    @abstractmethod
    def rendered(self, pair: PairInput) -> list[tuple[Messages, list[Cut]]]:
        """The judge calls one sample of this pair needs, in this order, each with the cuts its
        prompt made (field names in the pair's terms: "response_a", "prompt", ...)."""

    def conversations(self, pair: PairInput) -> list[Messages]:
        """The judge calls one sample of this pair needs, in this order."""
        return [messages for messages, _ in self.rendered(pair)]

    def cuts(self, pair: PairInput) -> list[Cut]:
        """What the judge did not see of this pair: the cuts of every call, each field once."""
        return _each_field_once(self.rendered(pair))

    def parser(self) -> StreamingParser:
        """A fresh streaming parser for one conversation's output."""
        return StreamingParser(self.grammar)

    def parse(self, generation: Generation) -> ParseState:
        return parse(self.grammar, generation.text, generation.finish_reason)

    def display(self, states: Sequence[ParseState]) -> ParseState:
        """What the UI shows for the conversations' states so far (one per conversation)."""
        return states[-1] if states else ParseState()

    def probes(self, pair: PairInput, generations: Sequence[Generation]) -> list[Probe]:
        """Next-token requests that would add a probability or a missing verdict."""
        return []

    def judgment(
        self,
        pair: PairInput,
        generations: Generations,
        probe_results: ProbeResults = (),
        *,
        sample_index: int = 0,
        judge_version: str = "",
        latency_s: float = 0.0,
    ) -> Judgment:
        """The judgment of `pair` as presented (the caller un-swaps); results in probe order."""
        errors = [g.error or "generation failed" for g in generations if g.finish_reason == "error"]
        judgment = Judgment(
            protocol=self.name,
            prompt_version=self.prompt_version,
            raw_text=generations[0].text if len(generations) == 1 else "",
            error="; ".join(errors) or None,
            prompt_tokens=sum(g.prompt_tokens for g in generations),
            completion_tokens=sum(g.completion_tokens for g in generations),
            latency_s=latency_s,
            judge_version=judge_version,
            sample_index=sample_index,
            pair_id=pair.pair_id,
        )
        self._read(judgment, pair, generations, probe_results)
        return judgment

    @abstractmethod
    def _read(
        self, judgment: Judgment, pair: PairInput, generations: Generations, results: ProbeResults
    ) -> None:
        """Set what the texts and probe results say on `judgment`: sections, status, verdict."""

    def judge(
        self, backend: Backend, pair: PairInput, generations: Sequence[Generation], **meta: object
    ) -> Judgment:
        """`judgment` after running this protocol's probes on `backend`, where it can."""
        probes = self.probes(pair, generations) if backend.supports_logprobs else []
        results: Sequence[ProbeResult] = ()
        if probes:
            results = backend.next_token_logprobs(probes, top_k=PROBE_TOP_K) or ()
        return self.judgment(pair, generations, results, **meta)  # type: ignore[arg-type]


def _result(results: Sequence[ProbeResult], index: int) -> ProbeResult:
    return results[index] if index < len(results) else None


class OneCallProtocol(Protocol):
    """A protocol whose sample is one call that shows the judge both responses; its parsed text
    gives the judgment's sections and status, and `_read_verdict` the rest."""

    def rendered(self, pair: PairInput) -> list[tuple[Messages, list[Cut]]]:
        return [
            self.template.render_with_cuts(
                pair.prompt_text(),
                pair.reference,
                guidelines=self.guidelines,
                response_a=pair.response_a,
                response_b=pair.response_b,
            )
        ]

    def _read(
        self, judgment: Judgment, pair: PairInput, generations: Generations, results: ProbeResults
    ) -> None:
        (generation,) = generations
        state = self.parse(generation)
        judgment.principles, judgment.critique = state.principles, state.critique
        judgment.status = state.status or Status.NO_VERDICT
        probed = _result(results, 0) if self.probes(pair, generations) else None
        self._read_verdict(judgment, state, generation, probed)

    @abstractmethod
    def _read_verdict(
        self, judgment: Judgment, state: ParseState, generation: Generation, probed: ProbeResult
    ) -> None:
        """Set `judgment`'s verdict (and scores or probabilities) from the parsed `state` and the
        probe's result (None where none was asked or answered)."""


class PairwiseProtocol(OneCallProtocol):
    """MT-Bench / Skywork-Critic: principles, a critique of both answers, then [[A]]/[[B]]/[[C]]."""

    name = ProtocolName.PAIRWISE.value
    grammar = PAIRWISE_GRAMMAR

    def probes(self, pair: PairInput, generations: Sequence[Generation]) -> list[Probe]:
        (generation,) = generations
        state = self.parse(generation)
        if generation.finish_reason == "error" or state.conflict:
            return []
        messages = self.conversations(pair)[0]
        if state.verdict is not Verdict.NONE:
            assert state.decision_offset is not None
            if distribution_at(generation, state.decision_offset) is not None:
                return []  # the generation's own log-probabilities already hold it
            return [(messages, generation.text[: state.decision_offset])]
        return [(messages, verdict_prefix(generation.text))]

    def _read_verdict(
        self, judgment: Judgment, state: ParseState, generation: Generation, probed: ProbeResult
    ) -> None:
        if state.verdict is not Verdict.NONE:
            offset = state.decision_offset or 0
            judgment.verdict, judgment.verdict_source = state.verdict, "text"
            distribution = distribution_at(generation, offset) or probed
            if distribution:
                ignore_case = _in_brackets(generation.text, offset)
                probs = choice_probabilities(distribution, _VERDICT_TOKENS, ignore_case=ignore_case)
                letter = {Verdict.A: "A", Verdict.B: "B", Verdict.TIE: "C"}[state.verdict]
                judgment.verdict_probability = verdict_share(probs, letter) if probs else None
                judgment.p_a = verdict_share(probs, "A") if probs else None
        elif probed:
            probs = choice_probabilities(probed, _VERDICT_TOKENS)
            if probs:
                judgment.p_a = verdict_share(probs, "A")
                letter = max(probs, key=lambda c: probs[c])
                draw = sum(1 for p in probs.values() if p == probs[letter]) > 1
                # An exact draw is no reason to prefer A (listed first): a tie, no probability.
                judgment.verdict = Verdict.TIE if draw else _LETTER_VERDICTS[letter]
                judgment.verdict_probability = None if draw else verdict_share(probs, letter)
                judgment.verdict_source = "logprobs"
                if judgment.status is Status.NO_VERDICT:
                    judgment.status = Status.COMPLETE


def verdict_prefix(text: str) -> str:
    """The judge's text continued up to where a verdict letter would come next."""
    stripped = text.rstrip()
    if not stripped:
        return VERDICT_PREFIX
    if stripped.endswith("[["):
        return stripped
    last = stripped.splitlines()[-1]
    header = PAIRWISE_GRAMMAR.header_re.match(last)
    if header and PAIRWISE_GRAMMAR.section_of(header["kw"]) is Section.VERDICT:
        if not last[header.end() :].strip(" *_"):
            return f"{stripped} [["  # it wrote the verdict header and stopped
    return f"{stripped}\n\n{VERDICT_PREFIX}"


class PointwiseProtocol(OneCallProtocol):
    """DeepSeek-GRM / SPCT: specific criteria, an analysis, then integer scores 1-10 per response.

    The verdict follows from the stated scores (higher wins, equal is a tie); no probe is made.
    """

    name = ProtocolName.POINTWISE.value
    grammar = POINTWISE

    def _read_verdict(
        self, judgment: Judgment, state: ParseState, generation: Generation, probed: ProbeResult
    ) -> None:
        if state.scores is not None:
            judgment.scores = (float(state.scores[0]), float(state.scores[1]))
            judgment.verdict, judgment.verdict_source = state.verdict, "scores"


class VerifierProtocol(Protocol):
    """Generative Verifier: each response verified on its own; reward = P("Yes") to the question.

    The reward is read from the log-probabilities at the stated answer, or by probing after the
    question where the text has no answer; without log-probabilities the stated Yes/No gives
    1.0/0.0 (source "text"). The verdict is the higher reward (equal: tie); scores = (rA, rB).
    """

    name = ProtocolName.VERIFIER.value
    grammar = VERIFIER_GRAMMAR
    calls_per_sample = 2

    def rendered(self, pair: PairInput) -> list[tuple[Messages, list[Cut]]]:
        prompt = pair.prompt_text()
        calls = []
        for side, response in (("response_a", pair.response_a), ("response_b", pair.response_b)):
            messages, cuts = self.template.render_with_cuts(
                prompt, pair.reference, guidelines=self.guidelines, response=response
            )
            named = [replace(cut, field=side) if cut.field == "response" else cut for cut in cuts]
            calls.append((messages, named))
        return calls

    def display(self, states: Sequence[ParseState]) -> ParseState:
        """Both verifications in the critique panel, both answers in the verdict panel."""
        if not states:
            return ParseState()
        labelled = list(zip(("Response A", "Response B"), states, strict=False))
        critique = "\n\n".join(f"{lab}: {s.critique}" for lab, s in labelled if s.critique)
        answers = "\n".join(f"{lab}: {s.verdict_text}" for lab, s in labelled if s.verdict_text)
        return replace(states[-1], critique=critique, verdict_text=answers)

    def probes(self, pair: PairInput, generations: Sequence[Generation]) -> list[Probe]:
        return [probe for _, probe in self._wanted(pair, generations)]

    def _wanted(
        self, pair: PairInput, generations: Sequence[Generation]
    ) -> list[tuple[int, Probe]]:
        """(response index, probe) for each response whose P(Yes) is not in its own tokens."""
        wanted = []
        for index, (messages, generation) in enumerate(
            zip(self.conversations(pair), generations, strict=True)
        ):
            state = self.parse(generation)
            if generation.finish_reason == "error" or state.conflict:
                continue
            if state.answer is not None:
                assert state.decision_offset is not None
                if distribution_at(generation, state.decision_offset) is None:
                    wanted.append((index, (messages, generation.text[: state.decision_offset])))
            else:
                wanted.append((index, (messages, question_prefix(generation.text))))
        return wanted

    def _read(
        self, judgment: Judgment, pair: PairInput, generations: Generations, results: ProbeResults
    ) -> None:
        states = [self.parse(g) for g in generations]
        shown = self.display(states)
        judgment.critique = shown.critique
        judgment.raw_text = "\n\n".join(
            f"[Response {label}]\n{g.text}" for label, g in zip("AB", generations, strict=False)
        )
        rewards = self._rewards(pair, generations, states, results)
        stated = [s.answer for s in states]
        if None not in rewards:
            judgment.scores, judgment.verdict_source = (rewards[0], rewards[1]), "logprobs"
            judgment.verdict_probability = _p_first_better(*judgment.scores)
        elif None not in stated:
            judgment.scores = (float(bool(stated[0])), float(bool(stated[1])))
            judgment.verdict_source = "text"
        if judgment.scores is not None:
            judgment.verdict = verdict_from_scores(*judgment.scores)
            if judgment.verdict is Verdict.B and judgment.verdict_probability is not None:
                judgment.verdict_probability = 1.0 - judgment.verdict_probability
            if judgment.verdict is Verdict.TIE:
                judgment.verdict_probability = None
        judgment.status = _combined_status(generations, judgment.verdict)

    def _rewards(
        self,
        pair: PairInput,
        generations: Sequence[Generation],
        states: Sequence[ParseState],
        probe_results: Sequence[ProbeResult],
    ) -> list[float | None]:
        """P(Yes) per response, normalised over Yes/No variants; None where unknown."""
        distributions: list[Mapping[str, float] | None] = []
        for generation, state in zip(generations, states, strict=True):
            own = None
            if state.answer is not None and state.decision_offset is not None:
                own = distribution_at(generation, state.decision_offset)
            distributions.append(own)
        for probe_index, (index, _) in enumerate(self._wanted(pair, generations)):
            distributions[index] = _result(probe_results, probe_index)
        rewards: list[float | None] = []
        for distribution in distributions:
            probs = choice_probabilities(distribution, _ANSWER_TOKENS) if distribution else None
            rewards.append(probs["yes"] if probs else None)
        return rewards


def question_prefix(text: str) -> str:
    """A verification continued up to where "Yes" or "No" comes next."""
    stripped = text.rstrip()
    if not stripped:
        return VERIFIER_QUESTION
    asked = list(QUESTION_RE.finditer(stripped))
    if asked and asked[-1].end() == len(stripped):
        return stripped  # it asked the question and stopped
    return f"{stripped}\n{VERIFIER_QUESTION}"


def _p_first_better(reward_a: float, reward_b: float) -> float | None:
    """P(A correct and B not | exactly one is correct), treating the two rewards as independent."""
    a_only, b_only = reward_a * (1.0 - reward_b), reward_b * (1.0 - reward_a)
    return a_only / (a_only + b_only) if a_only + b_only > 0 else None


def _combined_status(generations: Sequence[Generation], verdict: Verdict) -> Status:
    reasons = {g.finish_reason for g in generations}
    if "error" in reasons:
        return Status.ERROR
    if "length" in reasons:
        return Status.TRUNCATED
    return Status.NO_VERDICT if verdict is Verdict.NONE else Status.COMPLETE


def _each_field_once(calls: Sequence[tuple[Messages, list[Cut]]]) -> list[Cut]:
    found: dict[str, Cut] = {}
    for _, cuts in calls:
        found.update((cut.field, cut) for cut in cuts if cut.field not in found)
    return list(found.values())


def prompt_cuts(
    pair: PairInput,
    protocol: str,
    prompt_version: str | PromptTemplate | None,
    sent: Sequence[Mapping[str, str]] | None = None,
    guidelines: str = "",
) -> list[Cut] | None:
    """What a judgment's prompt cut from `pair`, from the template and budgets that built it.

    `sent`: the messages stored with a judgment in the pair's own order (every call one after
    another, the answer prefill included); when given, they must be what the template builds
    from the pair (with `guidelines`) now. None when that cannot be told: an unknown prompt
    version, or messages that differ from what this template builds.
    """
    try:
        judge = get_protocol(protocol, prompt_version, guidelines)
    except ValueError:
        return None
    calls = judge.rendered(pair)
    if sent is not None:
        built = [message for messages, _ in calls for message in messages]
        if [dict(m) for m in sent if m.get("role") != "assistant"] != built:
            return None
    return _each_field_once(calls)


PROTOCOLS: dict[str, type[Protocol]] = {
    ProtocolName.PAIRWISE: PairwiseProtocol,
    ProtocolName.POINTWISE: PointwiseProtocol,
    ProtocolName.VERIFIER: VerifierProtocol,
}


def get_protocol(
    name: str, prompt_version: str | PromptTemplate | None = None, guidelines: str = ""
) -> Protocol:
    """A protocol by name ("pairwise", "pointwise", "verifier"); its latest prompt by default,
    or the named built-in version, or a template given as data; with a dataset's guidelines."""
    try:
        cls = PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
    return cls(prompt_version, guidelines)
