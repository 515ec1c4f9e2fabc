"""The `rft` and `grpo` methods: the GRPO reward table-tested on judge outputs; rejective
fine-tuning keeps exactly the fresh samples that agree with the label and are the judge's own
words; both train a tiny model built here, and both are choices of `grm train` and the
Retrain tab."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from fakes import FakeBackend, user_text
from test_training import (
    build_tiny_model,
    make_records,
    read_tensors,
    short_messages,
    tiny_config,
)

import cli
from judges.evaluation import make_sampler
from judges.grpo_training import grpo_rows, verdict_reward
from judges.judge import JudgeOptions
from judges.train import TrainingRefused, load_tokenizer, main, plan_run, prepare_data
from judges.train_config import config_choices
from judges.types import PairInput

# --------------------------------------------------------------------------- the GRPO reward


@pytest.mark.parametrize(
    ("completion", "label", "reward"),
    [
        ("Critique: Response A is right.\nVerdict: [[A]]", "A", 1.0),  # match
        ("Critique: Response B is right.\nVerdict: [[B]]", "A", 0.0),  # mismatch
        ("Verdict: [[C]]", "tie", 1.0),  # a tie label is [[C]]
        ("Verdict: [[A]]", "tie", 0.0),
        ("Verdict: [[C]]", "B", 0.0),
        ("Both are fine, I think.", "A", -1.0),  # no verdict
        ("Verdict: [[", "A", -1.0),  # cut off before the verdict
        ("Verdict: [[A]]\nVerdict: [[B]]", "A", -1.0),  # malformed: two verdicts
        ("Verdict: [[D]]", "A", -1.0),  # malformed: no such verdict
        ([{"role": "assistant", "content": "Verdict: [[B]]"}], "B", 1.0),  # conversational
        ([{"role": "assistant"}], "B", -1.0),  # malformed turn: no content
        (None, "A", -1.0),  # malformed: not a judgment at all
    ],
)
def test_verdict_reward(completion, label, reward) -> None:
    assert verdict_reward([completion], [label]) == [reward]


def test_verdict_reward_reads_each_judgment_with_its_protocol() -> None:
    completions = ["Scores: \\boxed{8, 3}", "Scores: \\boxed{8, 3}", "Verdict: [[A]]"]
    rewards = verdict_reward(
        completions, ["A", "B", "A"], protocol=["pointwise", "pointwise", "pairwise"]
    )
    assert rewards == [1.0, 0.0, 1.0]


def test_prompts_come_in_both_orders_with_the_label_flipped(tmp_path) -> None:
    config = tiny_config(tmp_path, method="grpo")
    records = plan_run(config, make_records(6, labels=["A", "B", "tie"])).records
    rows = grpo_rows(records, short_messages, config, None, len)
    assert len(rows) == 2 * len(records)
    for k, record in enumerate(records):
        shown, swapped = rows[2 * k], rows[2 * k + 1]
        assert shown["prompt"] == short_messages(record.pair)
        assert swapped["prompt"] == short_messages(record.pair.swapped())
        flipped = {"A": "B", "B": "A", "tie": "tie"}[record.label]
        assert (shown["label"], swapped["label"]) == (record.label, flipped)
        assert shown["protocol"] == swapped["protocol"] == "pairwise"
    # The swapped order of a pair labeled A: "[[B]]" names the better response there.
    swapped_a = next(r for r in rows[1::2] if r["label"] == "B" and "A: answer two" in str(r))
    assert verdict_reward(["Verdict: [[B]]", "Verdict: [[A]]"], [swapped_a["label"]] * 2) == [
        1.0,
        0.0,
    ]
    one_order = grpo_rows(
        records, short_messages, tiny_config(tmp_path, include_swapped=False), 0, len
    )
    assert [r["label"] for r in one_order] == [r.label for r in records]


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-grpo-rft"))


def lora_moved(adapter) -> bool:
    """PEFT starts every lora_B at zero: a non-zero one means training moved it."""
    lora_b = [t for name, t in read_tensors(adapter).items() if "lora_B" in name]
    return bool(lora_b) and any(t.abs().sum() > 0 for t in lora_b)


def test_grpo_trains_the_adapter_and_the_backend_loads_it(tiny_model, tmp_path, monkeypatch):
    from judges import grpo_training
    from judges.backends.base import GenerationOptions
    from judges.backends.transformers_backend import TransformersBackend

    seen: list[dict] = []

    def varied_reward(completions, label, **kwargs):
        # The real reward, called as TRL calls it; a random tiny judge writes no verdict, so
        # every reward would be -1 and no judgment better than its group: vary them instead.
        rewards = verdict_reward(completions, label, **kwargs)
        seen.append({"n": len(completions), "label": list(label), "rewards": rewards, **kwargs})
        return [float(i % 2) for i in range(len(completions))]

    monkeypatch.setattr(grpo_training, "verdict_reward", varied_reward)
    config = tiny_config(
        tmp_path, method="grpo", max_steps=1, batch_size=1, grpo_generations=2, max_target_tokens=8
    )
    result = main(plan_run(config, make_records()), tiny_model, build_messages=short_messages)
    assert result.steps == 1 and result.method == "grpo"
    assert result.data_stats["grpo_prompts"] == 2 * result.data_stats["pairs"]
    assert lora_moved(result.adapter_path)
    (call,) = seen
    assert call["n"] == 2 and call["label"][0] == call["label"][1] in ("A", "B")
    assert call["protocol"] == ["pairwise", "pairwise"]
    assert set(call["rewards"]) <= {-1.0, 0.0, 1.0}
    backend = TransformersBackend(tiny_model, adapter_path=result.adapter_path)
    try:
        generation = backend._collect(
            short_messages(PairInput("q", "a", "b")), GenerationOptions(max_new_tokens=4)
        )
    finally:
        backend.close()
    assert generation.error is None


def test_grpo_continues_the_active_adapter(tiny_model, tmp_path, monkeypatch):
    from judges import grpo_training

    def varied_reward(completions, label, **kwargs):
        return [float(i % 2) for i in range(len(completions))]

    monkeypatch.setattr(grpo_training, "verdict_reward", varied_reward)
    settings = {"method": "grpo", "max_steps": 1, "batch_size": 1, "max_target_tokens": 8}
    first = main(
        plan_run(
            tiny_config(tmp_path, output_dir=str(tmp_path / "v1"), **settings), make_records()
        ),
        tiny_model,
        build_messages=short_messages,
    )
    second = main(
        plan_run(
            tiny_config(tmp_path, output_dir=str(tmp_path / "v2"), **settings), make_records()
        ),
        tiny_model,
        parent_adapter_path=first.adapter_path,
        build_messages=short_messages,
    )
    before, after = read_tensors(first.adapter_path), read_tensors(second.adapter_path)
    assert before.keys() == after.keys()  # the same adapter trained further, standing alone
    assert any(not before[k].equal(after[k]) for k in before)


AGREES = "Critique: Response {label} is sampled right.\nVerdict: [[{label}]]"
# The template's own example with the label's verdict: right, but mostly copied.
COPIED = (
    "Principles: Follow the instruction exactly. Be correct.\nCritique: Response A is correct "
    "but ignores the word limit. Response B is correct and short.\nVerdict: [[{label}]]"
)


def test_no_method_trains_on_a_positive_copied_from_the_template() -> None:
    from judges.protocols import get_protocol
    from judges.training_data import (
        DataConfig,
        JudgmentRecord,
        TrainingRecord,
        build_training_data,
        target_format,
    )
    from judges.types import Verdict

    judgments = (
        JudgmentRecord(Verdict.A, COPIED.format(label="A")),
        JudgmentRecord(Verdict.A, AGREES.format(label="A")),
        JudgmentRecord(Verdict.B, "Verdict: [[B]]"),
    )
    record = TrainingRecord(1, "A", "q", "a", "b", judgments=judgments)
    template = get_protocol("pairwise").template
    config = DataConfig(copied_from=template, include_swapped=False)
    data = build_training_data([record], short_messages, config, target_format("pairwise"))
    assert [e.target for e in data.sft] == [AGREES.format(label="A")]  # sft, rft
    assert [e.chosen for e in data.preference] == [AGREES.format(label="A")]  # dpo, dpo+sft
    assert data.stats["positives_copied"] == 1


def scripted_sampler():
    """The judge's sampler over a fake judge: per pair, the label-A pairs get one agreeing,
    one disagreeing and one copied agreeing sample; the label-B pairs a disagreeing one, one
    with no verdict and a copied agreeing one (so they keep nothing)."""
    replies = {
        "A": [AGREES.format(label="A"), "Verdict: [[B]]", COPIED.format(label="A")],
        "B": ["Verdict: [[A]]", "Both are fine.", COPIED.format(label="B")],
    }
    labels = {r["pair_id"]: r["label"] for r in make_records()}
    asked: Counter = Counter()

    def reply(messages) -> str:
        pair_id = int(re.search(r"question (\d+)", user_text(messages)).group(1))
        asked[pair_id] += 1
        return replies[labels[pair_id]][(asked[pair_id] - 1) % 3]

    options = JudgeOptions(protocol="pairwise", logprobs=False, max_new_tokens=64)
    return make_sampler(FakeBackend(script=reply), options)


def test_rft_keeps_only_agreeing_samples_in_the_judges_own_words(tiny_model, tmp_path) -> None:
    plan = plan_run(tiny_config(tmp_path, method="rft", rft_samples=3), make_records())
    data = prepare_data(plan, load_tokenizer(tiny_model), short_messages, scripted_sampler())
    train = plan.training_side()
    label_a = [r.pair_id for r in train if r.label == "A"]
    assert label_a and len(label_a) < len(train)
    expected = []
    for pair_id in label_a:
        expected += [
            (pair_id, False, AGREES.format(label="A")),
            (pair_id, True, AGREES.format(label="B")),  # the swapped copy, its verdict flipped
        ]
    assert [(e.pair_id, e.swapped, e.target) for e in data.sft] == expected
    assert {e.source for e in data.sft} == {"rejection_sample"}  # never a stored judgment
    stats = data.stats
    assert stats["rft_pairs"] == len(train) and stats["rft_samples"] == 3 * len(train)
    assert stats["positives_copied"] == len(train)
    assert stats["pairs_without_positive"] == len(train) - len(label_a)
    assert stats["verdict_only"] == 0


def test_rft_trains_on_the_kept_samples(tiny_model, tmp_path) -> None:
    config = tiny_config(tmp_path, method="rft", rft_samples=3, max_steps=1)
    result = main(
        plan_run(config, make_records()),
        tiny_model,
        build_messages=short_messages,
        sample_more=scripted_sampler(),
    )
    assert (
        result.steps == 1
        and result.train_examples == 2 * result.data_stats["positives_rejection_sample"]
    )
    assert lora_moved(result.adapter_path)


def test_rft_is_refused_without_samples(tmp_path) -> None:
    with pytest.raises(TrainingRefused, match="rft_samples must be at least 1"):
        plan_run(tiny_config(tmp_path, method="rft", rft_samples=0), make_records())
    with pytest.raises(TrainingRefused, match="give a sampler"):
        plan = plan_run(tiny_config(tmp_path, method="rft", rft_samples=2), make_records())
        main(plan, tmp_path / "no-such-model")
    with pytest.raises(TrainingRefused, match="grpo_generations must be at least 2"):
        plan_run(tiny_config(tmp_path, method="grpo", grpo_generations=1), make_records())


# --------------------------------------------------------------------------- where they are chosen


@pytest.mark.parametrize("method", ["rft", "grpo"])
def test_grm_train_and_the_retrain_tab_offer_the_method(method, capsys) -> None:
    args = cli.build_parser().parse_args(["train", "--method", method])
    assert args.method == method
    assert method in config_choices("method")  # the Retrain tab's dropdown reads these
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--help"])
    assert f"{method}:" in " ".join(capsys.readouterr().out.split())


def test_run_job_samples_every_training_pair_for_rft(tiny_model, tmp_path) -> None:
    """The job as the worker runs it: the active judge's sampler feeds rejective fine-tuning."""
    from judges.train import run_job

    def make_backend(adapter):
        return FakeBackend(script=lambda messages: "Critique: fine.\nVerdict: [[A]]")

    config = tiny_config(tmp_path, method="rft", rft_samples=2, max_steps=1, max_prompt_tokens=700)
    options = JudgeOptions(protocol="pairwise", logprobs=False)
    updates: list[dict] = []
    result = run_job(
        plan_run(config, make_records()), tiny_model, make_backend, options, updates.append
    )
    train = [r for r in make_records() if r["pair_id"] in result.split.train]
    assert result.data_stats["rft_pairs"] == len(train)  # stored judgments set aside: all sampled
    # Two samples of one text: one positive for each pair labeled A, none for the others.
    assert result.data_stats["positives_rejection_sample"] == sum(r["label"] == "A" for r in train)
    assert result.steps == 1 and result.metrics_after is not None
    phases = [u["phase"] for u in updates]
    assert phases.index("sampling") < phases.index("training")


def test_run_job_trains_grpo_on_the_judges_own_prompt(tiny_model, tmp_path) -> None:
    """The real pairwise prompt (system message and all) through GRPO, evaluated before and
    after; the adapter lands where the backend loads it from."""
    from judges.train import run_job

    def make_backend(adapter):
        return FakeBackend(script=lambda messages: "Verdict: [[A]]")

    config = tiny_config(tmp_path, method="grpo", max_steps=1, batch_size=1, max_prompt_tokens=700)
    options = JudgeOptions(protocol="pairwise", logprobs=False)
    result = run_job(plan_run(config, make_records()), tiny_model, make_backend, options)
    assert result.steps == 1 and result.train_loss is not None
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert result.metrics_before["n"] == result.metrics_after["n"] == len(result.split.heldout)
