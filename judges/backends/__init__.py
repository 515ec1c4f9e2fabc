"""Pick and build the judge backend named by the settings; each SDK is imported only when chosen."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from judges.backends.base import Backend, BackendError, Generation, GenerationOptions
from vocabulary import BackendName

if TYPE_CHECKING:
    from settings import Settings

__all__ = ["BACKENDS", "Backend", "BackendError", "Generation", "GenerationOptions", "make_backend"]

# name -> "module:Class"; the module (and torch / vllm with it) is imported on first use only.
BACKENDS: dict[str, str] = {
    BackendName.TRANSFORMERS: "judges.backends.transformers_backend:TransformersBackend",
    BackendName.LLAMACPP: "judges.backends.llamacpp_backend:LlamaCppBackend",
    BackendName.OPENAI: "judges.backends.openai_backend:OpenAIBackend",
    BackendName.VLLM: "judges.backends.vllm_backend:VLLMBackend",
}


def make_backend(settings: Settings, **overrides: Any) -> Backend:
    """Build `settings.judge_backend` from the settings; `overrides` replace constructor args."""
    name = settings.judge_backend
    if name not in BACKENDS:
        raise BackendError(f"unknown judge backend {name!r}; choose one of {sorted(BACKENDS)}")
    kwargs = {**_CONSTRUCTOR_ARGS[name](settings, overrides), **overrides}
    return load_backend_class(name)(**kwargs)


def load_backend_class(name: str) -> type[Backend]:
    module_name, _, class_name = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = " (install the `vllm` extra)" if name == "vllm" else ""
        raise BackendError(f"the {name} backend cannot be loaded{hint}: {exc}") from exc
    return getattr(module, class_name)


def _local_model(settings: Settings, overrides: dict[str, Any]) -> Path | str:
    if "model_path" in overrides:  # the caller names the model; do not convert the default
        return overrides["model_path"]
    from judges.embedded import ModelNotFoundError, resolve_model_path

    try:
        return resolve_model_path(settings)
    except ModelNotFoundError as exc:
        raise BackendError(str(exc)) from exc


def _transformers_args(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    path = _local_model(settings, overrides)
    if not Path(path).is_dir():
        raise BackendError(
            f"GRM_JUDGE_MODEL={settings.judge_model!r} is neither a local model directory nor a "
            ".gguf file; the transformers backend never downloads models"
        )
    return {"model_path": path, "max_batch_size": settings.judge_batch_size}


def _llamacpp_args(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    """The GGUF itself (the embedded one, or GRM_JUDGE_MODEL's .gguf) and, for its chat
    template, the converted model directory the other local backends read."""
    from judges.backends.llamacpp_backend import fastest_embedded_gguf
    from judges.embedded import ModelNotFoundError, embedded_gguf_path

    model = settings.judge_model
    if model is not None and not str(model).endswith(".gguf"):
        raise BackendError(
            f"the llamacpp backend runs a .gguf file; GRM_JUDGE_MODEL={model!r} is not one "
            "(use the transformers backend for a model directory)"
        )
    try:
        if model:  # the person's own GGUF runs as it is
            gguf = Path(model)
        else:
            gguf = fastest_embedded_gguf(embedded_gguf_path(), settings.model_cache)
    except ModelNotFoundError as exc:
        raise BackendError(str(exc)) from exc
    return {
        "gguf_path": gguf,
        "tokenizer_path": _local_model(settings, {}),
        "threads": settings.judge_threads,
        "max_batch_size": settings.judge_batch_size,
    }


def _openai_args(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        "base_url": settings.openai_base_url,
        "model": settings.judge_model,
        "api_key": settings.openai_api_key,
        "timeout_s": settings.openai_timeout_s,
        "max_batch_size": settings.judge_batch_size,
        "assistant_prefill": settings.openai_assistant_prefill,
    }


def _vllm_args(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_path": _local_model(settings, overrides),
        "max_batch_size": settings.vllm_max_num_seqs or settings.judge_batch_size,
        "tensor_parallel_size": settings.vllm_tensor_parallel_size,
        "kv_cache_gib": settings.vllm_kv_cache_gib,
    }


_CONSTRUCTOR_ARGS: dict[str, Callable[[Settings, dict[str, Any]], dict[str, Any]]] = {
    "transformers": _transformers_args,
    "llamacpp": _llamacpp_args,
    "openai": _openai_args,
    "vllm": _vllm_args,
}
