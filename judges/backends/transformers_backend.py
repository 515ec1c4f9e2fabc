"""The local judge: a transformers causal LM on CPU or GPU, streamed, batched, with logprobs.

One model is shared by every caller (the web app serves all users from one backend), so one
lock lets one generate or forward pass run at a time. Log-probabilities are computed from the
model's raw logits (`output_logits`), i.e. the model's own distribution before temperature or
top-p are applied -- the same quantity for greedy and sampled runs.

OpenMP threads are told to sleep rather than spin while they wait (OMP_WAIT_POLICY=PASSIVE,
unless the environment already says otherwise). Measured on the shared 2-core CPU here: with
the default spinning, a 16-token generate on the main thread took 21-42 s instead of 5.5 s,
because each spinning thread burns the time slice its partner needs when other processes
compete for the cores. It only works if set before torch is first imported.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see above

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from judges.backends import base  # noqa: E402
from judges.backends.adapters import (  # noqa: E402
    check_adapter,
    check_version_files,
    weights_kind,
)
from vocabulary import TrainedWeights  # noqa: E402

log = logging.getLogger(__name__)

WARM_PROMPTS_KEPT = 4  # read-ahead prompts kept (one per person about to judge, ~25 MB each)


class TransformersBackend(base.Backend):
    """A local model directory (safetensors), optionally with a judge version's weights: a LoRA
    adapter merged in, or a whole fine-tuned model loaded in the base's place."""

    name = "transformers"
    supports_logprobs = True
    supports_prefill = True
    supports_repetition_penalty = True

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 8,
        adapter_path: str | Path | None = None,
    ) -> None:
        started = time.perf_counter()
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise base.BackendError(
                f"no local model directory (with config.json) at {self.model_path}"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory never needs the hub
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_batch_size = max_batch_size
        self.adapter_path = Path(adapter_path) if adapter_path else None
        self._lock = threading.Lock()
        # Prompts read ahead of a click (see `warm`): token ids -> the model's cache after them.
        self._warm: OrderedDict[tuple[int, ...], DynamicCache] = OrderedDict()
        if self.adapter_path is not None:  # refuse bad weights before spending the model load
            check_version_files(self.adapter_path, self.model_path)
        self.tokenizer = _load_tokenizer(self.model_path)
        self.model = _load_model(self.model_path, self.device, self.dtype, self.adapter_path)
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s on %s in %.1fs", self.model_name, self.device, self.load_seconds)

    @property
    def model_name(self) -> str:
        suffix = f"+{self.adapter_path.name}" if self.adapter_path else ""
        return f"{self.model_path.name}{suffix}"

    def stream(
        self, messages: base.Messages, options: base.GenerationOptions
    ) -> Iterator[str | base.Generation]:
        """Yield text as tokens are generated (generate runs in a thread), then the summary."""
        with self._lock:
            inputs = self._encode([self._prompt(messages)], options.max_new_tokens)
            inputs.update(self._warm_cache_for(inputs["input_ids"][0]))
            streamer = TextIteratorStreamer(
                self.tokenizer, skip_prompt=True, skip_special_tokens=True
            )
            cancel = threading.Event()
            outcome: dict[str, object] = {}
            worker = threading.Thread(
                target=self._generate_into,
                args=(inputs, options, outcome),
                kwargs={"streamer": streamer, "cancel": cancel},
                name="grm-generate",
                daemon=True,
            )
            worker.start()
            pieces: list[str] = []
            try:
                for piece in streamer:
                    if piece:
                        pieces.append(piece)
                        yield piece
            finally:
                cancel.set()  # a consumer that stops listening stops the model too
                worker.join()
            if "error" in outcome:
                raise base.BackendError(f"generation failed: {outcome['error']}") from outcome[
                    "error"
                ]
            summary = self._results(inputs, outcome["output"], options)[0]
        # Yielded after the lock is released: a caller that stops at the summary blocks no one.
        yield replace(summary, text="".join(pieces))

    def generate_batch(
        self, conversations: list[base.Messages], options: base.GenerationOptions
    ) -> list[base.Generation]:
        """Answer conversations in left-padded batches of at most `max_batch_size`.

        Prompts are batched in order of length (results come back in the caller's order), so
        each batch pads its rows to a similar length instead of to the longest of all.
        """
        prompts = [self._prompt(m) for m in conversations]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False).input_ids]
        order = sorted(range(len(prompts)), key=lengths.__getitem__)
        results: list[base.Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.max_batch_size):
            rows = order[start : start + self.max_batch_size]
            with self._lock:
                inputs = self._encode([prompts[i] for i in rows], options.max_new_tokens)
                outcome: dict[str, object] = {}
                self._generate_into(inputs, options, outcome)
            if "error" in outcome:
                raise base.BackendError(f"generation failed: {outcome['error']}") from outcome[
                    "error"
                ]
            generations = self._results(inputs, outcome["output"], options)
            for row, generation in zip(rows, generations, strict=True):
                results[row] = generation
        return results

    def next_token_logprobs(
        self, requests: list[tuple[base.Messages, str]], top_k: int = 20
    ) -> list[dict[str, float]] | None:
        """One forward pass per batch: log-probs of the likeliest tokens after each prefix."""
        answers: list[dict[str, float]] = []
        for start in range(0, len(requests), self.max_batch_size):
            chunk = requests[start : start + self.max_batch_size]
            texts = [self._prompt(messages) + prefix for messages, prefix in chunk]
            with self._lock, torch.inference_mode():
                inputs = self._encode(texts, 0)
                # Left padding: count positions from each row's first real token, as generate does.
                positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = self.model(**inputs, position_ids=positions).logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            values, ids = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
            for row_values, row_ids in zip(values.tolist(), ids.tolist(), strict=True):
                answers.append(self._token_table(row_ids, row_values))
        return answers

    def warm(self, messages: base.Messages) -> bool:
        """Read a prompt ahead of the click that will judge it, keeping the model's cache.

        Reading the prompt is most of the wait before a small judge's first word on a CPU;
        done while the person reads the pair, `stream` then starts at the answer. Never waits
        behind a running generation: when the model is busy, nothing is read.
        """
        ids = self.tokenizer(self._prompt(messages), add_special_tokens=False).input_ids
        key = tuple(ids[:-1])  # the last token is fed to generate, which needs one new token
        if key in self._warm or not self._lock.acquire(blocking=False):
            return key in self._warm
        try:
            cache = DynamicCache(config=self.model.config)
            with torch.inference_mode():
                self.model(input_ids=torch.tensor([key], device=self.device), past_key_values=cache)
            self._warm[key] = cache
            while len(self._warm) > WARM_PROMPTS_KEPT:
                self._warm.popitem(last=False)
        finally:
            self._lock.release()
        return True

    def close(self) -> None:
        self._warm.clear()
        self.model = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # -- internals -------------------------------------------------------------------------

    def _prompt(self, messages: base.Messages) -> str:
        # A prefill is appended after the generation prompt, exactly as the probes append theirs.
        conversation, prefill = base.split_prefill(messages)
        prompt = self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        return prompt + prefill

    def _warm_cache_for(self, ids: torch.Tensor) -> dict[str, DynamicCache]:
        """generate's `past_key_values` when this prompt was read ahead (a copy: generate
        extends the cache it is given, and the prompt may be judged again)."""
        cache = self._warm.get(tuple(ids[:-1].tolist()))
        return {"past_key_values": copy.deepcopy(cache)} if cache is not None else {}

    def _encode(self, texts: list[str], max_new_tokens: int) -> dict[str, torch.Tensor]:
        # The chat template already holds every special token; adding BOS again would shift it.
        inputs = self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        context = getattr(self.model.config, "max_position_embeddings", None)
        needed = inputs["input_ids"].shape[1] + max_new_tokens
        if context and needed > context:
            raise base.BackendError(
                f"prompt of {needed - max_new_tokens} tokens plus {max_new_tokens} new tokens "
                f"exceeds the model's context of {context} tokens"
            )
        return inputs

    def _generate_into(
        self,
        inputs: dict[str, torch.Tensor],
        options: base.GenerationOptions,
        outcome: dict[str, object],
        streamer: TextIteratorStreamer | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Run generate, leaving the output or the exception in `outcome` (thread-friendly)."""
        kwargs = generate_kwargs(options, self.tokenizer.pad_token_id)
        if cancel is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_CancelCriteria(cancel)])
        if options.seed is not None:
            torch.manual_seed(options.seed)
        try:
            with torch.inference_mode():
                outcome["output"] = self.model.generate(**inputs, streamer=streamer, **kwargs)
        except Exception as exc:  # handed to the consumer thread, which raises BackendError
            outcome["error"] = exc
            if streamer is not None:
                streamer.end()  # unblock the consumer waiting on the text queue

    def _results(self, inputs, output, options: base.GenerationOptions) -> list[base.Generation]:
        """Map generate's output rows to Generations: text, finish reason, tokens, logprobs."""
        prompt_len = inputs["input_ids"].shape[1]
        eos_ids = _as_set(self.model.generation_config.eos_token_id)
        results = []
        for row, sequence in enumerate(output.sequences.tolist()):
            new_ids, finish = split_at_stop(sequence[prompt_len:], eos_ids, options.max_new_tokens)
            logprobs = None
            if options.top_logprobs > 0 and output.logits is not None:
                logprobs = self._token_logprobs(output.logits, row, new_ids, options.top_logprobs)
            results.append(
                base.Generation(
                    text=self.tokenizer.decode(new_ids, skip_special_tokens=True),
                    finish_reason=finish,
                    prompt_tokens=int(inputs["attention_mask"][row].sum()),
                    completion_tokens=len(new_ids),
                    token_logprobs=logprobs,
                )
            )
        return results

    def _token_logprobs(
        self, logits, row: int, new_ids: list[int], top: int
    ) -> list[base.TokenLogprob]:
        tokens = []
        for step, token_id in enumerate(new_ids):
            logprobs = torch.log_softmax(logits[step][row].float(), dim=-1)
            values, ids = logprobs.topk(top)
            tokens.append(
                base.TokenLogprob(
                    token=self.tokenizer.decode([token_id]),
                    logprob=float(logprobs[token_id]),
                    top=self._token_table(ids.tolist(), values.tolist()),
                )
            )
        return tokens

    def _token_table(self, ids: list[int], values: list[float]) -> dict[str, float]:
        """Token text -> logprob; ids that decode to the same text add up (log-sum-exp)."""
        table: dict[str, float] = {}
        for token_id, value in zip(ids, values, strict=True):
            text = self.tokenizer.decode([token_id])
            table[text] = _logaddexp(table[text], value) if text in table else value
        return table


class _CancelCriteria(StoppingCriteria):
    """Stops generate when the streaming consumer has gone away."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), device=input_ids.device)


def generate_kwargs(options: base.GenerationOptions, pad_token_id: int | None) -> dict:
    """Arguments for `model.generate` from validated options (sampling ones only when sampling)."""
    kwargs: dict = {
        "max_new_tokens": options.max_new_tokens,
        "do_sample": options.temperature > 0,
        "pad_token_id": pad_token_id,
        "return_dict_in_generate": True,
        "output_logits": options.top_logprobs > 0,
    }
    if options.temperature > 0:
        kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=None)
    if options.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = options.repetition_penalty
    return kwargs


def split_at_stop(ids: list[int], eos_ids: set[int], max_new_tokens: int) -> tuple[list[int], str]:
    """The generated ids up to and including the first stop token, and why generation ended."""
    for index, token_id in enumerate(ids):
        if token_id in eos_ids:
            return ids[: index + 1], "stop"
    return ids, "length" if len(ids) >= max_new_tokens else "stop"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """fp32 on CPUs without native bf16 (measured: bf16 decodes slower there), else bf16."""
    if dtype != "auto":
        value = getattr(torch, DTYPE_NAMES.get(dtype, dtype), None)
        if not isinstance(value, torch.dtype):
            raise base.BackendError(
                f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16"
            )
        return value
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bf16 instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _load_tokenizer(model_path: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    tokenizer.padding_side = "left"  # batched decoding continues every row from its last token
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise base.BackendError(f"the tokenizer in {model_path} has no chat template")
    return tokenizer


def _load_model(model_path: Path, device: str, dtype: torch.dtype, adapter_path: Path | None):
    whole = adapter_path is not None and weights_kind(adapter_path) is TrainedWeights.FULL
    weights = adapter_path if whole else model_path  # a whole fine-tune replaces the base
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype, local_files_only=True)
    if adapter_path is not None and not whole:
        check_adapter(adapter_path, model, model_path)
        from judges.backends.merged_lora import merge_adapter

        model = merge_adapter(model, adapter_path)  # once at load, not at every token
    return model.to(device).eval()


def _as_set(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)


def _logaddexp(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))
