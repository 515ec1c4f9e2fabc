"""The retraining job: labels in, a new judge version out (verdict, SFT, RFT, DPO, DPO+SFT,
GRPO), in TRL's shape: a LoRA adapter, or the whole model when every weight trains.

A `TrainConfig` dataclass with help text (judges.train_config), `make_parser` that turns its
fields into the `grm train` options, and `main(plan, ...)`. `plan_run` makes every check a run
needs, once, before anything is stored or any model loads; `main` and `run_job` take the
`RunPlan` it returns as it is. `run_job` adds the evaluation of the old and the new version on
the held-out pairs. The job never touches the database: it receives records
(judges.training_data.TrainingRecord) and reports through callbacks; services record the run.

Nothing half-made is left behind: the version is written to a temporary directory and renamed
into `output_dir` only when complete (judges.trainer), and an existing `output_dir` is never
overwritten.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from judges.split import Split, split_pairs
from judges.train_config import (
    TrainConfig,
    TrainingRefused,
    add_dataclass_arguments,
    dataclass_from_args,
)
from judges.trainer import (
    AdapterInputs,
    ProgressCallback,
    TrainerMaker,
    TrainingDiverged,
    check_parent,
    load_tokenizer,
    train_and_save,
    trl_trainer,
)
from judges.training_data import (
    DataConfig,
    MessageBuilder,
    Messages,
    SampleMore,
    TrainingData,
    TrainingRecord,
    build_training_data,
    parse_records,
    target_format,
)
from judges.truncation import token_length
from judges.types import PairInput
from judges.verdict_training import VERDICT_PROMPT, verdict_rows, verdict_trainer
from vocabulary import TrainingMethod

__all__ = [
    "RunPlan",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingRefused",
    "config_from_args",
    "load_tokenizer",
    "main",
    "make_parser",
    "plan_run",
    "run_job",
]

log = logging.getLogger(__name__)

VERDICT_NEW_TOKENS = 4  # "A]]" and a newline: the verdict-only judge's whole answer

BUDGET_SLACK_TOKENS = 16
Records = Sequence[TrainingRecord | Mapping[str, Any]]


@dataclass(frozen=True)
class RunPlan:
    """A run that passed every check: its config, the usable labeled pairs and their split."""

    config: TrainConfig
    records: tuple[TrainingRecord, ...]  # A, B or tie labels only
    split: Split

    @classmethod
    def stored(cls, config: TrainConfig, records: Records, split: Mapping[str, Any]) -> RunPlan:
        """The plan a run stored when `plan_run` passed it (its config, records and split),
        read back in the worker process without checking it again."""
        usable = tuple(r for r in parse_records(records) if r.trainable)
        return cls(config, usable, Split.from_record(split))

    def training_side(self) -> list[TrainingRecord]:
        train_ids = set(self.split.train)
        return [r for r in self.records if r.pair_id in train_ids]


@dataclass
class TrainResult:
    """What a finished run produced: the adapter, the split, the data and the training figures."""

    adapter_path: Path
    method: str
    split: Split
    data_stats: dict[str, int]
    train_examples: int
    steps: int
    train_loss: float | None
    runtime_s: float
    examples_per_s: float
    bf16: bool
    log_history: list[dict[str, Any]] = field(default_factory=list)
    metrics_before: dict[str, Any] | None = None
    metrics_after: dict[str, Any] | None = None
    # The two evaluations paired (judges.evaluation.before_after): difference, CI, McNemar p.
    paired: dict[str, Any] | None = None

    def as_record(self) -> dict[str, Any]:
        """Plain JSON-able values for the training_run row."""
        record = asdict(self)
        record["adapter_path"] = str(self.adapter_path)
        record["split"] = self.split.as_record()
        return record


# ---------------------------------------------------------------- checks before anything heavy


def plan_run(
    config: TrainConfig, records: Records, parent_adapter_path: str | Path | None = None
) -> RunPlan:
    """Check the config, the version it continues and the labels, and split them: the run's
    plan (its learning rate filled in), or TrainingRefused.

    The one place a run is checked; it loads nothing, so it runs before anything is stored.
    """
    config = config.resolved()
    config.validate()
    check_parent(config, parent_adapter_path)
    usable = check_labels(parse_records(records), config.min_labels)
    return RunPlan(config, tuple(usable), prepare_split(usable, config))


def check_labels(records: Sequence[TrainingRecord], min_labels: int) -> list[TrainingRecord]:
    """The trainable labels, or TrainingRefused when there are too few or only one class."""
    usable = [r for r in records if r.trainable]
    if len(usable) < min_labels:
        raise TrainingRefused(
            f"only {len(usable)} usable labels (A, B or tie; {len(records) - len(usable)} others "
            f"not counted); at least {min_labels} are needed to train and evaluate"
        )
    classes = sorted({r.label for r in usable})
    if len(classes) < 2:
        raise TrainingRefused(
            f"every usable label is {classes[0]!r}: a judge trained on one class learns to "
            "always say it; label some pairs the other way first"
        )
    return usable


def prepare_split(records: Sequence[TrainingRecord], config: TrainConfig) -> Split:
    """The run's split; refuses when the training side would have too little to learn from."""
    prompts = [(r.pair_id, r.pair.prompt_text()) for r in records]
    split = split_pairs(prompts, config.heldout_share, config.seed)
    if not split.train or not split.heldout:
        raise TrainingRefused(
            f"{len(records)} labels cannot be split into training and held-out pairs "
            f"with heldout_share={config.heldout_share}"
        )
    return split


def refuse_existing_output(config: TrainConfig) -> None:
    """A run never overwrites: checked where the adapter is about to be made."""
    if Path(config.output_dir).exists():
        raise TrainingRefused(
            f"output_dir {config.output_dir} already exists; a run never overwrites"
        )


def protocol_messages(protocol: str) -> MessageBuilder:
    """The judge's own prompt for a pair, so training reads exactly what inference reads."""
    from judges.protocols import get_protocol

    judge_protocol = get_protocol(protocol)
    if judge_protocol.calls_per_sample != 1:
        raise TrainingRefused(f"protocol {protocol!r} asks the judge more than once per pair")

    def build(pair: PairInput) -> Messages:
        (messages,) = judge_protocol.conversations(pair)
        return messages

    return build


# ---------------------------------------------------------------- the run


def main(
    plan: RunPlan,
    base_model_path: str | Path,
    on_progress: ProgressCallback | None = None,
    *,
    parent_adapter_path: str | Path | None = None,
    sample_more: SampleMore | None = None,
    build_messages: MessageBuilder | None = None,
) -> TrainResult:
    """Train a judge version on the plan's training side; return where it is and how it went.

    `parent_adapter_path`: the active judge version's weights, trained further (a new adapter
    stands alone on the base model; a whole model is trained on); None starts from the base.
    `sample_more`: the judge's sampler (see training_data), which the rft method needs and
    sft / dpo use for pairs lacking a positive.
    """
    config = plan.config.resolved()  # a plan made without plan_run may leave the rate unset
    plan = replace(plan, config=config)
    refuse_existing_output(config)
    check_parent(config, parent_adapter_path)
    if config.method == TrainingMethod.RFT and sample_more is None:
        raise TrainingRefused("the rft method trains on the judge's own samples: give a sampler")
    tokenizer = load_tokenizer(base_model_path)
    rows, stats, make_trainer = method_rows(plan, tokenizer, build_messages, sample_more)
    if not rows:
        raise TrainingRefused(
            f"no {config.method} examples could be built from {len(plan.split.train)} "
            "training pairs"
        )
    log.info("training %s on %d examples: %s", config.method, len(rows), stats)
    inputs = AdapterInputs(config, rows, tokenizer, Path(base_model_path), parent_adapter_path)
    figures = train_and_save(inputs, make_trainer, on_progress)
    return TrainResult(
        adapter_path=Path(config.output_dir),
        method=config.method,
        split=plan.split,
        data_stats=stats,
        train_examples=len(rows),
        **figures,
    )


def method_rows(
    plan: RunPlan,
    tokenizer: Any,
    build_messages: MessageBuilder | None,
    sample_more: SampleMore | None,
) -> tuple[list[dict[str, Any]], dict[str, int], TrainerMaker]:
    """The run's method as trainer rows, counts of where they came from, and its trainer."""
    config = plan.config
    if config.method == TrainingMethod.VERDICT:
        rows = verdict_rows(plan.training_side(), tokenizer, config)
        stats = {"pairs": len(plan.split.train), "verdict_examples": len(rows)}
        return rows, stats, verdict_trainer
    build_messages = build_messages or protocol_messages(config.protocol)
    if config.method == TrainingMethod.GRPO:
        from judges.grpo_training import grpo_rows, grpo_trainer

        budget = content_budget(tokenizer, build_messages, config.max_prompt_tokens)
        side = plan.training_side()
        rows = grpo_rows(side, build_messages, config, budget, token_length(tokenizer))
        return rows, {"pairs": len(side), "grpo_prompts": len(rows)}, grpo_trainer
    data = prepare_data(plan, tokenizer, build_messages, sample_more)
    sft = config.method in (TrainingMethod.SFT, TrainingMethod.RFT)
    return (data.sft_rows() if sft else data.preference_rows()), data.stats, trl_trainer


def prepare_data(
    plan: RunPlan,
    tokenizer: Any,
    build_messages: MessageBuilder,
    sample_more: SampleMore | None = None,
) -> TrainingData:
    """The run's examples: training-side pairs only, prompts cut to the token budget.

    For rft the stored judgments and critiques are set aside, so every pair is sampled afresh and
    trains only on its samples that agree with the label (none agrees: the pair adds nothing).
    """
    from judges.protocols import get_protocol

    config = plan.config
    rejective = config.method == TrainingMethod.RFT
    budget = content_budget(tokenizer, build_messages, config.max_prompt_tokens)
    data_config = DataConfig(
        protocol=config.protocol,
        max_prompt_units=budget,
        max_per_pair=config.max_per_pair,
        rft_samples=config.rft_samples,
        include_swapped=config.include_swapped,
        copied_from=get_protocol(config.protocol).template,
        verdict_only_fallback=not rejective,
    )
    records = plan.training_side()
    if rejective:
        records = [replace(r, judgments=(), corrected_critique=None) for r in records]
    return build_training_data(
        records,
        build_messages,
        data_config,
        target_format(config.protocol),
        sample_more,
        token_length(tokenizer),
    )


def content_budget(tokenizer: Any, build_messages: MessageBuilder, max_prompt_tokens: int) -> int:
    """Tokens left for prompt and responses once the protocol's template is counted."""
    empty = build_messages(PairInput(prompt="", response_a="", response_b=""))
    text = tokenizer.apply_chat_template(empty, tokenize=False, add_generation_prompt=True)
    # Slack: texts cut and counted alone can tokenize a few tokens longer once joined.
    overhead = len(tokenizer.encode(text, add_special_tokens=False)) + BUDGET_SLACK_TOKENS
    budget = max_prompt_tokens - overhead
    if budget < 32:
        raise TrainingRefused(
            f"max_prompt_tokens={max_prompt_tokens} leaves {budget} tokens for the texts after "
            f"the {overhead}-token prompt template; raise it"
        )
    return budget


# ---------------------------------------------------------------- the whole job


def run_job(
    plan: RunPlan,
    base_model_path: str | Path,
    make_backend: Callable[[Path | None], Any],
    judge_options: Any,
    on_progress: ProgressCallback | None = None,
    *,
    parent_adapter_path: str | Path | None = None,
) -> TrainResult:
    """Evaluate the active version, train, evaluate the new one: the before/after of one run.

    `make_backend(adapter_path)` opens a judge on the base model with that adapter (None: the
    base alone); `judge_options` (a JudgeOptions) is used for both evaluations, so they compare
    like with like. The active version's backend also draws the rejective fine-tuning samples.
    Refusals come before any model is loaded. Progress dicts carry a "phase": evaluating_before,
    sampling, training, evaluating_after.
    """
    from judges.evaluation import before_after, evaluate_judge, heldout_inputs, make_sampler

    config = plan.config
    judge_options = evaluation_options(config, judge_options)
    if judge_options.protocol != config.protocol:
        raise TrainingRefused(
            f"the judge options use protocol {judge_options.protocol!r} but the run trains "
            f"{config.protocol!r}; evaluate with the protocol being trained"
        )
    refuse_existing_output(config)
    inputs, labels, categories = heldout_inputs(plan.records, plan.split.heldout)

    def evaluate(backend: Any, phase: str) -> dict[str, Any]:
        return evaluate_judge(
            backend,
            inputs,
            labels,
            judge_options,
            categories=categories,
            seed=config.seed,
            on_progress=_phase_reporter(on_progress, phase),
        )

    parent = Path(parent_adapter_path) if parent_adapter_path else None
    backend = make_backend(parent)
    try:
        before = evaluate(backend, "evaluating_before")
        sampler = make_sampler(backend, judge_options) if config.rft_samples > 0 else None
        sample_more = _announced(sampler, on_progress) if sampler else None
        result = main(
            plan, base_model_path, on_progress, parent_adapter_path=parent, sample_more=sample_more
        )
    finally:
        backend.close()
    backend = make_backend(result.adapter_path)
    try:
        result.metrics_after = evaluate(backend, "evaluating_after")
    finally:
        backend.close()
    result.metrics_before = before
    result.paired = before_after(before, result.metrics_after)
    return result


def evaluation_options(config: TrainConfig, judge_options: Any) -> Any:
    """The options both evaluations judge with: the verdict method's judge answers with its
    verdict alone (the position it was trained on), so it is measured there, before and after."""
    if config.method != TrainingMethod.VERDICT:
        return judge_options
    update = {"prompt_version": VERDICT_PROMPT, "max_new_tokens": VERDICT_NEW_TOKENS}
    return judge_options.model_copy(update=update)


def _phase_reporter(on_progress: ProgressCallback | None, phase: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress({"phase": phase, "done": done, "total": total})

    return report


def _announced(sample_more: SampleMore, on_progress: ProgressCallback | None) -> SampleMore:
    def sample(pairs: list[PairInput], n: int) -> list[list[Mapping[str, Any]]]:
        if on_progress is not None:
            on_progress({"phase": "sampling", "pairs": len(pairs), "samples_per_pair": n})
        return sample_more(pairs, n)

    return sample


# ---------------------------------------------------------------- command line


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The training options, one per TrainConfig field (name, type, default, help, choices).

    Given the `grm` command's subparsers it adds the `train` command there (cli.py adds what is
    not the run's config, such as --wait); without, a parser of its own.
    """
    description = (
        "Retrain the judge on the labels (every weight, or a LoRA adapter), measured on "
        "held-out labeled pairs before and after. The new judge version is registered, not "
        "activated."
    )
    if subparsers is None:
        parser = argparse.ArgumentParser(prog="grm train", description=description)
    else:
        help_text = "retrain the judge on the labels (a new judge version)"
        parser = subparsers.add_parser("train", help=help_text, description=description)
    add_dataclass_arguments(parser, TrainConfig)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the options of `make_parser` describe."""
    return dataclass_from_args(TrainConfig, args)
