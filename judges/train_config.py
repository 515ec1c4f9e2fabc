"""What one retraining run is told: `TrainConfig`, and its fields as command-line options.

Each field carries its help text (and choices, where there are some) in its metadata, so the
command line (`judges.train.make_parser`) and the Retrain tab read names, types, defaults, help
and choices from here instead of copying them.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from vocabulary import TrainedWeights, TrainingMethod

# The protocols whose answers a human A/B/tie label can check (judges.training_data.target_format).
TRAINABLE_PROTOCOLS = ("pairwise", "pointwise")
BF16_SETTINGS = ("auto", "true", "false")
# Measured by benchmarks/bench_learning_curve.py: LoRA at 1e-3 did no better than 3e-4; full
# fine-tuning at 5e-5 (the one rate tried) beat both. A small model's every weight takes a
# much smaller step than an adapter initialised at zero.
DEFAULT_LEARNING_RATES = {TrainedWeights.FULL: 5e-5, TrainedWeights.LORA: 3e-4}


class TrainingRefused(ValueError):
    """The run cannot start as asked; the message says why, for a person."""


@dataclass
class TrainConfig:
    """Everything one retraining run is told; stored with the run as `dataclasses.asdict`."""

    # The defaults are the setting benchmarks/bench_learning_curve.py measured best on this CPU
    # (benchmarks/results/learning_curve_settings.md): verdict, batches of 8, every weight
    # trained at lr 5e-5 lifted held-out agreement by 12.8 points at 300 labels (mean of 3
    # seeds; LoRA rank 16 on every block at 3e-4: 11.3 and 9.5) and LLMBar_Natural by 11.7
    # (LoRA: 2.0 and 6.7), at the same speed; with fewer labels (bench_retrain_loop, 40) sft
    # made the judge worse and dpo left it level.
    method: str = field(
        default=TrainingMethod.VERDICT.value,
        metadata={
            "help": "verdict: cross-entropy on the verdict right after the verdict-only prompt "
            "(both orders; fast); sft: fine-tuning on positive judgments, stored or sampled; "
            "rft: rejective fine-tuning on rft_samples fresh samples per pair, those that agree "
            "with the label (SPCT); dpo: prefer positive over negative judgments (Con-J); "
            "dpo+sft: DPO plus an NLL term on the positive (DJPO); grpo: online RL, reward +1 "
            "when a sampled verdict matches the label, 0 when not, -1 for none (SPCT).",
            "choices": tuple(TrainingMethod.values()),
        },
    )
    protocol: str = field(
        default="pairwise",
        metadata={"help": "Judge protocol trained.", "choices": TRAINABLE_PROTOCOLS},
    )
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training examples."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (overrides epochs)."}
    )
    batch_size: int = field(
        default=8, metadata={"help": "Examples (DPO: pairs; GRPO: prompts) per step."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches accumulated per optimizer step."}
    )
    weights: str = field(
        default=TrainedWeights.FULL.value,
        metadata={
            "help": "full: train every weight (the version is a whole model, ~270 MB for the "
            "embedded judge); lora: a LoRA adapter on the base model (a few MB). A run on a "
            "whole-model version trains it whole.",
            "choices": tuple(TrainedWeights.values()),
        },
    )
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "AdamW learning rate (unset: the measured default of the weights trained, "
            f"{DEFAULT_LEARNING_RATES[TrainedWeights.FULL]} full, "
            f"{DEFAULT_LEARNING_RATES[TrainedWeights.LORA]} lora)."
        },
    )
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r (a new adapter only)."})
    trained_layers: int | None = field(
        default=None,
        metadata={
            "help": "Train the last N transformer blocks only (unset: all): full, their weights "
            "and the final norm, the embeddings frozen; lora, a new adapter on them. The "
            "backward pass stops at the lowest, so fewer train faster."
        },
    )
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    beta: float = field(default=0.1, metadata={"help": "DPO beta: how far from the reference."})
    sft_weight: float = field(
        default=1.0, metadata={"help": "dpo+sft: weight of the NLL term on the chosen judgment."}
    )
    heldout_share: float = field(
        default=0.2,
        metadata={
            "help": "Share of labeled pairs held out for evaluation (a prompt's pairs together)."
        },
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
        metadata={
            "help": "Judge samples per pair: rft, all it trains on; sft and dpo, extra samples for "
            "a pair with no agreeing judgment (0: none)."
        },
    )
    grpo_generations: int = field(
        default=4,
        metadata={"help": "grpo: judgments sampled per prompt, compared with each other."},
    )
    include_swapped: bool = field(
        default=True, metadata={"help": "Also train on every example with the responses swapped."}
    )
    verdict_ties: bool = field(
        default=True, metadata={"help": "verdict: train tie labels as [[C]] (else leave them out)."}
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
            "choices": BF16_SETTINGS,
        },
    )
    output_dir: str = field(
        default="adapter",
        metadata={
            "help": "Where the adapter is written; must not exist yet.",
            "command_line": False,  # a service run writes into its own run directory
        },
    )

    def validate(self) -> None:
        """Refuse settings that cannot make a run, naming the setting."""
        checks = [(self._chosen(f.name), _choice_message(f)) for f in _with_choices(TrainConfig)]
        checks += [
            (self.epochs > 0, "epochs must be positive"),
            (self.max_steps is None or self.max_steps > 0, "max_steps must be positive"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lora_rank >= 1, "lora_rank must be at least 1"),
            (
                self.trained_layers is None or self.trained_layers >= 1,
                "trained_layers must be at least 1",
            ),
            (
                self.learning_rate is None or self.learning_rate > 0,
                "learning_rate must be positive",
            ),
            (0.0 < self.heldout_share < 1.0, "heldout_share must be between 0 and 1"),
            (self.max_prompt_tokens >= 64, "max_prompt_tokens must be at least 64"),
            (self.max_target_tokens >= 8, "max_target_tokens must be at least 8"),
            (self.min_labels >= 2, "min_labels must be at least 2"),
            (
                self.method != TrainingMethod.RFT or self.rft_samples >= 1,
                "the rft method trains on sampled judgments only; rft_samples must be at least 1",
            ),
            # GRPO's advantage is a sample's reward against its group's: one alone learns nothing.
            (self.grpo_generations >= 2, "grpo_generations must be at least 2"),
            (
                self.method != TrainingMethod.VERDICT or self.protocol == "pairwise",
                "the verdict method trains the pairwise judge's verdict; use protocol pairwise",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingRefused(f"training config: {message}")

    def resolved(self) -> TrainConfig:
        """This config with its unset learning rate filled in for the weights it trains, so a
        stored run records the rate it ran with."""
        if self.learning_rate is not None or not self._chosen("weights"):
            return self
        rate = DEFAULT_LEARNING_RATES[TrainedWeights(self.weights)]
        return dataclasses.replace(self, learning_rate=rate)

    def _chosen(self, name: str) -> bool:
        return getattr(self, name) in config_field(name).metadata["choices"]


def config_field(name: str) -> dataclasses.Field:
    """A TrainConfig field by name: its default and metadata (help, choices)."""
    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name)


def config_default(name: str) -> Any:
    return config_field(name).default


def config_choices(name: str) -> list[str]:
    return list(config_field(name).metadata["choices"])


def _with_choices(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "choices" in f.metadata]


def _choice_message(item: dataclasses.Field) -> str:
    return f"{item.name} must be one of {', '.join(item.metadata['choices'])}"


# ---------------------------------------------------------------- fields as options


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--option` per field of `cls` (underscores as dashes): its type, default, help and
    choices; a bool becomes --x / --no-x. Fields marked `command_line: False` are left out."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if item.metadata.get("command_line", True):
            flag = "--" + item.name.replace("_", "-")
            parser.add_argument(flag, dest=item.name, **_argument(item, hints[item.name]))


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """`cls` built from the parsed options `add_dataclass_arguments` added (others default)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def _argument(item: dataclasses.Field, hint: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"default": item.default, "help": item.metadata.get("help", "")}
    if "choices" in item.metadata:
        kwargs["choices"] = list(item.metadata["choices"])
    kind = _plain_type(hint)
    if kind is bool:  # --x / --no-x (Python 3.10's action adds the default to the help itself)
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = kind
        kwargs["help"] += " (default: %(default)s)"
    return kwargs


def _plain_type(hint: Any) -> type:
    """`int` for `int | None`; the hint itself when it is not optional."""
    kinds = [k for k in typing.get_args(hint) if k is not type(None)]
    return kinds[0] if kinds else hint


# Settings stored by runs of earlier versions under another name.
_RENAMED_SETTINGS = {"lora_layers": "trained_layers"}


def stored_config(values: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a stored run: the run's other keys (its job) are left out, and a
    setting stored under its former name is read under the current one."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    renamed = {_RENAMED_SETTINGS.get(key, key): value for key, value in values.items()}
    return TrainConfig(**{key: value for key, value in renamed.items() if key in names})
