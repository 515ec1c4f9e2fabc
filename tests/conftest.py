"""Shared pytest fixtures: settings on a temp data directory, a migrated database, data paths."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest
from desk import CHROMIUM, CHROMIUM_ARGS
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from settings import Settings, load_settings
from storage.db import init_db, make_engine, make_session_factory
from tests.served import free_port

if TYPE_CHECKING:
    from services import Services  # imported where used: loading it is not free

# Fixtures that load or build a model: a test that uses one trains or runs a model, and is
# marked `slow` here, so `-m "not slow"` is the quick suite whatever its file forgot to mark.
MODEL_FIXTURES = {"tiny_model", "models", "embedded_model_dir", "embedded_backend", "running_app"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# Set to a PostgreSQL URL to run the storage tests there; its public schema is wiped per test.
TEST_DATABASE_URL_ENV = "GRM_TEST_DATABASE_URL"
# A PostgreSQL URL (its public schema is wiped per test): every test using `db` then runs on
# SQLite and on PostgreSQL. .ci/postgres.sh starts such a server and exports it. Unset, the
# postgresql runs are skipped, unless GRM_REQUIRE_POSTGRES=1 (CI), where they fail.
POSTGRES_URL_ENV = "GRM_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "GRM_REQUIRE_POSTGRES"
DB_BACKENDS = ("sqlite", "postgresql")
REPO_ROOT = Path(__file__).resolve().parent.parent


class DatabaseFixture(NamedTuple):
    """What the `db` fixture gives: unpack as `engine, factory = db` or use the names."""

    engine: Engine
    factory: sessionmaker[Session]
    url: str


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose data directory is this test's tmp_path (and the test database, if set)."""
    monkeypatch.setenv("GRM_HOME", str(tmp_path / "grm-home"))
    monkeypatch.delenv("GRM_DATABASE_URL", raising=False)
    if os.environ.get(TEST_DATABASE_URL_ENV):
        monkeypatch.setenv("GRM_DATABASE_URL", os.environ[TEST_DATABASE_URL_ENV])
    return load_settings()


@pytest.fixture(params=DB_BACKENDS)
def db(
    request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DatabaseFixture]:
    """A fresh database migrated with init_db, once on SQLite in tmp_path (or
    GRM_TEST_DATABASE_URL) and once on GRM_TEST_POSTGRES_URL. `settings` and GRM_DATABASE_URL
    (read by Services.open and by child processes) point at the same database."""
    url = settings.db_url if request.param == "sqlite" else _postgres_url()
    settings.database_url = url
    monkeypatch.setenv("GRM_DATABASE_URL", url)
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        _wipe_postgres(engine)
    init_db(engine)
    yield DatabaseFixture(engine, make_session_factory(engine), url)
    engine.dispose()


@pytest.fixture
def factory(db: DatabaseFixture) -> sessionmaker[Session]:
    """The `db` fixture's session factory, for tests that need nothing else of it."""
    return db.factory


@pytest.fixture
def services(settings: Settings, db: DatabaseFixture) -> Services:
    """The app's services on a fresh real database (SQLite; PostgreSQL too when configured)."""
    from services import Services

    return Services(settings, db.factory)


def _postgres_url() -> str:
    """GRM_TEST_POSTGRES_URL if its server answers; otherwise skip, or fail where required."""
    url = os.environ.get(POSTGRES_URL_ENV)
    problem = f"{POSTGRES_URL_ENV} is not set" if not url else _unreachable(url)
    if problem is None:
        return url
    if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
        pytest.fail(f"PostgreSQL required ({REQUIRE_POSTGRES_ENV}=1): {problem}")
    pytest.skip(f"PostgreSQL tests: {problem}")


@functools.cache
def _unreachable(url: str) -> str | None:
    """Why the server cannot be used (None when it can), asked once per test session."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect is reported the same way
        return f"cannot connect: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


def _wipe_postgres(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))


@pytest.fixture
def llmbar_dir() -> Path:
    """The shared, human-labeled LLMBar files (read in place, never copied into the repo)."""
    path = REPO_ROOT.parent / "shared" / "data" / "llmbar"
    if not path.is_dir():
        pytest.skip(f"LLMBar data not found at {path}")
    return path


# -- judge backends (appended by the backends helper) --------------------------------------

# Before any test module imports torch: OpenMP threads sleep instead of spinning while they
# wait. On the shared CPU, spinning made generation several times slower (see the docstring
# of judges/backends/transformers_backend.py, which sets the same default for the app).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2 converted to safetensors, in the shared model cache (converted once)."""
    from judges.embedded import ensure_embedded_model

    return ensure_embedded_model(load_settings().model_cache)


@pytest.fixture(scope="session")
def embedded_backend(embedded_model_dir: Path) -> Iterator[object]:
    """One TransformersBackend on the embedded model, loaded once per test session."""
    from judges.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(embedded_model_dir, max_batch_size=8)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def lora_adapter(embedded_model_dir, tmp_path_factory):
    """A real LoRA adapter on the embedded model, with non-zero B so it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, local_files_only=True)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, config)
    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    assert (out / "adapter_model.safetensors").is_file()
    return out


# -- web app (appended by the web-app helper) ----------------------------------------------


class RunningApp(NamedTuple):
    """The launched web app: where it listens and the services behind it (to check the DB)."""

    url: str
    services: object
    settings: Settings
    demo: object


@pytest.fixture(scope="session")
def running_app(
    tmp_path_factory: pytest.TempPathFactory, embedded_backend: object
) -> Iterator[RunningApp]:
    """One web app for every API and browser test: a fresh data directory with the demo pairs,
    the session's embedded judge, a free loopback port. Tests label as their own annotators,
    so each test has its own queue."""
    from app import build_app, serve
    from services import Services

    settings = load_settings(
        home=tmp_path_factory.mktemp("app-home"),
        database_url=None,  # SQLite: the PostgreSQL fixture wipes its schema per test
        judge_backend="transformers",
        judge_model=None,
        max_new_tokens=192,
        port=free_port(),
    )
    services = Services.open(settings)
    services.use_backend(embedded_backend)
    services.load_demo_if_empty()
    demo = build_app(services)
    _, url = serve(demo, settings, prevent_thread_lock=True, quiet=True)
    yield RunningApp(url, services, settings, demo)
    demo.close()


# -- web app on PostgreSQL (appended by the load/PostgreSQL helper, issue 6) ----------------


@pytest.fixture(scope="module")
def postgres_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The web app (demo pairs, no judge loaded) on GRM_TEST_POSTGRES_URL, its public schema
    wiped first like the `db` fixture does. One app per test module: tests label as their own
    annotators. Skipped without a server unless GRM_REQUIRE_POSTGRES=1."""
    from app import build_app, serve
    from services import Services

    url = _postgres_url()
    engine = make_engine(url)
    _wipe_postgres(engine)
    engine.dispose()
    settings = load_settings(
        home=tmp_path_factory.mktemp("pg-app-home"), database_url=url, port=free_port()
    )
    services = Services.open(settings)
    services.load_demo_if_empty()
    demo = build_app(services)
    _, app_url = serve(demo, settings, prevent_thread_lock=True, quiet=True)
    yield RunningApp(app_url, services, settings, demo)
    demo.close()
    services.sessions.kw["bind"].dispose()  # no idle connections left for the next wipe


# -- the real browser (Debian's Chromium driven by Playwright) ------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One headless Chromium for every browser test. Missing, it skips the test, except with
    GRM_REQUIRE_BROWSER=1 (as in CI), where a missing browser is a failure."""
    required = os.environ.get("GRM_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the machine
        _missing_browser(f"playwright is not installed: {exc}", required)
    if not CHROMIUM.exists():
        _missing_browser(f"Chromium not found at {CHROMIUM} (apt-get install chromium)", required)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def _missing_browser(reason: str, required: bool) -> None:
    if required:
        pytest.fail(f"GRM_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


# -- stored judgments and the agreement figures a test expects (API and browser tests) -------


def store_judgments(services, pair_ids: list[int], verdicts: list[str]) -> list[int]:
    """One complete pairwise judgment per pair, with these verdicts, by the active judge
    version (as if the judge had run); their ids in the same order."""
    from storage import queries

    version = services.judge_version_id()
    rows = [
        {
            "pair_id": pair_id,
            "judge_version_id": version,
            "protocol": "pairwise",
            "prompt_version": "pairwise-v1",
            "verdict": verdict,
            "status": "complete",
            "verdict_probability": 0.6,
            "verdict_source": "text",
        }
        for pair_id, verdict in zip(pair_ids, verdicts, strict=True)
    ]
    with services.sessions.begin() as s:
        return queries.add_judgments(s, rows)


def textbook_kappa(first: list[str], second: list[str]) -> float:
    """Cohen's kappa, (p_o - p_e) / (1 - p_e), written out here so that tests do not check the
    product's metrics with themselves."""
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    expected = sum(first.count(c) * second.count(c) for c in set(first) | set(second)) / n**2
    return (observed - expected) / (1 - expected)
