"""A whole fine-tuned model (what retraining saves when it trains every weight) as a GGUF file
llama.cpp runs, made from the judge's own GGUF and the version's safetensors.

The base GGUF gives everything that training does not change: its metadata (architecture,
tokenizer, chat template) and its list of tensors. Each tensor's values come from the version,
named as llama.cpp names them (gguf's own HF-to-GGUF table) and, for the query and key
projections, with their rows permuted for llama.cpp's rotary layout (as gguf_lora does for an
adapter). Matrices are stored as BF16 where this CPU has native bf16 (the format llama.cpp runs
fastest there, see llamacpp_backend.fastest_embedded_gguf), else F16; norms stay F32. Not
4-bit: the fine-tune's changes to each weight are smaller than a 4-bit step.

The GGUF is written once beside the version's weights (model.gguf) and reused while it is
newer than them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from judges.backends.adapters import model_weight_files
from judges.backends.base import BackendError
from judges.backends.gguf_lora import base_shape, rotary_permute

GGUF_FILE = "model.gguf"
# Written by the writer itself, or describing the old tensors: not copied from the base file.
NOT_COPIED = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


def converted_model(model_dir: Path, base_gguf: Path) -> Path:
    """The whole model in `model_dir` as GGUF (made now if missing or older than its weights)."""
    model_dir = Path(model_dir)
    out = model_dir / GGUF_FILE
    newest = max(p.stat().st_mtime for p in model_weight_files(model_dir))
    if out.is_file() and out.stat().st_mtime >= newest:
        return out
    partial = out.with_suffix(".partial")
    try:
        write_gguf_model(model_dir, base_gguf, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)  # whole or not at all: a crash mid-write leaves no broken model
    return out


def write_gguf_model(model_dir: Path, base_gguf: Path, out: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    tensors = gguf_tensors(model_dir, base_gguf)
    expected = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    problems = _mismatches(expected, tensors)
    if problems:
        raise BackendError(f"model {model_dir} does not fit {base_gguf.name}: {problems}")
    matrix_type = _matrix_type()
    writer = gguf.GGUFWriter(str(out), arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    for field in reader.fields.values():
        if not field.name.startswith(NOT_COPIED):
            sub_type = field.types[-1] if len(field.types) > 1 else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub_type)
    file_type = gguf.LlamaFileType.MOSTLY_BF16
    if matrix_type != gguf.GGMLQuantizationType.BF16:
        file_type = gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(file_type)
    for tensor in reader.tensors:  # in the base file's order
        data = tensors[tensor.name]
        if data.ndim == 1:
            writer.add_tensor(tensor.name, data.astype(np.float32))
        else:
            packed = gguf.quants.quantize(data.astype(np.float32), matrix_type)
            writer.add_tensor(tensor.name, packed, raw_dtype=matrix_type)  # shape from bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_tensors(model_dir: Path, base_gguf: Path) -> dict[str, np.ndarray]:
    """The version's tensors under llama.cpp's names, q and k rows permuted; a tied output
    matrix (not in the base file) is left out."""
    import gguf
    from safetensors.torch import load_file  # numpy has no bf16, which full fine-tuning saves

    shape = base_shape(base_gguf)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, shape["blocks"])
    out: dict[str, np.ndarray] = {}
    for path in model_weight_files(model_dir):
        for key, tensor in load_file(str(path)).items():
            value = tensor.float().numpy()
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise BackendError(f"tensor {key!r} of {path.name} has no llama.cpp name")
            if key.endswith(("q_proj.weight", "k_proj.weight")):
                heads = shape["heads"] if "q_proj" in key else shape["kv_heads"]
                value = rotary_permute(value, heads)
            out[name] = value
    return out


def _mismatches(expected: dict[str, tuple[int, ...]], tensors: dict[str, np.ndarray]) -> str:
    missing = sorted(set(expected) - set(tensors))
    tied_output = {"output.weight"} - set(expected)  # tied to the embedding: not stored twice
    extra = sorted(set(tensors) - set(expected) - tied_output)
    shapes = [n for n in expected if n in tensors and tensors[n].shape != expected[n]]
    parts = [
        f"{what}: {', '.join(items[:3])}"
        for what, items in (
            ("missing", missing),
            ("not in the base", extra),
            ("other shape", shapes),
        )
        if items
    ]
    return "; ".join(parts)


def _matrix_type():
    import gguf

    from judges.backends.transformers_backend import cpu_has_native_bf16

    if cpu_has_native_bf16():
        return gguf.GGMLQuantizationType.BF16
    return gguf.GGMLQuantizationType.F16
