"""The Batch tab: judge every pending pair of a dataset as a recorded job, with progress, pairs
per minute, time left and cancel; the jobs list shows every job's progress (whichever process
runs it: this app, a `grm judge`) and lets a person resume a job whose process is gone or stop
one. Jobs a dead process left are also resumed by themselves when the app starts (app.main)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import gradio as gr

from webui.common import ALL_DATASETS, Changes, dataset_choices, dataset_name_of, explain
from webui.render import error_box, ok_box, safe_text

if TYPE_CHECKING:
    from services import JudgeRunReport, Services

JOBS_SHOWN = 5
WATCH_EVERY_S = 2.0  # the jobs list refreshes this often while a job is unfinished


class BatchHandlers:
    """Cancel flags are per browser session: one person's Cancel never stops another's run."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._stops: dict[str, threading.Event] = {}

    def run(
        self,
        dataset: Any,
        limit: float | None,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 (Gradio finds the progress bar by this default)
    ) -> str:
        return self._judging(
            request,
            progress,
            lambda on_progress, should_stop: self.services.judge_pending(
                dataset=dataset_name_of(self.services, dataset),
                limit=int(limit) if limit and limit > 0 else None,
                on_progress=on_progress,
                should_stop=should_stop,
            ),
        )

    def resume(
        self,
        job: Any,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008
    ) -> str:
        if not job:
            return ok_box("No job to resume: every job has ended.")
        return self._judging(
            request,
            progress,
            lambda on_progress, should_stop: self.services.resume_judging_job(
                int(job), on_progress=on_progress, should_stop=should_stop
            ),
        )

    def _judging(self, request: gr.Request, progress: Any, start: Any) -> str:
        """Run `start(on_progress, should_stop)` with this session's Cancel and the bar."""
        stop = self._stops.setdefault(_session(request), threading.Event())
        stop.clear()
        clock = _Clock()

        def on_progress(done: int, total: int) -> None:
            progress((done, max(total, 1)), desc=clock.line(done, total))

        progress(0, desc="Loading the judge…")
        try:
            report = start(on_progress, stop.is_set)
        except Exception as exc:
            return error_box(f"Batch judging failed: {explain(exc)}")
        finally:
            self._stops.pop(_session(request), None)
        return ok_box(_report_line(report))

    def cancel(self, request: gr.Request) -> str:
        stop = self._stops.get(_session(request))
        if stop is None:
            return ok_box("Nothing is running in this tab (a job elsewhere: pick it, Stop job).")
        stop.set()
        return ok_box("Cancelling: the pairs judged so far are stored, then it stops.")

    def stop_job(self, job: Any) -> str:
        if not job:
            return ok_box("No job to stop: every job has ended.")
        try:
            ended = self.services.cancel_judging_job(int(job))
        except Exception as exc:
            return error_box(f"Could not stop the job: {explain(exc)}")
        return ok_box(
            f"Job {ended['id']} stopped with {ended['done']} of {ended['total']} pairs judged "
            "(kept); the batch it was judging is not stored."
        )

    def pending(self, dataset: Any) -> str:
        datasets = self.services.datasets()
        chosen = [d for d in datasets if d.id == dataset] if dataset else datasets
        total = sum(d.pair_count for d in chosen)
        judged = sum(d.judged for d in chosen)
        return ok_box(f"{judged} of {total} pairs judged at least once.")

    def jobs(self) -> tuple[str, list[tuple[str, int]], bool]:
        """The newest jobs as HTML, the unfinished ones as choices, whether any is unfinished."""
        names = {d.id: d.name for d in self.services.datasets()}
        jobs = self.services.judging_jobs(JOBS_SHOWN)
        if not jobs:
            return ok_box("No batch judging job yet."), [], False
        lines = "".join(f"<li>{safe_text(job_line(job, names))}</li>" for job in jobs)
        open_jobs = [j for j in jobs if j["status"] in ("queued", "running")]
        choices = [(f"job {j['id']}: {_where(j, names)}", j["id"]) for j in open_jobs]
        return f'<ul class="grm-jobs">{lines}</ul>', choices, bool(open_jobs)


def job_line(job: dict[str, Any], names: dict[int, str]) -> str:
    """One job for a person: what it judges, how far it got, how fast, how long left."""
    options = f"{job['protocol']}, k {job['k']}, swap {'on' if job['swap'] else 'off'}"
    parts = [f"job {job['id']}: {_where(job, names)} ({options})"]
    parts.append(f"{job['done']} / {job['total']} pairs")
    if job["pairs_per_min"]:
        parts.append(f"{job['pairs_per_min']:.1f} pairs/min")
    if job["status"] == "running" and job["seconds_left"] is not None:
        parts.append(f"about {_duration(job['seconds_left'])} left")
    parts.append(_state(job))
    return " · ".join(parts)


def _where(job: dict[str, Any], names: dict[int, str]) -> str:
    if job["dataset_id"] is None:
        return "all datasets"
    return names.get(job["dataset_id"], f"dataset {job['dataset_id']}")


def _state(job: dict[str, Any]) -> str:
    if job["stalled"]:
        return "stopped: its process is gone (Resume continues it)"
    if job["status"] == "failed":
        return f"failed: {job['error'] or 'no reason recorded'}"
    return str(job["status"])


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _report_line(report: JudgeRunReport) -> str:
    verb = "Cancelled after judging" if report.cancelled else "Judged"
    line = (
        f"{verb} {report.judged} pairs ({report.stored_judgments} judgments stored, "
        f"{report.no_verdict} without a verdict) in {report.seconds:.1f} s."
    )
    if report.job_id is None:
        return line
    start = f"Continued job {report.job_id}. " if report.resumed else f"Job {report.job_id}. "
    return f"{start}{line} The job has {report.done} of {report.total} pairs judged."


class _Clock:
    """The progress bar's text: pairs, pairs per minute and time left, measured from this
    call's first report (a continued job's earlier pairs do not count as this call's speed)."""

    def __init__(self) -> None:
        self.first: tuple[int, float] | None = None

    def line(self, done: int, total: int) -> str:
        now = time.monotonic()
        if self.first is None:
            self.first = (done, now)
        judged, elapsed = done - self.first[0], now - self.first[1]
        if judged <= 0 or elapsed <= 0:
            return f"{done} / {total} pairs"
        rate = judged / elapsed
        return (
            f"{done} / {total} pairs · {rate * 60:.1f} pairs/min · "
            f"about {_duration((total - done) / rate)} left"
        )


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"


def build_batch_tab(services: Services, judge_limit: int) -> gr.Tab:
    h = BatchHandlers(services)
    with gr.Tab("Batch", id="batch", elem_id="grm-tab-batch") as tab:
        gr.Markdown(
            "Judge every pair the active judge has not judged yet with the current Judge-tab "
            "settings. Each batch is stored as soon as it is judged; a job stopped by a crash "
            "or a restart goes on from where it stopped (by itself when the app starts)."
        )
        with gr.Row():
            dataset = gr.Dropdown(dataset_choices(services), value=ALL_DATASETS, label="Dataset")
            limit = gr.Number(value=None, label="At most (empty: all)", precision=0)
        with gr.Row():
            run = gr.Button("Judge pending pairs", variant="primary", elem_id="grm-batch-run")
            cancel = gr.Button("Cancel", variant="stop", elem_id="grm-batch-cancel")
        info = gr.HTML(js_on_load=None)
        result = gr.HTML(js_on_load=None, elem_id="grm-batch-result")
        gr.Markdown("**Jobs** (newest first)")
        jobs = gr.HTML(js_on_load=None, elem_id="grm-batch-jobs")
        with gr.Row():
            job = gr.Dropdown([], value=None, label="Unfinished job", elem_id="grm-batch-job")
            resume = gr.Button("Resume", elem_id="grm-batch-resume")
            stop_job = gr.Button("Stop job", variant="stop", elem_id="grm-batch-stop-job")
        timer = gr.Timer(WATCH_EVERY_S, active=False)

    def watched(chosen: Any) -> Changes:  # the jobs list; the timer runs while one is open
        html, choices, unfinished = h.jobs()
        keep = chosen if chosen in [value for _, value in choices] else None
        picked = keep or (choices[0][1] if choices else None)
        return {
            jobs: html,
            job: gr.update(choices=choices, value=picked),
            timer: gr.Timer(active=unfinished),
        }

    judging = {"concurrency_id": "judge", "concurrency_limit": judge_limit}
    run.click(h.run, [dataset, limit], [result], api_name="judge_pending", **judging)
    resume.click(h.resume, [job], [result], api_name="resume_judging_job", **judging)
    for button in (run, resume):  # the list follows the job while it runs
        button.click(lambda: gr.Timer(active=True), None, [timer], api_visibility="private")
    cancel.click(h.cancel, None, [result], api_name="cancel_batch")
    stop_job.click(h.stop_job, [job], [result], api_name="cancel_judging_job")
    dataset.change(h.pending, [dataset], [info], api_visibility="private")
    timer.tick(watched, [job], [jobs, job, timer], api_visibility="private")

    def opened(chosen: Any, chosen_job: Any) -> Changes:  # fresh choices, counts and jobs
        return {
            dataset: gr.update(choices=dataset_choices(services)),
            info: h.pending(chosen),
            **watched(chosen_job),
        }

    tab.select(opened, [dataset, job], [dataset, info, jobs, job, timer], api_visibility="private")
    return tab
