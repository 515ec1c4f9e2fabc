"""The retraining job's model side: labels in, a LoRA adapter out (TRL SFT / DPO / DPO+SFT).

Shaped like TRL's scripts: a `TrainConfig` dataclass with help text, `main(config, ...)` and a
parser. It never touches the database: it receives plain records (see
`judges.training_data.parse_records`) and reports through callbacks; services.py records the run.
`run_job` adds the evaluation of the old and the new version on the held-out pairs.

Nothing half-made is left behind: the adapter is written to a temporary directory and renamed
into `output_dir` only when complete, and an existing `output_dir` is never overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from judges.split import Split, split_pairs
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
from vocabulary import TrainingMethod

log = logging.getLogger(__name__)

BUDGET_SLACK_TOKENS = 16
ProgressCallback = Callable[[dict[str, Any]], None]


class TrainingRefused(ValueError):
    """The run cannot start as asked; the message says why, for a person."""


@dataclass
class TrainConfig:
    """Everything one retraining run is told; stored with the run as `dataclasses.asdict`."""

    method: str = field(
        default="dpo",
        metadata={
            "help": "sft: rejective fine-tuning on positive judgments; dpo: prefer positive over "
            "negative judgments (Con-J); dpo+sft: DPO plus an NLL term on the positive (DJPO).",
            "choices": TrainingMethod.values(),
        },
    )
    protocol: str = field(
        default="pairwise", metadata={"help": "Judge protocol trained: pairwise or pointwise."}
    )
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training examples."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (overrides epochs)."}
    )
    batch_size: int = field(default=2, metadata={"help": "Examples (DPO: pairs) per step."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches accumulated per optimizer step."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (LoRA)."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r (a new adapter only)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    beta: float = field(default=0.1, metadata={"help": "DPO beta: how far from the reference."})
    sft_weight: float = field(
        default=1.0, metadata={"help": "dpo+sft: weight of the NLL term on the chosen judgment."}
    )
    heldout_share: float = field(
        default=0.2, metadata={"help": "Share of labeled pairs held out for evaluation."}
    )
    max_prompt_tokens: int = field(
        default=768, metadata={"help": "Token budget of the judge prompt, template included."}
    )
    max_target_tokens: int = field(
        default=320, metadata={"help": "Longest judgment trained on (tokens); longer ones are cut."}
    )
    max_per_pair: int = field(
        default=2, metadata={"help": "Positives, negatives and DPO pairs kept per labeled pair."}
    )
    rft_samples: int = field(
        default=2,
        metadata={"help": "Extra judge samples for a pair with no agreeing judgment (0: none)."},
    )
    include_swapped: bool = field(
        default=True, metadata={"help": "Also train on every example with the responses swapped."}
    )
    min_labels: int = field(
        default=20, metadata={"help": "Refuse to train on fewer usable (A/B/tie) labels."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the split, LoRA init and shuffling."})
    bf16: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 where the hardware runs it natively (GPU, or a CPU with "
            "AVX512-BF16/AMX), else fp32; true / false force it.",
            "choices": ("auto", "true", "false"),
        },
    )
    output_dir: str = field(
        default="adapter", metadata={"help": "Where the adapter is written; must not exist yet."}
    )

    def validate(self) -> None:
        """Refuse settings that cannot make a run, naming the setting."""
        checks = [
            (
                self.method in TrainingMethod.values(),
                f"method must be one of {', '.join(TrainingMethod.values())}",
            ),
            (self.bf16 in ("auto", "true", "false"), "bf16 must be auto, true or false"),
            (self.epochs > 0, "epochs must be positive"),
            (self.max_steps is None or self.max_steps > 0, "max_steps must be positive"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lora_rank >= 1, "lora_rank must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0.0 < self.heldout_share < 1.0, "heldout_share must be between 0 and 1"),
            (self.max_prompt_tokens >= 64, "max_prompt_tokens must be at least 64"),
            (self.max_target_tokens >= 8, "max_target_tokens must be at least 8"),
            (self.min_labels >= 2, "min_labels must be at least 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingRefused(f"training config: {message}")


@dataclass
class TrainResult:
    """What a finished run produced: the adapter, the split, the data and the training figures."""

    adapter_path: Path
    method: str
    split: Split
    label_snapshot: dict[str, Any]
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

    def as_record(self) -> dict[str, Any]:
        """Plain JSON-able values for the training_run row."""
        record = dataclasses.asdict(self)
        record["adapter_path"] = str(self.adapter_path)
        record["split"] = self.split.as_record()
        return record


# ---------------------------------------------------------------- checks before anything heavy


def check_labels(pairs: Sequence[TrainingRecord], min_labels: int) -> list[TrainingRecord]:
    """The trainable labels, or TrainingRefused when there are too few or only one class."""
    usable = [p for p in pairs if p.trainable]
    if len(usable) < min_labels:
        raise TrainingRefused(
            f"only {len(usable)} usable labels (A, B or tie; {len(pairs) - len(usable)} others "
            f"not counted); at least {min_labels} are needed to train and evaluate"
        )
    classes = sorted({p.label for p in usable})
    if len(classes) < 2:
        raise TrainingRefused(
            f"every usable label is {classes[0]!r}: a judge trained on one class learns to "
            "always say it; label some pairs the other way first"
        )
    return usable


def prepare_split(pairs: Sequence[TrainingRecord], config: TrainConfig) -> Split:
    """The run's split; refuses when the training side would have too little to learn from."""
    split = split_pairs([p.pair_id for p in pairs], config.heldout_share, config.seed)
    if not split.train or not split.heldout:
        raise TrainingRefused(
            f"{len(pairs)} labels cannot be split into training and held-out pairs "
            f"with heldout_share={config.heldout_share}"
        )
    return split


def label_snapshot(pairs: Sequence[TrainingRecord], split: Split) -> dict[str, Any]:
    """The exact labels used, as ids, with the split: stored with the run."""
    return {
        "pair_ids": [p.pair_id for p in pairs],
        "label_ids": [p.label_id for p in pairs],
        "labels": {str(p.pair_id): p.label for p in pairs},
        "split": split.as_record(),
    }


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
    config: TrainConfig,
    records: Sequence[Mapping[str, Any]],
    base_model_path: str | Path,
    on_progress: ProgressCallback | None = None,
    *,
    parent_adapter_path: str | Path | None = None,
    sample_more: SampleMore | None = None,
    build_messages: MessageBuilder | None = None,
) -> TrainResult:
    """Train a LoRA adapter on the training side of `records`; return where it is and how it went.

    `parent_adapter_path`: the active judge's adapter, trained further (so the new adapter stands
    alone on the base model); None starts a new adapter. `sample_more`: the rejective
    fine-tuning hook (see training_data). Raises TrainingRefused before loading any model when
    the labels or the config cannot make a run.
    """
    config.validate()
    output_dir = Path(config.output_dir)
    if output_dir.exists():
        raise TrainingRefused(f"output_dir {output_dir} already exists; a run never overwrites")
    pairs = check_labels(parse_records(records), config.min_labels)
    split = prepare_split(pairs, config)
    build_messages = build_messages or protocol_messages(config.protocol)
    tokenizer = load_tokenizer(base_model_path)
    data = prepare_data(pairs, split, config, tokenizer, build_messages, sample_more)
    rows = data.sft_rows() if config.method == "sft" else data.preference_rows()
    if not rows:
        raise TrainingRefused(
            f"no {config.method} examples could be built from {len(split.train)} training pairs"
        )
    log.info("training %s on %d examples: %s", config.method, len(rows), data.stats)
    figures = _train(
        config, rows, tokenizer, Path(base_model_path), parent_adapter_path, on_progress
    )
    return TrainResult(
        adapter_path=output_dir,
        method=config.method,
        split=split,
        label_snapshot=label_snapshot(pairs, split),
        data_stats=data.stats,
        train_examples=len(rows),
        **figures,
    )


def prepare_data(
    pairs: Sequence[TrainingRecord],
    split: Split,
    config: TrainConfig,
    tokenizer: Any,
    build_messages: MessageBuilder,
    sample_more: SampleMore | None = None,
) -> TrainingData:
    """The run's examples: training-side pairs only, prompts cut to the token budget."""
    train_ids = set(split.train)
    budget = content_budget(tokenizer, build_messages, config.max_prompt_tokens)
    data_config = DataConfig(
        protocol=config.protocol,
        max_prompt_units=budget,
        max_per_pair=config.max_per_pair,
        rft_samples=config.rft_samples,
        include_swapped=config.include_swapped,
    )
    return build_training_data(
        [p for p in pairs if p.pair_id in train_ids],
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


def load_tokenizer(model_path: str | Path) -> Any:
    """The base model's tokenizer, with a pad token (TRL pads batches)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise TrainingRefused(f"the tokenizer in {model_path} has no chat template")
    return tokenizer


def use_bf16(setting: str) -> bool:
    """bf16 only where it is native: measured on an AVX2-only CPU, bf16 steps ran slower."""
    if setting != "auto":
        return setting == "true"
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from judges.backends.transformers_backend import cpu_has_native_bf16

    return cpu_has_native_bf16()


def _train(
    config: TrainConfig,
    rows: list[dict[str, Any]],
    tokenizer: Any,
    base_model_path: Path,
    parent_adapter_path: str | Path | None,
    on_progress: ProgressCallback | None,
) -> dict[str, Any]:
    """Run the TRL trainer and write the adapter; returns the training figures."""
    bf16 = use_bf16(config.bf16)
    output_dir = Path(config.output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        trainer, output, runtime = _fit(
            config, rows, tokenizer, base_model_path, parent_adapter_path, on_progress, work, bf16
        )
        save_adapter(trainer.model, work / "adapter")
        os.replace(work / "adapter", output_dir)  # atomic: the adapter appears whole or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = trainer.state.global_step
    examples = steps * config.batch_size * config.gradient_accumulation_steps
    return {
        "steps": steps,
        "train_loss": _finite(output.training_loss),
        "runtime_s": runtime,
        "examples_per_s": examples / runtime if runtime > 0 else 0.0,
        "bf16": bf16,
        "log_history": list(trainer.state.log_history),
    }


def _fit(
    config: TrainConfig,
    rows: list[dict[str, Any]],
    tokenizer: Any,
    base_model_path: Path,
    parent_adapter_path: str | Path | None,
    on_progress: ProgressCallback | None,
    work: Path,
    bf16: bool,
) -> tuple[Any, Any, float]:
    """Build the TRL trainer and train; returns (trainer, its output, seconds spent training)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    with warnings.catch_warnings():
        # TRL 1.16 calls a transformers 5 property deprecated in favour of a new name; not ours.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated")
        model = _load_trainable_model(base_model_path, parent_adapter_path)
        examples_per_step = config.batch_size * config.gradient_accumulation_steps
        trainer = _make_trainer(config, model, tokenizer, Dataset.from_list(rows), work, bf16)
        trainer.add_callback(ProgressReporter(on_progress, examples_per_step).callback())
        trainer.remove_callback(PrinterCallback)  # progress is logged and reported instead
        started = time.perf_counter()
        output = trainer.train()
    return trainer, output, time.perf_counter() - started


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _load_trainable_model(base_model_path: Path, parent_adapter_path: str | Path | None) -> Any:
    from transformers import AutoModelForCausalLM

    # fp32 weights; bf16 (when chosen) runs as autocast, which keeps the LoRA master weights exact.
    model = AutoModelForCausalLM.from_pretrained(
        str(base_model_path), dtype="float32", local_files_only=True
    )
    if parent_adapter_path is None:
        return model
    from peft import PeftModel

    # Continue the active adapter, so the new one stands alone on the base model.
    return PeftModel.from_pretrained(model, str(parent_adapter_path), is_trainable=True)


def _lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _common_args(config: TrainConfig, work: Path, bf16: bool) -> dict[str, Any]:
    import torch

    return {
        "output_dir": str(work / "trainer"),
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps if config.max_steps else -1,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "bf16": bf16,
        "use_cpu": not torch.cuda.is_available(),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        # Activations of a 135M model fit easily; recomputing them would cost a third more time.
        "activation_checkpointing": False,
        "dataloader_num_workers": 0,
        "max_length": config.max_prompt_tokens + config.max_target_tokens,
    }


def _make_trainer(
    config: TrainConfig, model: Any, tokenizer: Any, dataset: Any, work: Path, bf16: bool
) -> Any:
    peft_config = None if _is_peft(model) else _lora_config(config)
    if config.method == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**_common_args(config, work, bf16), completion_only_loss=True)
        return SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    from trl import DPOConfig, DPOTrainer

    losses = ["sigmoid", "sft"] if config.method == "dpo+sft" else ["sigmoid"]
    weights = [1.0, config.sft_weight] if config.method == "dpo+sft" else [1.0]
    args = DPOConfig(
        **_common_args(config, work, bf16),
        beta=config.beta,
        loss_type=losses,
        loss_weights=weights,
    )
    return DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def save_adapter(model: Any, directory: Path) -> None:
    """Write only the trained adapter ("default"), as safetensors; never pickle files."""
    model.save_pretrained(str(directory), safe_serialization=True, selected_adapters=["default"])
    pickles = [p.name for p in directory.rglob("*") if p.suffix in (".bin", ".pt", ".pth")]
    if pickles or not (directory / "adapter_model.safetensors").is_file():
        raise RuntimeError(f"adapter save produced {pickles or 'no safetensors file'}")


class ProgressReporter:
    """Turns trainer logs into progress dicts: step, max_steps, loss, examples/s, time left."""

    def __init__(self, on_progress: ProgressCallback | None, examples_per_step: int) -> None:
        self.on_progress = on_progress
        self.examples_per_step = examples_per_step
        self.started: float | None = None

    def report(self, step: int, max_steps: int, loss: float | None, epoch: float | None) -> dict:
        now = time.perf_counter()
        self.started = self.started if self.started is not None else now
        elapsed = now - self.started
        rate = step / elapsed if elapsed > 0 and step else 0.0
        update = {
            "phase": "training",
            "step": step,
            "max_steps": max_steps,
            "loss": loss,
            "epoch": epoch,
            "examples_per_s": rate * self.examples_per_step,
            "eta_s": (max_steps - step) / rate if rate else None,
            "elapsed_s": elapsed,
        }
        if step:
            log.info(
                "step %d/%d loss %s, %.2f examples/s",
                step,
                max_steps,
                loss,
                update["examples_per_s"],
            )
        if self.on_progress is not None:
            self.on_progress(update)
        return update

    def callback(self) -> Any:
        from transformers import TrainerCallback

        reporter = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                reporter.started = time.perf_counter()
                reporter.report(0, state.max_steps, None, 0.0)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    reporter.report(state.global_step, state.max_steps, logs["loss"], state.epoch)

        return _Callback()


# ---------------------------------------------------------------- the whole job


def run_job(
    config: TrainConfig,
    records: Sequence[Mapping[str, Any]],
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
    from judges.evaluation import evaluate_judge, heldout_inputs, make_sampler

    config.validate()
    if judge_options.protocol != config.protocol:
        raise TrainingRefused(
            f"the judge options use protocol {judge_options.protocol!r} but the run trains "
            f"{config.protocol!r}; evaluate with the protocol being trained"
        )
    pairs = check_labels(parse_records(records), config.min_labels)
    split = prepare_split(pairs, config)
    if Path(config.output_dir).exists():
        raise TrainingRefused(
            f"output_dir {config.output_dir} already exists; a run never overwrites"
        )
    inputs, labels, categories = heldout_inputs(pairs, split.heldout)

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
            config,
            records,
            base_model_path,
            on_progress,
            parent_adapter_path=parent,
            sample_more=sample_more,
        )
    finally:
        backend.close()
    backend = make_backend(result.adapter_path)
    try:
        result.metrics_after = evaluate(backend, "evaluating_after")
    finally:
        backend.close()
    result.metrics_before = before
    return result


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The job's command line: every TrainConfig field, plus where the records and model are.

    Records come as a JSON file (a list of records) so the subprocess needs no database access.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True, help="JSON file: a list of label records.")
    parser.add_argument("--base-model", required=True, help="Local model directory (safetensors).")
    parser.add_argument("--parent-adapter", default=None, help="Adapter of the active version.")
    parser.add_argument("--progress-file", default=None, help="Append progress as JSON lines.")
    parser.add_argument(
        "--judge-options",
        default=None,
        help="JudgeOptions as JSON (e.g. '{\"swap\": true}'): also evaluate the active and the new "
        "version on the held-out pairs with the local transformers backend.",
    )
    for item in dataclasses.fields(TrainConfig):
        _add_config_argument(parser, item)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def _add_config_argument(parser: argparse.ArgumentParser, item: dataclasses.Field) -> None:
    flag = "--" + item.name.replace("_", "-")
    default = item.default
    kwargs: dict[str, Any] = {"default": default, "help": item.metadata.get("help", "")}
    if "choices" in item.metadata:
        kwargs["choices"] = item.metadata["choices"]
    if isinstance(default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    elif item.name == "max_steps":
        kwargs["type"] = int
    elif default is not None:
        kwargs["type"] = type(default)
    parser.add_argument(flag, dest=item.name, **kwargs)


def cli(argv: Sequence[str] | None = None) -> int:
    """`python -m judges.train --records r.json --base-model DIR ...`: train, print the result."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    records = json.loads(Path(args.records).read_text())
    progress_file = Path(args.progress_file) if args.progress_file else None

    def on_progress(update: dict[str, Any]) -> None:
        if progress_file is not None:
            with progress_file.open("a") as handle:
                handle.write(json.dumps(update) + "\n")

    try:
        result = _run_from_args(args, records, on_progress)
    except TrainingRefused as exc:
        log.error("training refused: %s", exc)
        return 2
    print(json.dumps(result.as_record(), indent=2, default=str))
    return 0


def _run_from_args(
    args: argparse.Namespace, records: list[dict[str, Any]], on_progress: ProgressCallback
) -> TrainResult:
    config = config_from_args(args)
    if args.judge_options is None:
        return main(
            config, records, args.base_model, on_progress, parent_adapter_path=args.parent_adapter
        )
    from judges.backends.transformers_backend import TransformersBackend
    from judges.judge import JudgeOptions

    options = JudgeOptions(**({"protocol": config.protocol} | json.loads(args.judge_options)))

    def make_backend(adapter: Path | None) -> Any:
        return TransformersBackend(args.base_model, adapter_path=adapter)

    return run_job(
        config,
        records,
        args.base_model,
        make_backend,
        options,
        on_progress,
        parent_adapter_path=args.parent_adapter,
    )


if __name__ == "__main__":
    raise SystemExit(cli())
