"""The fixed lists of GRM Studio, each named once: judge protocols, judge backends, the verdicts a
person can give, training-run statuses and training methods.

settings, the CLI's choices, the web UI's choices, judges and storage all read them from here (a
top-level module, so `judges` and `storage` share it without importing each other). Members are
strings: they compare, hash, print and store as their value ("pairwise", not "Protocol.PAIRWISE").
"""

from __future__ import annotations

from enum import Enum


class Name(str, Enum):
    """A str enum that formats as its value on every Python this project supports (3.10+)."""

    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def values(cls) -> list[str]:
        return [member.value for member in cls]


class ProtocolName(Name):
    """How a judge is asked: compare two responses, score each, or verify each."""

    PAIRWISE = "pairwise"
    POINTWISE = "pointwise"
    VERIFIER = "verifier"


class BackendName(Name):
    TRANSFORMERS = "transformers"
    LLAMACPP = "llamacpp"
    OPENAI = "openai"
    VLLM = "vllm"


# Backends that run the model inside this process, on this machine's cores.
LOCAL_BACKENDS = frozenset({BackendName.TRANSFORMERS, BackendName.LLAMACPP})


class LabelVerdict(Name):
    """What a person decided about a pair. Only A, B and tie say which response is better."""

    A = "A"
    B = "B"
    TIE = "tie"
    BOTH_BAD = "both_bad"
    SKIP = "skip"


# Verdicts that compare the two responses (scored against the judge, trained on, exported).
COMPARING_VERDICTS = (LabelVerdict.A, LabelVerdict.B, LabelVerdict.TIE)
# Verdicts stored as labels in exports (a skip is not a label).
EXPORTED_VERDICTS = (*COMPARING_VERDICTS, LabelVerdict.BOTH_BAD)


class RunStatus(Name):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class TrainingMethod(Name):
    """Retraining objectives: cross-entropy on the verdict letter after the verdict-only prompt;
    SFT on agreeing judgments, stored or sampled where none agrees; rejective fine-tuning on
    fresh samples only, k per pair, kept when they agree with the label (SPCT / STaR); DPO of
    agreeing over disagreeing judgments (Con-J); DPO with an NLL term on the chosen one (DJPO);
    and GRPO, online RL rewarded when a sampled verdict matches the label (SPCT)."""

    VERDICT = "verdict"
    SFT = "sft"
    RFT = "rft"
    DPO = "dpo"
    DPO_SFT = "dpo+sft"
    GRPO = "grpo"


class TrainedWeights(Name):
    """What a retraining run trains, and so what a judge version is: a LoRA adapter on the
    base model, or every weight of the model (the version is then a whole model directory)."""

    FULL = "full"
    LORA = "lora"


class QueueOrder(Name):
    """The order a person's label queue serves pairs in. "least sure" serves first the pairs
    whose two orders the judge decided differently, then those it decided by the smallest
    margin. Meant to put labels where the judge learns most; for the embedded judge it did
    not (bench_learning_curve.json, 3 seeds: 56.5% held-out after 100 such labels against
    55.8% after 100 random ones)."""

    IN_ORDER = "in order"
    RANDOM = "random"
    LEAST_SURE = "judge least sure first"


# New tokens a judge may write when nothing else is said (settings, options, backends).
DEFAULT_MAX_NEW_TOKENS = 320

# The judge's repetition penalty when nothing else is said. Greedy decoding of the embedded
# 135M judge falls into loops that repeat one line until max_new_tokens, often a line quoting
# the prompt ("The answer to the question "Which response answers the question better?" is
# ..."). bench_judge_accuracy.py on the 100 LLMBar_Natural pairs, both orders, prompt v3: 5.9%
# of the judgments' words copied from the prompt without a penalty, 0.7% with 1.1; accuracy
# with both orders 0.56 and 0.51 (McNemar p 0.55: no measurable change). 1.1 is the mildest
# customary value (llama.cpp's long-time default).
DEFAULT_REPETITION_PENALTY = 1.1
