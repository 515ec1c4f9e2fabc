"""Full fine-tuning (`weights full`, the measured default): every method trains every weight of a
tiny model built here, the version is a whole model directory (safetensors, bf16, with its
tokenizer) that the transformers backend loads in the base's place; a run continues the active
version whatever its kind, a LoRA run on a whole-model version is refused before anything
loads, and a whole model made for another base is refused at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_training import build_tiny_model, make_records, short_messages, tiny_config

from judges.backends.adapters import check_version_files, weights_kind
from judges.backends.base import BackendError
from judges.train import TrainConfig, TrainingRefused, main, plan_run
from judges.types import PairInput
from vocabulary import TrainedWeights

REQUEST = [(short_messages(PairInput("q", "a", "b")), "Verdict: [[")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def full_config(tmp_path: Path, name: str = "version", **overrides) -> TrainConfig:
    values = {"weights": "full", "output_dir": str(tmp_path / name)}
    return tiny_config(tmp_path, **(values | overrides))


def weights_of(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def verdict_table(model_path: Path, version: Path | None = None) -> dict[str, float]:
    from judges.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(model_path, dtype="float32", adapter_path=version)
    try:
        return backend.next_token_logprobs(REQUEST, top_k=20)[0]
    finally:
        backend.close()


def test_the_default_trains_every_weight_at_its_measured_rate(tmp_path) -> None:
    assert TrainConfig().weights == TrainedWeights.FULL
    records = make_records()
    assert plan_run(TrainConfig(min_labels=4), records).config.learning_rate == 5e-5
    assert plan_run(TrainConfig(min_labels=4, weights="lora"), records).config.learning_rate == 3e-4
    named = TrainConfig(min_labels=4, learning_rate=1e-3)
    assert plan_run(named, records).config.learning_rate == 1e-3
    with pytest.raises(TrainingRefused, match="weights must be one of full, lora"):
        plan_run(TrainConfig(min_labels=4, weights="half"), records)


@pytest.mark.parametrize("method", ["verdict", "sft", "dpo"])
def test_every_weight_trains_and_the_version_is_a_whole_model(tiny_model, tmp_path, method):
    result = main(
        plan_run(full_config(tmp_path, method=method), make_records()),
        tiny_model,
        build_messages=short_messages,
    )
    version = result.adapter_path
    assert weights_kind(version) is TrainedWeights.FULL
    files = {p.name for p in version.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not files & {"adapter_config.json", "adapter_model.safetensors"}
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    base, tuned = weights_of(tiny_model), weights_of(version)
    assert tuned.keys() == base.keys()
    assert {t.dtype for t in tuned.values()} == {torch.bfloat16}
    moved = [k for k in base if not torch.equal(base[k].bfloat16(), tuned[k])]
    # Every block's weights moved, not an adapter beside them.
    assert "model.layers.0.mlp.down_proj.weight" in moved
    assert "model.layers.1.self_attn.q_proj.weight" in moved
    assert result.steps == 2 and result.train_loss is not None
    assert not list(tmp_path.glob(".version.tmp-*")), "temporary directory left behind"
    # The backend loads the version in the base's place: the judge it gives is the saved one.
    check_version_files(version, tiny_model)
    as_version, as_model = verdict_table(tiny_model, version), verdict_table(version)
    assert as_version == pytest.approx(as_model)
    assert as_version != pytest.approx(verdict_table(tiny_model), abs=1e-4)


@pytest.mark.parametrize("method", ["verdict", "sft"])
def test_trained_layers_trains_the_last_blocks_whole_and_leaves_the_rest(
    tiny_model, tmp_path, method
):
    """trained_layers=1 on the tiny model's 2 blocks: block 1, the final norm and the (untied)
    LM head move; block 0 and the embeddings are saved as the base had them."""
    config = full_config(tmp_path, method=method, trained_layers=1)
    result = main(plan_run(config, make_records()), tiny_model, build_messages=short_messages)
    base, tuned = weights_of(tiny_model), weights_of(result.adapter_path)
    moved = {k for k in base if not torch.equal(base[k].bfloat16(), tuned[k])}
    above = {"model.norm.weight", "lm_head.weight"}
    assert {k for k in base if ".layers.1." in k} | above == moved
    assert result.steps == 2


def test_grpo_trains_every_weight(tiny_model, tmp_path, monkeypatch) -> None:
    from judges import grpo_training

    def varied_reward(completions, label, **kwargs):
        # A random tiny judge writes no verdict (every reward -1, nothing to learn): vary them.
        return [float(i % 2) for i in range(len(completions))]

    monkeypatch.setattr(grpo_training, "verdict_reward", varied_reward)
    config = full_config(
        tmp_path, method="grpo", max_steps=1, batch_size=1, grpo_generations=2, max_target_tokens=8
    )
    result = main(plan_run(config, make_records()), tiny_model, build_messages=short_messages)
    base, tuned = weights_of(tiny_model), weights_of(result.adapter_path)
    assert result.steps == 1
    assert not torch.equal(base["model.layers.0.self_attn.v_proj.weight"].bfloat16(),
                           tuned["model.layers.0.self_attn.v_proj.weight"])  # fmt: skip


def _barely_trained(tiny_model: Path, tmp_path: Path, name: str, parent: Path) -> Path:
    """A full run on `parent` whose steps are too small to show (lr 1e-12): what it saves is
    where it started."""
    config = full_config(tmp_path, name, method="verdict", learning_rate=1e-12)
    plan = plan_run(config, make_records(), parent)
    return main(plan, tiny_model, parent_adapter_path=parent).adapter_path


def test_a_full_run_continues_a_lora_version_merged_and_a_whole_one_as_it_is(tiny_model, tmp_path):
    from judges.backends.merged_lora import merged_model

    lora = main(
        plan_run(tiny_config(tmp_path, output_dir=str(tmp_path / "lora")), make_records()),
        tiny_model,
        build_messages=short_messages,
    ).adapter_path
    from_lora = _barely_trained(tiny_model, tmp_path, "from-lora", lora)
    merged = weights_of(merged_model(lora, tiny_model))
    for key, value in weights_of(from_lora).items():
        torch.testing.assert_close(value, merged[key].bfloat16())
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights_of(tiny_model)[key].bfloat16(), weights_of(from_lora)[key])

    whole = main(
        plan_run(full_config(tmp_path, "whole"), make_records()),
        tiny_model,
        build_messages=short_messages,
    ).adapter_path
    from_whole = _barely_trained(tiny_model, tmp_path, "from-whole", whole)
    assert weights_of(from_whole).keys() == weights_of(whole).keys()
    for key, value in weights_of(from_whole).items():
        torch.testing.assert_close(value, weights_of(whole)[key])


def test_a_lora_run_on_a_whole_model_version_is_refused_before_anything_loads(tmp_path):
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "config.json").write_text("{}")  # a whole model by its files; never loaded here
    config = tiny_config(tmp_path)  # weights lora
    with pytest.raises(TrainingRefused, match="whole fine-tuned model.*weights full"):
        plan_run(config, make_records(), whole)
    with pytest.raises(TrainingRefused, match="whole fine-tuned model"):
        main(plan_run(config, make_records()), tmp_path / "no-model", parent_adapter_path=whole)


def test_a_whole_model_for_another_base_or_in_pickles_is_refused(tiny_model, tmp_path) -> None:
    from judges.backends.transformers_backend import TransformersBackend

    wider = tmp_path / "wider"
    shutil.copytree(tiny_model, wider)
    config = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps(config | {"hidden_size": 64}))
    with pytest.raises(BackendError, match="not a fine-tune of .*hidden_size 64 \\(base 32\\)"):
        TransformersBackend(tiny_model, adapter_path=wider)

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(BackendError, match="pickle weights \\(pytorch_model.bin\\)"):
        TransformersBackend(tiny_model, adapter_path=pickled)

    cut = tmp_path / "cut"
    shutil.copytree(tiny_model, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError, match="truncated or not safetensors"):
        check_version_files(cut)  # as activation checks it: no model loaded
