"""The one settings object: every knob of GRM Studio, read from GRM_* environment variables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from vocabulary import DEFAULT_MAX_NEW_TOKENS, DEFAULT_REPETITION_PENALTY, BackendName, ProtocolName


def _default_model_cache() -> Path:
    # Converted models live outside GRM_HOME so a fresh data directory (every test) reuses them.
    return Path.home() / ".cache" / "grm-studio" / "models"


def _default_backend() -> BackendName:
    """The local engine measured fastest here (benchmarks/bench_judge_speed.py: llama.cpp on
    the GGUF decodes several times faster than transformers on the same CPU), else the
    fallback that needs no compiled engine."""
    found = importlib.util.find_spec("llama_cpp") is not None
    return BackendName.LLAMACPP if found else BackendName.TRANSFORMERS


class Settings(BaseSettings):
    """Defaults work on a fresh laptop: SQLite under ./.grm and the embedded SmolLM2 judge."""

    # use_enum_values: the settings hold plain strings ("openai"), checked against the enums.
    model_config = SettingsConfigDict(env_prefix="GRM_", extra="ignore", use_enum_values=True)

    home: Path = Path(".grm")
    database_url: str | None = None
    model_cache: Path = _default_model_cache()

    judge_backend: BackendName = Field(default_factory=_default_backend)
    judge_model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_api_key: str = "not-needed"
    openai_timeout_s: float = 60.0
    # The server continues a partial assistant message (vLLM's continue_final_message): verdict
    # log-probs can be read after "Verdict: [[". Off for servers that would silently ignore it.
    openai_assistant_prefill: bool = False
    judge_protocol: ProtocolName = ProtocolName.PAIRWISE
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY
    judge_batch_size: int = 8
    judge_threads: int | None = None  # the local judge's CPU threads while serving; None: cores - 1
    # vLLM's own parallelism and scheduler, passed through (a multi-GPU box splits the model
    # with tensor_parallel_size); max_num_seqs None: judge_batch_size.
    vllm_tensor_parallel_size: int = 1
    vllm_max_num_seqs: int | None = None
    # vLLM's KV cache in GiB; None: vLLM's share of a GPU's memory, 2 GiB on a CPU (where vLLM
    # would otherwise reserve 85% of the machine's memory at start).
    vllm_kv_cache_gib: float | None = None

    host: str = "127.0.0.1"
    port: int = 7860
    max_import_mb: int = 200
    auth: str | None = None  # "user:pass,user2:pass2" turns on login; labels carry the user

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL: GRM_DATABASE_URL, else a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'grm.sqlite3').resolve()}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; callers pass the object on instead of re-reading it."""
    return Settings(**overrides)
