"""The grouped attention computes what SDPA computes, on left-padded rows, forward, backward
and while generating, and hands long rows to SDPA."""

from __future__ import annotations

import pytest
import torch
from test_training import build_tiny_model
from tiny_llama import tiny_llama

from judges.grouped_attention import GROUPED, register
from judges.verdict_training import _LeftPadding, verdict_logits


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-grouped"))


def twin_models(path, dtype):
    """The same weights, once with SDPA and once with the grouped attention: 6 query heads on
    2 key/value heads, as the embedded judge shares 3 to a head."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    sdpa = tiny_llama(tokenizer, hidden_size=48, num_attention_heads=6, num_key_value_heads=2)
    grouped = tiny_llama(tokenizer, hidden_size=48, num_attention_heads=6, num_key_value_heads=2)
    grouped.load_state_dict(sdpa.state_dict())
    sdpa.set_attn_implementation("sdpa")
    grouped.set_attn_implementation(register())
    return tokenizer, sdpa.to(dtype), grouped.to(dtype)


def left_padded_batch(tokenizer, lengths=(11, 4, 7, 1)):
    torch.manual_seed(1)
    rows = [
        {"input_ids": torch.randint(3, len(tokenizer), (n,)).tolist(), "labels": 0} for n in lengths
    ]
    batch = _LeftPadding(tokenizer.pad_token_id)(rows)
    batch.pop("labels")
    return batch


def weight_gradients(model, batch, autocast=False):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = verdict_logits(model, batch)
    torch.nn.functional.cross_entropy(logits, torch.tensor([5, 6, 7, 8])).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("dtype", "autocast", "tolerance"),
    [
        (torch.float32, False, 1e-5),
        (torch.bfloat16, False, 0.05),
        # Full fine-tuning in bf16: fp32 weights, the products under bf16 autocast.
        (torch.float32, True, 0.05),
    ],
)
def test_the_verdict_logits_and_gradients_match_sdpa(tiny_model, dtype, autocast, tolerance):
    tokenizer, sdpa, grouped = twin_models(tiny_model, dtype)
    batch = left_padded_batch(tokenizer)
    expected_logits, expected_grads = weight_gradients(sdpa, batch, autocast)
    logits, grads = weight_gradients(grouped, batch, autocast)
    assert torch.isfinite(logits).all()
    assert grouped.config._attn_implementation == GROUPED
    scale = expected_logits.abs().max()
    assert (logits - expected_logits).abs().max() <= tolerance * scale
    for name, expected in expected_grads.items():
        assert torch.isfinite(grads[name]).all(), name  # the pad rows leave no NaN behind
        gap = (grads[name].float() - expected.float()).abs().max()
        assert gap <= tolerance * expected.float().abs().max() + 1e-6, name


def test_a_row_of_pads_only_stays_finite(tiny_model) -> None:
    """A left pad attends to nothing; its row must still give numbers, since the real rows
    multiply its values by 0 in the next layer, and 0 x NaN is NaN."""
    tokenizer, _, grouped = twin_models(tiny_model, torch.bfloat16)
    batch = left_padded_batch(tokenizer)
    hidden = grouped.model(**batch).last_hidden_state
    assert batch["attention_mask"][3, 0] == 0  # the 1-token row is all pads before its token
    assert torch.isfinite(hidden).all()


def test_greedy_generation_matches_sdpa(tiny_model) -> None:
    """With a key/value cache (one query, many keys), as GRPO samples judgments."""
    tokenizer, sdpa, grouped = twin_models(tiny_model, torch.float32)
    batch = left_padded_batch(tokenizer)
    batch.pop("position_ids")
    options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    expected = sdpa.generate(**batch, **options)
    assert torch.equal(grouped.generate(**batch, **options), expected)


def test_rows_wider_than_the_limit_go_to_sdpa(tiny_model, monkeypatch) -> None:
    from transformers.integrations import sdpa_attention

    from judges import grouped_attention

    tokenizer, sdpa, grouped = twin_models(tiny_model, torch.float32)
    batch = left_padded_batch(tokenizer)
    calls = []
    real = sdpa_attention.sdpa_attention_forward

    def counted(*args, **kwargs):
        calls.append(args[2].shape[2])  # the keys
        return real(*args, **kwargs)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", counted)
    monkeypatch.setattr(grouped_attention, "GROUPED_MAX_KEYS", 10)
    expected = verdict_logits(sdpa, batch)
    calls.clear()
    assert torch.allclose(verdict_logits(grouped, batch), expected, atol=1e-5)
    assert calls == [11, 11]  # both layers, at 11 keys
    monkeypatch.setattr(grouped_attention, "GROUPED_MAX_KEYS", 11)
    calls.clear()
    verdict_logits(grouped, batch)
    assert calls == []
