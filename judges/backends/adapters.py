"""Check a LoRA adapter directory before loading it: safetensors only, same base, same shapes.

Pickle files (`adapter_model.bin`) can run code when loaded, and a mismatched adapter would
either crash mid-load or, worse, load partly and silently; both are refused here with a message
that says which file and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from judges.backends.base import BackendError

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_adapter(adapter_path: Path, model: Any, model_path: Path) -> dict:
    """The adapter's config, or BackendError unless it is a LoRA adapter made for `model`."""
    adapter_path = Path(adapter_path)
    config = read_adapter_config(adapter_path)
    check_base_model(config, adapter_path, model_path)
    shapes = read_weight_shapes(adapter_path / WEIGHTS_FILE)
    problems = shape_problems(shapes, dict(model.named_modules()))
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        shown = "; ".join(problems[:3]) + more
        raise BackendError(f"adapter {adapter_path} does not fit model {model_path.name}: {shown}")
    return config


def check_adapter_files(adapter_path: Path) -> dict:
    """The adapter's config after every check that needs no model: a LoRA config beside one
    complete, readable safetensors file (never a pickle). Tensor shapes are checked against the
    model by `check_adapter` when it is loaded."""
    adapter_path = Path(adapter_path)
    config = read_adapter_config(adapter_path)
    read_weight_shapes(adapter_path / WEIGHTS_FILE)
    return config


def read_adapter_config(adapter_path: Path) -> dict:
    """The adapter's config, after checking the directory holds safetensors weights."""
    if not adapter_path.is_dir():
        raise BackendError(f"adapter directory not found: {adapter_path}")
    if not (adapter_path / WEIGHTS_FILE).is_file():
        pickles = [p.name for p in adapter_path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise BackendError(
                f"adapter {adapter_path} holds pickle weights ({', '.join(pickles)}), which can "
                f"run code when loaded; only {WEIGHTS_FILE} is accepted"
            )
        raise BackendError(f"adapter {adapter_path} has no {WEIGHTS_FILE}")
    try:
        config = json.loads((adapter_path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise BackendError(f"adapter {adapter_path} has no {CONFIG_FILE}") from None
    except json.JSONDecodeError as exc:
        raise BackendError(f"{adapter_path / CONFIG_FILE} is not valid JSON: {exc}") from None
    if str(config.get("peft_type", "")).upper() != "LORA":
        kind = config.get("peft_type")
        raise BackendError(f"adapter {adapter_path} is {kind!r}; only LORA is supported")
    return config


def check_base_model(config: dict, adapter_path: Path, model_path: Path) -> None:
    """The adapter must name this model directory as its base (compared by directory name)."""
    base = config.get("base_model_name_or_path")
    if not base:
        return  # nothing recorded; the shape check still guards the load
    if Path(str(base).rstrip("/")).name != Path(model_path).name:
        raise BackendError(
            f"adapter {adapter_path} was trained on {base!r}, not on this judge's model "
            f"{Path(model_path).name!r}"
        )


def read_weight_shapes(weights: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors header, refusing truncated or corrupt files."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise BackendError(f"cannot read {weights} (truncated or not safetensors): {exc}") from None


def shape_problems(shapes: dict[str, list[int]], modules: dict[str, Any]) -> list[str]:
    """Every LoRA tensor whose target module is missing or whose size does not match it."""
    problems = []
    for key, shape in shapes.items():
        target, kind = _split_lora_key(key)
        if kind is None:
            continue
        module = modules.get(target)
        if module is None:
            problems.append(f"{key}: the model has no module {target!r}")
            continue
        expected = _expected_size(module, kind)
        actual = shape[1] if kind == "lora_A" else shape[0]
        if expected is not None and actual != expected:
            problems.append(f"{key}: size {actual}, module {target!r} has {expected}")
    return problems


def _split_lora_key(key: str) -> tuple[str, str | None]:
    """'base_model.model.x.q_proj.lora_A.weight' -> ('x.q_proj', 'lora_A')."""
    name = key.removeprefix("base_model.model.")
    for kind in ("lora_A", "lora_B"):
        marker = f".{kind}."
        if marker in name:
            return name.split(marker)[0], kind
    return name, None


def _expected_size(module: Any, kind: str) -> int | None:
    # lora_A is (r, in_features); lora_B is (out_features, r).
    attribute = "in_features" if kind == "lora_A" else "out_features"
    return getattr(module, attribute, None)
