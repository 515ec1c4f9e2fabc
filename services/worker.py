"""The training worker process (`grm train-worker RUN_ID`): train on the run's label snapshot,
evaluate before and after, register the new judge version (not active) and mark the run done;
a failure or refusal marks it failed with the reason, and nothing half-done is registered."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from judges.backends import make_backend
from judges.backends.base import Backend
from judges.judge import JudgeOptions
from judges.train import (
    RunPlan,
    TrainConfig,
    TrainingDiverged,
    TrainingRefused,
    TrainResult,
    plan_run,
    run_job,
)
from judges.train_config import stored_config
from services.training_runs import finish_run
from settings import Settings, load_settings
from storage import queries
from storage.db import writing
from storage.faults import SaveFailed
from vocabulary import UNFINISHED_RUN_STATUSES, BackendName, RunStatus

if TYPE_CHECKING:
    from services import Services

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0


class _ProgressWriter:
    """The worker's on_progress: the latest update plus the loss curve, written to the run's
    row at most once a second (and at every phase change)."""

    def __init__(self, services: Services, run_id: int) -> None:
        self.services = services
        self.run_id = run_id
        self.state: dict[str, Any] = {"phase": "starting", "losses": []}
        self.written_at = 0.0

    def __call__(self, update: dict[str, Any]) -> None:
        phase_changed = update.get("phase") != self.state.get("phase")
        if update.get("loss") is not None:
            self.state["losses"].append({"step": update["step"], "loss": update["loss"]})
        self.state.update({k: v for k, v in update.items() if k != "losses"})
        if phase_changed or time.monotonic() - self.written_at >= PROGRESS_EVERY_S:
            self.flush()

    def flush(self) -> None:
        try:
            with writing(self.services.sessions) as s:
                queries.update_training_run(
                    s, self.run_id, progress=dict(self.state), only_if_status=(RunStatus.RUNNING,)
                )
            self.written_at = time.monotonic()
        except SaveFailed as exc:  # progress is best effort; the run goes on
            log.warning("progress of run %d not saved: %s", self.run_id, exc)


def run_training_worker(run_id: int, services: Services | None = None) -> int:
    """The worker process's job (`grm train-worker RUN_ID`): train, evaluate, register the new
    version (not active) and mark the run done; failures and refusals mark it failed."""
    if services is None:
        from services import Services

        services = Services.open(load_settings())
    with writing(services.sessions) as s:
        run = queries.get_training_run(s, run_id)
        started = queries.update_training_run(
            s,
            run_id,
            status=RunStatus.RUNNING,
            pid=os.getpid(),
            only_if_status=UNFINISHED_RUN_STATUSES,
        )
    if not started:
        log.warning("training run %d is %s; not starting", run_id, run["status"])
        return 1
    job = run["config"]["job"]
    config = stored_config(run["config"])
    progress = _ProgressWriter(services, run_id)
    try:
        records = json.loads(Path(job["records_path"]).read_text())
        result = run_job(
            _stored_plan(config, records, run["label_snapshot"]),
            job["base_model_path"],
            _backend_maker(services.settings, job["base_model_path"]),
            JudgeOptions.from_stored(job["judge_options"]),
            progress,
            parent_adapter_path=job["parent_adapter_path"],
        )
    except TrainingRefused as exc:
        return _fail(services, run_id, f"refused: {exc}", 2)
    except TrainingDiverged as exc:  # the message says what to change; no traceback to read
        return _fail(services, run_id, str(exc), 1)
    except Exception as exc:  # any crash: the run says why, nothing is registered
        log.exception("training run %d failed", run_id)
        return _fail(services, run_id, f"{type(exc).__name__}: {exc}", 1)
    progress.state.update(phase="done", result=_result_summary(result))
    progress.flush()
    return _register(services, run, job, result)


def _stored_plan(
    config: TrainConfig, records: list[dict[str, Any]], snapshot: dict[str, Any] | None
) -> RunPlan:
    """The plan start_training_run checked and stored with the run (its split), not checked
    again; a run stored without one (queued before runs stored their split) is checked here,
    still before any model loads."""
    split = (snapshot or {}).get("split")
    return RunPlan.stored(config, records, split) if split else plan_run(config, records)


def _backend_maker(settings: Settings, base_model_path: str) -> Callable[[Path | None], Backend]:
    local = settings.model_copy(update={"judge_backend": BackendName.TRANSFORMERS.value})

    def make(adapter_path: Path | None) -> Backend:
        extra = {"adapter_path": adapter_path} if adapter_path else {}
        return make_backend(local, model_path=base_model_path, **extra)

    return make


def _fail(services: Services, run_id: int, reason: str, code: int) -> int:
    with writing(services.sessions) as s:
        finish_run(s, run_id, RunStatus.FAILED, error=reason)
    return code


def _result_summary(result: TrainResult) -> dict[str, Any]:
    record = result.as_record()
    for key in ("metrics_before", "metrics_after", "log_history", "paired"):
        record.pop(key, None)
    return record


class _RunEnded(Exception):
    """The run was cancelled (or marked failed) while it finished: register nothing."""


def _register(
    services: Services, run: dict[str, Any], job: dict[str, Any], result: TrainResult
) -> int:
    """Record the figures, register the new version and mark the run done, all or nothing."""
    figures = {k: v for k, v in (result.metrics_after or {}).items() if k != "per_pair"}
    try:
        with writing(services.sessions) as s:
            if not finish_run(
                s,
                run["id"],
                RunStatus.DONE,
                metrics_before=result.metrics_before,
                metrics_after=result.metrics_after,
                label_snapshot={**(run["label_snapshot"] or {}), "split": result.split.as_record()},
            ):
                raise _RunEnded
            queries.ensure_judge_version(
                s,
                name=f"run{run['id']}-{result.method}",
                base_model=job["base_model_name"],
                backend=BackendName.TRANSFORMERS.value,
                adapter_path=str(Path(result.adapter_path).resolve()),
                parent_id=run["base_version_id"],
                training_run_id=run["id"],
                metrics={**figures, "paired": result.paired, "training": _result_summary(result)},
            )
    except _RunEnded:
        log.warning("training run %d ended before it finished; nothing registered", run["id"])
        return 1
    return 0
