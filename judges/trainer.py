"""Fit a judge version with TRL (SFT or DPO) on rows the job built, and write it safely.

The model side of a run, kept apart from the job (judges.train) that decides what to train on:
tokenizer and model loading, the trainer's settings, progress reports, the version (a LoRA
adapter, or the whole model when every weight trains) written to a temporary directory and
renamed into place only when complete.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from judges.backends.adapters import weights_kind
from judges.backends.merged_lora import merge_adapter
from judges.train_config import TrainConfig, TrainingRefused
from vocabulary import TrainedWeights, TrainingMethod

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]


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


@dataclass(frozen=True)
class AdapterInputs:
    """What an adapter is trained from: the run's config and example rows, the tokenizer, the
    base model, and the adapter it continues (None: a new one on the base model)."""

    config: TrainConfig
    rows: list[dict[str, Any]]
    tokenizer: Any
    base_model_path: Path
    parent_adapter_path: str | Path | None


# Builds a method's trainer for the inputs, working in a directory, in bf16 or not.
TrainerMaker = Callable[[AdapterInputs, Path, bool], Any]


def trl_trainer(inputs: AdapterInputs, work: Path, bf16: bool) -> Any:
    """TRL's trainer for the inputs: SFT for sft and rft, DPO for dpo and dpo+sft."""
    from datasets import Dataset

    config = inputs.config
    model = load_trainable_model(config, inputs.base_model_path, inputs.parent_adapter_path)
    dataset = Dataset.from_list(inputs.rows)
    return _make_trainer(config, model, inputs.tokenizer, dataset, work, bf16)


def train_and_save(
    inputs: AdapterInputs, make_trainer: TrainerMaker, on_progress: ProgressCallback | None
) -> dict[str, Any]:
    """Build a trainer (`make_trainer(inputs, work_dir, bf16)`) in a temporary directory beside
    the output, train it, and rename the adapter into place: it appears whole or not at all.
    Returns the training figures."""
    from transformers.trainer_callback import PrinterCallback

    config = inputs.config
    bf16 = use_bf16(config.bf16)
    output_dir = Path(config.output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    examples_per_step = config.batch_size * config.gradient_accumulation_steps
    try:
        with warnings.catch_warnings():
            # TRL 1.16 calls a transformers 5 property deprecated for a new name; not ours.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated")
            trainer = make_trainer(inputs, work, bf16)
            trainer.add_callback(ProgressReporter(on_progress, examples_per_step).callback())
            trainer.remove_callback(PrinterCallback)  # progress is logged and reported instead
            started = time.perf_counter()
            output = trainer.train()
            runtime = time.perf_counter() - started
        check_finite(trainer.model, trainer.state.log_history)
        save_version(trainer.model, inputs.tokenizer, work / "adapter")
        os.replace(work / "adapter", output_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = trainer.state.global_step
    return {
        "steps": steps,
        "train_loss": _finite(output.training_loss),
        "runtime_s": runtime,
        "examples_per_s": steps * examples_per_step / runtime if runtime > 0 else 0.0,
        "bf16": bf16,
        "log_history": list(trainer.state.log_history),
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class TrainingDiverged(RuntimeError):
    """Training turned weights into NaN or infinity: such a version could give no verdict."""


def check_finite(model: Any, log_history: list[dict[str, Any]]) -> None:
    """TrainingDiverged, before anything is saved, when a trained weight is not a finite number;
    the message names the first logged step whose loss or gradient norm was not finite."""
    import torch

    broken = [
        name
        for name, weight in model.named_parameters()
        if weight.requires_grad and not torch.isfinite(weight).all()
    ]
    if not broken:
        return
    step = next(
        (
            entry.get("step")
            for entry in log_history
            if any(not math.isfinite(entry[k]) for k in ("loss", "grad_norm") if k in entry)
        ),
        None,
    )
    where = f" (the first non-finite loss or gradient norm at step {step})" if step else ""
    raise TrainingDiverged(
        f"training diverged: {len(broken)} of the trained weight tensors hold NaN or infinite "
        f"values{where}, so nothing was saved; train again with a lower learning_rate or with "
        "bf16 false"
    )


def left_padded_attention(bf16: bool) -> str | None:
    """The attention to train rows padded on the left with: eager for bf16 on a GPU, else
    transformers' default (SDPA).

    A left pad position attends to nothing. Measured on an H200 (torch 2.11, the verdict
    method, every weight trained on 200-300 labels): with SDPA under bf16, 4 of the learning
    curve's 12 runs ended with every weight NaN; rerun, three of them got a NaN gradient norm at
    step 38, 29 and 2 while their loss was still finite, and the same three trained with finite
    gradients with eager attention, and with SDPA in fp32. LoRA on a bf16 base and GRPO (TRL
    pads its prompts on the left) get the same choice by extension, unmeasured. On a CPU SDPA
    never did this, and it is the faster one there.
    """
    import torch

    return "eager" if bf16 and torch.cuda.is_available() else None


def load_trainable_model(
    config: TrainConfig,
    base_model_path: Path,
    parent_adapter_path: str | Path | None,
    dtype: str = "float32",
    attention: str | None = None,
) -> Any:
    """The model a run trains (fp32 unless told: bf16, when chosen, runs as autocast, which
    keeps the trained weights exact), with transformers' attention unless `attention` names
    one. It starts from the version it continues: a whole-model parent is loaded in the base's
    place; a LoRA parent is loaded on the base, trainable for a LoRA run (so the new adapter
    stands alone on the base model) or merged in for a full one.
    (`check_parent` refused a LoRA run on a whole-model parent before anything was loaded.)
    """
    from transformers import AutoModelForCausalLM

    parent = Path(parent_adapter_path) if parent_adapter_path else None
    whole_parent = parent is not None and weights_kind(parent) is TrainedWeights.FULL
    start = parent if whole_parent else base_model_path
    model = AutoModelForCausalLM.from_pretrained(
        str(start), dtype=dtype, local_files_only=True, attn_implementation=attention
    )
    if parent is not None and not whole_parent:
        if config.weights == TrainedWeights.LORA:
            from peft import PeftModel

            return PeftModel.from_pretrained(model, str(parent), is_trainable=True)
        # PEFT froze the base weights when it loaded the adapter; a full run trains them all.
        model = merge_adapter(model, parent).requires_grad_(True)
    if config.weights == TrainedWeights.FULL:
        freeze_lower_blocks(model, config.trained_layers)
    return model


def freeze_lower_blocks(model: Any, trained_layers: int | None) -> None:
    """A full run on the last `trained_layers` blocks: the blocks below and the embeddings stop
    taking gradients, so the backward pass ends at the lowest trained block. The embeddings
    are frozen with them although the LM head shares their weight (tied in the embedded judge):
    a trainable embedding would carry the backward pass down through every block again."""
    blocks = model.get_decoder().layers
    if trained_layers is None or trained_layers >= len(blocks):
        return
    model.get_input_embeddings().requires_grad_(False)
    for block in blocks[: len(blocks) - trained_layers]:
        block.requires_grad_(False)


def check_parent(config: TrainConfig, parent_adapter_path: str | Path | None) -> None:
    """A LoRA run needs a parent that stands on the base model: none, or a LoRA adapter."""
    if parent_adapter_path is None or config.weights != TrainedWeights.LORA:
        return
    if weights_kind(Path(parent_adapter_path)) is TrainedWeights.FULL:
        raise TrainingRefused(
            "the active judge version is a whole fine-tuned model, which a LoRA adapter on the "
            "base model cannot continue; train it with weights full, or activate the base "
            "model or a LoRA version first"
        )


def new_adapter(config: TrainConfig, model: Any) -> Any:
    """The LoRA config a trainer adds to `model`: None when every weight trains or the model
    already carries the adapter it continues."""
    if config.weights == TrainedWeights.FULL or is_peft(model):
        return None
    return lora_config(config, model)


def lora_config(config: TrainConfig, model: Any) -> Any:
    """The LoRA of a new adapter at the run's rank: every linear layer of the model's last
    `trained_layers` blocks (all blocks when unset). The backward pass stops at the lowest block
    that has an adapter, so fewer blocks train faster."""
    from peft import LoraConfig

    placement: dict[str, Any] = {"target_modules": "all-linear"}
    blocks = model.config.num_hidden_layers
    if config.trained_layers is not None and config.trained_layers < blocks:
        placement = {  # PEFT takes a block list only with module names
            "target_modules": block_linear_names(model),
            "layers_to_transform": list(range(blocks - config.trained_layers, blocks)),
        }
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        task_type="CAUSAL_LM",
        **placement,
    )


def block_linear_names(model: Any) -> list[str]:
    """The names of the linear layers inside the transformer blocks (q_proj, ..., down_proj)."""
    import torch

    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".layers." in name
        }
    )


def trainer_args(config: TrainConfig, work: Path, bf16: bool) -> dict[str, Any]:
    """The `TrainingArguments` settings every method shares, the verdict method's included."""
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
        "logging_nan_inf_filter": False,  # a NaN loss is shown and checked, not hidden as 0.0
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        # One pass over each tensor instead of one per operation: AdamW's step on the embedded
        # judge's weights, 2 cores, 0.3 s -> 0.07 s (of a 4-8 s step).
        "optim": "adamw_torch_fused",
    }


def common_args(config: TrainConfig, work: Path, bf16: bool) -> dict[str, Any]:
    """The TRL trainer settings every TRL method shares (SFT, DPO, GRPO)."""
    return trainer_args(config, work, bf16) | {
        # Activations of a 135M model fit easily; recomputing them would cost a third more time.
        "activation_checkpointing": False,
        "max_length": config.max_prompt_tokens + config.max_target_tokens,
    }


def _make_trainer(
    config: TrainConfig, model: Any, tokenizer: Any, dataset: Any, work: Path, bf16: bool
) -> Any:
    peft_config = new_adapter(config, model)
    if config.method in (TrainingMethod.SFT, TrainingMethod.RFT):
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common_args(config, work, bf16), completion_only_loss=True)
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
        **common_args(config, work, bf16),
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


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def save_version(model: Any, tokenizer: Any, directory: Path) -> None:
    """Write what the run trained as safetensors, never pickle files: the adapter ("default")
    of a LoRA model, or a whole model with its tokenizer (so any engine loads the directory)."""
    if is_peft(model):
        model.save_pretrained(
            str(directory), safe_serialization=True, selected_adapters=["default"]
        )
        expected = directory / "adapter_model.safetensors"
    else:
        import torch

        # bf16 halves the file; the judge reads weights in bf16 on a CPU with native bf16, and
        # there the learning curve's full fine-tunes (fp32 weights, judged in bf16) kept their
        # gain, so nothing it learned is lost to this rounding.
        model.to(torch.bfloat16).save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))
        expected = directory / "config.json"
    pickles = [p.name for p in directory.rglob("*") if p.suffix in (".bin", ".pt", ".pth")]
    if pickles or not expected.is_file():
        raise RuntimeError(f"saving the judge version produced {pickles or 'no ' + expected.name}")


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
            "loss": _finite(loss),  # NaN is not JSON: a diverging run shows no loss
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
