"""The fast local judge: llama.cpp (through llama-cpp-python) running the GGUF natively.

The embedded judge ships as a Q4_1 GGUF. llama.cpp decodes it several times faster than the
transformers backend (benchmarks/bench_judge_speed.py has the figures); on a CPU with native
bf16 it runs a BF16 copy made once (`fastest_embedded_gguf`), which reads prompts faster than
the 4-bit file and decodes as fast.

The prompt is rendered by the model's own chat template through the Hugging Face tokenizer of
the converted model directory, exactly as the transformers backend and training render it, and
tokenized by llama.cpp (the same vocabulary). Decoding is a short loop over llama.cpp's
next-token logits, so every generated token's log-probabilities come from the model's raw
distribution (before temperature or top-p), like the transformers backend's, at no extra
cost: llama-cpp-python's own completion API computes log-probs only with logits for every
prompt position. llama.cpp keeps the last prompt's cache; a new prompt that starts the same
way (the same pair judged again, or a prompt read ahead by `warm`) only reads what differs.
A batch of conversations (`generate_batch`) is decoded together in a second context, one token
of each per step (llamacpp_batch.py).

A judge version made by the retraining job is converted once: a LoRA adapter to a GGUF adapter
llama.cpp applies at load (gguf_lora.py), a whole fine-tuned model to a GGUF model (gguf_model.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from judges.backends import base
from judges.backends.adapters import check_version_files, weights_kind
from judges.backends.llamacpp_batch import BatchContext, logits_copy
from vocabulary import TrainedWeights

log = logging.getLogger(__name__)

CONTEXT_TOKENS = 4096  # the judge prompts' budgets plus an answer fit (SmolLM2 allows 8192)


class LlamaCppBackend(base.Backend):
    """A GGUF model run by llama.cpp on the CPU, optionally as a retrained judge version."""

    name = "llamacpp"
    supports_logprobs = True
    supports_prefill = True
    supports_repetition_penalty = True

    def __init__(
        self,
        gguf_path: str | Path,
        tokenizer_path: str | Path,
        threads: int | None = None,
        adapter_path: str | Path | None = None,
        context_tokens: int = CONTEXT_TOKENS,
        max_batch_size: int = 8,
    ) -> None:
        started = time.perf_counter()
        self.gguf_path = Path(gguf_path)
        if not self.gguf_path.is_file():
            raise base.BackendError(f"no GGUF model file at {self.gguf_path}")
        self.adapter_path = Path(adapter_path) if adapter_path else None
        self._lock = threading.Lock()
        self.max_batch_size = max_batch_size  # sequences decoded together by generate_batch
        self.batch_tokens_per_sequence = context_tokens // 2  # prompt and answer of each
        self._batch = None  # llamacpp_batch.BatchContext at the first batch; False: cannot
        self.tokenizer_path = Path(tokenizer_path)  # the base model's directory
        self.tokenizer = _load_tokenizer(self.tokenizer_path)
        model_file, lora = self._version_files()
        self.llm = _load_model(model_file, threads, context_tokens, lora)
        self.threads = (self.llm.n_threads, self.llm.n_threads_batch)  # decoding, reading
        self._stops = {self.llm.token_eos(), *_eos_ids(self.tokenizer)}
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s with llama.cpp in %.1fs", self.model_name, self.load_seconds)

    @property
    def model_name(self) -> str:
        suffix = f"+{self.adapter_path.name}" if self.adapter_path else ""
        return f"{self.gguf_path.stem}{suffix}"

    def stream(
        self, messages: base.Messages, options: base.GenerationOptions
    ) -> Iterator[str | base.Generation]:
        """Yield text as tokens are decoded, then the summary (with log-probs if asked)."""
        with self._lock:
            ids = self._ids(self._prompt(messages), options.max_new_tokens)
            answer = _Answer(ids, options, self._stops, self.llm)
            try:
                logits = self._read(ids)
                while not answer.finish:
                    piece = answer.take(logits)
                    if piece:
                        yield piece
                    if not answer.finish:
                        self.llm.eval([answer.last_token])
                        logits = self._last_logits()
            except (RuntimeError, ValueError) as exc:  # llama.cpp's decode failures
                raise base.BackendError(f"generation failed: {exc}") from exc
            tail = answer.flush()
            if tail:
                yield tail
            summary = self._summary(answer, options)
        yield summary  # after the lock is released: a caller that stops here blocks no one

    def generate_batch(
        self, conversations: list[base.Messages], options: base.GenerationOptions
    ) -> list[base.Generation]:
        """Answer conversations `max_batch_size` at a time, decoded together (llamacpp_batch).
        One is answered alone, in the streaming context, when its prompt is too long for a
        batch sequence or llama.cpp cannot make the batch context (too little memory for its
        cache). A failure mid-batch keeps what each answer said so far, marked as an error."""
        results: list[base.Generation | None] = [None] * len(conversations)
        together: list[tuple[int, list[int]]] = []
        for index, messages in enumerate(conversations):
            try:
                ids = self._ids(self._prompt(messages), options.max_new_tokens)
            except base.BackendError as exc:
                results[index] = base.Generation(text="", finish_reason="error", error=str(exc))
                continue
            if len(ids) + options.max_new_tokens <= self.batch_tokens_per_sequence:
                together.append((index, ids))
        for start in range(0, len(together), self.max_batch_size):
            chunk = together[start : start + self.max_batch_size]
            with self._lock:
                context = self._batch_context()
                if context is not None:
                    answers = self._decode_together(context, [ids for _, ids in chunk], options)
                    for (index, _), generation in zip(chunk, answers, strict=True):
                        results[index] = generation
        for index, messages in enumerate(conversations):
            if results[index] is None:
                results[index] = self._collect(messages, options)
        return results

    def next_token_logprobs(
        self, requests: list[tuple[base.Messages, str]], top_k: int = 20
    ) -> list[dict[str, float]] | None:
        """Log-probs of the likeliest next tokens after each (messages, assistant prefix)."""
        answers = []
        for messages, prefix in requests:
            with self._lock:
                logprobs = _log_softmax(self._read(self._ids(self._prompt(messages) + prefix, 0)))
            top = np.argsort(logprobs)[::-1][:top_k]
            answers.append(self._token_table(top.tolist(), logprobs[top].tolist()))
        return answers

    def warm(self, messages: base.Messages) -> bool:
        """Read a prompt ahead of the click that judges it (llama.cpp keeps its cache, and the
        judgment then reads only the rest). Never waits behind a running generation."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._read(self._ids(self._prompt(messages), 0)[:-1])
        finally:
            self._lock.release()
        return True

    def close(self) -> None:
        batch, self._batch = self._batch, None
        if batch:
            batch.close()  # before its model
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()

    # -- internals -------------------------------------------------------------------------

    def _prompt(self, messages: base.Messages) -> str:
        conversation, prefill = base.split_prefill(messages)
        prompt = self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        return prompt + prefill

    def _ids(self, text: str, max_new_tokens: int) -> list[int]:
        # The chat template holds every special token; special=True reads them as such.
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if len(ids) + max_new_tokens > self.llm.n_ctx():
            raise base.BackendError(
                f"prompt of {len(ids)} tokens plus {max_new_tokens} new tokens exceeds the "
                f"context of {self.llm.n_ctx()} tokens"
            )
        return ids

    def _read(self, ids: list[int]) -> np.ndarray:
        """Feed `ids` after the longest prefix already in the cache; the last token's logits."""
        cached = self.llm.input_ids[: self.llm.n_tokens].tolist()
        common = 0
        for old, new in zip(cached, ids, strict=False):
            if old != new:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least one token is read: its logits are needed
        self.llm.n_tokens = common  # eval drops the cache after this position
        self.llm.eval(ids[common:])
        return self._last_logits()

    def _last_logits(self) -> np.ndarray:
        return logits_copy(self.llm._ctx.get_logits_ith(-1), self.llm.n_vocab())

    def _decode_together(
        self, context, prompts: list[list[int]], options: base.GenerationOptions
    ) -> list[base.Generation]:
        """Each prompt's answer, one token of every unfinished answer per llama.cpp step."""
        answers = [_Answer(ids, options, self._stops, self.llm) for ids in prompts]
        live: list[int] = []
        try:
            context.clear()
            logits = [context.read(sequence, ids) for sequence, ids in enumerate(prompts)]
            live = list(range(len(prompts)))  # the answers whose next logits are in hand
            while live:
                for sequence, row in zip(live, logits, strict=True):
                    if not answers[sequence].finish:
                        answers[sequence].take(row)
                live = [sequence for sequence in live if not answers[sequence].finish]
                if live:
                    logits = context.step([answers[s].next_entry(s) for s in live])
        except (RuntimeError, ValueError) as exc:
            error = f"generation failed: {exc}"
            for sequence in live or range(len(prompts)):
                answers[sequence].fail(error)
        return [self._summary(answer, options) for answer in answers]

    def _batch_context(self):
        """The multi-sequence context, made at the first batch (its cache costs memory); None
        when batches are answered one conversation at a time (a batch size of 1, or llama.cpp
        could not make it)."""
        if self._batch is None and self.max_batch_size > 1:
            try:
                self._batch = BatchContext(
                    self.llm, self.max_batch_size, self.batch_tokens_per_sequence, self.threads
                )
            except base.BackendError as exc:
                log.warning("llama.cpp will answer a batch one by one: %s", exc)
                self._batch = False
        return self._batch or None

    def _summary(self, answer: _Answer, options: base.GenerationOptions) -> base.Generation:
        answer.flush()
        return base.Generation(
            text="".join(answer.pieces),
            finish_reason=answer.finish or "length",
            prompt_tokens=len(answer.prompt),
            completion_tokens=len(answer.steps),
            token_logprobs=self._logprob_table(answer.steps, options.top_logprobs),
            error=answer.error,
        )

    def _logprob_table(self, steps: list[_Step], top: int) -> list[base.TokenLogprob] | None:
        if top <= 0:
            return None
        return [
            base.TokenLogprob(
                token=self.tokenizer.decode([step.token]),
                logprob=step.logprob,
                top=self._token_table(step.best_ids, step.best_logprobs),
            )
            for step in steps
        ]

    def _token_table(self, ids: list[int], values: list[float]) -> dict[str, float]:
        """Token text -> logprob; ids that decode to the same text add up (log-sum-exp)."""
        table: dict[str, float] = {}
        for token_id, value in zip(ids, values, strict=True):
            text = self.tokenizer.decode([token_id])
            table[text] = float(np.logaddexp(table[text], value)) if text in table else value
        return table

    def _version_files(self) -> tuple[Path, Path | None]:
        """The GGUF model to load and the GGUF adapter to apply for the judge version (its
        safetensors checked first, never a pickle; converted once, beside its weights)."""
        if self.adapter_path is None:
            return self.gguf_path, None
        check_version_files(self.adapter_path, self.tokenizer_path)
        if weights_kind(self.adapter_path) is TrainedWeights.FULL:
            from judges.backends.gguf_model import converted_model

            return converted_model(self.adapter_path, self.gguf_path), None
        from judges.backends.gguf_lora import converted_adapter

        return self.gguf_path, converted_adapter(self.adapter_path, self.gguf_path)


@dataclass(frozen=True)
class _Step:
    """One chosen token, with its log-prob and the likeliest tokens' (empty when the options
    ask for no table): kept instead of the whole vocabulary's log-probs, 0.4 MB a token."""

    token: int
    logprob: float = 0.0
    best_ids: list[int] = field(default_factory=list)
    best_logprobs: list[float] = field(default_factory=list)

    @classmethod
    def chosen(cls, token: int, logits: np.ndarray, top: int) -> _Step:
        if top <= 0:
            return cls(token)
        logprobs = _log_softmax(logits)
        top = min(top, logprobs.size)
        best = np.argpartition(-logprobs, top - 1)[:top]  # the top, then only they are sorted
        best = best[np.argsort(-logprobs[best])]
        return cls(token, float(logprobs[token]), best.tolist(), logprobs[best].tolist())


class _Answer:
    """One answer being decoded: its sampling state, its chosen tokens (`_Step`s) and its text
    so far. The streaming and the batched paths share it, so both choose tokens by one rule."""

    def __init__(
        self, prompt: list[int], options: base.GenerationOptions, stops: set[int], llm
    ) -> None:
        self.prompt, self.options, self.stops = prompt, options, stops
        self.rng = np.random.default_rng(options.seed)
        self.seen = set(prompt)  # the penalty's tokens: the prompt's and the answer's so far
        self.steps: list[_Step] = []
        self.pieces: list[str] = []
        self.decoder = _TextDecoder(llm)
        # "stop", "length" or "error" once done
        self.finish: str | None = "length" if options.max_new_tokens <= 0 else None
        self.error: str | None = None

    @property
    def last_token(self) -> int:
        return self.steps[-1].token

    def take(self, logits: np.ndarray) -> str:
        """Choose the next token from `logits`; the text it completes ("" while a character
        waits for its last byte, or for a stop token)."""
        options = self.options
        penalized = _penalized(logits, self.seen, options.repetition_penalty)
        token = _choose(penalized, options, self.rng)
        self.steps.append(_Step.chosen(token, logits, options.top_logprobs))
        if token in self.stops:
            self.finish = "stop"
            return ""
        self.seen.add(token)
        if len(self.steps) >= options.max_new_tokens:
            self.finish = "length"
        piece = self.decoder.add(token)
        if piece:
            self.pieces.append(piece)
        return piece

    def next_entry(self, sequence: int) -> tuple[int, int, int]:
        """(sequence, token, position) that feeds this answer's last token back."""
        return sequence, self.last_token, len(self.prompt) + len(self.steps) - 1

    def fail(self, error: str) -> None:
        self.finish, self.error = "error", error

    def flush(self) -> str:
        tail = self.decoder.flush()
        if tail:
            self.pieces.append(tail)
        return tail


class _TextDecoder:
    """Token ids to text pieces; a character split across tokens waits for its last byte."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self.pending = b""

    def add(self, token: int) -> str:
        self.pending += self.llm.detokenize([token], special=False)
        try:
            text = self.pending.decode("utf-8")
        except UnicodeDecodeError:
            return ""
        self.pending = b""
        return text

    def flush(self) -> str:
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return text


def _choose(logits: np.ndarray, options: base.GenerationOptions, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else a sample from the temperature / top-p distribution."""
    if options.temperature <= 0:
        return int(np.argmax(logits))
    probs = np.exp(_log_softmax(logits / options.temperature))
    order = np.argsort(probs)[::-1]
    keep = np.cumsum(probs[order]) - probs[order] < options.top_p  # at least the top token
    kept = order[keep]
    return int(rng.choice(kept, p=probs[kept] / probs[kept].sum()))


def _penalized(logits: np.ndarray, seen: set[int], penalty: float) -> np.ndarray:
    """`logits` with every `seen` token made less likely by `penalty` (the rule transformers
    and vLLM apply: a positive logit divided by it, a negative one multiplied)."""
    if penalty == 1.0 or not seen:
        return logits
    ids = np.fromiter(seen, dtype=np.int64, count=len(seen))
    penalized = logits.copy()
    values = penalized[ids]
    penalized[ids] = np.where(values > 0, values / penalty, values * penalty)
    return penalized


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory never needs the hub
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tokenizer.chat_template:
        raise base.BackendError(f"the tokenizer in {path} has no chat template")
    return tokenizer


def _eos_ids(tokenizer) -> set[int]:
    return {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()


def _load_model(path: Path, threads: int | None, context_tokens: int, lora: Path | None):
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise base.BackendError(f"llama-cpp-python is not installed: {exc}") from exc
    try:
        llm = Llama(
            model_path=str(path),
            n_ctx=context_tokens,
            lora_path=str(lora) if lora else None,
            # No flash attention: it read a prompt 10% faster, but a prompt read in two parts
            # (part of it cached) then judged differently from one read whole.
            verbose=False,
        )
    except (RuntimeError, ValueError) as exc:
        raise base.BackendError(f"llama.cpp could not load {path.name}: {exc}") from exc
    # Named threads decode; a prompt is read on every core (a short burst, 2x faster here).
    chosen = (
        (threads, max(threads, os.cpu_count() or 1))
        if threads
        else _measured_threads(llm, path.name)
    )
    _set_threads(llm, *chosen)
    log.info("llama.cpp threads: %d decoding, %d reading prompts", *chosen)
    return llm


# Thread counts measured once per process and model: (decoding, reading a prompt).
_MEASURED_THREADS: dict[tuple[str, int], tuple[int, int]] = {}
PROBE_TEXT = b"The judge reads both answers, weighs them against the question and decides. " * 10
# Long enough that reading it shows the second thread's gain: on the BF16 copy 64 tokens read
# as fast on one thread as on two (0.17 vs 0.15 s), where 256 read 1.6x faster on two.
PROBE_TOKENS = 128


def _measured_threads(llm, model: str) -> tuple[int, int]:
    """The faster of one thread and every core, timed here for decoding and for reading a
    prompt. On the 2-core machine this was built on (bench_judge_speed), two read a prompt 2x
    faster; for decoding, one won while OpenMP's threads slept between steps (104 vs 38
    tokens/s on the Q4_1 file) and two win now that they spin a moment first (judges/__init__)."""
    cores = os.cpu_count() or 1
    key = (model, cores)
    if key not in _MEASURED_THREADS:
        options = sorted({1, cores})
        ids = llm.tokenize(PROBE_TEXT, add_bos=False)[:PROBE_TOKENS]
        _time_threads(llm, ids, cores, cores)  # the first evaluation pays one-time setup
        decode = min(options, key=lambda t: _time_threads(llm, ids, t, cores, steps=8))
        batch = min(options, key=lambda t: _time_threads(llm, ids, decode, t))
        _MEASURED_THREADS[key] = (decode, batch)
        llm.n_tokens = 0  # the probe's cache is dropped by the next evaluation
    return _MEASURED_THREADS[key]


def _time_threads(llm, ids: list[int], decode: int, batch: int, steps: int = 0) -> float:
    """Seconds to read `ids` (steps=0) or to decode `steps` tokens after them."""
    _set_threads(llm, decode, batch)
    llm.n_tokens = 0
    started = time.perf_counter()
    llm.eval(ids)
    if steps:
        started = time.perf_counter()
        for _ in range(steps):
            llm.eval(ids[-1:])
    return time.perf_counter() - started


def _set_threads(llm, decode: int, batch: int) -> None:
    import llama_cpp

    llama_cpp.llama_set_n_threads(llm._ctx.ctx, decode, batch)
    llm.n_threads, llm.n_threads_batch = decode, batch


def fastest_embedded_gguf(gguf_path: Path, model_cache: Path) -> Path:
    """The embedded judge's GGUF as llama.cpp runs it fastest on this CPU.

    Its shipped Q4_1 weights make llama.cpp read prompts slowly (the 4-bit kernels unpack as
    they multiply). On a CPU with native bf16 a BF16 copy, made once, reads them 2-3x faster
    and decodes as fast or faster: on 2 AVX512-BF16 cores (bench_judge_speed, side by side)
    a 493-token prompt in 1.0 s against 2.3 s, first token 0.42 s against 1.18 s, 55 against
    47 tokens/s. Elsewhere bf16 is emulated, so the shipped file stays, as measured before.
    """
    from judges.backends.transformers_backend import cpu_has_native_bf16

    return bf16_copy(gguf_path, model_cache) if cpu_has_native_bf16() else gguf_path


def bf16_copy(gguf_path: Path, model_cache: Path) -> Path:
    """A BF16 copy of `gguf_path` in `model_cache`: the same dequantized values the
    transformers backend reads in bf16."""
    return gguf_copy(gguf_path, model_cache, "bf16")


# llama.cpp's LLAMA_FTYPE_MOSTLY_* by name (1-D tensors stay f32 in each).
COPY_FILE_TYPES = {"bf16": 32, "q8_0": 7}


def gguf_copy(gguf_path: Path, model_cache: Path, kind: str) -> Path:
    """A copy of `gguf_path` re-encoded as `kind` (COPY_FILE_TYPES) in `model_cache`, made once
    per file content. Made under a file lock into a temporary file renamed into place, so a
    crash never leaves half a model to be read (and the next copy deletes what a killed one
    left)."""
    from filelock import FileLock

    from judges.embedded import content_key

    gguf_path = Path(gguf_path).resolve()
    target = Path(model_cache).expanduser() / f"gguf-{content_key(gguf_path)}"
    target /= f"{gguf_path.stem}.{kind}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():  # another process made it while we waited
            return target
        for leftover in target.parent.glob(f".{target.name}.tmp-*"):
            leftover.unlink()
        partial = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            _requantize(gguf_path, partial, COPY_FILE_TYPES[kind])
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    log.info("made a %s copy of %s at %s", kind, gguf_path.name, target)
    return target


def _requantize(source: Path, target: Path, file_type: int) -> None:
    import ctypes

    try:
        import llama_cpp
    except ImportError as exc:
        raise base.BackendError(f"llama-cpp-python is not installed: {exc}") from exc
    # llama.cpp lists every tensor it converts; keep its errors only.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize = file_type, True
    params.nthread = os.cpu_count() or 1
    failed = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    if failed or not target.is_file():
        raise base.BackendError(f"llama.cpp could not convert {source.name} (code {failed})")
