"""Export in TRL's formats: preference pairs (text or chat) that TRL's own data utilities and
DPO trainer accept, and SFT examples whose targets follow the human's label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pair_files import judgment, write_jsonl
from sqlalchemy import select
from tiny_llama import tiny_llama

from judges.protocols import get_protocol
from judges.types import PairInput
from services.data import sft_example
from storage import queries
from storage.exporter import export_labels
from storage.importer import import_file
from storage.models import Pair


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A byte-level tokenizer with a ChatML template, built here: no model hub needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


def load_json_dataset(path: Path, tmp_path: Path):
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


def labeled_pairs_for_trl(factory, tmp_path, *, with_chat: bool) -> list[dict[str, Any]]:
    rows = [
        {"prompt": "2+2?", "response_a": "4", "response_b": "5"},
        {"prompt": "Capital of France?", "response_a": "Lyon", "response_b": "Paris \u202e🙂"},
        {"prompt": "Say hi", "response_a": "hi", "response_b": "hello"},
        {"prompt": "Pick one", "response_a": "x", "response_b": "y"},
    ]
    if with_chat:
        turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        rows.append(
            {
                "prompt": turns + [{"role": "user", "content": "Bye?"}],
                "response_a": "Bye!",
                "response_b": "No.",
            }
        )
    import_file(factory, write_jsonl(tmp_path / "trl.jsonl", rows), dataset="trl")
    verdicts = ["A", "B", "tie", "both_bad", "A"]
    with factory.begin() as s:
        ids = s.scalars(select(Pair.id).order_by(Pair.id)).all()
        for pair_id, verdict in zip(ids, verdicts, strict=False):
            queries.save_label(s, pair_id, "alice", verdict)
    return rows


def test_trl_preference_text_prompts(factory, tmp_path) -> None:
    from trl.data_utils import is_conversational, maybe_extract_prompt

    labeled_pairs_for_trl(factory, tmp_path, with_chat=False)
    out = tmp_path / "pref.jsonl"

    assert export_labels(factory, out, format="trl-preference") == 2  # tie and both_bad left out
    data = load_json_dataset(out, tmp_path)
    assert data.column_names == ["prompt", "chosen", "rejected"]
    assert data[0] == {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    assert data[1] == {
        "prompt": "Capital of France?",
        "chosen": "Paris \u202e🙂",
        "rejected": "Lyon",
    }
    for example in data:
        assert not is_conversational(example)
        assert maybe_extract_prompt(example) == example  # explicit prompt, taken as is


def test_trl_preference_with_chat_turns_is_conversational(
    factory, tmp_path, tiny_tokenizer
) -> None:
    from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_extract_prompt

    labeled_pairs_for_trl(factory, tmp_path, with_chat=True)
    out = tmp_path / "pref.jsonl"

    assert export_labels(factory, out, format="trl-preference") == 3
    data = load_json_dataset(out, tmp_path)
    last = data[2]
    assert last["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye?"},
    ]
    assert last["chosen"] == [{"role": "assistant", "content": "Bye!"}]
    assert data[0]["prompt"] == [{"role": "user", "content": "2+2?"}]
    for example in data:
        assert is_conversational(example)
        assert maybe_extract_prompt(example) == example
        rendered = maybe_apply_chat_template(example, tiny_tokenizer)
        assert rendered["prompt"].endswith("<|im_start|>assistant\n")
        assert rendered["chosen"].startswith(example["chosen"][0]["content"])
    assert "Paris \u202e🙂" in maybe_apply_chat_template(data[1], tiny_tokenizer)["chosen"]


@pytest.mark.slow
@pytest.mark.parametrize("with_chat", [False, True], ids=["text", "chat"])
def test_trl_preference_export_prepares_in_dpo_trainer(
    factory, tmp_path, tiny_tokenizer, with_chat
):
    """TRL's own DPO dataset preparation accepts the export and finds the chosen text."""
    import copy

    from trl import DPOConfig, DPOTrainer

    labeled_pairs_for_trl(factory, tmp_path, with_chat=with_chat)
    out = tmp_path / "pref.jsonl"
    export_labels(factory, out, format="trl-preference")
    data = load_json_dataset(out, tmp_path)
    model = tiny_llama(tiny_tokenizer, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), report_to="none", use_cpu=True, bf16=False)
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=data,
        processing_class=tiny_tokenizer,
    )

    prepared = trainer.train_dataset
    assert len(prepared) == len(data)
    chosen_text = tiny_tokenizer.decode(prepared[1]["chosen_ids"])
    assert "Paris \u202e🙂" in chosen_text


def test_trl_sft_targets_follow_the_human(factory, tmp_path, tiny_tokenizer) -> None:
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    rows = [
        {
            "prompt": f"q{i}",
            "response_a": f"a{i}",
            "response_b": f"b{i}",
            "reference": "ref" if i == 0 else None,
        }
        for i in range(5)
    ]
    import_file(factory, write_jsonl(tmp_path / "sft.jsonl", rows), dataset="sft")
    with factory.begin() as s:
        ids = s.scalars(select(Pair.id).order_by(Pair.id)).all()
        j = queries.add_judgments(
            s, [judgment(pid, "A", f"critique {i}") for i, pid in enumerate(ids)]
        )
        queries.save_label(s, ids[0], "alice", "A", judgment_id=j[0])  # agrees with the judge
        queries.save_label(
            s, ids[1], "alice", "B", judgment_id=j[1], corrected_critique="b1 is right."
        )
        queries.save_label(s, ids[2], "alice", "B", judgment_id=j[2])  # disagrees, no critique
        queries.save_label(s, ids[3], "alice", "both_bad", judgment_id=j[3])
        queries.save_label(s, ids[4], "alice", "tie")
    out = tmp_path / "sft-out.jsonl"

    with pytest.raises(ValueError, match="needs the judge's prompt"):
        export_labels(factory, out, format="trl-sft")  # storage alone knows no judge format
    assert export_labels(factory, out, format="trl-sft", sft_example=sft_example) == 4
    data = load_json_dataset(out, tmp_path)  # both_bad left out
    targets = [example["messages"][-1]["content"] for example in data]
    assert targets == [
        "Be correct.\n\ncritique 0\n\nVerdict: [[A]]",
        "b1 is right.\n\nVerdict: [[B]]",
        "Verdict: [[B]]",
        "Verdict: [[C]]",  # a tie as the judge writes it
    ]
    # The prompt is the one the judge is sent for that pair, word for word.
    pair = PairInput("q0", "a0", "b0", "ref")
    (sent,) = get_protocol("pairwise").conversations(pair)
    assert data[0]["messages"][:-1] == sent
    assert [m["role"] for m in data[0]["messages"]] == ["system", "user", "assistant"]
    for example in data:
        assert is_conversational(example)
        assert "Verdict: [[" in maybe_apply_chat_template(example, tiny_tokenizer)["text"]
