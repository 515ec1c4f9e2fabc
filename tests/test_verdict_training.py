"""The `verdict` method on a tiny model built here: it trains the verdict letter at the verdict
position (left-padded batches whose last position is that position), both orders, and its
adapter's weights move; on the real judge, training prompts are exactly what inference reads."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_training import build_tiny_model, make_records, read_tensors, short_messages, tiny_config

from judges.train import evaluation_options, plan_run
from judges.train import main as train_main
from judges.trainer import load_tokenizer
from judges.types import PairInput, Verdict
from judges.verdict_training import (
    OrdersTogether,
    _LeftPadding,
    _lora_model,
    _trainer,
    letter_ids,
    verdict_logits,
    verdict_prompt_text,
    verdict_rows,
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-verdict-judge"))


def test_rows_train_both_orders_with_the_label_flipped(tiny_model, tmp_path) -> None:
    tokenizer = load_tokenizer(tiny_model)
    config = tiny_config(tmp_path, method="verdict")
    plan = plan_run(config, make_records(4, labels="AB"))
    records = plan.training_side()
    rows = verdict_rows(records, tokenizer, config)
    targets = letter_ids(tokenizer)
    assert len(rows) == 2 * len(records)
    for record, (first, swapped) in zip(
        records, zip(rows[::2], rows[1::2], strict=True), strict=True
    ):
        assert first["labels"] == targets[record.verdict]
        assert swapped["labels"] == targets[record.verdict.swapped()]
        expected = verdict_prompt_text(tokenizer, record.pair)
        assert tokenizer.decode(first["input_ids"]) == expected
        assert expected.endswith("Verdict: [[")


def test_ties_are_trained_as_c_or_left_out(tiny_model, tmp_path) -> None:
    tokenizer = load_tokenizer(tiny_model)
    records = plan_run(
        tiny_config(tmp_path, method="verdict"), make_records(6, labels=["A", "B", "tie"])
    ).records
    ties = [r for r in records if r.verdict is Verdict.TIE]
    kept = verdict_rows(ties, tokenizer, tiny_config(tmp_path, method="verdict"))
    assert {r["labels"] for r in kept} == {letter_ids(tokenizer)[Verdict.TIE]}
    skipped = verdict_rows(
        ties, tokenizer, tiny_config(tmp_path, method="verdict", verdict_ties=False)
    )
    assert skipped == []


def test_each_batch_holds_both_orders_of_its_labels_and_like_lengths() -> None:
    """40 labels of made-up lengths, both orders each (rows 2i and 2i + 1), batches of 8: every
    row read once per epoch, each batch of 8 is 4 whole labels, the longest batch comes first."""
    torch.manual_seed(0)
    lengths = [int(x) for x in torch.randint(50, 900, (40,)).repeat_interleave(2)]
    rows = [{"input_ids": [0] * n} for n in lengths]
    order = list(OrdersTogether(rows, batch_size=8, orders=2))
    assert sorted(order) == list(range(80))
    batches = [order[i : i + 8] for i in range(0, 80, 8)]
    for batch in batches:
        assert {row ^ 1 for row in batch} == set(batch)  # each row's other order is beside it
    assert max(lengths[r] for r in batches[0]) == max(lengths)
    assert order != list(OrdersTogether(rows, batch_size=8, orders=2))  # shuffled anew


def test_the_trainer_reads_both_orders_of_a_label_in_one_batch(tiny_model, tmp_path) -> None:
    """So each batch holds as many A as B targets: the position signal cancels in every step."""
    tokenizer = load_tokenizer(tiny_model)
    config = tiny_config(tmp_path, method="verdict", batch_size=4)
    records = [
        r | {"prompt": r["prompt"] + " and more" * i} for i, r in enumerate(make_records(12))
    ]
    rows = verdict_rows(plan_run(config, records).training_side(), tokenizer, config)
    trainer = _trainer(
        config, rows, tokenizer, _lora_model(config, tiny_model, None, False), tmp_path
    )
    label_of = {tuple(row["input_ids"]): i // 2 for i, row in enumerate(rows)}
    letters = letter_ids(tokenizer)
    seen = []
    for batch in trainer.get_train_dataloader():
        ids = [
            tuple(token for token, real in zip(row, mask, strict=True) if real)
            for row, mask in zip(
                batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True
            )
        ]
        labels = [label_of[row] for row in ids]
        assert all(labels.count(label) == 2 for label in labels)
        targets = batch["labels"].tolist()
        assert targets.count(letters[Verdict.A]) == targets.count(letters[Verdict.B])
        seen += ids
    assert sorted(seen) == sorted(label_of)


def test_left_padding_puts_every_verdict_position_last() -> None:
    batch = _LeftPadding(pad_id=0)(
        [{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [8], "labels": 2}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch["labels"].tolist() == [1, 2]


def test_verdict_training_moves_the_adapter_weights(tiny_model, tmp_path) -> None:
    config = tiny_config(tmp_path, method="verdict")
    result = train_main(plan_run(config, make_records()), tiny_model)
    lora_b = [t for name, t in read_tensors(result.adapter_path).items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)
    assert result.steps == 2 and result.train_loss is not None and result.train_examples > 0


def _eight_rows(tiny_model, tmp_path):
    """Four labeled pairs in both orders: 8 rows of two lengths at least."""
    tokenizer = load_tokenizer(tiny_model)
    config = tiny_config(tmp_path, method="verdict", batch_size=8, max_steps=1, heldout_share=0.2)
    records = [r | {"prompt": r["prompt"] + " and more" * i} for i, r in enumerate(make_records(5))]
    plan = plan_run(config, records)
    return config, tokenizer, verdict_rows(plan.training_side(), tokenizer, config)


def test_verdict_logits_are_each_rows_last_position(tiny_model, tmp_path) -> None:
    config, tokenizer, rows = _eight_rows(tiny_model, tmp_path)
    batch = _LeftPadding(tokenizer.pad_token_id)(rows)
    batch.pop("labels")
    model = _lora_model(config, tiny_model, None, bf16=False)
    expected = model(**batch).logits[:, -1, :]  # every position's logits, the last kept
    torch.testing.assert_close(verdict_logits(model, batch), expected.float())


def test_on_a_bf16_base_lora_computes_in_bf16_and_trains_fp32_weights(tiny_model, tmp_path):
    """No fp32 copy of the activations in the LoRA layers (what made bf16 training slow), the
    same logits as PEFT's fp32 path within bf16's precision, and fp32 adapter gradients."""
    config, tokenizer, rows = _eight_rows(tiny_model, tmp_path)
    batch = _LeftPadding(tokenizer.pad_token_id)(rows)
    labels = batch.pop("labels")
    model = _lora_model(config, tiny_model, None, bf16=True)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained adapter: its path changes the logits
            torch.nn.init.normal_(param, std=0.5)
    lora_inputs = []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            module.register_forward_hook(lambda _m, args, _out: lora_inputs.append(args[0].dtype))
    logits = verdict_logits(model, batch)
    assert lora_inputs and set(lora_inputs) == {torch.bfloat16}
    with torch.no_grad():
        fp32_path = model(**batch).logits[:, -1, :].float()  # PEFT's own: LoRA in fp32
    assert set(lora_inputs[len(lora_inputs) // 2 :]) == {torch.float32}
    torch.testing.assert_close(logits, fp32_path, atol=0.1, rtol=0.05)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    adapter = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert adapter and {p.dtype for p in adapter.values()} == {torch.float32}
    assert {p.grad.dtype for p in adapter.values()} == {torch.float32}
    assert all(p.grad.abs().sum() > 0 for n, p in adapter.items() if "lora_A" in n)


def test_an_accumulated_step_reports_the_mean_loss_of_all_its_rows(tiny_model, tmp_path):
    """Batches of 4, accumulated 2 to a step: the step's loss is the mean cross-entropy of all
    8 rows (the new adapter changes nothing before its first step), not twice it."""
    config, tokenizer, rows = _eight_rows(tiny_model, tmp_path)
    config = replace(config, batch_size=4, gradient_accumulation_steps=2)
    assert len(rows) == 8
    model = _lora_model(config, tiny_model, None, bf16=False)
    batch = _LeftPadding(tokenizer.pad_token_id)(rows)
    labels = batch.pop("labels")
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(verdict_logits(model, batch), labels)
    trainer = _trainer(config, rows, tokenizer, model, tmp_path)
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(expected.item(), abs=1e-3)


def test_an_fp32_model_trains_every_weight_under_the_trainers_bf16_autocast(tiny_model, tmp_path):
    """The learning curve's full fine-tuning trial: a plain fp32 model (no adapter) computes its
    forward pass in bf16 under the Trainer's autocast, and its fp32 weights move."""
    from transformers import AutoModelForCausalLM

    config, tokenizer, rows = _eight_rows(tiny_model, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype="float32")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    outputs = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda _m, _args, out: outputs.append(out.dtype)
    )
    trainer = _trainer(config, rows, tokenizer, model, tmp_path, autocast_bf16=True)
    trainer.train()
    assert outputs and set(outputs) == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "model.layers.0.mlp.down_proj.weight" in moved and "model.norm.weight" in moved


@pytest.mark.parametrize("method", ["verdict", "sft"])
def test_trained_layers_puts_the_adapter_on_the_last_blocks_only(tiny_model, tmp_path, method):
    """trained_layers=1 on the tiny model's 2 blocks: every adapter weight is in block 1."""
    config = tiny_config(tmp_path, method=method, trained_layers=1)
    result = train_main(plan_run(config, make_records()), tiny_model, build_messages=short_messages)
    tensors = read_tensors(result.adapter_path)
    blocks = {name.split(".layers.")[1].split(".")[0] for name in tensors}
    modules = {name.split(".")[-3] for name in tensors}
    assert blocks == {"1"}
    assert modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert any(t.abs().sum() > 0 for name, t in tensors.items() if "lora_B" in name)


def test_a_verdict_run_is_evaluated_where_it_was_trained(tmp_path) -> None:
    from judges.judge import JudgeOptions

    config = tiny_config(tmp_path, method="verdict")
    options = evaluation_options(config, JudgeOptions(max_new_tokens=200, swap=True))
    assert (options.prompt_version, options.max_new_tokens, options.swap) == (
        "pairwise-v3-verdict",
        4,
        True,
    )
    other = evaluation_options(
        tiny_config(tmp_path, method="sft"), JudgeOptions(max_new_tokens=200)
    )
    assert other.prompt_version is None and other.max_new_tokens == 200


@pytest.mark.slow
def test_the_real_judge_reads_each_verdict_letter_as_one_token(embedded_model_dir) -> None:
    tokenizer = load_tokenizer(embedded_model_dir)
    ids = letter_ids(tokenizer)
    assert [tokenizer.decode([ids[v]]) for v in (Verdict.A, Verdict.B, Verdict.TIE)] == [
        "A",
        "B",
        "C",
    ]
    text = verdict_prompt_text(tokenizer, PairInput("Q?", "a", "b"))
    assert text.endswith("<|im_start|>assistant\nVerdict: [[")


@pytest.mark.parametrize("weights", ["full", "lora"])
def test_a_run_whose_weights_turn_nan_says_so_and_saves_nothing(tiny_model, tmp_path, weights):
    """A learning rate so large that the second step overflows: the run fails with the step
    where the gradient stopped being finite, and no version appears to be activated."""
    from judges.trainer import TrainingDiverged

    config = tiny_config(tmp_path, method="verdict", weights=weights, learning_rate=1e30)
    expected = r"infinite values \(the first non-finite .* step 2\)"
    with pytest.raises(TrainingDiverged, match=expected):
        train_main(plan_run(config, make_records()), tiny_model)
    assert not (tmp_path / "adapter").exists()
    assert list(tmp_path.iterdir()) == []  # the work directory beside it is gone too


def test_bf16_training_on_a_gpu_uses_eager_attention(tiny_model, tmp_path, monkeypatch) -> None:
    """SDPA's bf16 backward gave NaN gradients on left-padded rows on an H200; a CPU keeps it.
    The verdict trainer asks for that choice, for every weight and for LoRA."""
    from judges import verdict_training
    from judges.trainer import AdapterInputs, left_padded_attention, load_trainable_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert left_padded_attention(bf16=True) == "eager"
    assert left_padded_attention(bf16=False) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the Trainer runs here
    assert left_padded_attention(bf16=True) is None

    asked: list[bool] = []
    monkeypatch.setattr(
        verdict_training, "left_padded_attention", lambda bf16: asked.append(bf16) or "eager"
    )
    config, tokenizer, rows = _eight_rows(tiny_model, tmp_path)
    for weights in ("full", "lora"):
        inputs = AdapterInputs(replace(config, weights=weights), rows, tokenizer, tiny_model, None)
        trainer = verdict_training.verdict_trainer(inputs, tmp_path / weights, False)
        assert trainer.model.config._attn_implementation == "eager", weights
    assert asked == [False, False]
    assert load_trainable_model(config, tiny_model, None).config._attn_implementation == "sdpa"


def test_the_trainer_steps_with_fused_adamw_and_moves_weights_as_the_loop_does(
    tiny_model, tmp_path
) -> None:
    """The fused AdamW (one pass per tensor, measured faster) makes the same update as
    torch's per-tensor loop."""
    from judges import verdict_training
    from judges.trainer import AdapterInputs

    config, tokenizer, rows = _eight_rows(tiny_model, tmp_path)
    inputs = AdapterInputs(replace(config, weights="full"), rows, tokenizer, tiny_model, None)
    trainer = verdict_training.verdict_trainer(inputs, tmp_path / "fused", False)
    fused = trainer.create_optimizer()
    assert isinstance(fused, torch.optim.AdamW) and fused.defaults["fused"] is True

    model = trainer.model
    twin = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    # The Trainer sets weight decay per group (0 unless told), not in the defaults.
    (decay,) = {group["weight_decay"] for group in fused.param_groups}
    same = {k: fused.defaults[k] for k in ("lr", "betas", "eps")} | {"weight_decay": decay}
    loop = torch.optim.AdamW(twin.values(), **same, foreach=False)
    batch = _LeftPadding(tokenizer.pad_token_id)(rows)
    labels = batch.pop("labels")
    torch.nn.functional.cross_entropy(verdict_logits(model, batch), labels).backward()
    for name, param in model.named_parameters():
        twin[name].grad = param.grad.clone()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fused.step()
    loop.step()
    for name, param in model.named_parameters():
        assert not torch.equal(param, before[name]), name
        assert torch.allclose(param, twin[name], atol=1e-7), name
