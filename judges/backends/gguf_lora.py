"""A PEFT LoRA adapter (what retraining saves) as a GGUF adapter llama.cpp applies at load.

The same mapping as llama.cpp's convert_lora_to_gguf.py, for what this project trains (LoRA
on a Llama-architecture judge): each `...layers.N.<module>.lora_A/B.weight` pair is written
under the base GGUF's tensor name (`blk.N.attn_q.weight.lora_a` ...) with the adapter's alpha.
The base GGUF stores the query and key projections with their rows permuted for llama.cpp's
rotary layout (convert_hf_to_gguf does it; the transformers GGUF loader undoes it), so LoRA's
B matrices of q_proj and k_proj, which map onto those rows, get the same permutation.

The GGUF is written once beside the adapter (adapter_model.gguf) and reused while it is newer
than the adapter's weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from judges.backends.adapters import CONFIG_FILE, WEIGHTS_FILE
from judges.backends.base import BackendError

GGUF_FILE = "adapter_model.gguf"
LORA_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


def converted_adapter(adapter_dir: Path, base_gguf: Path) -> Path:
    """The adapter as GGUF (made now if missing or older than the adapter's weights)."""
    out = adapter_dir / GGUF_FILE
    weights = adapter_dir / WEIGHTS_FILE
    if out.is_file() and out.stat().st_mtime >= weights.stat().st_mtime:
        return out
    partial = out.with_suffix(".partial")
    write_gguf_adapter(adapter_dir, base_gguf, partial)
    partial.replace(out)  # whole or not at all: a crash mid-write leaves no broken adapter
    return out


def write_gguf_adapter(adapter_dir: Path, base_gguf: Path, out: Path) -> None:
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    base = base_shape(base_gguf)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, base["blocks"])
    writer = gguf.GGUFWriter(str(out), arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for key, tensor in sorted(load_file(str(adapter_dir / WEIGHTS_FILE)).items()):
        match = LORA_KEY.fullmatch(key)
        if match is None:
            raise BackendError(f"adapter tensor {key!r} is not a LoRA A/B matrix")
        module, part = match["module"], match["part"]
        target = names.get_name(module)
        if target is None:
            raise BackendError(f"adapter tensor {key!r} has no tensor in the base GGUF")
        data = tensor.astype(np.float32)
        if part == "B" and module.endswith(("q_proj", "k_proj")):
            heads = base["heads"] if module.endswith("q_proj") else base["kv_heads"]
            data = rotary_permute(data, heads)
        writer.add_tensor(f"{target}.weight.lora_{part.lower()}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def rotary_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf's permutation of a Llama q/k projection's output rows."""
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def base_shape(base_gguf: Path) -> dict[str, int]:
    """Blocks and attention heads of the base model, read from its GGUF header."""
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    if arch != "llama":
        raise BackendError(f"LoRA adapters run on llama.cpp for Llama models only, not {arch}")

    def number(key: str) -> int:
        return int(reader.fields[f"llama.{key}"].parts[-1][0])

    return {
        "blocks": number("block_count"),
        "heads": number("attention.head_count"),
        "kv_heads": number("attention.head_count_kv"),
    }
