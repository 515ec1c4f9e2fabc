"""The GPU judge: vLLM's engine, stepped in-process, streamed with delta outputs.

vLLM is an optional extra (`pip install grm-studio[vllm]`) and is imported only inside the
constructor. One synchronous `LLMEngine` is stepped under a lock: a stream steps it until its
request finishes; a batch adds every request first so vLLM schedules them together. The mapping
between our options/outputs and vLLM's objects is in pure functions, tested without a GPU.
Log-probabilities are vLLM's default, taken from the raw model logits.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from judges.backends import base
from judges.backends.adapters import check_version_files, weights_kind
from judges.backends.merged_lora import merged_model
from vocabulary import TrainedWeights

log = logging.getLogger(__name__)

# The KV cache on a CPU, in GiB, unless set. vLLM sizes it on a CPU from gpu_memory_utilization
# too: 85% of the machine's memory, reserved at start, so an engine would not start beside the
# app's other processes. 2 GiB hold ~90k tokens of the embedded model's cache.
CPU_KV_CACHE_GIB = 2.0


class VLLMBackend(base.Backend):
    """A model directory (or name) served by an in-process vLLM engine."""

    name = "vllm"
    supports_logprobs = True
    supports_prefill = True
    supports_repetition_penalty = True

    def __init__(
        self,
        model_path: str | Path,
        max_batch_size: int = 64,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        kv_cache_gib: float | None = None,
        adapter_path: str | Path | None = None,
        merge_adapter: bool | None = None,
        seed: int = 0,
        **engine_kwargs: Any,
    ) -> None:
        """`merge_adapter`: load the adapter merged into the weights (None: on vLLM's CPU build,
        whose LoRA kernels decode several times slower) or apply it as a LoRA request."""
        started = time.perf_counter()
        try:
            from vllm import EngineArgs, LLMEngine
        except ImportError as exc:
            hint = "pip install 'grm-studio[vllm]'"
            raise base.BackendError(f"vLLM is not installed ({hint}): {exc}") from exc
        self.model_path = str(model_path)
        self.max_batch_size = max_batch_size
        self.adapter_path = Path(adapter_path) if adapter_path else None
        self._lora = None
        engine_model = self.model_path
        if self.adapter_path is not None:
            # Config and safetensors header checked here (never unpickled): vLLM's own errors
            # for corrupt weights come late and deep in the engine.
            check_version_files(self.adapter_path, Path(model_path))
            merge = _platform_is_cpu() if merge_adapter is None else merge_adapter
            if weights_kind(self.adapter_path) is TrainedWeights.FULL:
                engine_model = str(self.adapter_path)  # a whole fine-tune: the engine's model
            elif merge:
                engine_model = str(merged_model(self.adapter_path, Path(model_path)))
            else:
                self._lora = _lora_request(self.adapter_path)
                engine_kwargs.setdefault("enable_lora", True)
                engine_kwargs.setdefault("max_lora_rank", 64)
        kv_cache_gib = kv_cache_gib if kv_cache_gib is not None else _platform_kv_cache_gib()
        if kv_cache_gib is not None:
            engine_kwargs.setdefault("kv_cache_memory_bytes", int(kv_cache_gib * 2**30))
        args = EngineArgs(
            model=engine_model,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=max_batch_size,
            seed=seed,
            **engine_kwargs,
        )
        self._engine = LLMEngine.from_engine_args(args)
        self._tokenizer = _engine_tokenizer(self._engine, self.model_path)
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        self.load_seconds = time.perf_counter() - started

    @property
    def model_name(self) -> str:
        suffix = f"+{self.adapter_path.name}" if self.adapter_path else ""
        return f"{Path(self.model_path).name}{suffix}"

    def stream(
        self, messages: base.Messages, options: base.GenerationOptions
    ) -> Iterator[str | base.Generation]:
        """Step the engine, yielding each delta of this request's text as vLLM produces it."""
        from vllm.sampling_params import RequestOutputKind

        prompt = prompt_token_ids(self._tokenizer, messages)
        params = self._params(sampling_kwargs(options), RequestOutputKind.DELTA)
        pieces: list[str] = []
        logprobs: list[base.TokenLogprob] = []
        completion_tokens, finished, finish, cached = 0, False, None, 0
        with self._lock:
            request_id = self._add(prompt, params)
            try:
                while not finished:
                    for output in self._step(request_id):
                        completion = output.outputs[0]
                        completion_tokens += len(completion.token_ids)
                        logprobs += token_logprobs(completion, self._decode) or []
                        finished, finish = output.finished, completion.finish_reason
                        cached = max(cached, cached_tokens(output))
                        if completion.text:
                            pieces.append(completion.text)
                            yield completion.text
            finally:
                if not finished:  # the consumer left early (or the engine failed): free the slot
                    self._engine.abort_request([request_id])
        yield base.Generation(
            text="".join(pieces),
            finish_reason=finish_reason(finish),
            prompt_tokens=len(prompt),
            completion_tokens=completion_tokens,
            token_logprobs=logprobs if options.top_logprobs > 0 else None,
            cached_prompt_tokens=cached,
        )

    def generate_batch(
        self, conversations: list[base.Messages], options: base.GenerationOptions
    ) -> list[base.Generation]:
        """Add every request, then step until all finish; vLLM batches them continuously."""
        prompts = [prompt_token_ids(self._tokenizer, m) for m in conversations]
        outputs = self._run_all(prompts, sampling_kwargs(options))
        return [map_output(o, self._decode, options.top_logprobs > 0) for o in outputs]

    def next_token_logprobs(
        self, requests: list[tuple[base.Messages, str]], top_k: int = 20
    ) -> list[dict[str, float]] | None:
        """A one-token greedy step after each prefix, keeping the top-k log-probs there."""
        prompts = [prompt_token_ids(self._tokenizer, m, prefix) for m, prefix in requests]
        kwargs = {"max_tokens": 1, "temperature": 0.0, "logprobs": top_k}
        outputs = self._run_all(prompts, kwargs)
        return [logprob_table(o.outputs[0].logprobs[0], self._decode) for o in outputs]

    def warm(self, messages: base.Messages) -> bool:
        """Read the prompt now (one token, discarded): vLLM's prefix cache keeps its blocks, so
        the judgment that follows starts at the answer."""
        self._run_all([prompt_token_ids(self._tokenizer, messages)], {"max_tokens": 1})
        return True

    def close(self) -> None:
        """Stop the engine's core process now rather than whenever the engine is collected."""
        engine, self._engine = self._engine, None
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    # -- internals -------------------------------------------------------------------------

    def _params(self, kwargs: dict, output_kind: Any) -> Any:
        from vllm import SamplingParams

        return SamplingParams(**kwargs, output_kind=output_kind)

    def _add(self, prompt: list[int], params: Any) -> str:
        request_id = f"grm-{self._prefix}-{next(self._ids)}"
        extra = {"lora_request": self._lora} if self._lora is not None else {}
        self._engine.add_request(request_id, {"prompt_token_ids": prompt}, params, **extra)
        return request_id

    def _step(self, request_id: str | None = None) -> list[Any]:
        if not self._engine.has_unfinished_requests():
            raise base.BackendError("the vLLM engine dropped a request before finishing it")
        try:
            outputs = self._engine.step()
        except Exception as exc:
            raise base.BackendError(f"the vLLM engine failed: {exc}") from exc
        return [o for o in outputs if request_id is None or o.request_id == request_id]

    def _run_all(self, prompts: list[list[int]], kwargs: dict) -> list[Any]:
        from vllm.sampling_params import RequestOutputKind

        params = self._params(kwargs, RequestOutputKind.FINAL_ONLY)
        with self._lock:
            ids = [self._add(prompt, params) for prompt in prompts]
            done: dict[str, Any] = {}
            try:
                while len(done) < len(ids):
                    done.update({o.request_id: o for o in self._step() if o.finished})
            finally:
                unfinished = [i for i in ids if i not in done]
                if unfinished:
                    self._engine.abort_request(unfinished)
        return [done[i] for i in ids]

    def _decode(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])


def sampling_kwargs(options: base.GenerationOptions) -> dict[str, Any]:
    """vLLM SamplingParams arguments for our options (temperature 0 is greedy in vLLM too)."""
    kwargs: dict[str, Any] = {
        "max_tokens": options.max_new_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p if options.temperature > 0 else 1.0,
        "seed": options.seed,
        "repetition_penalty": options.repetition_penalty,
    }
    if options.top_logprobs > 0:
        kwargs["logprobs"] = options.top_logprobs
    return kwargs


def prompt_token_ids(
    tokenizer: Any, messages: base.Messages, assistant_prefix: str = ""
) -> list[int]:
    """Token ids of the chat prompt (plus text the assistant already said), no extra BOS."""
    conversation, prefill = base.split_prefill(messages)
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    text += prefill + assistant_prefix
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def finish_reason(reason: str | None) -> str:
    """vLLM says 'stop', 'length' or 'abort'; ours is 'stop', 'length' or 'error'."""
    return {"stop": "stop", "length": "length"}.get(reason or "", "error")


def map_output(output: Any, decode: Any, with_logprobs: bool) -> base.Generation:
    """A finished vLLM RequestOutput as a Generation."""
    completion = output.outputs[0]
    reason = finish_reason(completion.finish_reason)
    return base.Generation(
        text=completion.text,
        finish_reason=reason,
        prompt_tokens=len(output.prompt_token_ids or []),
        completion_tokens=len(completion.token_ids),
        token_logprobs=token_logprobs(completion, decode) if with_logprobs else None,
        error="the vLLM engine aborted the request" if reason == "error" else None,
        cached_prompt_tokens=cached_tokens(output),
    )


def cached_tokens(output: Any) -> int:
    """Prompt tokens vLLM took from its prefix cache (None before the first step reports it)."""
    return getattr(output, "num_cached_tokens", None) or 0


def token_logprobs(completion: Any, decode: Any) -> list[base.TokenLogprob] | None:
    """Per generated token: its logprob and the top alternatives (vLLM's list of dicts)."""
    if completion.logprobs is None:
        return None
    tokens = []
    for token_id, position in zip(completion.token_ids, completion.logprobs, strict=False):
        chosen = position.get(token_id)
        tokens.append(
            base.TokenLogprob(
                token=_text(chosen, token_id, decode),
                logprob=chosen.logprob if chosen is not None else float("-inf"),
                top=logprob_table(position, decode),
            )
        )
    return tokens


def logprob_table(position: dict[int, Any], decode: Any) -> dict[str, float]:
    """{token id: Logprob} -> {token text: logprob}; ids decoding alike add up (log-sum-exp)."""
    table: dict[str, float] = {}
    for token_id, entry in position.items():
        text = _text(entry, token_id, decode)
        if text in table:
            high, low = max(table[text], entry.logprob), min(table[text], entry.logprob)
            table[text] = high + math.log1p(math.exp(low - high))
        else:
            table[text] = entry.logprob
    return table


def _text(entry: Any, token_id: int, decode: Any) -> str:
    decoded = getattr(entry, "decoded_token", None)
    return decoded if decoded is not None else decode(token_id)


def _platform_is_cpu() -> bool:
    """Whether this vLLM is its CPU build."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _platform_kv_cache_gib() -> float | None:
    """CPU_KV_CACHE_GIB on vLLM's CPU build; None (vLLM sizes it from the GPU's memory) else."""
    return CPU_KV_CACHE_GIB if _platform_is_cpu() else None


def _engine_tokenizer(engine: Any, model_path: str) -> Any:
    """The engine's own tokenizer (its accessor moved between vLLM versions), else the model's."""
    if hasattr(engine, "get_tokenizer"):
        return engine.get_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def _lora_request(adapter_path: Path) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter_path.name, 1, str(adapter_path))
