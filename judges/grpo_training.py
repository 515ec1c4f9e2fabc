"""The `grpo` method: SPCT's rule-based online RL, with TRL's GRPOTrainer.

The judge reads the judge prompt of every labeled training pair (both orders when
`include_swapped`; the swapped copy's label flipped A<->B), writes `grpo_generations` judgments
for each, and each judgment is rewarded by `verdict_reward`: +1 when the verdict the protocol's
own parser reads in it matches the human label, 0 when it names another verdict, -1 when it names
none. GRPO weighs each judgment against the others of its prompt, so the judge moves towards its
own right judgments; no stored judgment and no reference model are needed (beta 0, TRL's
default, keeps one model in memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from judges.parsing import parse
from judges.train_config import TrainConfig
from judges.trainer import (
    AdapterInputs,
    common_args,
    left_padded_attention,
    load_trainable_model,
    new_adapter,
)
from judges.training_data import MessageBuilder, TrainingRecord
from judges.truncation import Measure, truncate_pair
from judges.types import Verdict

MATCH, MISMATCH, NO_VERDICT = 1.0, 0.0, -1.0

# A sampled judgment as TRL hands it over: a text, or for a conversational prompt the
# assistant's turns ([{"role": "assistant", "content": ...}]).
Completion = str | Sequence[Mapping[str, Any]]


def verdict_reward(
    completions: Sequence[Completion], label: Sequence[str], **kwargs: Any
) -> list[float]:
    """One reward per sampled judgment against its prompt's human label (in the order shown:
    "A", "B" or "tie"). The `protocol` column, when the dataset has one, names the parser each
    judgment is read with; TRL's other keyword arguments are not used."""
    protocols = kwargs.get("protocol") or ["pairwise"] * len(completions)
    return [
        judgment_reward(parse(protocol, completion_text(completion)).verdict, Verdict(wanted))
        for completion, wanted, protocol in zip(completions, label, protocols, strict=True)
    ]


def judgment_reward(verdict: Verdict, label: Verdict) -> float:
    """+1 for the label's verdict, 0 for another, -1 for none (no verdict, or conflicting ones)."""
    if verdict is Verdict.NONE:
        return NO_VERDICT
    return MATCH if verdict is label else MISMATCH


def completion_text(completion: Completion) -> str:
    """The judgment's text: the text itself, or its assistant turns joined ("" for anything
    else, which then states no verdict)."""
    if isinstance(completion, str):
        return completion
    if not isinstance(completion, Sequence):
        return ""
    turns = [t for t in completion if isinstance(t, Mapping) and t.get("role") == "assistant"]
    return "".join(str(t.get("content") or "") for t in turns)


def grpo_rows(
    records: Sequence[TrainingRecord],
    build_messages: MessageBuilder,
    config: TrainConfig,
    budget: int | None,
    measure: Measure,
) -> list[dict[str, Any]]:
    """One row per pair and order: the judge prompt (texts cut to `budget`), the label in the
    order shown, and the protocol whose parser reads the judgments."""
    rows = []
    for record in records:
        pair = truncate_pair(record.pair, budget, measure)
        orders = [(pair, record.verdict)]
        if config.include_swapped:
            orders.append((pair.swapped(), record.verdict.swapped()))
        rows += [
            {"prompt": build_messages(shown), "label": label.value, "protocol": config.protocol}
            for shown, label in orders
        ]
    return rows


def grpo_trainer(inputs: AdapterInputs, work: Path, bf16: bool) -> Any:
    """TRL's GRPO trainer for the inputs, training what the other methods train (LoRA or all)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = inputs.config
    model = load_trainable_model(
        config,
        inputs.base_model_path,
        inputs.parent_adapter_path,
        attention=left_padded_attention(bf16),  # TRL pads GRPO's prompts on the left
    )
    settings = common_args(config, work, bf16)
    # The prompts were cut to their budget already, and max_completion_length cuts the judgment.
    del settings["max_length"]
    # GRPO's batch counts judgments, not prompts: batch_size prompts, each sampled in full.
    settings["per_device_train_batch_size"] = config.batch_size * config.grpo_generations
    args = GRPOConfig(
        **settings,
        num_generations=config.grpo_generations,
        max_completion_length=config.max_target_tokens,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=[verdict_reward],
        args=args,
        train_dataset=Dataset.from_list(inputs.rows),
        processing_class=inputs.tokenizer,
        peft_config=new_adapter(config, model),
    )
