"""A tiny randomly initialised Llama for tests that train or generate: built here, so no
model hub is needed; its size only has to be enough for the code paths, not for quality."""

from __future__ import annotations

from typing import Any


def tiny_llama(tokenizer: Any, **sizes: int) -> Any:
    """A Llama over `tokenizer`'s vocabulary (2 layers, 32 wide unless `sizes` say otherwise)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
    }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **(shape | sizes),
    )
    return LlamaForCausalLM(config)
