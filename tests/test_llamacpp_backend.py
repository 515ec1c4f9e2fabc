"""The llama.cpp backend on the real embedded GGUF: it streams what it returns, its log-probs are
the transformers backend's (same weights, other arithmetic), it continues a prefilled answer,
a prompt read ahead gives the same judgment, and a LoRA adapter made by retraining (saved by
PEFT in the transformers layout) changes llama.cpp's judge exactly as it changes transformers'."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from judges.backends.base import BackendError, GenerationOptions
from tests.engine_checks import (
    GREEDY,
    MESSAGES,
    PREFIX,
    collect,
    make_strong_adapter,
    make_whole_version,
    same_logprobs_other_text,
)
from vocabulary import DEFAULT_REPETITION_PENALTY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["shipped", "bf16"])
def llamacpp(request, embedded_model_dir, tmp_path_factory):
    """llama.cpp on the GGUF as shipped (Q4_1) and on its BF16 copy (what the app runs on a CPU
    with native bf16): every test of this module holds for both."""
    from judges.backends.llamacpp_backend import LlamaCppBackend, bf16_copy
    from judges.embedded import embedded_gguf_path

    gguf = embedded_gguf_path()
    if request.param == "bf16":
        gguf = bf16_copy(gguf, tmp_path_factory.mktemp("bf16-copy"))
    backend = LlamaCppBackend(gguf, embedded_model_dir)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def strong_adapter(embedded_model_dir, tmp_path_factory) -> Path:
    return make_strong_adapter(embedded_model_dir, tmp_path_factory.mktemp("strong-adapter"))


@pytest.fixture(scope="module")
def whole(embedded_model_dir, strong_adapter, tmp_path_factory) -> Path:
    """A whole-model version (the strong adapter merged in), made once for both GGUF files."""
    out = tmp_path_factory.mktemp("whole-version") / "version"
    return make_whole_version(embedded_model_dir, strong_adapter, out)


def close_tables(a: dict[str, float], b: dict[str, float], tolerance: float) -> None:
    """The same likeliest token, and the shared tokens' log-probs within `tolerance`."""
    assert max(a, key=a.get) == max(b, key=b.get), (a, b)
    for token in set(a) & set(b):
        if a[token] > -4:  # the likely ones; far tails differ more in low precision
            assert a[token] == pytest.approx(b[token], abs=tolerance), (token, a, b)


# How far llama.cpp's log-probs move when the same tokens are computed by other kernels (a batch
# of sequences, a prompt read in two parts): measured up to 0.17 on the Q4_1 file.
ARITHMETIC = 0.25


def test_streamed_pieces_are_the_text_and_each_token_has_its_logprobs(llamacpp):
    pieces, summary = collect(llamacpp, MESSAGES)
    assert "".join(pieces) == summary.text and summary.text.strip()
    assert summary.finish_reason in ("stop", "length")
    assert summary.completion_tokens == len(summary.token_logprobs) <= GREEDY.max_new_tokens
    assert summary.prompt_tokens > 50
    for step in summary.token_logprobs:  # greedy: the chosen token is the likeliest one
        assert step.logprob == pytest.approx(max(step.top.values()), abs=1e-6)
        assert len(step.top) <= 3 and step.logprob <= 0


def test_next_token_logprobs_match_the_transformers_backend(llamacpp, embedded_backend):
    request = [(MESSAGES, PREFIX)]
    ours = llamacpp.next_token_logprobs(request, top_k=5)[0]
    theirs = embedded_backend.next_token_logprobs(request, top_k=5)[0]
    assert {"A", "B"} <= set(ours)
    assert math.exp(ours["A"]) + math.exp(ours["B"]) > 0.5
    close_tables(ours, theirs, tolerance=0.1)


def test_a_prefilled_answer_is_continued_not_restarted(llamacpp):
    prefilled = [*MESSAGES, {"role": "assistant", "content": PREFIX}]
    _, summary = collect(llamacpp, prefilled, GenerationOptions(max_new_tokens=3))
    assert summary.text[:1] in ("A", "B")  # the verdict letter first: the prefix was not repeated
    assert not summary.text.startswith("Verdict")


def test_a_prompt_read_ahead_gives_the_same_judgment(llamacpp):
    other = [MESSAGES[0], {"role": "user", "content": "Say hello in French."}]
    _, fresh = collect(llamacpp, MESSAGES)
    collect(llamacpp, other)  # the cache now holds another prompt
    assert llamacpp.warm(MESSAGES) is True
    _, warmed = collect(llamacpp, MESSAGES)
    assert warmed.text == fresh.text
    assert [t.logprob for t in warmed.token_logprobs] == pytest.approx(
        [t.logprob for t in fresh.token_logprobs], abs=1e-4
    )


def test_sampling_with_a_seed_repeats_and_differs_from_greedy(llamacpp):
    sampled = GenerationOptions(max_new_tokens=24, temperature=1.2, seed=7)
    _, first = collect(llamacpp, MESSAGES, sampled)
    _, again = collect(llamacpp, MESSAGES, sampled)
    assert first.text == again.text
    texts = {collect(llamacpp, MESSAGES, sampled.model_copy(update={"seed": s}))[1].text
             for s in range(4)}  # fmt: skip
    assert len(texts) > 1


def _most_repeated_line(text: str) -> int:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return max(Counter(lines).values(), default=0)


def test_the_repetition_penalty_breaks_the_judges_loop(llamacpp, llmbar_dir):
    """Greedy, the embedded judge writes one line over and over on this LLMBar pair (13 times in
    320 tokens when measured); the default penalty makes it write on instead."""
    from judges.judge import JudgeOptions, judge_pairs
    from judges.types import PairInput

    row = json.loads((llmbar_dir / "LLMBar_Natural.jsonl").read_text().splitlines()[2])
    pair = PairInput(row["input"], row["output_1"], row["output_2"])
    options = JudgeOptions(prompt_version="pairwise-v3", max_new_tokens=160, logprobs=False)
    assert options.repetition_penalty == DEFAULT_REPETITION_PENALTY > 1.0
    unpenalized = options.model_copy(update={"repetition_penalty": 1.0})
    texts = [
        judge_pairs(llamacpp, [pair], o)[0].samples[0].raw_text for o in (unpenalized, options)
    ]
    assert _most_repeated_line(texts[0]) >= 4, texts[0]
    assert _most_repeated_line(texts[1]) <= 2, texts[1]


def test_the_penalty_changes_the_choice_not_the_reported_logprobs(llamacpp):
    _, plain = collect(llamacpp, MESSAGES, GREEDY)
    _, penalized = collect(
        llamacpp, MESSAGES, GREEDY.model_copy(update={"repetition_penalty": 2.0})
    )
    same_logprobs_other_text(plain, penalized, tolerance=0.05)


def test_penalized_logits_follow_the_transformers_rule():
    from judges.backends.llamacpp_backend import _penalized

    logits = np.array([2.0, -1.0, 3.0, 0.5])
    assert _penalized(logits, {0, 1}, 2.0).tolist() == [1.0, -2.0, 3.0, 0.5]
    assert _penalized(logits, {0, 1}, 1.0) is logits
    assert logits.tolist() == [2.0, -1.0, 3.0, 0.5]  # the model's own logits are not changed


def _demo_conversations(count: int) -> list[list[dict[str, str]]]:
    from assets import asset_path
    from judges.prompts import get_prompt

    rows = [json.loads(line) for line in asset_path("demo_pairs.jsonl").read_text().splitlines()]
    template = get_prompt("pairwise")
    return [
        template.render(r["prompt"], response_a=r["response_a"], response_b=r["response_b"])
        for r in rows[:count]
    ]


def agree_but_for_near_ties(alone, together) -> None:
    """Two answers to one prompt, one decoded alone and one among others: the same tokens with
    the same log-probs (within ARITHMETIC), up to a token the alone run chose from two so close
    that the batch's arithmetic may break the tie the other way."""
    assert together.prompt_tokens == alone.prompt_tokens
    for mine, theirs in zip(alone.token_logprobs, together.token_logprobs, strict=False):
        assert theirs.logprob == pytest.approx(mine.logprob, abs=ARITHMETIC)
        if mine.token != theirs.token:
            first, second = sorted(mine.top.values(), reverse=True)[:2]
            assert first - second < 2 * ARITHMETIC, (mine, theirs)
            return
    assert (together.text, together.finish_reason) == (alone.text, alone.finish_reason)


BATCHED = GenerationOptions(max_new_tokens=48, top_logprobs=2)


def test_a_batch_is_decoded_together_and_says_what_each_says_alone(llamacpp, monkeypatch):
    from judges.backends.llamacpp_batch import BatchContext

    conversations = [MESSAGES, *_demo_conversations(3)]
    alone = [collect(llamacpp, messages, BATCHED)[1] for messages in conversations]
    widths = []
    step = BatchContext.step

    def counted(context, entries):
        widths.append(len(entries))
        return step(context, entries)

    monkeypatch.setattr(BatchContext, "step", counted)
    together = llamacpp.generate_batch(conversations, BATCHED)
    assert widths[0] == 4  # every answer advanced by one token per llama.cpp step
    assert len(widths) == max(g.completion_tokens for g in together) - 1
    for one, batched in zip(alone, together, strict=True):
        agree_but_for_near_ties(one, batched)
    # The same batch again says the same: nothing of the first is left in the sequences' caches.
    again = llamacpp.generate_batch(conversations, BATCHED)
    assert [g.text for g in again] == [g.text for g in together]


def test_a_failure_mid_batch_keeps_what_each_answer_said(llamacpp, monkeypatch):
    from judges.backends.llamacpp_batch import BatchContext

    conversations = _demo_conversations(2)
    whole = llamacpp.generate_batch(conversations, BATCHED)
    step, calls = BatchContext.step, []

    def breaks_at_the_fifth(context, entries):
        calls.append(1)
        if len(calls) == 5:
            raise BackendError("llama.cpp could not decode a batch (code 1)")
        return step(context, entries)

    monkeypatch.setattr(BatchContext, "step", breaks_at_the_fifth)
    broken = llamacpp.generate_batch(conversations, BATCHED)
    for full, cut in zip(whole, broken, strict=True):
        assert cut.finish_reason == "error" and "code 1" in cut.error
        assert cut.completion_tokens == 5 and cut.text and full.text.startswith(cut.text)
    monkeypatch.undo()
    assert [g.text for g in llamacpp.generate_batch(conversations, BATCHED)] == [
        g.text for g in whole
    ]  # and the backend judges on


def test_without_a_batch_context_a_batch_is_answered_one_by_one(embedded_model_dir, monkeypatch):
    from judges.backends import llamacpp_batch
    from judges.backends.llamacpp_backend import LlamaCppBackend
    from judges.embedded import embedded_gguf_path

    def no_memory(*args):
        raise BackendError("llama.cpp could not make a context for 8 sequences")

    monkeypatch.setattr(llamacpp_batch.BatchContext, "__init__", no_memory)
    backend = LlamaCppBackend(embedded_gguf_path(), embedded_model_dir)
    try:
        conversations = [MESSAGES, *_demo_conversations(1)]
        answers = backend.generate_batch(conversations, GREEDY)
        alone = [collect(backend, messages)[1] for messages in conversations]
        assert [(g.text, g.finish_reason) for g in answers] == [
            (g.text, g.finish_reason) for g in alone
        ]
    finally:
        backend.close()


def test_a_prompt_too_long_for_a_batch_is_answered_alone(embedded_model_dir):
    from judges.backends.llamacpp_backend import LlamaCppBackend
    from judges.embedded import embedded_gguf_path

    small = LlamaCppBackend(embedded_gguf_path(), embedded_model_dir, context_tokens=1024)
    try:
        assert small.batch_tokens_per_sequence == 512
        long = [{"role": "user", "content": "Summarise: " + "the judge reads " * 180}]
        too_long = [{"role": "user", "content": "word " * 3000}]
        answers = small.generate_batch([MESSAGES, long, too_long], GREEDY)
        _, alone = collect(small, long)
        assert 512 < answers[1].prompt_tokens + GREEDY.max_new_tokens <= 1024
        assert (answers[1].text, answers[1].finish_reason) == (alone.text, alone.finish_reason)
        assert answers[0].text.strip() and answers[0].finish_reason != "error"
        assert answers[2].finish_reason == "error" and "exceeds the context" in answers[2].error
    finally:
        small.close()


def test_a_prompt_longer_than_the_context_is_refused(llamacpp):
    long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(BackendError, match="exceeds the context"):
        list(llamacpp.stream(long, GREEDY))


def test_a_retrained_adapter_judges_on_llamacpp_as_on_transformers(
    llamacpp, embedded_model_dir, strong_adapter
):
    from judges.backends.gguf_lora import GGUF_FILE
    from judges.backends.llamacpp_backend import LlamaCppBackend
    from judges.backends.transformers_backend import TransformersBackend

    request = [(MESSAGES, PREFIX)]
    # fp32: bf16's logits are too coarse for a reference (A and B can round to one value).
    plain_hf = TransformersBackend(embedded_model_dir, dtype="float32")
    tuned_hf = TransformersBackend(embedded_model_dir, dtype="float32", adapter_path=strong_adapter)
    try:
        base_hf = plain_hf.next_token_logprobs(request, top_k=5)[0]
        expected = tuned_hf.next_token_logprobs(request, top_k=5)[0]
    finally:
        plain_hf.close()
        tuned_hf.close()
    tuned = LlamaCppBackend(llamacpp.gguf_path, embedded_model_dir, adapter_path=strong_adapter)
    try:
        got = tuned.next_token_logprobs(request, top_k=5)[0]
        assert tuned.model_name.endswith(f"+{strong_adapter.name}")
    finally:
        tuned.close()
    base = llamacpp.next_token_logprobs(request, top_k=5)[0]
    assert (strong_adapter / GGUF_FILE).is_file()  # converted once, beside the adapter
    assert max(got, key=got.get) == max(expected, key=expected.get)
    assert got["A"] == pytest.approx(expected["A"], abs=0.15)
    # The adapter moves both engines' verdict the same way, by much more than they differ.
    shift, shift_hf = got["A"] - base["A"], expected["A"] - base_hf["A"]
    assert abs(shift_hf) > 0.2 and shift == pytest.approx(shift_hf, abs=0.15)


def test_a_whole_model_version_judges_on_llamacpp_as_on_transformers(
    llamacpp, embedded_model_dir, whole
):
    """What full fine-tuning saves (bf16, here the strong adapter merged into every weight):
    llama.cpp runs it as a GGUF model made once beside it, with the base file's tokenizer and
    template, and judges as transformers does with it."""
    from gguf import GGUFReader

    from judges.backends.gguf_model import GGUF_FILE
    from judges.backends.llamacpp_backend import LlamaCppBackend
    from judges.backends.transformers_backend import TransformersBackend

    request = [(MESSAGES, PREFIX)]
    reference = TransformersBackend(embedded_model_dir, dtype="float32", adapter_path=whole)
    try:
        expected = reference.next_token_logprobs(request, top_k=5)[0]
    finally:
        reference.close()
    tuned = LlamaCppBackend(llamacpp.gguf_path, embedded_model_dir, adapter_path=whole)
    try:
        got = tuned.next_token_logprobs(request, top_k=5)[0]
        pieces, summary = collect(tuned, MESSAGES)
    finally:
        tuned.close()
    base = llamacpp.next_token_logprobs(request, top_k=5)[0]
    assert max(got, key=got.get) == max(expected, key=expected.get)
    assert got["A"] == pytest.approx(expected["A"], abs=0.15)
    assert abs(got["A"] - base["A"]) > 0.2  # the version's judge, not the base's
    assert "".join(pieces) == summary.text and summary.text.strip()
    made, shipped = GGUFReader(whole / GGUF_FILE), GGUFReader(llamacpp.gguf_path)
    for key in ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "llama.block_count"):
        assert made.fields[key].contents() == shipped.fields[key].contents()
    assert sorted(t.name for t in made.tensors) == sorted(t.name for t in shipped.tensors)


def test_the_adapter_changes_the_judge_and_a_pickle_is_never_loaded(
    llamacpp, embedded_model_dir, strong_adapter, tmp_path
):
    import shutil

    from judges.backends.llamacpp_backend import LlamaCppBackend

    request = [(MESSAGES, PREFIX)]
    base = llamacpp.next_token_logprobs(request)[0]
    tuned = LlamaCppBackend(llamacpp.gguf_path, embedded_model_dir, adapter_path=strong_adapter)
    try:
        changed = tuned.next_token_logprobs(request)[0]
    finally:
        tuned.close()
    assert abs(base["A"] - changed["A"]) > 0.05

    pickled = shutil.copytree(strong_adapter, tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").unlink()
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(BackendError, match="pickle weights"):
        LlamaCppBackend(llamacpp.gguf_path, embedded_model_dir, adapter_path=pickled)


def test_the_settings_choose_llamacpp_with_the_embedded_gguf(tmp_path):
    from judges.backends import make_backend
    from settings import load_settings

    backend = make_backend(load_settings(home=tmp_path, judge_backend="llamacpp"))
    try:
        assert backend.name == "llamacpp" and backend.model_name.startswith("SmolLM2")
    finally:
        backend.close()
    with pytest.raises(BackendError, match="runs a .gguf file"):
        make_backend(load_settings(home=tmp_path, judge_backend="llamacpp", judge_model="/x"))


def test_threads_are_measured_once_unless_the_settings_name_them(llamacpp, embedded_model_dir):
    import os

    from judges.backends import llamacpp_backend
    from judges.backends.llamacpp_backend import LlamaCppBackend

    cores = os.cpu_count()
    assert set(llamacpp.threads) <= {1, cores}
    measured = llamacpp_backend._MEASURED_THREADS[(llamacpp.gguf_path.name, cores)]
    assert llamacpp.threads == measured
    named = LlamaCppBackend(llamacpp.gguf_path, embedded_model_dir, threads=1)
    try:
        assert named.threads == (1, cores)  # decoding as named; prompts read on every core
        _, summary = collect(named, MESSAGES)
        assert summary.text  # and it still judges
    finally:
        named.close()


def test_the_bf16_copy_holds_the_shipped_weights_rounded_to_bf16(tmp_path):
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    from judges.backends.llamacpp_backend import bf16_copy
    from judges.embedded import embedded_gguf_path

    copy_path = bf16_copy(embedded_gguf_path(), tmp_path)
    shipped = {t.name: t for t in GGUFReader(embedded_gguf_path()).tensors}
    copied = GGUFReader(copy_path).tensors
    assert sorted(t.name for t in copied) == sorted(shipped)
    for tensor in copied:
        source = shipped[tensor.name]
        if len(tensor.shape) > 1:  # matrices: bf16; norms (1-D) stay f32
            assert tensor.tensor_type == GGMLQuantizationType.BF16, tensor.name
        want = dequantize(source.data, source.tensor_type)
        got = dequantize(tensor.data, tensor.tensor_type)
        np.testing.assert_allclose(got, want, rtol=2**-8, atol=1e-30, err_msg=tensor.name)
    written = copy_path.stat().st_mtime_ns
    assert bf16_copy(embedded_gguf_path(), tmp_path) == copy_path  # made once
    assert copy_path.stat().st_mtime_ns == written


def test_a_failed_bf16_copy_leaves_nothing_to_read(tmp_path, monkeypatch):
    from judges.backends import llamacpp_backend
    from judges.embedded import embedded_gguf_path

    def half_written(source, target, file_type):
        target.write_bytes(b"GGUF half")
        raise BackendError("disk full")

    monkeypatch.setattr(llamacpp_backend, "_requantize", half_written)
    with pytest.raises(BackendError, match="disk full"):
        llamacpp_backend.bf16_copy(embedded_gguf_path(), tmp_path)
    assert [p.name for p in tmp_path.rglob("*") if p.suffix != ".lock" and p.is_file()] == []
    # What a killed copy left (its temporary file) is deleted by the next one
    monkeypatch.undo()
    (directory,) = tmp_path.iterdir()
    killed = directory / f".{embedded_gguf_path().stem}.bf16.gguf.tmp-999999"
    killed.write_bytes(b"GGUF half")
    made = llamacpp_backend.bf16_copy(embedded_gguf_path(), tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == sorted([made.name, made.name + ".lock"])


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_app_runs_the_bf16_copy_only_where_the_cpu_has_bf16(native_bf16, tmp_path, monkeypatch):
    from judges.backends import _llamacpp_args, transformers_backend
    from judges.backends.llamacpp_backend import bf16_copy
    from judges.embedded import embedded_gguf_path
    from settings import load_settings

    monkeypatch.setattr(transformers_backend, "cpu_has_native_bf16", lambda: native_bf16)
    settings = load_settings(home=tmp_path, judge_backend="llamacpp")
    chosen = _llamacpp_args(settings, {})["gguf_path"]
    shipped = embedded_gguf_path()
    assert chosen == (bf16_copy(shipped, settings.model_cache) if native_bf16 else shipped)
