"""Labeled pairs in, SFT and DPO examples out (pure, exact): the retraining job's data.

A run's labels arrive as `TrainingRecord`s (one per labeled pair), built by
services/training_records.py and carried to the worker process as JSON (`to_json` /
`parse_records`). The rules, per labeled pair (label A, B or tie; "both_bad" and "skip" are
not trained on):
- a judgment whose verdict equals the label is a positive; one that contradicts it (another
  verdict, or no verdict) is a negative (Con-J / GenRM); judgments that errored are ignored;
- a human-corrected critique is a positive (it gets the label's verdict appended if it does not
  state it already);
- a pair with no positive gets up to N more sampled judgments through a hook, and those that
  agree are kept (rejective fine-tuning, as SPCT / STaR); those that disagree become negatives;
- a pair still without a positive gets a verdict-only target (DJPO's "standard judgement"),
  unless the run trains on samples only (`rft`: such a pair contributes nothing);
- a judge-written positive that mostly copies the prompt template's own words is left out
  (judges.copying), whatever the method;
- every example is also produced in the swapped order, with the verdict flipped in the target
  text (judges.swap_text), so response position carries no signal.
Prompts are built by the protocol's own message builder (passed in, so training and inference
read the same prompt) from a pair whose texts were cut to a budget (judges.truncation).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from judges.copying import MOSTLY_COPIED, copied_share
from judges.prompts import PromptTemplate
from judges.swap_text import swap_labels_in_text, swap_scores_in_text
from judges.truncation import CHARACTERS, Measure, truncate_pair
from judges.types import ChatTurn, PairInput, Verdict
from vocabulary import COMPARING_VERDICTS, LabelVerdict

Messages = list[dict[str, str]]
MessageBuilder = Callable[[PairInput], Messages]
# Called once with every pair that still lacks a positive: returns, per pair, judgments in
# JudgmentRecord's JSON form (verdict in the pair's original order, raw_text, swapped, ...).
SampleMore = Callable[[list[PairInput], int], list[list[Mapping[str, Any]]]]

TRAINABLE_LABELS = (Verdict.A, Verdict.B, Verdict.TIE)


# ---------------------------------------------------------------- records in


@dataclass(frozen=True)
class JudgmentRecord:
    """One stored judgment of a pair: verdict in the pair's original order, text as generated.

    Not a judges.types.Judgment (a judge's fresh sample, with parsed sections): this is what
    training reads of a stored one. Its JSON keys are its field names.
    """

    verdict: Verdict
    raw_text: str
    swapped: bool = False  # True: generated with B shown first, so raw_text names it "A"
    protocol: str = "pairwise"
    status: str = "complete"
    judgment_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"verdict": self.verdict.value}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str = "judgment") -> JudgmentRecord:
        """A judgment from its JSON form; only verdict and raw_text are needed."""
        try:
            verdict = Verdict(str(raw.get("verdict", "none")))
        except ValueError as exc:
            raise ValueError(
                f"{where}: verdict {raw.get('verdict')!r} is not A, B, tie or none"
            ) from exc
        return cls(
            verdict=verdict,
            raw_text=str(raw.get("raw_text") or ""),
            swapped=bool(raw.get("swapped", False)),
            protocol=str(raw.get("protocol", "pairwise")),
            status=str(raw.get("status", "complete")),
            judgment_id=raw.get("judgment_id"),
        )


@dataclass(frozen=True)
class TrainingRecord:
    """One labeled pair as a run trains on it: the pair, the person's current label and what the
    judge said about it. Its JSON keys are its field names; `prompt` is a text or chat turns."""

    pair_id: int
    label: str  # "A" | "B" | "tie" | "both_bad" | "skip"
    prompt: str | list[ChatTurn]
    response_a: str
    response_b: str
    reference: str | None = None
    category: str | None = None
    corrected_critique: str | None = None
    label_id: int | None = None
    judgments: tuple[JudgmentRecord, ...] = ()

    @property
    def pair(self) -> PairInput:
        return PairInput(
            self.prompt, self.response_a, self.response_b, self.reference, self.pair_id
        )

    @property
    def trainable(self) -> bool:
        return self.label in COMPARING_VERDICTS

    @property
    def verdict(self) -> Verdict:
        return Verdict(self.label)

    def to_json(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else [asdict(t) for t in self.prompt]
        judgments = [j.to_json() for j in self.judgments]
        return asdict(self) | {"prompt": prompt, "judgments": judgments}

    @classmethod
    def from_json(cls, record: Mapping[str, Any], index: int = 0) -> TrainingRecord:
        """A record from its JSON form; errors name the record and the field."""
        where = f"record {index} (pair {record.get('pair_id')!r})"
        for key in ("pair_id", "prompt", "response_a", "response_b", "label"):
            if record.get(key) is None:
                raise ValueError(f"{where}: missing {key!r}")
        if not isinstance(record["pair_id"], int):
            raise ValueError(f"{where}: pair_id must be an integer")
        label = str(record["label"])
        if label not in LabelVerdict.values():
            known = ", ".join(LabelVerdict.values())
            raise ValueError(f"{where}: label {label!r} is not one of {known}")
        judgments = record.get("judgments") or []
        return cls(
            pair_id=record["pair_id"],
            label=label,
            prompt=_prompt(record["prompt"], where),
            response_a=str(record["response_a"]),
            response_b=str(record["response_b"]),
            reference=record.get("reference"),
            category=record.get("category"),
            corrected_critique=record.get("corrected_critique") or None,
            label_id=record.get("label_id"),
            judgments=tuple(
                JudgmentRecord.from_json(j, f"{where} judgment {k}")
                for k, j in enumerate(judgments)
            ),
        )


def chat_turns(turns: Iterable[Mapping[str, Any]]) -> list[ChatTurn]:
    """Chat turns from their JSON form ({role, content} each)."""
    return [ChatTurn(role=str(t["role"]), content=str(t["content"])) for t in turns]


def _prompt(value: Any, where: str) -> str | list[ChatTurn]:
    if isinstance(value, str):
        return value
    try:
        return chat_turns(value)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{where}: prompt must be a text or a list of {{role, content}}") from exc


def parse_records(records: Iterable[TrainingRecord | Mapping[str, Any]]) -> list[TrainingRecord]:
    """A run's records (objects, or their JSON form read back), with one label per pair."""
    parsed: list[TrainingRecord] = []
    seen: set[int] = set()
    for index, record in enumerate(records):
        is_object = isinstance(record, TrainingRecord)
        item = record if is_object else TrainingRecord.from_json(record, index)
        if item.pair_id in seen:
            raise ValueError(
                f"record {index}: pair {item.pair_id} appears twice (one label per pair)"
            )
        seen.add(item.pair_id)
        parsed.append(item)
    return parsed


# ---------------------------------------------------------------- examples out


def default_render_verdict(verdict: Verdict) -> str:
    """The pairwise prompt's verdict line: [[A]], [[B]], [[C]] for a tie (MT-Bench tokens)."""
    token = {Verdict.A: "[[A]]", Verdict.B: "[[B]]", Verdict.TIE: "[[C]]"}.get(verdict)
    return f"Verdict: {token}" if token else ""


def render_scores_verdict(verdict: Verdict) -> str:
    """A pointwise verdict-only target: fixed scores whose order states the verdict."""
    boxed = {Verdict.A: "8, 3", Verdict.B: "3, 8", Verdict.TIE: "5, 5"}.get(verdict)
    return f"Scores: \\boxed{{{boxed}}}" if boxed else ""


@dataclass(frozen=True)
class TargetFormat:
    """How the protocol being trained writes its answer, so built targets read like its own."""

    render_verdict: Callable[[Verdict], str] = default_render_verdict
    # When given, every target is checked to state the verdict it should (after swapping too);
    # an example that fails is dropped together with its swapped copy.
    parse_verdict: Callable[[str], Verdict] | None = None
    swap_text: Callable[[str], str] = swap_labels_in_text
    critique_header: str = "Critique:"  # put before a human critique that has no header


def target_format(protocol: str) -> TargetFormat:
    """The target format of a two-response protocol, checked with the judge's own parser."""
    from judges.parsing import parse  # pure; imported here to keep this module's imports light

    def parse_verdict(text: str) -> Verdict:
        return parse(protocol, text).verdict

    if protocol == "pairwise":
        return TargetFormat(default_render_verdict, parse_verdict, swap_labels_in_text, "Critique:")
    if protocol == "pointwise":
        return TargetFormat(render_scores_verdict, parse_verdict, swap_scores_in_text, "Analysis:")
    raise ValueError(
        f"cannot build training targets for protocol {protocol!r}: human labels compare two "
        "responses, so only 'pairwise' and 'pointwise' judges can be retrained on them"
    )


@dataclass(frozen=True)
class DataConfig:
    """What the data builder keeps; the numbers are per pair and per order."""

    protocol: str = "pairwise"
    max_prompt_units: int | None = 6000  # budget for prompt + responses (+ reference) texts
    max_per_pair: int = 2  # positives, negatives and DPO pairs kept per pair
    rft_samples: int = 4  # extra samples asked for a pair with no positive
    include_swapped: bool = True
    # The template the judge is trained to read: judge-written positives that mostly copy its
    # fixed text are left out (None: not checked).
    copied_from: PromptTemplate | None = None
    # A pair with no positive trains on its bare verdict (DJPO); rejective fine-tuning turns
    # this off, so such a pair contributes nothing.
    verdict_only_fallback: bool = True


@dataclass(frozen=True)
class SFTExample:
    """One conversation prompt and the judgment the judge should write for it."""

    pair_id: int
    source: str  # "judgment" | "human_critique" | "rejection_sample" | "verdict_only"
    swapped: bool  # True: response B of the pair was shown first
    prompt: Messages
    target: str
    verdict: Verdict  # in the order shown
    judgment_id: int | None = None


@dataclass(frozen=True)
class PreferenceExample:
    """A judgment to prefer and one to avoid for the same prompt (DPO)."""

    pair_id: int
    source: str  # source of the chosen side, as in SFTExample
    swapped: bool
    prompt: Messages
    chosen: str
    rejected: str
    chosen_verdict: Verdict  # in the order shown
    rejected_verdict: Verdict


@dataclass
class TrainingData:
    """Everything built for one run, with counts that say where each example came from."""

    sft: list[SFTExample] = field(default_factory=list)
    preference: list[PreferenceExample] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def sft_rows(self, style: str = "prompt_completion") -> list[dict[str, Any]]:
        """TRL SFT rows: {"prompt", "completion"} (loss on the judgment only) or {"messages"}."""
        rows = []
        for ex in self.sft:
            completion = [{"role": "assistant", "content": ex.target}]
            if style == "messages":
                rows.append({"messages": [*ex.prompt, *completion]})
            elif style == "prompt_completion":
                rows.append({"prompt": ex.prompt, "completion": completion})
            else:
                raise ValueError(f"unknown SFT row style {style!r}")
        return rows

    def preference_rows(self) -> list[dict[str, Any]]:
        """TRL preference rows in conversational form: {"prompt", "chosen", "rejected"}."""
        return [
            {
                "prompt": ex.prompt,
                "chosen": [{"role": "assistant", "content": ex.chosen}],
                "rejected": [{"role": "assistant", "content": ex.rejected}],
            }
            for ex in self.preference
        ]


@dataclass(frozen=True)
class _Target:
    """A target text in one shown order, before prompts are attached."""

    text: str
    verdict: Verdict  # in the shown order
    swapped: bool
    source: str
    judgment_id: int | None = None

    def mirrored(self, fmt: TargetFormat) -> _Target:
        if self.source == "verdict_only":
            text = fmt.render_verdict(self.verdict.swapped())
        else:
            text = fmt.swap_text(self.text)
        return replace(self, text=text, verdict=self.verdict.swapped(), swapped=not self.swapped)

    def states_its_verdict(self, fmt: TargetFormat) -> bool:
        return fmt.parse_verdict is None or fmt.parse_verdict(self.text) == self.verdict


def build_training_data(
    pairs: Sequence[TrainingRecord],
    build_messages: MessageBuilder,
    config: DataConfig = DataConfig(),
    target_format: TargetFormat = TargetFormat(),
    sample_more: SampleMore | None = None,
    measure: Measure = CHARACTERS,
) -> TrainingData:
    """SFT and preference examples for the trainable pairs, in input order, both orders each."""
    data = TrainingData(stats=_empty_stats())
    trainable = [p for p in pairs if p.trainable]
    data.stats["pairs"] = len(trainable)
    data.stats["labels_not_trainable"] = len(pairs) - len(trainable)
    builder = _PoolBuilder(config, target_format, data.stats)
    pools = {p.pair_id: builder.from_record(p) for p in trainable}
    builder.reject_sample(trainable, pools, sample_more)
    for item in trainable:
        pool = pools[item.pair_id]
        if not pool.positives and config.verdict_only_fallback:
            pool.positives.append(_verdict_only(item.verdict, target_format))
        elif not pool.positives:
            data.stats["pairs_without_positive"] += 1
        _count(pool, data.stats)
        _add_examples(data, item, pool, build_messages, config, target_format, measure)
    return data


def _empty_stats() -> dict[str, int]:
    keys = (
        "pairs labels_not_trainable positives_judgment positives_human_critique "
        "positives_rejection_sample positives_copied verdict_only pairs_without_positive "
        "negatives rft_pairs rft_samples judgments_ignored targets_dropped sft_examples "
        "preference_examples"
    )
    return dict.fromkeys(keys.split(), 0)


@dataclass
class _Pool:
    """One pair's sound positive and negative targets, at most max_per_pair of each."""

    positives: list[_Target] = field(default_factory=list)
    negatives: list[_Target] = field(default_factory=list)


@dataclass
class _PoolBuilder:
    """Sorts judgments into positives and negatives, keeping only targets sound in both orders."""

    config: DataConfig
    fmt: TargetFormat
    stats: dict[str, int]

    def from_record(self, item: TrainingRecord) -> _Pool:
        pool = _Pool()
        if item.corrected_critique:
            self._keep(_human_target(item, self.fmt), pool.positives)
        for judgment in item.judgments:
            self._sort(item, judgment, "judgment", pool)
        return pool

    def reject_sample(
        self,
        trainable: Sequence[TrainingRecord],
        pools: dict[int, _Pool],
        sample_more: SampleMore | None,
    ) -> None:
        """Ask for more samples for every pair without a positive; keep those that agree."""
        lacking = [p for p in trainable if not pools[p.pair_id].positives]
        if sample_more is None or not lacking or self.config.rft_samples <= 0:
            return
        results = sample_more([p.pair for p in lacking], self.config.rft_samples)
        if len(results) != len(lacking):
            raise ValueError(f"sample_more returned {len(results)} lists for {len(lacking)} pairs")
        self.stats["rft_pairs"] += len(lacking)
        for item, raw_judgments in zip(lacking, results, strict=True):
            for k, raw in enumerate(raw_judgments):
                judgment = JudgmentRecord.from_json(
                    raw, f"sampled judgment {k} for pair {item.pair_id}"
                )
                judgment = replace(judgment, protocol=self.config.protocol)
                self.stats["rft_samples"] += 1
                self._sort(item, judgment, "rejection_sample", pools[item.pair_id])

    def _sort(
        self, item: TrainingRecord, judgment: JudgmentRecord, source: str, pool: _Pool
    ) -> None:
        if not _usable(judgment, self.config):
            self.stats["judgments_ignored"] += 1
            return
        # The raw text was written for the order it was shown in; its verdict is stored un-swapped.
        shown = judgment.verdict.swapped() if judgment.swapped else judgment.verdict
        target = _Target(judgment.raw_text, shown, judgment.swapped, source, judgment.judgment_id)
        if judgment.verdict != item.verdict:
            self._keep(target, pool.negatives, negative=True)
        elif judgment.status != "complete":
            return  # a truncated "right" answer is not a model answer
        elif self._mostly_copied(judgment.raw_text):
            self.stats["positives_copied"] += 1
        else:
            self._keep(target, pool.positives)

    def _mostly_copied(self, text: str) -> bool:
        """Every method that trains on judge-written positives (sft, rft, dpo, dpo+sft) passes
        them here: a judgment that mostly repeats the template's words got its verdict right
        without reasoning, and training on it would teach the judge to copy. A person's critique
        is not checked; verdict and grpo train on no judgment text."""
        template = self.config.copied_from
        return template is not None and copied_share(text, template) > MOSTLY_COPIED

    def _keep(self, target: _Target, kept: list[_Target], negative: bool = False) -> None:
        if len(kept) >= self.config.max_per_pair or any(_same(target, k) for k in kept):
            return
        sound = self._sound(target, negative)
        if sound is None:
            self.stats["targets_dropped"] += 1  # its text does not say its verdict in both orders
            return
        kept.append(sound)

    def _sound(self, target: _Target, negative: bool) -> _Target | None:
        """The target if its text states its verdict in both orders, else None.

        A negative whose text states no verdict at all (its stored verdict was read from
        log-probabilities) is still a wrong answer: it is kept as a no-verdict negative.
        """
        candidates = [target]
        if negative and self.fmt.parse_verdict is not None:
            candidates.append(replace(target, verdict=Verdict.NONE))
        for candidate in candidates:
            mirror = candidate.mirrored(self.fmt)
            if candidate.states_its_verdict(self.fmt) and mirror.states_its_verdict(self.fmt):
                return candidate
        return None


def _usable(judgment: JudgmentRecord, config: DataConfig) -> bool:
    return (
        judgment.protocol == config.protocol
        and judgment.status != "error"
        and bool(judgment.raw_text.strip())
    )


def _same(first: _Target, second: _Target) -> bool:
    """Duplicates: the same words in the same shown order (greedy samples repeat themselves)."""
    return first.swapped == second.swapped and first.text.split() == second.text.split()


def _count(pool: _Pool, stats: dict[str, int]) -> None:
    for target in pool.positives:
        key = "verdict_only" if target.source == "verdict_only" else f"positives_{target.source}"
        stats[key] += 1
    stats["negatives"] += len(pool.negatives)


def _human_target(item: TrainingRecord, fmt: TargetFormat) -> _Target:
    # A person corrects the critique of the pair as stored (original order).
    text = (item.corrected_critique or "").strip()
    if fmt.critique_header and not _HEADER.match(text):
        text = f"{fmt.critique_header} {text}"
    if fmt.parse_verdict is None or fmt.parse_verdict(text) != item.verdict:
        text = f"{text}\n{fmt.render_verdict(item.verdict)}"
    return _Target(text, item.verdict, False, "human_critique")


_HEADER = re.compile(r"[\s#*_]*(?i:principles|critique|specific criteria|criteria|analysis)\b")


def _verdict_only(label: Verdict, fmt: TargetFormat) -> _Target:
    return _Target(fmt.render_verdict(label), label, False, "verdict_only")


def _add_examples(
    data: TrainingData,
    item: TrainingRecord,
    pool: _Pool,
    build_messages: MessageBuilder,
    config: DataConfig,
    fmt: TargetFormat,
    measure: Measure,
) -> None:
    shown = truncate_pair(item.pair, config.max_prompt_units, measure)
    prompts = {False: build_messages(shown), True: build_messages(shown.swapped())}
    for target in pool.positives:
        for t in _orders(target, config, fmt):
            data.sft.append(
                SFTExample(
                    item.pair_id,
                    t.source,
                    t.swapped,
                    prompts[t.swapped],
                    t.text,
                    t.verdict,
                    t.judgment_id,
                )
            )
    for chosen, rejected in _preference_pairs(item, pool, config, fmt):
        for c, r in zip(_orders(chosen, config, fmt), _orders(rejected, config, fmt), strict=True):
            data.preference.append(
                PreferenceExample(
                    item.pair_id,
                    c.source,
                    c.swapped,
                    prompts[c.swapped],
                    c.text,
                    r.text,
                    c.verdict,
                    r.verdict,
                )
            )
    data.stats["sft_examples"] = len(data.sft)
    data.stats["preference_examples"] = len(data.preference)


def _orders(target: _Target, config: DataConfig, fmt: TargetFormat) -> list[_Target]:
    """The target as kept, then (unless turned off) its mirror for the other order."""
    return [target, target.mirrored(fmt)] if config.include_swapped else [target]


def _preference_pairs(
    item: TrainingRecord, pool: _Pool, config: DataConfig, fmt: TargetFormat
) -> list[tuple[_Target, _Target]]:
    """Chosen/rejected pairs, the rejected side put in the chosen side's shown order.

    Full judgments pair up positive k with negative k (cycling the shorter list, at most
    max_per_pair). A verdict-only positive is contrasted with the verdict-only form of the wrong
    verdict the judge gave (else the opposite one), so DPO still learns which verdict is right.
    """
    positives, negatives = pool.positives, pool.negatives
    if not positives:
        return []  # nothing to prefer (a rejective run's pair whose samples all disagreed)
    if positives[0].source == "verdict_only":
        given = [n.verdict.swapped() if n.swapped else n.verdict for n in negatives]
        wrong = next((v for v in given if v in TRAINABLE_LABELS), _other_verdict(item.verdict))
        return [(positives[0], _Target(fmt.render_verdict(wrong), wrong, False, "verdict_only"))]
    if not negatives:
        return []
    pairs = []
    for k in range(min(config.max_per_pair, max(len(positives), len(negatives)))):
        chosen, rejected = positives[k % len(positives)], negatives[k % len(negatives)]
        if rejected.swapped != chosen.swapped:
            rejected = rejected.mirrored(fmt)
        pairs.append((chosen, rejected))
    return pairs


def _other_verdict(label: Verdict) -> Verdict:
    return label.swapped() if label in (Verdict.A, Verdict.B) else Verdict.A
