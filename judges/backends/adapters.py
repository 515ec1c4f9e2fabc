"""Check a judge version's weights before loading them: safetensors only, same base, same shapes.

A version made by retraining is a LoRA adapter (adapter_config.json) or, when every weight was
trained, a whole model directory (config.json); `weights_kind` tells which.

Pickle files (`adapter_model.bin`) can run code when loaded, and mismatched weights would
either crash mid-load or, worse, load partly and silently; both are refused here with a message
that says which file and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from judges.backends.base import BackendError
from vocabulary import TrainedWeights

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
MODEL_CONFIG_FILE = "config.json"  # a whole model's (transformers' save_pretrained)
# What must agree for a whole model to stand in for the base: its shape and vocabulary.
SAME_SHAPE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


def weights_kind(version_path: Path) -> TrainedWeights:
    """A LoRA adapter, or a whole model (a config.json and no adapter config)."""
    version_path = Path(version_path)
    if not (version_path / CONFIG_FILE).is_file() and (version_path / MODEL_CONFIG_FILE).is_file():
        return TrainedWeights.FULL
    return TrainedWeights.LORA  # also what is neither: read_adapter_config says what is missing


def weights_label(version_path: str | Path | None) -> str:
    """How a version is shown: full (a whole fine-tuned model), lora, or blank (the base)."""
    return weights_kind(Path(version_path)).value if version_path else ""


def check_version_files(version_path: Path, model_path: Path | None = None) -> None:
    """Every check of a version's weights that needs no model loaded: its files and format
    (never a pickle) and, given the base model's directory, that it was made from it."""
    version_path = Path(version_path)
    if weights_kind(version_path) is TrainedWeights.LORA:
        config = check_adapter_files(version_path)
        if model_path is not None:
            check_base_model(config, version_path, Path(model_path))
    elif model_path is not None:
        check_whole_model(version_path, Path(model_path))
    else:
        for path in model_weight_files(version_path):
            read_weight_shapes(path)


def check_whole_model(model_dir: Path, base_model_path: Path) -> None:
    """A whole fine-tuned model that can stand in for the base: safetensors only, readable,
    and the base's shape and vocabulary (so its tokenizer and prompts fit)."""
    model_dir = Path(model_dir)
    for path in model_weight_files(model_dir):
        read_weight_shapes(path)
    own, base = _model_config(model_dir), _model_config(Path(base_model_path))
    differ = [k for k in SAME_SHAPE_KEYS if own.get(k) != base.get(k)]
    if differ:
        shown = ", ".join(f"{k} {own.get(k)} (base {base.get(k)})" for k in differ)
        raise BackendError(
            f"model {model_dir} is not a fine-tune of {Path(base_model_path).name}: {shown}"
        )


def model_weight_files(model_dir: Path) -> list[Path]:
    """A whole model's safetensors files; BackendError when it has none (or holds pickles)."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise BackendError(
                f"model {model_dir} holds pickle weights ({', '.join(pickles)}), which can run "
                "code when loaded; only .safetensors files are accepted"
            )
        raise BackendError(f"model {model_dir} has no .safetensors weights")
    return files


def _model_config(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / MODEL_CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise BackendError(f"{model_dir} has no {MODEL_CONFIG_FILE}") from None
    except json.JSONDecodeError as exc:
        raise BackendError(f"{model_dir / MODEL_CONFIG_FILE} is not valid JSON: {exc}") from None


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
