"""The workflows both front doors (web app and CLI) share, written once, behind one facade.

`Services` holds the settings, the session factory and the rooms that do the work:
`judging` (the loaded judge, live judging), `jobs` (batch judging as recorded, resumable
jobs), `labels` (queue, decisions, history),
`data` (import, export, demo), `analysis` (agreement, evaluation), `training` (runs and judge
versions), `prompts` (dataset guidelines, stored prompt versions) and `comparing` (two judge
setups on the same labels); the training worker process lives in `services.worker`. The
facade's methods are the names the UI, the CLI and the tests call; each hands the call to its
room.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.analysis import Analysis
from services.comparing import Comparing, JudgeSetup, parse_setup
from services.data import DataIO
from services.judging import JudgeSettings, Judging
from services.judging_jobs import JobRefused, JudgeRunReport, JudgingJobs
from services.labeling import Labeling
from services.prompts import PromptRefused, Prompts
from services.records import as_dict, judgment_row, pair_input
from services.training_records import training_records
from services.training_runs import ENDED_MESSAGE, TrainingRuns, VersionRefused
from services.worker import run_training_worker
from settings import Settings
from storage.db import init_db, make_engine, make_session_factory
from storage.faults import DatabaseBusy, SaveFailed, storage_fault
from vocabulary import QueueOrder

__all__ = [
    "ENDED_MESSAGE",
    "DatabaseBusy",
    "JobRefused",
    "JudgeRunReport",
    "JudgeSettings",
    "JudgeSetup",
    "PromptRefused",
    "SaveFailed",
    "Services",
    "VersionRefused",
    "as_dict",
    "judgment_row",
    "pair_input",
    "parse_setup",
    "run_training_worker",
    "storage_fault",
    "training_records",
]


class Services:
    """One per process: the database and the loaded judge, shared by every user's requests."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = session_factory
        self.judging = Judging(settings, session_factory)
        self.jobs = JudgingJobs(session_factory, self.judging)
        self.labels = Labeling(session_factory)
        self.data = DataIO(settings, session_factory)
        self.analysis = Analysis(session_factory, self.judging)
        self.training = TrainingRuns(settings, session_factory, self.judging)
        self.prompts = Prompts(session_factory)
        self.comparing = Comparing(session_factory, self.judging, self.analysis)

    @classmethod
    def open(cls, settings: Settings) -> Services:
        """Connect to (and migrate) the database named by the settings."""
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        init_db(engine)
        return cls(settings, make_session_factory(engine))

    # --- the judge (services.judging) ------------------------------------------------------------

    @property
    def judge(self) -> JudgeSettings:
        return self.judging.judge

    @judge.setter
    def judge(self, value: JudgeSettings) -> None:
        self.judging.judge = value

    @property
    def backend_load_seconds(self) -> float | None:
        return self.judging.backend_load_seconds

    def backend(self) -> Any:
        return self.judging.backend()

    def use_backend(self, backend: Any, load_seconds: float | None = None) -> None:
        self.judging.use_backend(backend, load_seconds)

    def configure_judge(self, backend: str, model: str | None, options: Any) -> None:
        self.judging.configure(backend, model, options)

    def reload_judge(self) -> None:
        self.judging.reload()

    def judge_info(self) -> dict[str, Any]:
        return self.judging.info()

    def judge_version_id(self) -> int:
        return self.judging.version_id()

    def stream_pair_judgment(self, pair_id: int, options: Any = None) -> Any:
        return self.judging.stream(pair_id, options)

    def warm_pair(self, pair: Any) -> Any:
        return self.judging.warm(pair)

    def judge_pending(self, *args: Any, **kwargs: Any) -> JudgeRunReport:
        return self.jobs.judge_pending(*args, **kwargs)

    def resume_judging_job(self, job_id: int, *args: Any, **kwargs: Any) -> JudgeRunReport:
        return self.jobs.resume(job_id, *args, **kwargs)

    def resume_judging_jobs(self) -> list[int]:
        return self.jobs.resume_unfinished()

    def stop_judging_jobs(self) -> None:
        self.jobs.close()

    def close(self) -> None:
        """On the way out: stop batch jobs (their finished pairs stored, the job continuable),
        then close the judge. A judge whose engine runs in child processes (vLLM's engine core)
        otherwise keeps the interpreter from exiting."""
        self.stop_judging_jobs()
        self.reload_judge()

    def judging_job(self, job_id: int) -> dict[str, Any]:
        return self.jobs.job(job_id)

    def judging_jobs(self, limit: int | None = 20) -> list[dict[str, Any]]:
        return self.jobs.jobs(limit)

    def cancel_judging_job(self, job_id: int) -> dict[str, Any]:
        return self.jobs.cancel(job_id)

    def latest_judgment_run(self, pair_id: int) -> list[dict[str, Any]]:
        return self.judging.latest_run(pair_id)

    def latest_judgment_run_record(self, pair_id: int) -> dict[str, Any]:
        return self.judging.latest_run_record(pair_id)

    def prompt_cuts(self, pair: Any, run: list[dict[str, Any]]) -> Any:
        return self.judging.prompt_cuts(pair, run)

    # --- labels (services.labeling) --------------------------------------------------------------

    def next_item(self, annotator: str, dataset_id: int | None = None, order: str = "") -> Any:
        return self.labels.next_item(annotator, dataset_id, order or QueueOrder.IN_ORDER)

    def save_label(self, pair_id: int, annotator: str, verdict: str, **details: Any) -> Any:
        return self.labels.save(pair_id, annotator, verdict, **details)

    def undo_last_label(self, annotator: str, dataset_id: int | None = None) -> int | None:
        return self.labels.undo_last(annotator, dataset_id)

    def queue_counts(self, annotator: str, dataset_id: int | None = None) -> Any:
        return self.labels.queue_counts(annotator, dataset_id)

    def annotator_progress(self, annotator: str, dataset_id: int | None = None) -> dict:
        return self.labels.progress(annotator, dataset_id)

    def stats(self) -> dict[str, Any]:
        return self.labels.stats()

    def datasets(self) -> list[Any]:
        return self.labels.datasets()

    def pair(self, pair_id: int) -> Any:
        return self.labels.pair(pair_id)

    def pair_history(self, pair_id: int) -> dict[str, Any]:
        return self.labels.pair_history(pair_id)

    # --- data in and out (services.data) ---------------------------------------------------------

    def import_file(self, path: Path, dataset: str | None = None, format: str = "auto") -> Any:
        return self.data.import_file(path, dataset, format)

    def export(self, out_path: Path, format: str, dataset: str | None = None) -> int:
        return self.data.export(out_path, format, dataset)

    def load_demo_if_empty(self) -> Any:
        return self.data.load_demo_if_empty()

    # --- analysis (services.analysis) ------------------------------------------------------------

    def agreement(self, dataset_id: int | None = None) -> dict[str, Any]:
        return self.analysis.agreement(dataset_id)

    def evaluate_version(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.analysis.evaluate_version(*args, **kwargs)

    # --- retraining and judge versions (services.training_runs) ----------------------------------

    def start_training_run(self, config: Any, judge_options: Any = None) -> int:
        return self.training.start(config, judge_options)

    def training_run(self, run_id: int) -> dict[str, Any]:
        return self.training.run(run_id)

    def training_runs(self, limit: int | None = 50) -> list[dict[str, Any]]:
        return self.training.runs(limit)

    def cancel_training_run(self, run_id: int) -> dict[str, Any]:
        return self.training.cancel(run_id)

    def runs_dir(self) -> Path:
        return self.training.runs_dir()

    def versions(self) -> list[dict[str, Any]]:
        return self.training.versions()

    def activate_version(self, version_id: int, force: bool = False) -> dict[str, Any]:
        return self.training.activate(version_id, force)

    def rollback_version(self) -> dict[str, Any]:
        return self.training.rollback()

    # --- guidelines and prompt versions (services.prompts) ---------------------------------------

    def dataset_guidelines(self, dataset: str | int) -> str:
        return self.prompts.guidelines(dataset)

    def set_dataset_guidelines(self, dataset: str | int, text: str | None) -> dict[str, Any]:
        return self.prompts.set_guidelines(dataset, text)

    def prompt_versions(self, protocol: str | None = None) -> list[dict[str, Any]]:
        return self.prompts.versions(protocol)

    def prompt_version(self, version: str) -> dict[str, Any]:
        return self.prompts.version(version)

    def new_prompt_version(self, version: str, parent: str, **edits: Any) -> dict[str, Any]:
        return self.prompts.new_version(version, parent, **edits)

    def prompt_version_json(self, version: str) -> str:
        return self.prompts.export_json(version)

    def export_prompt_version(self, version: str, path: Path) -> Path:
        return self.prompts.export_version(version, path)

    def import_prompt_version(self, path: Path) -> dict[str, Any]:
        return self.prompts.import_version(path)

    # --- two judge setups on the same labels (services.comparing) --------------------------------

    def judge_setup(self, spec: Any) -> JudgeSetup:
        return self.comparing.setup(spec)

    def compare_setups(self, a: Any, b: Any, dataset: str | int, **kwargs: Any) -> dict[str, Any]:
        return self.comparing.compare(a, b, dataset, **kwargs)
