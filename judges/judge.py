"""The judge orchestrator the app and the CLI call: stream one pair's judgment, or judge many.

`stream_judgment` runs a pair's k x (1 + swap) samples one after another and streams each through
the protocol's parser, for a UI that fills its principles / critique / verdict panels live.
`judge_pairs` runs many pairs through `Backend.generate_batch`. Neither raises on a backend
failure: the sample keeps its partial text and gets status error with the message, and the run
goes on, so the UI and a long batch always finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from judges.backends import base
from judges.parsing import ParseState
from judges.prompts import PROMPTS
from judges.protocols import PROBE_TOP_K, Probe, ProbeResult, Protocol, get_protocol
from judges.scaling import aggregate, unswap
from judges.types import AggregateJudgment, Aggregation, Judgment, PairInput, Section
from vocabulary import DEFAULT_MAX_NEW_TOKENS, DEFAULT_REPETITION_PENALTY, ProtocolName

log = logging.getLogger(__name__)

SAMPLING_TEMPERATURE = 0.7  # used when k > 1 is asked at temperature 0
TOP_LOGPROBS = 10  # alternatives kept per generated token, where the backend offers them
# Fields JudgeOptions gained after options were first stored (a job's, a training run's), with
# the value the judge ran with before: stored options without them read back as they ran, not
# with today's default (judgments made without a penalty are continued without one).
ADDED_FIELDS: dict[str, Any] = {"repetition_penalty": 1.0}
# The options besides protocol, prompt, k and swap that change what a judgment says; a stored
# run records them, and `grm compare` reuses a run only where they match.
SAMPLING_OPTIONS = ("temperature", "repetition_penalty", "max_new_tokens", "seed", "logprobs")


class JudgeOptions(BaseModel):
    """How to judge: protocol, samples, order swap, sampling. Unknown keys are refused.

    k > 1 at temperature 0 would repeat one greedy answer k times, so such options are raised to
    temperature 0.7 (SAMPLING_TEMPERATURE) when they are made; the stored options show it.
    Sample i of a pair uses seed `seed + i`, in streaming and in batches alike.
    `logprobs`: where the backend gives log-probabilities, read each verdict's probability and,
    when the text states none, read the verdict from them (verdict_source "logprobs").
    `aggregate`: how a pair's samples and orders become one verdict (judges.scaling): "mean"
    keeps the judge's evidence (mean log-odds, score difference, P(Yes)), "vote" counts stated
    verdicts; "mean" falls back to "vote" for a pair whose verdicts came without probabilities.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: ProtocolName = ProtocolName.PAIRWISE
    # None: the protocol's latest prompt; a name not built in is a stored version, which the
    # caller resolves into the protocol it passes to stream_judgment / judge_pairs.
    prompt_version: str | None = None
    k: int = Field(1, ge=1, le=64)
    swap: bool = False
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    repetition_penalty: float = Field(DEFAULT_REPETITION_PENALTY, ge=1.0, le=2.0)
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=32768)
    seed: int = 0
    logprobs: bool = True
    aggregate: Aggregation = Aggregation.MEAN

    @model_validator(mode="before")
    @classmethod
    def _sample_when_voting(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        try:
            voting = int(data.get("k", 1)) > 1 and float(data.get("temperature", 0.0)) == 0.0
        except (TypeError, ValueError):
            return data  # the field validation says what is wrong
        return {**data, "temperature": SAMPLING_TEMPERATURE} if voting else data

    @model_validator(mode="after")
    def _prompt_fits_protocol(self) -> JudgeOptions:
        template = PROMPTS.get(self.prompt_version) if self.prompt_version else None
        if template is not None and template.name != self.protocol:
            raise ValueError(
                f"prompt_version {self.prompt_version!r} is for {template.name}, "
                f"not {self.protocol}"
            )
        return self

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> JudgeOptions:
        """Options read back from the database, filled as they ran (ADDED_FIELDS)."""
        return cls(**stored_as_ran(data))

    def sampling(self) -> dict[str, Any]:
        """The SAMPLING_OPTIONS values, as a judgment run stores them."""
        return self.model_dump(include=set(SAMPLING_OPTIONS))

    def plan(self) -> list[tuple[int, bool]]:
        """(sample_index, swapped) of every sample of one pair, in the order they run."""
        orders = (False, True) if self.swap else (False,)
        return [(index, swapped) for index in range(self.k) for swapped in orders]

    def generation_options(
        self, backend: base.Backend, sample_index: int, verdict_alone: bool = False
    ) -> base.GenerationOptions:
        """`verdict_alone`: the answer is one verdict letter (a verdict-only prompt). It has
        nothing to repeat, and the letters it may write are in its prompt, so a penalty would
        only push it to a letter it was not offered: measured on the embedded judge, "[[D"
        for 11 of 48 verdicts at 1.1 (24 pairs, both orders). It decodes without one."""
        wants_logprobs = self.logprobs and backend.supports_logprobs
        # A backend that cannot apply a penalty (an OpenAI-compatible server) decodes as is.
        penalized = backend.supports_repetition_penalty and not verdict_alone
        return base.GenerationOptions(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            repetition_penalty=self.repetition_penalty if penalized else 1.0,
            seed=self.seed + sample_index,
            top_logprobs=TOP_LOGPROBS if wants_logprobs else 0,
        )


def stored_as_ran(data: dict[str, Any]) -> dict[str, Any]:
    """A stored options dict with the fields added since it was stored, as it ran."""
    return {**ADDED_FIELDS, **data}


@dataclass(frozen=True)
class StreamUpdate:
    """What the UI shows now: the current sample's sections so far.

    `judgment` is set on the update that ends a sample (in the original order, un-swapped);
    the update that ends the last sample also carries `aggregate`. The texts are the judge's own:
    in a swapped sample "Response A" is the pair's response B.
    """

    section: Section | None
    principles: str
    critique: str
    verdict_text: str
    sample_index: int
    swapped: bool
    sample_count: int
    judgment: Judgment | None = None
    aggregate: AggregateJudgment | None = None


def stream_judgment(
    backend: base.Backend,
    pair: PairInput,
    options: JudgeOptions,
    judge_version: str = "",
    protocol: Protocol | None = None,
) -> Iterator[StreamUpdate]:
    """Judge one pair sample by sample, yielding an update for every piece of text.

    `protocol`: the options' protocol built with a stored template or a dataset's guidelines
    (default: built from the options alone)."""
    protocol = _protocol(options, protocol)
    plan = options.plan()
    prefill = _prefill(protocol, backend)
    judgments: list[Judgment] = []
    for position, (sample_index, swapped) in enumerate(plan):
        shown = pair.swapped() if swapped else pair
        started = time.perf_counter()
        gen_options = options.generation_options(
            backend, sample_index, protocol.answers_with_verdict_alone
        )
        states: list[ParseState] = []
        generations: list[base.Generation] = []
        sent: list[base.Messages] = []
        for messages in protocol.conversations(shown):
            parser = protocol.parser()
            parser.feed(prefill)
            sent.append(_started(messages, prefill))
            for item in _stream_safely(backend, sent[-1], gen_options):
                if isinstance(item, base.Generation):
                    generations.append(_with_prefill(item, prefill))
                    break
                shown_state = protocol.display([*states, parser.feed(item)])
                yield _update(shown_state, sample_index, swapped, len(plan))
            states.append(protocol.parse(generations[-1]))
        sample = _Sample(shown, sample_index, swapped, generations, sent=sent)
        (judgment,) = _finish(protocol, backend, options, [sample], judge_version)
        judgment.latency_s = time.perf_counter() - started  # generation and probes
        judgments.append(judgment)
        last = position == len(plan) - 1
        yield _update(
            protocol.display(states),
            sample_index,
            swapped,
            len(plan),
            judgment=judgment,
            aggregate=aggregate(judgments, options.aggregate) if last else None,
        )


def warm_judgment(
    backend: base.Backend, pair: PairInput, options: JudgeOptions, protocol: Protocol | None = None
) -> bool:
    """Let the backend read the first prompt a judgment of `pair` will send, before the click."""
    protocol = _protocol(options, protocol)
    first = protocol.conversations(pair)[0]
    return backend.warm(_started(first, _prefill(protocol, backend)))


def judge_pairs(
    backend: base.Backend,
    pairs: Sequence[PairInput],
    options: JudgeOptions,
    judge_version: str = "",
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    protocol: Protocol | None = None,
) -> list[AggregateJudgment]:
    """Judge many pairs through batched generation; one aggregate per pair, in order.

    Requests are grouped in blocks of pairs: for each sample index, the block's requests (both
    orders, every conversation) go out in batches of `backend.max_batch_size`, so one batch holds
    several pairs and never two copies of one conversation with one seed. `on_progress(done,
    total)` is called after each block; `should_stop()` is checked before each batch, and a
    stopped run returns the pairs finished so far (a prefix of `pairs`). In a batch, each
    request's latency is the batch's wall time shared equally among its requests.
    `protocol` as for stream_judgment.
    """
    protocol = _protocol(options, protocol)
    total = len(pairs)
    results: list[AggregateJudgment] = []
    per_pair = len(options.plan())
    _report(on_progress, 0, total)
    for block in _blocks(pairs, options, protocol, backend.max_batch_size):
        samples = _run_block(backend, protocol, options, block, should_stop)
        if samples is None:
            log.info("judging stopped after %d of %d pairs", len(results), total)
            break
        judgments = _finish(protocol, backend, options, samples, judge_version)
        for pair_index in range(len(block)):
            results.append(
                aggregate(
                    judgments[pair_index * per_pair : (pair_index + 1) * per_pair],
                    options.aggregate,
                )
            )
        _report(on_progress, len(results), total)
    return results


# --- internals ---------------------------------------------------------------------------------


@dataclass
class _Sample:
    """One sample of one pair as presented to the judge (possibly swapped), and its outputs."""

    pair: PairInput
    sample_index: int
    swapped: bool
    generations: list[base.Generation] = field(default_factory=list)
    latency_s: float = 0.0
    sent: list[base.Messages] = field(
        default_factory=list
    )  # each call's messages, prefill included


def _update(
    state: ParseState, sample_index: int, swapped: bool, count: int, **done: Any
) -> StreamUpdate:
    return StreamUpdate(
        section=state.section,
        principles=state.principles,
        critique=state.critique,
        verdict_text=state.verdict_text,
        sample_index=sample_index,
        swapped=swapped,
        sample_count=count,
        **done,
    )


def _protocol(options: JudgeOptions, given: Protocol | None) -> Protocol:
    """The protocol to judge with: `given` when it is the options' (protocol and version),
    else one built from the options."""
    if given is None:
        return get_protocol(options.protocol, options.prompt_version)
    wanted = options.prompt_version or given.prompt_version
    if (given.name, given.prompt_version) != (options.protocol, wanted):
        raise ValueError(
            f"protocol {given.name} with prompt {given.prompt_version} given for options "
            f"{options.protocol} with prompt {options.prompt_version}"
        )
    return given


def _prefill(protocol: Protocol, backend: base.Backend) -> str:
    """The start of the answer the judge continues from, where the backend can continue one."""
    return protocol.answer_prefix if backend.supports_prefill else ""


def _started(messages: base.Messages, prefill: str) -> base.Messages:
    """The conversation with the judge's answer already begun (a final assistant message)."""
    return [*messages, {"role": "assistant", "content": prefill}] if prefill else messages


def _with_prefill(generation: base.Generation, prefill: str) -> base.Generation:
    """The judge's whole answer: the prefill, then what it wrote (also as a first token, so
    text offsets and token log-probabilities still line up)."""
    if not prefill:
        return generation
    tokens = generation.token_logprobs
    if tokens is not None:
        tokens = [base.TokenLogprob(prefill, 0.0), *tokens]
    return replace(generation, text=prefill + generation.text, token_logprobs=tokens)


def _stream_safely(
    backend: base.Backend, messages: base.Messages, options: base.GenerationOptions
) -> Iterator[str | base.Generation]:
    """The backend's stream, ending in a Generation even when the backend fails mid-way."""
    pieces: list[str] = []
    try:
        for item in backend.stream(messages, options):
            if isinstance(item, base.Generation):
                yield item
                return
            pieces.append(item)
            yield item
        error = "the backend ended its stream without a summary"
    except base.BackendError as exc:
        error = str(exc)
    except Exception as exc:  # a judge must never take the UI down; keep the trace in the log
        log.exception("judge backend %s failed", backend.name)
        error = f"{type(exc).__name__}: {exc}"
    log.warning("judge generation failed: %s", error)
    yield base.Generation(text="".join(pieces), finish_reason="error", error=error)


def _generate_safely(
    backend: base.Backend, conversations: list[base.Messages], options: base.GenerationOptions
) -> list[base.Generation]:
    """One batched call; a failure marks every request of the batch as an error."""
    try:
        generations = backend.generate_batch(conversations, options)
        if len(generations) != len(conversations):
            raise base.BackendError(
                f"backend answered {len(generations)} of {len(conversations)} requests"
            )
        return generations
    except Exception as exc:
        if not isinstance(exc, base.BackendError):
            log.exception("judge backend %s failed on a batch", backend.name)
        error = str(exc) if isinstance(exc, base.BackendError) else f"{type(exc).__name__}: {exc}"
        return [base.Generation(text="", finish_reason="error", error=error) for _ in conversations]


def _probe_safely(backend: base.Backend, probes: list[Probe]) -> list[ProbeResult]:
    """Next-token log-probabilities in batches; any failure just means no probability."""
    results: list[ProbeResult] = []
    size = max(1, backend.max_batch_size)
    for start in range(0, len(probes), size):
        chunk = probes[start : start + size]
        try:
            answered = backend.next_token_logprobs(chunk, top_k=PROBE_TOP_K)
        except Exception as exc:  # the judgment stands without a probability
            log.warning("next-token log-probabilities failed: %s", exc)
            answered = None
        if answered is None or len(answered) != len(chunk):
            answered = [None] * len(chunk)
        results.extend(answered)
    return results


def _finish(
    protocol: Protocol,
    backend: base.Backend,
    options: JudgeOptions,
    samples: list[_Sample],
    judge_version: str,
) -> list[Judgment]:
    """Judgments of finished samples: probes batched over all of them, then un-swapped."""
    probing = options.logprobs and backend.supports_logprobs
    wanted = [protocol.probes(s.pair, s.generations) if probing else [] for s in samples]
    flat = [probe for probes in wanted for probe in probes]
    answered = _probe_safely(backend, flat) if flat else []
    judgments, cursor = [], 0
    for sample, probes in zip(samples, wanted, strict=True):
        results = answered[cursor : cursor + len(probes)]
        cursor += len(probes)
        judgment = protocol.judgment(
            sample.pair,
            sample.generations,
            results,
            sample_index=sample.sample_index,
            judge_version=judge_version,
            latency_s=sample.latency_s,
        )
        judgment.prompt_messages = [dict(m) for messages in sample.sent for m in messages]
        judgments.append(unswap(judgment) if sample.swapped else judgment)
    return judgments


def _blocks(
    pairs: Sequence[PairInput], options: JudgeOptions, protocol: Protocol, batch_size: int
) -> Iterator[Sequence[PairInput]]:
    """Consecutive groups of pairs whose requests for one sample index fill about one batch."""
    per_sample = (2 if options.swap else 1) * protocol.calls_per_sample
    size = max(1, max(1, batch_size) // per_sample)
    for start in range(0, len(pairs), size):
        yield pairs[start : start + size]


def _run_block(
    backend: base.Backend,
    protocol: Protocol,
    options: JudgeOptions,
    block: Sequence[PairInput],
    should_stop: Callable[[], bool] | None,
) -> list[_Sample] | None:
    """Generate every sample of a block of pairs (pair-major order); None when stopped."""
    samples = [
        _Sample(pair.swapped() if swapped else pair, index, swapped)
        for pair in block
        for index, swapped in options.plan()
    ]
    size = max(1, backend.max_batch_size)
    prefill = _prefill(protocol, backend)
    for sample_index in range(options.k):
        requests = [
            (sample, _started(messages, prefill))
            for sample in samples
            if sample.sample_index == sample_index
            for messages in protocol.conversations(sample.pair)
        ]
        for start in range(0, len(requests), size):
            if should_stop is not None and should_stop():
                return None
            chunk = requests[start : start + size]
            started = time.perf_counter()
            generations = _generate_safely(
                backend,
                [messages for _, messages in chunk],
                options.generation_options(
                    backend, sample_index, protocol.answers_with_verdict_alone
                ),
            )
            share = (time.perf_counter() - started) / len(chunk)
            for (sample, messages), generation in zip(chunk, generations, strict=True):
                sample.sent.append(messages)
                sample.generations.append(_with_prefill(generation, prefill))
                sample.latency_s += share
    return samples


def _report(on_progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if on_progress is not None:
        on_progress(done, total)
