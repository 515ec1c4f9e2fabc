"""Several sequences decoded together by llama.cpp, one token of each per step.

A step of one sequence reads every weight to make one token; a step of eight reads them once
for eight tokens. Measured on 2 cores (BF16 copy of the embedded judge, prompts of 350 tokens):
8 sequences decode 220 tokens/s together against 84 for one alone; prompts are read no faster,
so a batch of judgments gains less (benchmarks/bench_judge_speed.py). This is llama.cpp's own
multi-sequence batch (`llama_batch` with a sequence id per token) in a second context on the
loaded model: the streaming context keeps its one conversation's cache for the Label tab.
"""

from __future__ import annotations

import numpy as np

from judges.backends import base


class BatchContext:
    """A llama.cpp context holding `sequences` independent sequences of up to
    `tokens_per_sequence` tokens each: emptied by `clear`, fed by `read` (a prompt) and `step`
    (one token each)."""

    def __init__(
        self, llm, sequences: int, tokens_per_sequence: int, threads: tuple[int, int]
    ) -> None:
        import llama_cpp

        self._llama = llama_cpp
        self.vocab = llm.n_vocab()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = sequences * tokens_per_sequence
        params.n_batch = tokens_per_sequence  # one prompt per call
        params.n_seq_max = sequences
        # Each sequence attends to its own cells only: faster when they share no prefix
        # (measured with 8 sequences: 36 ms a step against 49 for one shared cache).
        params.kv_unified = False
        # Flash attention, unlike the streaming context (which must judge a prompt read in two
        # parts, part cached, as one read whole): a batch reads each prompt whole. Measured
        # with 8 sequences of 400 tokens: 25 ms a step against 30, and 8 demo pairs judged at
        # 70 pairs/min against 62. A batched answer may differ from the streamed one where the
        # judge is near a tie, as it could before: a batch's shapes change the arithmetic too.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.n_threads, params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if self.ctx is None:
            raise base.BackendError(f"llama.cpp could not make a context for {sequences} sequences")
        self.batch = llama_cpp.llama_batch_init(tokens_per_sequence, 0, 1)

    def clear(self) -> None:
        self._llama.llama_memory_clear(self._llama.llama_get_memory(self.ctx), True)

    def read(self, sequence: int, ids: list[int]) -> np.ndarray:
        """Feed a whole prompt to `sequence` (empty since `clear`); its last token's logits."""
        entries = [(sequence, token, position) for position, token in enumerate(ids)]
        self._decode(entries, wanted=[len(entries) - 1])
        return self._logits(len(entries) - 1)

    def step(self, entries: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """Feed one (sequence, token, position) for each sequence; each one's next logits."""
        self._decode(entries, wanted=range(len(entries)))
        return [self._logits(i) for i in range(len(entries))]

    def close(self) -> None:
        if self.ctx is not None:
            self._llama.llama_batch_free(self.batch)
            self._llama.llama_free(self.ctx)
            self.ctx = None

    def _decode(self, entries: list[tuple[int, int, int]], wanted) -> None:
        batch = self.batch
        batch.n_tokens = len(entries)
        for i, (sequence, token, position) in enumerate(entries):
            batch.token[i], batch.pos[i] = token, position
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, sequence
            batch.logits[i] = False
        for i in wanted:
            batch.logits[i] = True
        code = self._llama.llama_decode(self.ctx, batch)
        if code != 0:
            raise base.BackendError(f"llama.cpp could not decode a batch (code {code})")

    def _logits(self, index: int) -> np.ndarray:
        return logits_copy(self._llama.llama_get_logits_ith(self.ctx, index), self.vocab)


def logits_copy(row, vocab: int) -> np.ndarray:
    """A row of llama.cpp's logits as an array of our own: the row points into the context,
    which the next decode overwrites."""
    return np.ctypeslib.as_array(row, shape=(vocab,)).copy()
