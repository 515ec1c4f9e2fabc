"""The `verdict` method: cross-entropy on the judge's verdict letter, read where the judge reads
it, right after its verdict-only prompt (`pairwise-v3-verdict`, answer started at "Verdict: [[").

One forward and backward pass per example, and only the last position's logits are computed
(`verdict_logits`), so it is the cheapest objective that moves what the judge decides. Every
pair is trained in both orders (the label flips with the order), both in one batch
(`OrdersTogether`), which is what teaches position bias away; ties are trained as [[C]] or left
out (`verdict_ties`). Training prompts are rendered by the judge's own protocol, so training
reads exactly the text inference reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from judges.protocols import get_protocol
from judges.train_config import TrainConfig, TrainingRefused
from judges.trainer import (
    AdapterInputs,
    is_peft,
    left_padded_attention,
    load_trainable_model,
    lora_config,
    trainer_args,
)
from judges.training_data import TrainingRecord
from judges.types import PairInput, Verdict
from vocabulary import ProtocolName, TrainedWeights

log = logging.getLogger(__name__)

VERDICT_PROMPT = "pairwise-v3-verdict"
LETTERS = {Verdict.A: "A", Verdict.B: "B", Verdict.TIE: "C"}


def verdict_prompt_text(tokenizer: Any, pair: PairInput) -> str:
    """What the judge reads before its verdict letter: the chat prompt plus the answer start."""
    protocol = get_protocol(ProtocolName.PAIRWISE, VERDICT_PROMPT)
    (messages,) = protocol.conversations(pair)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + protocol.template.answer_prefix


def letter_ids(tokenizer: Any) -> dict[Verdict, int]:
    """The token of each verdict letter right after "[[" (a single token, or TrainingRefused)."""
    ids = {}
    for verdict, letter in LETTERS.items():
        base = tokenizer.encode("Verdict: [[", add_special_tokens=False)
        full = tokenizer.encode("Verdict: [[" + letter, add_special_tokens=False)
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise TrainingRefused(f"the tokenizer does not read verdict {letter!r} as one token")
        ids[verdict] = full[-1]
    return ids


def verdict_rows(
    records: Sequence[TrainingRecord], tokenizer: Any, config: TrainConfig
) -> list[dict[str, Any]]:
    """One row per pair and order: the prompt's token ids and the label's letter token."""
    targets = letter_ids(tokenizer)
    rows = []
    for record in records:
        label = record.verdict
        if label is Verdict.TIE and not config.verdict_ties:
            continue
        orders = [(record.pair, label)]
        if config.include_swapped:
            orders.append((record.pair.swapped(), label.swapped()))
        for pair, verdict in orders:
            ids = tokenizer.encode(verdict_prompt_text(tokenizer, pair), add_special_tokens=False)
            rows.append({"input_ids": ids, "labels": targets[verdict]})
    return rows


def verdict_trainer(inputs: AdapterInputs, work: Path, bf16: bool) -> Any:
    """The verdict-letter trainer for the inputs: every weight (fp32 weights under the
    Trainer's bf16 autocast, when chosen) or a LoRA adapter (on a bf16 base, see `_lora_model`)."""
    config = inputs.config
    model = verdict_model(config, inputs.base_model_path, inputs.parent_adapter_path, bf16)
    return _trainer(config, inputs.rows, inputs.tokenizer, model, work, autocasts(config, bf16))


def autocasts(config: TrainConfig, bf16: bool) -> bool:
    """Whether the Trainer computes under bf16 autocast: for every weight (fp32 weights) where
    bf16 is chosen; a LoRA model computes in bf16 itself (`_lora_in_base_dtype`)."""
    return bf16 and config.weights == TrainedWeights.FULL


def verdict_model(
    config: TrainConfig, base_model_path: Path, parent_adapter_path: str | Path | None, bf16: bool
) -> Any:
    """The model the verdict method trains: every weight, fp32 (the Trainer's autocast computes
    in bf16 when chosen), or a LoRA adapter on a bf16 or fp32 base (`_lora_model`)."""
    if config.weights == TrainedWeights.FULL:
        return load_trainable_model(
            config, base_model_path, parent_adapter_path, attention=left_padded_attention(bf16)
        )
    return _lora_model(config, base_model_path, parent_adapter_path, bf16)


def _trainer(
    config: TrainConfig,
    rows: list[dict[str, Any]],
    tokenizer: Any,
    model: Any,
    work: Path,
    autocast_bf16: bool = False,
) -> Any:
    """`autocast_bf16`: an fp32 model computing under bf16 autocast (full fine-tuning); LoRA
    runs on a bf16 base instead (`_lora_model`)."""
    import torch
    from transformers import Trainer, TrainingArguments

    class VerdictTrainer(Trainer):
        # The loss is a mean over the batch: the Trainer must divide it by the accumulation
        # steps (left to itself it would not, and count one 1-D label per batch short).
        loss_is_scaled_for_ga = False

        def _get_train_sampler(self, train_dataset=None):
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return OrdersTogether(rows, batch, 2 if config.include_swapped else 1)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            logits = verdict_logits(model, inputs)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            return (loss, {"logits": logits}) if return_outputs else loss

    args = TrainingArguments(
        **trainer_args(config, work, autocast_bf16),
        remove_unused_columns=False,
    )
    trainer = VerdictTrainer(
        model=model,
        args=args,
        # A plain list is a Trainer dataset; OrdersTogether reads each row's input_ids.
        train_dataset=rows,
        data_collator=_LeftPadding(tokenizer.pad_token_id),
    )
    return trainer


class OrdersTogether:
    """The order the Trainer reads rows in: batches of like lengths (little padding), as the
    Trainer's length-grouped sampler makes them, that keep the `orders` consecutive rows of each
    label (`verdict_rows`: the pair, then its swapped copy) in one batch. So every batch holds as
    many A as B targets, and the position signal cancels within each step, not only over the
    epoch: on the learning curve's 300 labels, p < 0.05 on every seed instead of 2 of 3
    (benchmarks/results/learning_curve_settings.md). Shuffled anew each epoch (torch's seeded
    generator)."""

    def __init__(self, rows: list[dict[str, Any]], batch_size: int, orders: int) -> None:
        lengths = [len(row["input_ids"]) for row in rows]
        self.rows, self.orders = len(rows), orders
        self.label_lengths = [max(lengths[i : i + orders]) for i in range(0, len(rows), orders)]
        self.labels_per_batch = max(1, batch_size // orders)

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        labels = get_length_grouped_indices(self.label_lengths, self.labels_per_batch)
        rows = (label * self.orders + k for label in labels for k in range(self.orders))
        return (row for row in rows if row < self.rows)


def verdict_logits(model: Any, inputs: dict[str, Any]) -> Any:
    """Each row's next-token logits at its last (verdict) position, in fp32.

    The position is asked for as an index, not `logits_to_keep=1`: the slice that makes is not
    contiguous, and under autograd the LM head then multiplies it by a copy of its whole weight
    per row (8 x 576 x 49152 values, 2.9 s of a 15 s forward at 874 tokens); an index gathers
    the rows first.

    On a bf16 base the LoRA layers compute in bf16 too (`_lora_in_base_dtype`).
    """
    import torch

    last = torch.tensor([inputs["input_ids"].shape[1] - 1])
    with _lora_in_base_dtype(model):
        logits = model(**inputs, logits_to_keep=last).logits
    return logits[:, -1, :].float()


@contextmanager
def _lora_in_base_dtype(model: Any) -> Iterator[None]:
    """On a bf16 base, run the LoRA layers under bf16 autocast with PEFT's input cast off.

    PEFT casts each LoRA layer's input to its fp32 weights and adds an fp32 result to the bf16
    one: per layer, two full-size activation copies to fp32 and one back. Under autocast the
    small adapter weights are cast to bf16 instead, and they stay fp32 for the optimizer, so
    small updates are still not rounded away. Measured on the embedded judge, 2 cores: a loop of
    steps on batches of 8 real verdict prompts 0.41 -> 0.55 examples/s; the learning curve's
    300-label job 0.53 -> 0.59 (mean of 3 seeds).
    """
    import torch
    from peft.helpers import disable_input_dtype_casting

    if model.dtype != torch.bfloat16:
        # An fp32 model computes as the caller says: a disabled autocast here would also
        # switch off the Trainer's own (`autocast_bf16`).
        yield
        return
    with (
        torch.autocast(model.device.type, dtype=torch.bfloat16),
        disable_input_dtype_casting(model),
    ):
        yield


def _lora_model(
    config: TrainConfig, base_model_path: Path, parent_adapter_path: str | Path | None, bf16: bool
) -> Any:
    """The base model (bf16 where measured faster) with a trainable LoRA adapter; the adapter's
    own weights stay fp32 (PEFT upcasts them), so small updates are not rounded away
    (`_lora_in_base_dtype` computes with them in bf16)."""
    from peft import get_peft_model

    dtype = "bfloat16" if bf16 else "float32"
    model = load_trainable_model(
        config, base_model_path, parent_adapter_path, dtype, left_padded_attention(bf16)
    )
    return model if is_peft(model) else get_peft_model(model, lora_config(config, model))


class _LeftPadding:
    """Batches padded on the left, so every row's last position is its verdict position."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = [[self.pad_id] * (width - len(r["input_ids"])) + r["input_ids"] for r in rows]
        mask = torch.tensor(
            [[0] * (width - len(r["input_ids"])) + [1] * len(r["input_ids"]) for r in rows]
        )
        return {
            "input_ids": torch.tensor(ids),
            "attention_mask": mask,
            # Positions count real tokens only, as when the judge reads one prompt unpadded.
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "labels": torch.tensor([r["labels"] for r in rows]),
        }
