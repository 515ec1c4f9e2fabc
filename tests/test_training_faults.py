"""Training faults (issue 6): bad adapters are refused and the previous judge keeps judging;
failed, killed, empty or one-class runs are refused or marked failed with the reason.

Adapters are made here with peft on tiny Llama models built in the test (tests/test_training.py's
`build_tiny_model`, plus one of another width), then damaged: random bytes, cut short, a pickle
(as adapter_model.bin, or under the safetensors name), made for another base model, or naming
this base but shaped for another. Activation goes through the services, the Retrain tab's
handler and the CLI. Every pickle here would create a marker file when unpickled; the tests
check that it never appears.

Refusals already covered in tests/test_retrain_service.py (too few labels or one class at start,
a killed worker process) are not repeated; here they go through the Retrain tab and the worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import seeding
from stand_ins import stand_ins
from test_training import build_tiny_model

import cli
from judges.backends.adapters import WEIGHTS_FILE
from judges.judge import JudgeOptions
from judges.train import RunPlan, TrainConfig, TrainingRefused
from judges.training_data import TrainingRecord
from judges.types import Status
from services import (
    ENDED_MESSAGE,
    Services,
    VersionRefused,
    run_training_worker,
    training_records,
    worker,
)
from storage import queries
from webui.label_handlers import LabelHandlers, LabelScreen
from webui.retrain_tab import RetrainHandlers

OPTIONS = JudgeOptions(max_new_tokens=4, logprobs=False)


# --- models, adapters and a payload that must never run --------------------------------------


class Payload:
    """Unpickling this creates `marker` (the side effect a malicious pickle would have)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"base_model.model.lora_A.weight": Payload(marker)})


def build_other_model(tiny: Path, path: Path) -> Path:
    """A model like `tiny` (same tokenizer and names) but 48 wide instead of 32."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    AutoTokenizer.from_pretrained(tiny).save_pretrained(path)
    config = AutoConfig.from_pretrained(tiny)
    config.hidden_size, config.intermediate_size, config.head_dim = 48, 96, 12
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def make_adapter(base: Path, out: Path) -> Path:
    """A real LoRA adapter for `base`, saved by peft as safetensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    get_peft_model(model, config).save_pretrained(out)
    assert (out / WEIGHTS_FILE).is_file()
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("models")
    tiny = build_tiny_model(root / "tiny-judge")
    other = build_other_model(tiny, root / "other-judge")
    return SimpleNamespace(
        tiny=tiny,
        other=other,
        good=make_adapter(tiny, root / "adapters" / "good"),
        foreign=make_adapter(other, root / "adapters" / "foreign"),
    )


def damaged(models: SimpleNamespace, kind: str, where: Path, marker: Path) -> Path:
    """A copy of the good adapter (or the foreign one) damaged in one way."""
    source = models.foreign if kind.startswith("foreign") else models.good
    adapter = where / kind
    shutil.copytree(source, adapter)
    weights = adapter / WEIGHTS_FILE
    if kind == "random_bytes":
        weights.write_bytes(os.urandom(weights.stat().st_size))
    elif kind == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "pickle_bin":
        weights.unlink()
        (adapter / "adapter_model.bin").write_bytes(evil_pickle(marker))
    elif kind == "pickle_as_safetensors":
        weights.write_bytes(evil_pickle(marker))
    elif kind == "missing":
        shutil.rmtree(adapter)
    elif kind == "foreign_shapes":  # names this judge's base, but its tensors are 48 wide
        config_file = adapter / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = str(models.tiny)
        config_file.write_text(json.dumps(config))
    elif kind != "foreign_base":
        raise ValueError(kind)
    return adapter


BAD_ADAPTERS = [
    ("random_bytes", "truncated or not safetensors"),
    ("truncated", "truncated or not safetensors"),
    ("pickle_bin", "holds pickle weights (adapter_model.bin)"),
    ("pickle_as_safetensors", "truncated or not safetensors"),
    ("missing", "adapter directory not found"),
    ("foreign_base", "was trained on"),
    ("foreign_shapes", "does not fit model tiny-judge"),
]


# --- services on the tiny judge ---------------------------------------------------------------


@pytest.fixture
def services(settings, models) -> Services:
    settings.judge_backend = "transformers"
    settings.judge_model = str(models.tiny)
    settings.max_new_tokens = OPTIONS.max_new_tokens
    opened = Services.open(settings)
    opened.judge.options = OPTIONS
    yield opened
    opened.reload_judge()


def add_pairs(services: Services, labels: list[str | None]) -> list[int]:
    """One pair per entry, labeled with it (None: left unlabeled)."""
    ids = seeding.add_pairs(
        services.sessions,
        "training-faults",
        len(labels),
        lambda i: {
            "prompt": f"What is {i} plus {i}?",
            "response_a": f"{2 * i}",
            "response_b": f"{2 * i + 1}",
        },
    )
    seeding.label_pairs(services, ids, labels)
    return ids


def register(services: Services, adapter: Path, name: str) -> int:
    """A version trained from the active one, with this adapter (not active)."""
    parent = services.judge_version_id()
    with services.sessions.begin() as s:
        return queries.ensure_judge_version(
            s,
            name=name,
            base_model=str(services.settings.judge_model),
            backend="transformers",
            adapter_path=str(adapter),
            parent_id=parent,
        )


def active_id(services: Services) -> int:
    (active,) = [v["id"] for v in services.versions() if v["is_active"]]
    return active


def assert_judges(services: Services, adapter: Path | None = None) -> None:
    """The loaded judge has `adapter` (None: the base) and judges a pair to the end."""
    assert services.backend().adapter_path == adapter
    (pair_id,) = add_pairs(services, [None])
    *_, last = services.stream_pair_judgment(pair_id)
    assert last.judgment.status is not Status.ERROR, last.judgment.error
    assert last.judgment.judge_version == str(active_id(services))


# --- activating adapters ----------------------------------------------------------------------


def test_the_payload_is_live_so_the_never_unpickled_checks_mean_something(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(evil_pickle(marker))
    assert marker.exists()


def test_a_good_adapter_activates_loads_and_rolls_back(services, models):
    base = services.judge_version_id()
    good = register(services, models.good, "run1-sft")
    services.activate_version(good)
    assert active_id(services) == good
    assert_judges(services, models.good)
    message, versions = RetrainHandlers(services).rollback()
    assert "Active judge: base:" in message
    assert active_id(services) == base and list(versions["active"]) == ["yes", ""]
    assert_judges(services, None)


@pytest.mark.parametrize(("kind", "reason"), BAD_ADAPTERS)
def test_a_bad_adapter_is_refused_and_the_base_keeps_judging(
    services, models, tmp_path, kind, reason
):
    marker = tmp_path / "unpickled"
    base = services.judge_version_id()
    loaded = services.backend()
    bad = register(services, damaged(models, kind, tmp_path / "bad", marker), f"run9-{kind}")

    with pytest.raises(VersionRefused, match="not activated") as refused:
        services.activate_version(bad)
    assert reason in str(refused.value) and "stays active" in str(refused.value)
    assert active_id(services) == base
    assert services.backend() is loaded, "the working judge was dropped for a broken one"
    assert_judges(services, None)

    message, versions = RetrainHandlers(services).activate(bad)  # the Retrain tab
    assert "Not changed" in message and reason.split(" (")[0] in message, message
    assert "grm-msg-error" in message and "Traceback" not in message
    assert [v for v, a in zip(versions["id"], versions["active"], strict=True) if a] == [base]
    assert active_id(services) == base
    assert not marker.exists(), "a pickle was unpickled"


def test_a_failed_activation_keeps_the_previous_adapter_version(services, models, tmp_path):
    marker = tmp_path / "unpickled"
    good = register(services, models.good, "run1-sft")
    services.activate_version(good)
    bad = register(services, damaged(models, "pickle_as_safetensors", tmp_path, marker), "run2")
    with pytest.raises(VersionRefused, match="run1-sft stays active"):
        services.activate_version(bad)
    assert active_id(services) == good
    assert_judges(services, models.good)
    assert not marker.exists()


def test_a_pickle_beside_good_safetensors_is_never_loaded(services, models, tmp_path):
    marker = tmp_path / "unpickled"
    adapter = tmp_path / "with-pickle"
    shutil.copytree(models.good, adapter)
    (adapter / "adapter_model.bin").write_bytes(evil_pickle(marker))
    (adapter / "training_args.bin").write_bytes(evil_pickle(marker))
    version = register(services, adapter, "run3-sft")
    services.activate_version(version)
    assert_judges(services, adapter)
    assert not marker.exists(), "a pickle beside the safetensors was unpickled"


def test_an_adapter_cannot_be_activated_on_a_served_judge(services, models):
    base = services.judge_version_id()
    services.configure_judge("openai", "some-model", OPTIONS)
    version = register(services, models.good, "run4-sft")
    with pytest.raises(
        VersionRefused, match="openai backend cannot load a retrained judge version"
    ):
        services.activate_version(version)
    assert active_id(services) == base


def test_cli_activate_refuses_a_corrupt_adapter(services, models, tmp_path, monkeypatch, capsys):
    base = services.judge_version_id()
    bad = register(services, damaged(models, "truncated", tmp_path, tmp_path / "m"), "run5")
    monkeypatch.setattr(cli, "_services", lambda: services)
    assert cli.main(["activate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not activated" in err and "truncated or not safetensors" in err
    assert active_id(services) == base


def test_an_active_adapter_damaged_on_disk_fails_visibly_and_labeling_goes_on(
    services, models, tmp_path
):
    """The adapter of the active version is damaged after it was activated (a disk fault, a
    restart): the judge fails with the reason, labels are still saved, rollback recovers."""
    adapter = tmp_path / "soon-broken"
    shutil.copytree(models.good, adapter)
    version = register(services, adapter, "run6-sft")
    services.activate_version(version)
    (adapter / WEIGHTS_FILE).write_bytes(b"\0" * 64)
    services.reload_judge()  # as after a restart: the active version is loaded again

    (pair_id,) = add_pairs(services, [None])
    request = SimpleNamespace(session_hash="s", username=None)
    handlers = LabelHandlers(services, stand_ins(LabelScreen))
    *_, last = handlers.judge({"pair_id": pair_id}, request)
    ui = handlers.ui
    badge, judged, status = last[ui.badge], last[ui.judged], last[ui.status]
    assert 'data-state="error"' in badge and judged["verdict"] is None
    assert "The judge failed" in status and "truncated or not safetensors" in status
    services.save_label(pair_id, "ann", "A")  # labeling goes on
    assert services.pair_history(pair_id)["labels"][0]["verdict"] == "A"

    services.rollback_version()
    assert_judges(services, None)


# --- training runs that cannot succeed --------------------------------------------------------


def test_retrain_tab_refuses_one_class_and_stores_no_run(services):
    add_pairs(services, ["B"] * 25)  # enough labels (the tab's minimum is 20), one class
    message = RetrainHandlers(services).start("sft", "lora", 1, 4, 1e-4, 0.3)
    assert "Not started: every usable label is &#x27;B&#x27;" in message, message
    assert services.training_runs() == []


def test_retrain_tab_shows_a_killed_run_as_failed_and_nothing_changes(services):
    base = services.judge_version_id()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with services.sessions.begin() as s:
        run_id = queries.create_training_run(s, "sft", {}, base, status="running")
        queries.update_training_run(s, run_id, pid=dead.pid)
    status, _loss, _metrics, versions, _curve = RetrainHandlers(services).poll()
    assert f"Run {run_id} (sft): failed. {ENDED_MESSAGE}" in status
    assert services.training_run(run_id)["status"] == "failed"
    assert list(versions["id"]) == [base] and active_id(services) == base


def queued_run(
    services: Services,
    records: list[TrainingRecord],
    tmp_path: Path,
    label_snapshot: dict | None = None,
    config_changes: dict | None = None,
    **job,
) -> int:
    """A run row as start_training_run leaves it, with `records` as its snapshot; without a
    `label_snapshot` (the split start checked), the worker checks the records itself."""
    config = TrainConfig(
        method="sft",
        max_steps=1,
        batch_size=2,
        min_labels=4,
        heldout_share=0.3,
        rft_samples=0,
        max_prompt_tokens=128,
        max_target_tokens=8,
        lora_rank=4,
        weights="lora",
        output_dir=str(tmp_path / "run" / "adapter"),
    )
    config = dataclasses.replace(config, **(config_changes or {}))
    records_path = tmp_path / "records.json"
    records_path.write_text(json.dumps([r.to_json() for r in records]))
    active = services.judge_version_id()
    job = {
        "records_path": str(records_path),
        "base_model_path": str(services.settings.judge_model),
        "parent_adapter_path": None,
        "base_model_name": str(services.settings.judge_model),
        "judge_options": OPTIONS.model_dump(),
        **job,
    }
    with services.sessions.begin() as s:
        run_id = queries.create_training_run(s, "sft", {}, active)
        queries.update_training_run(
            s,
            run_id,
            config={**dataclasses.asdict(config), "job": job},
            label_snapshot=label_snapshot,
        )
    return run_id


def snapshot(services: Services) -> list[TrainingRecord]:
    with services.sessions.begin() as s:
        return training_records(s, services.judge_version_id(), "pairwise")


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ([], "refused: only 0 usable labels"),
        (["A"] * 6, "refused: every usable label is 'A'"),
        (["both_bad"] * 6, "refused: only 0 usable labels (A, B or tie; 6 others"),
    ],
)
def test_the_worker_marks_an_empty_or_one_class_snapshot_failed(services, tmp_path, labels, reason):
    add_pairs(services, labels)
    base = services.judge_version_id()
    run_id = queued_run(services, snapshot(services), tmp_path)
    assert run_training_worker(run_id, services) == 2
    run = services.training_run(run_id)
    assert run["status"] == "failed" and run["error"].startswith(reason), run["error"]
    assert [v["id"] for v in services.versions()] == [base]
    assert RetrainHandlers(services).poll()[0].count("failed") == 1


def test_the_worker_trains_on_the_split_start_checked_without_checking_again(
    services, tmp_path, monkeypatch
):
    add_pairs(services, ["A", "B"] * 3)
    records = snapshot(services)
    stored = {"split": {"train": [records[0].pair_id], "heldout": [records[1].pair_id],
                        "seed": 0, "heldout_share": 0.3}}  # fmt: skip
    run_id = queued_run(services, records, tmp_path, label_snapshot=stored)
    plans: list[RunPlan] = []

    def run_job(plan: RunPlan, *args, **kwargs):
        plans.append(plan)
        raise TrainingRefused("stopped here: the test needs no model")

    def plan_run(*args):
        raise AssertionError("the worker checked the run again")

    monkeypatch.setattr(worker, "run_job", run_job)
    monkeypatch.setattr(worker, "plan_run", plan_run)
    assert run_training_worker(run_id, services) == 2
    (plan,) = plans
    assert (plan.split.train, plan.split.heldout) == ((records[0].pair_id,), (records[1].pair_id,))
    assert [r.pair_id for r in plan.records] == [r.pair_id for r in records]
    assert plan.config.output_dir == str(tmp_path / "run" / "adapter")


def test_a_run_whose_weights_turn_nan_fails_with_the_reason_and_registers_nothing(
    services, tmp_path
):
    """A learning rate so large that the second step overflows: the person reads why (without
    the exception's class name), the base stays active and no version directory appears."""
    add_pairs(services, ["A", "B"] * 3)
    base = services.judge_version_id()
    changes = {"method": "verdict", "learning_rate": 1e30, "max_steps": 2}
    run_id = queued_run(services, snapshot(services), tmp_path, config_changes=changes)
    assert run_training_worker(run_id, services) == 1
    run = services.training_run(run_id)
    assert run["status"] == "failed", run["error"]
    assert run["error"].startswith("training diverged: "), run["error"]
    assert "gradient norm at step 2" in run["error"] and "lower learning_rate" in run["error"]
    assert [v["id"] for v in services.versions()] == [base] and active_id(services) == base
    assert not (tmp_path / "run" / "adapter").exists()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("pickle_bin", "holds pickle weights"), ("random_bytes", "truncated or not safetensors")],
)
def test_a_run_from_a_broken_parent_adapter_fails_with_the_reason(
    services, models, tmp_path, kind, reason
):
    marker = tmp_path / "unpickled"
    add_pairs(services, ["A", "B"] * 3)
    base = services.judge_version_id()
    parent = damaged(models, kind, tmp_path / "bad", marker)
    run_id = queued_run(services, snapshot(services), tmp_path, parent_adapter_path=str(parent))
    assert run_training_worker(run_id, services) == 1
    run = services.training_run(run_id)
    assert run["status"] == "failed" and reason in run["error"], run["error"]
    assert [v["id"] for v in services.versions()] == [base] and active_id(services) == base
    assert not (tmp_path / "run" / "adapter").exists()
    assert not marker.exists()
