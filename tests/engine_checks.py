"""What the real-engine tests (llama.cpp, vLLM) share: one judge prompt with a clear answer, the
verdict prefix, a stream collector that checks its shape, and a LoRA adapter as retraining saves
it, strong enough that its effect stands well above two engines' arithmetic differences
(measured: std 0.03 moves the verdict log-probs by about as much as llama.cpp's quantized
arithmetic does; 0.3 moves them several times more)."""

from __future__ import annotations

from pathlib import Path

import pytest

from judges.backends.base import Generation, GenerationOptions

MESSAGES = [
    {"role": "system", "content": "You are a fair judge of two answers."},
    {
        "role": "user",
        "content": "Question: What is the capital of France?\n\n[Response A]\nParis.\n\n"
        "[Response B]\nLyon.\n\nWhich response is better? End with Verdict: [[A]] or [[B]].",
    },
]
PREFIX = "Verdict: [["
GREEDY = GenerationOptions(max_new_tokens=24, top_logprobs=3)


def collect(backend, messages, options=GREEDY) -> tuple[list[str], Generation]:
    """The streamed text pieces and the closing Generation (asserting the stream's shape)."""
    items = list(backend.stream(messages, options))
    assert isinstance(items[-1], Generation)
    assert all(isinstance(piece, str) for piece in items[:-1])
    return items[:-1], items[-1]


def same_logprobs_other_text(plain: Generation, penalized: Generation, tolerance: float) -> None:
    """A repetition penalty changes what greedy decoding chooses, not the log-probs the backend
    reports: the first token's table (before anything was generated to penalize twice) is the
    model's own in both, within `tolerance` (the engine's run-to-run arithmetic)."""
    assert penalized.text != plain.text
    first, reference = penalized.token_logprobs[0].top, plain.token_logprobs[0].top
    assert first.keys() == reference.keys()  # the model's own table, not the penalized one
    for token, value in first.items():
        assert value == pytest.approx(reference[token], abs=tolerance), (token, first, reference)


def make_strong_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter on the query, key, value and down projections (q and k rows are permuted
    in a GGUF), saved by PEFT in the layout retraining writes; the same adapter every run."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)  # before LoRA's own initialisation of A
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    targets = ["q_proj", "k_proj", "v_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.3)
    peft_model.save_pretrained(out)
    return out


def make_whole_version(model_dir: Path, adapter: Path, out: Path) -> Path:
    """A whole-model judge version as full fine-tuning saves it (judges.trainer.save_version:
    bf16 safetensors with the training tokenizer): here the base with `adapter` merged in, so
    its judgments are the LoRA version's."""
    from transformers import AutoModelForCausalLM

    from judges.backends.merged_lora import merge_adapter
    from judges.trainer import load_tokenizer, save_version

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32", local_files_only=True)
    save_version(merge_adapter(model, adapter), load_tokenizer(model_dir), out)
    return out
