"""Web-app handlers against stand-in services: failures read as messages, cancel stops a batch,
auth decides who labels. No model and no server needed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from stand_ins import stand_ins

from app import launch_options, parse_auth
from judges.backends.base import BackendError
from services import JudgeRunReport
from webui.batch_tab import BatchHandlers
from webui.judge_tab import JudgeFields, JudgeHandlers
from webui.label_handlers import LabelHandlers, LabelScreen


def label_handlers(services) -> LabelHandlers:
    return LabelHandlers(services, stand_ins(LabelScreen))


class FailingJudge:
    """Services whose judge cannot be reached."""

    def backend(self):
        raise BackendError("connection refused by http://127.0.0.1:9/v1")

    def judge_info(self) -> dict:
        return {"backend": "openai", "model": "m", "loaded": False, "load_seconds": None,
                "options": {"protocol": "pairwise", "k": 1, "swap": False,
                            "temperature": 0.0, "max_new_tokens": 64}}  # fmt: skip

    def stream_pair_judgment(self, pair_id: int):
        raise BackendError("connection refused by http://127.0.0.1:9/v1")
        yield  # pragma: no cover


def test_a_backend_that_cannot_load_shows_a_message_not_a_trace() -> None:
    html = JudgeHandlers(FailingJudge(), stand_ins(JudgeFields)).load()
    assert "could not be loaded: connection refused" in html
    assert "Traceback" not in html and "grm-msg-error" in html


@dataclass
class RecordingJudge:
    """Services that keep the judge settings they are given and report them back."""

    configured: list = field(default_factory=list)

    def configure_judge(self, backend: str, model: str | None, options) -> None:
        self.configured.append((backend, model, options))

    def judge_info(self) -> dict:
        backend, model, options = self.configured[-1]
        return {"backend": backend, "model": model, "loaded": False, "load_seconds": None,
                "options": options.model_dump(mode="json")}  # fmt: skip


def test_the_judge_tab_applies_a_repetition_penalty_and_refuses_one_below_one() -> None:
    services = RecordingJudge()
    handlers = JudgeHandlers(services, stand_ins(JudgeFields))
    html = handlers.apply("llamacpp", "", "pairwise", 1, False, 0.0, 1.3, 320)
    assert services.configured[-1][2].repetition_penalty == 1.3
    assert "repetition penalty 1.3," in html
    refused = handlers.apply("llamacpp", "", "pairwise", 1, False, 0.0, 0.5, 320)
    assert "Settings refused" in refused and "repetition_penalty" in refused
    assert len(services.configured) == 1  # the refused settings were not applied


def test_a_failing_judge_stream_ends_with_a_message_and_no_verdict() -> None:
    handler = label_handlers(FailingJudge())
    request = SimpleNamespace(session_hash="s1", username=None)
    outputs = list(handler.judge({"pair_id": 7}, request))
    last, ui = outputs[-1], handler.ui
    assert "The judge failed: connection refused" in last[ui.status]
    assert last[ui.judged]["verdict"] is None  # nothing to agree with
    assert 'data-state="running"' not in last[ui.badge]


@dataclass
class SlowBatchServices:
    """judge_pending that works one pair at a time until told to stop; `working` is set once
    the first pair is judged."""

    judged: int = 0
    working: threading.Event = field(default_factory=threading.Event)

    def judge_pending(self, dataset=None, options=None, limit=None, on_progress=None,
                      should_stop=None) -> JudgeRunReport:  # fmt: skip
        for done in range(1, 1000):
            if should_stop():
                break
            time.sleep(0.02)
            self.judged = done
            on_progress(done, 1000)
            self.working.set()
        return JudgeRunReport(self.judged, self.judged, 0, 0.1, cancelled=True)

    def datasets(self) -> list:
        return []


def test_cancel_stops_a_running_batch_of_the_same_session_only() -> None:
    services = SlowBatchServices()
    handler = BatchHandlers(services)
    mine, other = SimpleNamespace(session_hash="me"), SimpleNamespace(session_hash="other")
    result: list[str] = []
    progress = lambda *args, **kwargs: None  # noqa: E731
    worker = threading.Thread(target=lambda: result.append(handler.run(0, None, mine, progress)))
    worker.start()
    assert services.working.wait(timeout=10), "the batch never started"
    assert "Nothing is running" in handler.cancel(other)  # another person's Cancel
    assert services.judged > 0 and worker.is_alive()
    handler.cancel(mine)
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert "Cancelled after judging" in result[0]


class Recorder:
    """Services that record who saved what."""

    def __init__(self) -> None:
        self.saved: list[tuple] = []

    def save_label(self, pair_id, annotator, verdict, **details):
        self.saved.append((pair_id, annotator, verdict, details))

    def next_item(self, annotator, dataset_id=None, order=None):
        return None


def test_with_auth_the_logged_in_user_labels_whatever_name_the_page_sends() -> None:
    services = Recorder()
    handler = label_handlers(services)
    request = SimpleNamespace(username="alice", session_hash="s")
    current = {"pair_id": 3, "token": "t1"}
    handler.save("A", "mallory", 0, current, {}, "", "", request)
    assert [(p, who, v) for p, who, v, _ in services.saved] == [(3, "alice", "A")]


def test_a_failed_save_keeps_the_pair_and_says_why() -> None:
    class Full(Recorder):
        def save_label(self, *args, **kwargs):
            raise OSError("database or disk is full")

    handler = label_handlers(Full())
    outputs = handler.save("B", "bob", 0, {"pair_id": 3, "token": "t"}, {}, "my critique", "", None)
    assert "Not saved: the disk is full" in outputs[handler.ui.status]
    assert list(outputs) == [handler.ui.status]  # pair, text and note stay on screen


def test_auth_setting_parses_and_bad_specs_are_refused() -> None:
    assert parse_auth("ana:pw1, ben:pw2") == [("ana", "pw1"), ("ben", "pw2")]
    assert parse_auth(None) is None and parse_auth("  ") is None
    with pytest.raises(ValueError):
        parse_auth("ana")


def test_launch_defaults_are_safe(settings) -> None:
    options = launch_options(settings)
    assert options["server_name"] == "127.0.0.1" and options["share"] is False
    assert options["max_file_size"] == f"{settings.max_import_mb}mb"
    assert str(settings.home.resolve()) in options["blocked_paths"]
    assert str(settings.model_cache.expanduser().resolve()) in options["blocked_paths"]
    assert options["show_error"] is False and options["enable_monitoring"] is False


def test_a_locked_database_reads_as_busy_without_sql_or_trace() -> None:
    from sqlalchemy.exc import OperationalError

    class Locked(Recorder):
        def save_label(self, *args, **kwargs):
            raise OperationalError("INSERT INTO label ...", {}, Exception("database is locked"))

    handler = label_handlers(Locked())
    status = handler.save("A", "bob", 0, {"pair_id": 3}, {}, "", "", None)[handler.ui.status]
    assert "Not saved: the database is busy" in status
    assert "INSERT" not in status and "Traceback" not in status


def test_exports_stay_in_one_app_folder_and_old_ones_are_removed(settings) -> None:
    import tempfile
    from pathlib import Path

    from services import Services
    from webui.common import EXPORTS
    from webui.data_tab import DataHandlers, DataView

    services = Services.open(settings)
    services.load_demo_if_empty()
    handlers = DataHandlers(services, stand_ins(DataView))
    download = handlers.ui.download
    keep = EXPORTS.keep
    files = [Path(handlers.export("jsonl", None)[download]) for _ in range(keep + 3)]
    root = files[0].parent.parent
    assert root.name.startswith("grm-exports-") and root.parent == Path(tempfile.gettempdir())
    assert all(root in f.parents for f in files)
    assert files[-1].is_file() and files[-1].read_text().strip() == ""  # nothing labeled yet
    assert len(list(root.iterdir())) == keep + 1  # the kept ones and the newest
    assert not files[0].exists()


def test_a_served_local_judge_leaves_a_core_for_saves(monkeypatch) -> None:
    import torch

    from app import share_cores_with_saves
    from settings import load_settings

    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    calls: list[int] = []

    def threads(cores: int, **chosen) -> int | None:
        return share_cores_with_saves(load_settings(**chosen), cores=cores).judge_threads

    assert threads(2, judge_backend="transformers") == 1
    assert threads(8, judge_backend="transformers") == 7
    assert threads(2, judge_backend="transformers", judge_threads=3) == 3
    assert threads(2, judge_backend="llamacpp") == 1  # decoding; it reads on every core
    assert threads(8, judge_backend="openai") is None
    assert calls == [1, 7, 3]


def test_pairs_are_read_ahead_only_for_people_who_use_the_judge(settings) -> None:
    from fakes import FakeBackend

    from services import Services

    services = Services.open(settings)
    services.load_demo_if_empty()
    services.use_backend(FakeBackend(script=["Principles: p.\nCritique: c.\nVerdict: [[A]]"]))
    read_ahead: list[int] = []
    services.warm_pair = lambda pair: read_ahead.append(pair.id)
    handlers = label_handlers(services)
    labeler = SimpleNamespace(username=None, session_hash="labels-only")
    judger = SimpleNamespace(username=None, session_hash="uses-the-judge")

    handlers.open_next("lee", None, labeler)
    assert read_ahead == []  # labeling without the judge costs it nothing
    first = services.next_item("jo")
    handlers.open_next("jo", None, judger)
    list(handlers.judge({"pair_id": first.id}, judger))
    handlers.open_next("jo", None, judger)
    handlers.open_next("lee", None, labeler)
    assert read_ahead == [first.id]


def test_label_handlers_write_the_outputs_their_events_list(settings) -> None:
    """Handlers return {component: value}: a pair opened (or none left) and a finished judgment
    set every output of their events, and no handler writes a component its event lacks."""
    from fakes import FakeBackend

    from services import Services

    services = Services.open(settings)
    services.load_demo_if_empty()
    services.use_backend(FakeBackend(script=["Principles: p.\nCritique: c.\nVerdict: [[A]]"]))
    handlers = label_handlers(services)
    ui, kim = handlers.ui, SimpleNamespace(username=None, session_hash="kim")

    screen = handlers.open_next("kim", None, kim)
    assert set(screen) == set(ui.pair_outputs())
    *_, judged = handlers.judge(screen[ui.current], kim)
    assert set(judged) == set(ui.judge_outputs()) and judged[ui.judged]["verdict"] == "A"
    assert set(handlers.open_next("kim", 10_000, kim)) == set(ui.pair_outputs())  # none left
    assert set(handlers.after_screen("kim", None, screen[ui.current], kim)) == {
        ui.progress,
        ui.history,
        ui.guidelines,
    }
    assert set(handlers.stopped()) == {ui.badge, ui.status}
    started = handlers.start("kim", kim)
    assert set(started) == {ui.name, ui.gate, ui.desk, ui.gate_msg, ui.remembered}
    assert set(handlers.on_load(None, "", SimpleNamespace(username="kim"))) <= {
        ui.name,
        ui.gate,
        ui.desk,
        ui.name_box,
        ui.dataset,
    }


def test_each_session_keeps_its_own_queue_order() -> None:
    asked: list[tuple[str, object, str]] = []

    class Queue:
        def next_item(self, annotator, dataset_id, order):
            asked.append((annotator, dataset_id, order))
            return None

    handlers = label_handlers(Queue())
    ana, ben = (SimpleNamespace(session_hash=h, username=None) for h in ("s-ana", "s-ben"))
    handlers.set_order("judge least sure first", ana)
    handlers.set_order("no such order", ben)  # ignored: ben keeps the default
    handlers.open_next("ana", 0, ana)
    handlers.open_next("ben", 0, ben)
    assert asked == [("ana", None, "judge least sure first"), ("ben", None, "in order")]


def test_a_tab_opening_refresh_never_undoes_a_dataset_picked_meanwhile() -> None:
    """The refresh is computed from the value seen when the tab opened; carrying that value
    back would reset a pick the person made while it ran (a real race, seen in CI)."""
    from webui.common import ALL_DATASETS, refresh_datasets

    datasets = [SimpleNamespace(id=3, name="team", pair_count=4)]
    services = SimpleNamespace(datasets=lambda: datasets)
    kept = refresh_datasets(services, ALL_DATASETS)
    assert "value" not in kept
    assert kept["choices"] == [("All datasets (4 pairs)", ALL_DATASETS), ("team (4 pairs)", 3)]
    gone = refresh_datasets(services, 9)  # the chosen dataset no longer exists
    assert gone["value"] == ALL_DATASETS
