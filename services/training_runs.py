"""The training room: start a retraining run (snapshot the labels, spawn its worker process),
watch and cancel runs, and choose which judge version is active (activate, roll back)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from judges.backends.base import Backend
from judges.evaluation import significantly_worse
from judges.judge import JudgeOptions
from services.judging import Judging
from services.training_records import snapshot_record, training_records, version_row
from settings import Settings
from storage import queries
from storage.db import reading, writing
from vocabulary import LOCAL_BACKENDS, UNFINISHED_RUN_STATUSES, BackendName, RunStatus

log = logging.getLogger(__name__)

# Backends that load a LoRA adapter (llama.cpp after converting it to GGUF).
ADAPTER_BACKENDS = (BackendName.TRANSFORMERS, BackendName.LLAMACPP, BackendName.VLLM)
QUEUED_GRACE_S = 60.0
ENDED_MESSAGE = "process ended without finishing"
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where `python -m cli` finds cli.py


class VersionRefused(ValueError):
    """A judge version that cannot be activated (its adapter cannot be loaded); str() says
    why, and the active version has not changed."""


class TrainingRuns:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], judging: Judging
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.judging = judging
        self._workers: dict[int, subprocess.Popen] = {}  # worker processes this process started

    # --- runs ----------------------------------------------------------------------------------

    def start(self, config: Any, judge_options: JudgeOptions | None = None) -> int:
        """Check the run, snapshot the labels, record the run and start its worker process; the
        run's id.

        Raises judges.train.TrainingRefused (nothing stored) for a bad config, too few labels,
        one class, a judge that is not a local model, or a run already going.
        """
        from judges.train import TrainingRefused, plan_run

        options = _training_options(judge_options or self.judging.judge.options, config.protocol)
        base_model = self.local_base_model()
        version_id = self.judging.version_id()
        with writing(self.sessions) as s:
            self._refuse_if_running(s)
            active = queries.active_judge_version(s) or {}
            records = training_records(s, version_id, config.protocol)
            parent = active.get("adapter_path")
            plan = plan_run(config, records, parent)  # checked once here: the worker trusts it
            run_id = queries.create_training_run(s, config.method, {}, version_id)
            snapshot = json.dumps([r.to_json() for r in records])
            run_dir = self.runs_dir() / str(run_id)
            if run_dir.exists():
                raise TrainingRefused(f"run directory {run_dir} already exists")
            job = {
                "records_path": str(run_dir / "records.json"),
                "base_model_path": str(base_model),
                "parent_adapter_path": parent,
                "base_model_name": active.get("base_model") or str(base_model),
                "judge_options": options.model_dump(),
            }
            config = dataclasses.replace(plan.config, output_dir=str(run_dir / "adapter"))
            queries.update_training_run(
                s,
                run_id,
                config={**dataclasses.asdict(config), "job": job},
                label_snapshot=snapshot_record(records, snapshot, plan.split),
                log_path=str(run_dir / "train.log"),
            )
            run_dir.mkdir(parents=True)
            (run_dir / "records.json").write_text(snapshot)
        self.spawn_worker(run_id, run_dir)
        return run_id

    def runs_dir(self) -> Path:
        """Where each run keeps its records snapshot, log and adapter (GRM_HOME/runs/<id>)."""
        return self.settings.home.resolve() / "runs"

    def local_base_model(self) -> Path:
        """The judge's local model directory, which a run trains on (with transformers, whatever
        engine judges: llama.cpp's GGUF is converted to it too); TrainingRefused if none."""
        from judges.embedded import resolve_model_path
        from judges.train import TrainingRefused

        judge = self.judging.judge
        path = Path(
            str(resolve_model_path(self.settings.model_copy(update={"judge_model": judge.model})))
        )
        if judge.backend not in LOCAL_BACKENDS or not path.is_dir():
            raise TrainingRefused(
                f"retraining needs a local judge model (the transformers or llamacpp backend); "
                f"the judge is {judge.backend} / {judge.model or 'embedded'}"
            )
        return path

    def _refuse_if_running(self, s: Session) -> None:
        from judges.train import TrainingRefused

        running = queries.running_training_run(s)
        if running is not None and self._alive(running):
            raise TrainingRefused(
                f"training run {running['id']} is already {running['status']}; "
                "wait for it or cancel it first"
            )
        if running is not None:
            mark_ended(s, running["id"])

    def spawn_worker(self, run_id: int, run_dir: Path) -> None:
        """`grm train-worker RUN_ID` in its own process and session, logging to the run's log."""
        env = {
            **os.environ,
            "GRM_HOME": str(self.settings.home.resolve()),
            "GRM_DATABASE_URL": self.settings.db_url,
            "GRM_MODEL_CACHE": str(Path(self.settings.model_cache).resolve()),
            "GRM_JUDGE_BACKEND": BackendName.TRANSFORMERS.value,
        }
        try:
            with (run_dir / "train.log").open("ab") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "cli", "train-worker", str(run_id)],
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in the app does not kill the run
                )
        except OSError as exc:
            with writing(self.sessions) as s:
                finish_run(s, run_id, RunStatus.FAILED, error=f"the worker could not start: {exc}")
            raise
        self._workers[process.pid] = process
        with writing(self.sessions) as s:
            queries.update_training_run(
                s, run_id, pid=process.pid, only_if_status=(RunStatus.QUEUED,)
            )

    def _alive(self, run: dict[str, Any]) -> bool:
        if run["pid"] is None:  # between the row and the spawn; a crash there must not block
            age = time.time() - run["created_at"].timestamp()
            return age < QUEUED_GRACE_S
        process = self._workers.get(run["pid"])
        if process is not None:
            return process.poll() is None
        return pid_alive(run["pid"])

    def run(self, run_id: int) -> dict[str, Any]:
        """One run as a dict; a run whose process died shows (and is stored) as failed."""
        with reading(self.sessions) as s:
            run = queries.get_training_run(s, run_id)
        if run["status"] in UNFINISHED_RUN_STATUSES and not self._alive(run):
            with writing(self.sessions) as s:  # conditional: a run that just finished stays so
                mark_ended(s, run_id)
                run = queries.get_training_run(s, run_id)
        return run

    def runs(self, limit: int | None = 50) -> list[dict[str, Any]]:
        """Runs, newest first, dead ones shown as failed."""
        with reading(self.sessions) as s:
            runs = queries.list_training_runs(s, limit=limit)
        return [self.run(r["id"]) if r["status"] in UNFINISHED_RUN_STATUSES else r for r in runs]

    def cancel(self, run_id: int) -> dict[str, Any]:
        """Stop a queued or running run (SIGTERM its worker) and mark it cancelled."""
        run = self.run(run_id)
        if run["status"] not in UNFINISHED_RUN_STATUSES:
            raise ValueError(f"training run {run_id} is {run['status']}, not running")
        with writing(self.sessions) as s:
            finish_run(s, run_id, RunStatus.CANCELLED, error="cancelled by the user")
        if run["pid"] is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(run["pid"], signal.SIGTERM)
            process = self._workers.pop(run["pid"], None)
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
        return self.run(run_id)

    # --- judge versions ------------------------------------------------------------------------

    def versions(self) -> list[dict[str, Any]]:
        """Every judge version, oldest first (id, name, parent, run, active, figures)."""
        with reading(self.sessions) as s:
            return queries.list_judge_versions(s)

    def activate(self, version_id: int, force: bool = False) -> dict[str, Any]:
        """Make a version the active judge (and the loaded one).

        A version whose held-out accuracy fell significantly below its parent's (McNemar's
        exact p < 0.05 on the run's own before/after evaluation) is refused unless `force`:
        the person confirms they want a judge that agrees with people less.

        A version with an adapter is checked and, on the transformers backend, loaded before
        anything changes: an adapter that is missing, corrupt, truncated, a pickle, or made for
        another base model raises VersionRefused with the reason, and the active version stays
        active and keeps judging. The candidate loads beside the current judge, so judgments
        in progress are not interrupted while it loads.
        """
        with reading(self.sessions) as s:
            version = version_row(s, version_id)
            previous = queries.active_judge_version(s)
        paired = (version["metrics"] or {}).get("paired")
        if not force and not version["is_active"] and significantly_worse(paired):
            raise VersionRefused(
                f"judge version {version['id']} ({version['name']}) agrees with people less than "
                f"its parent on the held-out labels: accuracy {paired['first_accuracy']:.3f} -> "
                f"{paired['second_accuracy']:.3f}, McNemar p = {paired['p_value']:.3g}; "
                "confirm to activate it anyway (grm activate --force)"
            )
        loaded = None
        if version["adapter_path"] and not version["is_active"]:
            loaded = self._load_candidate(version, previous)
        with writing(self.sessions) as s:
            queries.set_active_version(s, version_id)
            active = queries.active_judge_version(s)
        if loaded is None:
            self.judging.reload()
        else:
            self.judging.replace_backend(loaded)
        return active or {}

    def _load_candidate(
        self, version: dict[str, Any], previous: dict[str, Any] | None
    ) -> Backend | None:
        """The version's judge, loaded and checked (None: checked, loaded on first use);
        VersionRefused when it cannot be."""
        from judges.backends.adapters import check_version_files

        backend = self.judging.judge.backend
        try:
            if backend not in ADAPTER_BACKENDS:
                raise ValueError(
                    f"the {backend} backend cannot load a retrained judge version; choose "
                    f"{' or '.join(sorted(ADAPTER_BACKENDS))} in the Judge tab first"
                )
            check_version_files(Path(version["adapter_path"]))  # no model needed, never unpickles
            if backend not in LOCAL_BACKENDS:
                return None  # a GPU engine is not loaded twice; it checks shapes when it loads
            return self.judging.make_backend(version["adapter_path"])
        except Exception as exc:  # any reason to refuse is said to the person, nothing changes
            log.warning("judge version %s not activated: %s", version["id"], exc)
            stays = f"{previous['name']} stays active" if previous else "nothing changed"
            raise VersionRefused(
                f"judge version {version['id']} ({version['name']}) not activated: {exc}; {stays}"
            ) from exc

    def rollback(self) -> dict[str, Any]:
        """Activate the active version's parent (the judge it was trained from)."""
        with reading(self.sessions) as s:
            active = queries.active_judge_version(s)
        if active is None or active["parent_id"] is None:
            name = active["name"] if active else "none"
            raise ValueError(f"the active judge version ({name}) has no parent to roll back to")
        return self.activate(active["parent_id"])


def _training_options(options: JudgeOptions, protocol: str) -> JudgeOptions:
    """The judge options both evaluations use, with the protocol being trained."""
    if options.protocol == protocol:
        return options
    return options.model_copy(update={"protocol": protocol})


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid is running (not a zombie) on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def finish_run(s: Session, run_id: int, status: str, **values: Any) -> bool:
    """End an unfinished run with `status`; False when it had already ended (nothing changed)."""
    return queries.update_training_run(
        s,
        run_id,
        only_if_status=UNFINISHED_RUN_STATUSES,
        status=status,
        finished_at=datetime.now(timezone.utc),
        **values,
    )


def mark_ended(s: Session, run_id: int) -> None:
    finish_run(s, run_id, RunStatus.FAILED, error=ENDED_MESSAGE)
