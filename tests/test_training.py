"""The retraining job trains a real LoRA adapter with TRL on a tiny model built here.

Like TRL's own tests: a model small enough to train in a second, and assertions that the
trainable weights actually changed. One test uses the embedded SmolLM2 model (slow).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from fakes import FakeBackend
from tiny_llama import tiny_llama

from judges.judge import JudgeOptions
from judges.split import BY_PROMPT
from judges.train import (
    TrainConfig,
    TrainingRefused,
    config_from_args,
    load_tokenizer,
    main,
    make_parser,
    plan_run,
    prepare_data,
    protocol_messages,
    run_job,
)
from judges.types import PairInput

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(path: Path) -> Path:
    """A 2-layer, 32-wide Llama with a byte-level BPE tokenizer trained on a few judge phrases."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    phrases = "Verdict: [[A]] [[B]] [[C]] Critique: Response A is right. Response B is wrong."
    tokenizer.train_from_iterator([phrases + " question answer user assistant"] * 10, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token="<|im_start|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    torch.manual_seed(0)
    tiny_llama(fast).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def short_messages(pair: PairInput) -> list[dict[str, str]]:
    """A short prompt keeps the tiny runs fast; the real protocol prompt is tested separately."""
    text = f"Q: {pair.prompt_text()}\nA: {pair.response_a}\nB: {pair.response_b}"
    return [{"role": "user", "content": text}]


def make_records(count: int = 12, labels: Sequence[str] = "AB") -> list[dict]:
    records = []
    for i in range(1, count + 1):
        label = labels[i % len(labels)]
        other = {"A": "B", "B": "A", "tie": "A"}.get(label, "A")
        judgments = [
            {"verdict": v, "raw_text": f"Critique: Response {v} is right.\nVerdict: [[{v}]]"}
            for v in (label, other)
            if v in ("A", "B")
        ]
        records.append(
            {
                "pair_id": i,
                "prompt": f"question {i}",
                "response_a": f"answer one {i}",
                "response_b": f"answer two {i}",
                "label": label,
                "label_id": 100 + i,
                "judgments": judgments,
            }
        )
    return records


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    settings = {
        "method": "dpo",
        "weights": "lora",  # full fine-tuning has its own tests (test_full_finetune)
        "max_steps": 2,
        "batch_size": 2,
        "min_labels": 4,
        "rft_samples": 0,
        "max_prompt_tokens": 96,
        "max_target_tokens": 48,
        "learning_rate": 5e-3,  # large, so two steps visibly move a tiny adapter
        "output_dir": str(tmp_path / "adapter"),
    }
    return TrainConfig(**(settings | overrides))


def read_tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


@pytest.mark.parametrize("method", ["sft", "dpo", "dpo+sft"])
def test_training_writes_a_safetensors_adapter_whose_weights_moved(tiny_model, tmp_path, method):
    updates: list[dict] = []
    result = main(
        plan_run(tiny_config(tmp_path, method=method), make_records()),
        tiny_model,
        on_progress=updates.append,
        build_messages=short_messages,
    )
    adapter = tmp_path / "adapter"
    assert result.adapter_path == adapter
    assert sorted(p.name for p in adapter.iterdir() if p.suffix != ".md") == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    tensors = read_tensors(adapter)
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b, "no LoRA weights saved"
    # PEFT starts every lora_B at zero: a non-zero one means training moved it.
    assert any(t.abs().sum() > 0 for t in lora_b)
    assert result.steps == 2 and result.method == method
    assert result.train_loss is not None and math.isfinite(result.train_loss)
    assert [u["step"] for u in updates if u["phase"] == "training"] == [0, 1, 2]
    assert updates[-1]["eta_s"] == 0 and updates[-1]["examples_per_s"] > 0
    assert all(math.isfinite(u["loss"]) for u in updates[1:])
    assert not list(tmp_path.glob(".adapter.tmp-*")), "temporary directory left behind"


def test_retraining_an_adapter_continues_it_and_changes_every_trained_tensor(tiny_model, tmp_path):
    first = main(
        plan_run(tiny_config(tmp_path, output_dir=str(tmp_path / "v1")), make_records()),
        tiny_model,
        build_messages=short_messages,
    )
    second = main(
        plan_run(tiny_config(tmp_path, output_dir=str(tmp_path / "v2")), make_records()),
        tiny_model,
        parent_adapter_path=first.adapter_path,
        build_messages=short_messages,
    )
    before, after = read_tensors(first.adapter_path), read_tensors(second.adapter_path)
    assert before.keys() == after.keys()  # the same adapter, trained further, stands alone
    changed = [k for k in before if not before[k].equal(after[k])]
    assert len(changed) == len(before)


def test_result_records_the_split_and_trains_only_on_the_training_side(tiny_model, tmp_path):
    plan = plan_run(tiny_config(tmp_path, heldout_share=0.3), make_records())
    result = main(plan, tiny_model, build_messages=short_messages)
    split = result.split
    assert split == plan.split
    assert split.heldout and set(split.train).isdisjoint(split.heldout)
    assert sorted(split.train + split.heldout) == list(range(1, 13))
    assert [r.label_id for r in plan.records] == [100 + i for i in range(1, 13)]
    assert result.data_stats["pairs"] == len(split.train)
    assert json.loads(json.dumps(result.as_record()))["split"]["heldout"] == list(split.heldout)


def test_a_run_never_holds_out_a_question_it_trains_on(tmp_path):
    # Four answer pairs per question, some asked as chat turns: the run's held-out figure must
    # come from questions the judge never saw in training.
    records = make_records(40)
    for rec in records:
        question = f"question {rec['pair_id'] % 10}"
        turns = [{"role": "user", "content": question}]
        rec["prompt"] = turns if rec["pair_id"] % 2 else question
    plan = plan_run(tiny_config(tmp_path, heldout_share=0.3), records)
    prompt_of = {r.pair_id: r.pair.prompt_text() for r in plan.records}
    trained = {prompt_of[pid] for pid in plan.split.train}
    held = {prompt_of[pid] for pid in plan.split.heldout}
    assert held and trained.isdisjoint(held)
    assert plan.split.method == BY_PROMPT


def test_protocol_prompts_fit_the_token_budget_and_keep_both_ends(tiny_model, tmp_path):
    records = make_records()
    for rec in records:
        rec["response_a"] = "start " + "filler " * 150 + "finish"
    config = tiny_config(tmp_path, max_prompt_tokens=700)
    tokenizer = load_tokenizer(tiny_model)
    build = protocol_messages("pairwise")
    data = prepare_data(plan_run(config, records), tokenizer, build)
    assert data.sft
    for example in data.sft:
        text = tokenizer.apply_chat_template(
            example.prompt, tokenize=False, add_generation_prompt=True
        )
        assert len(tokenizer.encode(text, add_special_tokens=False)) <= 700
        assert "start" in text and "finish" in text and "characters omitted" in text
        assert "[Response A]" in text  # the judge's own pairwise prompt


def test_protocol_prompt_trains(tiny_model, tmp_path):
    """The judge's own pairwise prompt (not the short test one) goes through a training step."""
    config = tiny_config(tmp_path, max_steps=1, max_prompt_tokens=700)
    result = main(plan_run(config, make_records()), tiny_model)
    assert result.steps == 1 and result.train_examples > 0
    assert result.train_loss is not None and math.isfinite(result.train_loss)
    lora_b = [t for name, t in read_tensors(result.adapter_path).items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b), "the step moved no LoRA weight"


@pytest.mark.parametrize(
    ("records", "config", "message"),
    [
        (make_records(3), {}, "only 3 usable labels"),
        (make_records(12, labels="A"), {}, "every usable label is 'A'"),
        (
            make_records(6, labels=["both_bad", "A", "B"]),
            {"min_labels": 5},
            "only 4 usable labels \\(A, B or tie; 2 others not counted\\)",
        ),
        (make_records(), {"method": "ppo"}, "method must be one of"),
        (make_records(), {"heldout_share": 0.0}, "heldout_share"),
        (make_records(), {"max_prompt_tokens": 10}, "max_prompt_tokens"),
    ],
)
def test_refusals_come_before_any_model_is_loaded(tmp_path, records, config, message):
    with pytest.raises(TrainingRefused, match=message):
        main(plan_run(tiny_config(tmp_path, **config), records), tmp_path / "no-such-model")
    assert not (tmp_path / "adapter").exists()


def test_refuses_to_overwrite_an_existing_adapter(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "keep.txt").write_text("active version")
    with pytest.raises(TrainingRefused, match="already exists"):
        main(plan_run(tiny_config(tmp_path), make_records()), tmp_path / "no-such-model")
    assert (tmp_path / "adapter" / "keep.txt").read_text() == "active version"


def test_prompt_template_larger_than_the_budget_is_refused(tiny_model, tmp_path):
    with pytest.raises(TrainingRefused, match="tokens for the texts after the"):
        main(plan_run(tiny_config(tmp_path, max_prompt_tokens=64), make_records()), tiny_model)


def test_a_run_that_fails_mid_way_leaves_no_adapter(tiny_model, tmp_path):
    def explode(update: dict) -> None:
        if update.get("step") == 1:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        main(
            plan_run(tiny_config(tmp_path), make_records()),
            tiny_model,
            on_progress=explode,
            build_messages=short_messages,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_parser_is_generated_from_the_config_fields():
    parser = make_parser()
    options = {a.dest: a for a in parser._actions if a.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(options) == set(fields) - {"output_dir"}  # a run's directory is not an option
    for name, action in options.items():
        assert action.default == fields[name].default
        assert action.help.startswith(fields[name].metadata["help"])
        assert action.choices == (
            list(fields[name].metadata["choices"]) if "choices" in fields[name].metadata else None
        )
    assert options["max_steps"].type is int and options["epochs"].type is float


def test_a_stored_run_reads_its_settings_under_their_current_names():
    """A run stored before lora_layers became trained_layers trains its last blocks still;
    the run's job and other keys the config does not know are left out."""
    from judges.train_config import stored_config

    stored = {"weights": "lora", "lora_layers": 3, "seed": 4, "job": {"records_path": "r.json"}}
    config = stored_config(stored)
    assert (config.weights, config.trained_layers, config.seed) == ("lora", 3, 4)
    assert stored_config(dataclasses.asdict(config)) == config


def test_parsed_options_build_the_config():
    args = make_parser().parse_args(
        [
            "--method", "dpo+sft",
            "--epochs", "2",
            "--max-steps", "5",
            "--lora-rank", "4",
            "--no-include-swapped",
            "--bf16", "false",
        ]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.method == "dpo+sft" and config.epochs == 2.0 and config.max_steps == 5
    assert config.lora_rank == 4 and config.include_swapped is False and config.bf16 == "false"
    assert config_from_args(make_parser().parse_args([])) == TrainConfig()
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--method", "ppo"])


def test_run_job_evaluates_before_and_after_with_the_same_options(tiny_model, tmp_path):
    records = make_records()
    for rec in records:
        if rec["label"] == "A":
            rec["judgments"] = rec["judgments"][1:]  # no right judgment: rejective sampling
    opened: list = []

    def make_backend(adapter):
        opened.append(adapter)
        return FakeBackend(script=lambda messages: "Critique: fine.\nVerdict: [[A]]")

    updates: list = []
    options = JudgeOptions(protocol="pairwise", swap=True, logprobs=False)
    config = tiny_config(tmp_path, heldout_share=0.3, rft_samples=2, max_prompt_tokens=700)
    result = run_job(
        plan_run(config, records),
        tiny_model,
        make_backend,
        options,
        on_progress=updates.append,
    )
    assert opened == [None, tmp_path / "adapter"]
    phases = [u["phase"] for u in updates]
    assert phases[0] == "evaluating_before" and phases[-1] == "evaluating_after"
    assert phases.index("sampling") < phases.index("training")
    heldout = len(result.split.heldout)
    for figures in (result.metrics_before, result.metrics_after):
        assert figures["n"] == heldout and figures["options"] == options.model_dump()
        # "[[A]]" in both orders means A, then B: never position-consistent
        assert figures["position_consistency"]["compared"] == heldout
        assert figures["position_consistency"]["rate"] == 0.0
    lacking = [r for r in records if r["label"] == "A" and r["pair_id"] in result.split.train]
    assert result.data_stats["rft_pairs"] == len(lacking)
    assert result.data_stats["positives_rejection_sample"] == len(lacking)  # 2 samples, 1 text


def test_run_job_refuses_to_evaluate_with_another_protocol(tmp_path):
    with pytest.raises(TrainingRefused, match="evaluate with the protocol being trained"):
        run_job(
            plan_run(tiny_config(tmp_path), make_records()),
            tmp_path,
            lambda adapter: None,
            JudgeOptions(protocol="pointwise"),
        )


@pytest.mark.slow
def test_dpo_steps_on_the_embedded_model_give_an_adapter_the_backend_loads(settings, tmp_path):
    from judges.backends.base import GenerationOptions
    from judges.backends.transformers_backend import TransformersBackend
    from judges.embedded import ensure_embedded_model

    model_dir = ensure_embedded_model(settings.model_cache)
    result = main(
        plan_run(tiny_config(tmp_path, max_steps=2, learning_rate=1e-4), make_records(4)),
        model_dir,
        build_messages=short_messages,
    )
    assert result.steps == 2 and math.isfinite(result.train_loss)
    assert any(
        t.abs().sum() > 0 for n, t in read_tensors(result.adapter_path).items() if "lora_B" in n
    )
    backend = TransformersBackend(model_dir, adapter_path=result.adapter_path)
    try:
        generation = backend._collect(
            short_messages(PairInput("q", "a", "b")), GenerationOptions(max_new_tokens=4)
        )
    finally:
        backend.close()
    assert generation.finish_reason in ("stop", "length") and generation.error is None


def test_run_job_on_the_local_backend_evaluates_both_versions(tiny_model, tmp_path):
    """The job as the worker runs it: the transformers backend judges before and after."""
    from judges.backends.transformers_backend import TransformersBackend

    config = tiny_config(tmp_path, max_steps=1, max_prompt_tokens=700, heldout_share=0.3)
    options = JudgeOptions(max_new_tokens=4, logprobs=False)

    def make_backend(adapter: Path | None) -> TransformersBackend:
        return TransformersBackend(tiny_model, adapter_path=adapter)

    result = run_job(plan_run(config, make_records()), tiny_model, make_backend, options)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    record = json.loads(json.dumps(result.as_record()))
    for key in ("metrics_before", "metrics_after"):
        assert record[key]["n"] == len(record["split"]["heldout"])
        assert record[key]["options"]["max_new_tokens"] == 4


def test_run_job_refuses_an_existing_output_before_opening_a_judge(tmp_path):
    (tmp_path / "adapter").mkdir()
    opened: list = []
    with pytest.raises(TrainingRefused, match="already exists"):
        run_job(
            plan_run(tiny_config(tmp_path), make_records()),
            tmp_path,
            opened.append,
            JudgeOptions(protocol="pairwise"),
        )
    assert opened == []
