"""A LoRA adapter merged into its base model's weights, for an engine whose LoRA path is slow.

vLLM's CPU build applies a LoRA adapter in its own kernels, slowly: with an adapter shaped like
retraining's on the embedded judge (bench_judge_speed) it decoded 9.4 tokens/s and read a
493-token prompt in 23 s; merged, 38.8 tokens/s and 0.66 s, as without an adapter. The adapter
is fixed while a version judges, so it is merged once with PEFT (`merge_and_unload`) into a full
model directory the engine loads like any model.

The merged model is written once beside the adapter (`merged-model/`) and reused while it is
newer than the adapter's weights, like the GGUF adapter llama.cpp gets (gguf_lora).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from judges.backends.adapters import WEIGHTS_FILE
from judges.backends.base import BackendError

MERGED_DIR = "merged-model"
MARKER = "config.json"  # written by save_pretrained; a directory without it is not finished


def merged_model(adapter_dir: Path, base_model: Path) -> Path:
    """The base model with the adapter merged in (made now if missing or older than it)."""
    adapter_dir, base_model = Path(adapter_dir), Path(base_model)
    out = adapter_dir / MERGED_DIR
    weights = adapter_dir / WEIGHTS_FILE
    if (out / MARKER).is_file() and (out / MARKER).stat().st_mtime >= weights.stat().st_mtime:
        return out
    partial = adapter_dir / f"{MERGED_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        merge_into(adapter_dir, base_model, partial)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise BackendError(f"cannot merge adapter {adapter_dir} into {base_model}: {exc}") from exc
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)  # whole or not at all: a crash mid-write leaves no half model to load
    return out


def merge_adapter(model: Any, adapter_dir: str | Path) -> Any:
    """`model` (the adapter's base, loaded) with the PEFT adapter's weights added into its own:
    a plain model again, running at the base model's speed."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def merge_into(adapter_dir: Path, base_model: Path, out: Path) -> None:
    """Write base + adapter as one model directory (weights, config, tokenizer) at `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_model), local_files_only=True)
    merge_adapter(model, adapter_dir).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(base_model), local_files_only=True).save_pretrained(out)
