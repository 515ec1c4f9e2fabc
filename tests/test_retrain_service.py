"""The retraining workflow through services: refusals, the worker process, versions, the CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from seeding import add_pairs, label_pairs

import cli
from judges.judge import JudgeOptions
from judges.train import TrainConfig, TrainingRefused
from judges.types import Verdict
from services import ENDED_MESSAGE, Services
from services.training_runs import TrainingRuns
from storage import queries

WAIT_S = 300  # generous: the worker loads torch and the model on a shared 2-core machine


@pytest.fixture
def services(settings) -> Services:
    return Services.open(settings)


def add_labeled_pairs(services: Services, labels: list[str]) -> list[int]:
    """Pairs labeled with `labels` (one each), in a dataset called "retrain"."""
    ids = add_pairs(services.sessions, "retrain", len(labels), sum_pair)
    label_pairs(services, ids, labels)
    return ids


def sum_pair(i: int) -> dict[str, str]:
    return {
        "external_id": f"r{i}",
        "prompt": f"What is {i} plus {i}?",
        "response_a": f"{i} plus {i} is {2 * i}.",
        "response_b": f"{i} plus {i} is {2 * i + 1}.",
        "category": "math",
    }


def tiny_config(**overrides) -> TrainConfig:
    values = {
        "method": "sft",
        "weights": "lora",
        "max_steps": 2,
        "batch_size": 2,
        "min_labels": 4,
        "heldout_share": 0.3,
        "rft_samples": 0,
        "max_prompt_tokens": 320,
        "max_target_tokens": 16,
        "lora_rank": 4,
    }
    return TrainConfig(**{**values, **overrides})


def short_judging(services: Services) -> None:
    services.judge.options = JudgeOptions(max_new_tokens=8, logprobs=False)


def wait_for(services: Services, run_id: int, done, timeout_s: float = WAIT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = services.training_run(run_id)
        if done(run):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not get there in {timeout_s} s: {run}")


def ended(run: dict) -> bool:
    return run["status"] not in ("queued", "running")


def runs_count(services: Services) -> int:
    return len(services.training_runs())


# ---------------------------------------------------------------- refusals


def test_too_few_labels_is_refused_and_nothing_stored(services):
    add_labeled_pairs(services, ["A", "B", "A"])
    with pytest.raises(TrainingRefused, match="only 3 usable labels"):
        services.start_training_run(tiny_config())
    assert runs_count(services) == 0
    assert not services.runs_dir().exists()


def test_one_class_is_refused(services):
    add_labeled_pairs(services, ["A"] * 6)
    with pytest.raises(TrainingRefused, match="every usable label is 'A'"):
        services.start_training_run(tiny_config())
    assert runs_count(services) == 0


def test_bad_config_is_refused(services):
    add_labeled_pairs(services, ["A", "B"] * 3)
    with pytest.raises(TrainingRefused, match="method must be one of"):
        services.start_training_run(tiny_config(method="ppo"))


def test_training_records_take_the_newest_label_and_the_versions_judgments(services):
    pair_ids = add_labeled_pairs(services, ["A", "B"])
    services.save_label(pair_ids[0], "other", "B")  # a second annotator, later
    version_id = services.judge_version_id()
    with services.sessions.begin() as s:
        common = {
            "pair_id": pair_ids[1],
            "judge_version_id": version_id,
            "prompt_version": "v1",
            "status": "complete",
        }
        queries.add_judgments(
            s,
            [
                {**common, "protocol": "pairwise", "verdict": "B", "raw_text": "Verdict: [[B]]"},
                {**common, "protocol": "pointwise", "verdict": "A", "raw_text": "x"},
            ],
        )
        from services import training_records

        records = {r.pair_id: r for r in training_records(s, version_id, "pairwise")}
    assert records[pair_ids[0]].label == "B"
    assert records[pair_ids[0]].judgments == ()
    judgments = records[pair_ids[1]].judgments
    assert [(j.verdict, j.raw_text) for j in judgments] == [(Verdict.B, "Verdict: [[B]]")]
    assert judgments[0].judgment_id is not None


def test_start_checks_the_run_once_and_stores_the_split_the_worker_trains_on(services, monkeypatch):
    add_labeled_pairs(services, ["A", "B"] * 3)
    checked: list[TrainConfig] = []
    validate = TrainConfig.validate
    monkeypatch.setattr(
        TrainConfig, "validate", lambda self: checked.append(self) or validate(self)
    )
    monkeypatch.setattr(TrainingRuns, "spawn_worker", lambda self, run_id, run_dir: None)
    run_id = services.start_training_run(tiny_config())
    assert len(checked) == 1
    run = services.training_run(run_id)
    split = run["label_snapshot"]["split"]
    assert sorted(split["train"] + split["heldout"]) == sorted(
        r["pair_id"] for r in json.loads(Path(run["config"]["job"]["records_path"]).read_text())
    )
    assert split["heldout_share"] == 0.3 and split["heldout"] and split["train"]
    assert run["config"]["learning_rate"] == 3e-4  # left unset: stored as it will run (lora)


# ---------------------------------------------------------------- the worker process


def test_a_second_run_is_refused_and_a_killed_run_is_failed(services):
    add_labeled_pairs(services, ["A", "B"] * 3)
    active_before = services.judge_version_id()
    run_id = services.start_training_run(tiny_config())
    with pytest.raises(TrainingRefused, match=f"run {run_id} is already"):
        services.start_training_run(tiny_config())
    run = wait_for(services, run_id, lambda r: r["status"] == "running" or ended(r))
    assert run["status"] == "running", run
    assert Path(run["log_path"]).parent.joinpath("records.json").is_file()
    assert len(run["label_snapshot"]["label_ids"]) == 6

    os.kill(run["pid"], signal.SIGKILL)
    run = wait_for(services, run_id, ended, timeout_s=30)
    assert (run["status"], run["error"]) == ("failed", ENDED_MESSAGE)
    assert services.judge_version_id() == active_before
    assert [v["id"] for v in services.versions()] == [active_before]

    second = services.start_training_run(tiny_config())  # the dead run no longer blocks
    cancelled = services.cancel_training_run(second)
    assert cancelled["status"] == "cancelled"
    assert [v["id"] for v in services.versions()] == [active_before]


@pytest.mark.slow
def test_a_short_run_registers_an_inactive_version_that_can_be_activated(services):
    add_labeled_pairs(services, ["A", "B"] * 4)
    short_judging(services)
    base_id = services.judge_version_id()
    run_id = services.start_training_run(tiny_config())
    run = wait_for(services, run_id, ended)
    log_text = Path(run["log_path"]).read_text()
    assert run["status"] == "done", f"{run['error']}\n{log_text[-3000:]}"
    assert run["finished_at"] is not None
    assert run["progress"]["phase"] == "done"
    assert [p["step"] for p in run["progress"]["losses"]] == [1, 2]
    for figures in (run["metrics_before"], run["metrics_after"]):
        assert figures["n"] + figures["excluded"] == len(run["label_snapshot"]["split"]["heldout"])

    new = [v for v in services.versions() if v["training_run_id"] == run_id]
    assert len(new) == 1 and not new[0]["is_active"]
    assert new[0]["parent_id"] == base_id
    assert "accuracy" in new[0]["metrics"] and new[0]["metrics"]["training"]["steps"] == 2
    from webui.retrain_tab import curve_frame, versions_frame

    curve = curve_frame(services.versions())  # the Retrain tab's curve shows the new version
    used = len(run["label_snapshot"]["split"]["train"])
    assert curve["labels used"].tolist() == [used, used]
    paired = new[0]["metrics"]["paired"]
    assert curve["held-out accuracy"].tolist() == [
        paired["first_accuracy"],
        paired["second_accuracy"],
    ]
    assert Path(new[0]["adapter_path"], "adapter_model.safetensors").is_file()
    assert versions_frame(new)["weights"].tolist() == ["lora"]
    assert services.judge_version_id() == base_id

    services.activate_version(new[0]["id"])
    assert Path(services.backend().adapter_path) == Path(new[0]["adapter_path"])
    services.rollback_version()
    assert services.judge_version_id() == base_id
    assert services.backend().adapter_path is None
    services.reload_judge()


def test_a_full_run_makes_a_whole_model_version_that_judges_when_activated(services):
    """Every weight trained (the default): the version is a whole model directory, the active
    engine judges with it once activated, and a LoRA run cannot continue it (refused, nothing
    stored)."""
    from tests.engine_checks import MESSAGES, PREFIX
    from webui.retrain_tab import versions_frame

    add_labeled_pairs(services, ["A", "B"] * 4)
    short_judging(services)
    # A rate the two tiny steps can show at the embedded judge's bf16 precision.
    run_id = services.start_training_run(tiny_config(weights="full", learning_rate=1e-4))
    run = wait_for(services, run_id, ended)
    assert run["status"] == "done", f"{run['error']}\n{Path(run['log_path']).read_text()[-3000:]}"
    assert run["config"]["weights"] == "full"
    (new,) = [v for v in services.versions() if v["training_run_id"] == run_id]
    version_dir = Path(new["adapter_path"])
    assert {"config.json", "model.safetensors"} <= {p.name for p in version_dir.iterdir()}
    shown = versions_frame(services.versions()).set_index("id")  # the Retrain tab's table
    assert shown.loc[new["id"], "weights"] == "full"
    assert shown.loc[services.judge_version_id(), "weights"] == ""  # the base model
    request = [(MESSAGES, PREFIX)]
    before = services.backend().next_token_logprobs(request, top_k=5)[0]

    services.activate_version(new["id"])
    judge = services.backend()
    assert Path(judge.adapter_path) == version_dir
    after = judge.next_token_logprobs(request, top_k=5)[0]
    assert after != pytest.approx(before, abs=1e-3)
    count = runs_count(services)
    with pytest.raises(TrainingRefused, match="whole fine-tuned model"):
        services.start_training_run(tiny_config())  # weights lora
    assert runs_count(services) == count
    services.rollback_version()
    services.reload_judge()


# ---------------------------------------------------------------- versions on the command line


def child_version(services: Services, name: str, metrics: dict) -> int:
    """A version registered as the active one's child, with no adapter (an adapter that cannot
    load is refused: test_training_faults.py)."""
    with services.sessions.begin() as s:
        return queries.ensure_judge_version(
            s,
            name=name,
            base_model="m",
            backend="transformers",
            adapter_path=None,
            parent_id=services.judge_version_id(),
            metrics=metrics,
        )


def test_cli_versions_and_activate(services, settings, capsys):
    base_id = services.judge_version_id()
    child = child_version(services, "run1-sft", {"accuracy": 0.75})
    assert cli.main(["versions"]) == 0
    out = capsys.readouterr().out
    assert "run1-sft" in out and "0.750" in out
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["*", "run1-sft"]
    assert [line.split()[-2] for line in out.splitlines()[1:]] == ["base", "base"]  # no weights

    assert cli.main(["activate", str(child)]) == 0
    assert f"active judge version: {child} run1-sft" in capsys.readouterr().out
    assert services.judge_version_id() == child
    assert cli.main(["activate", "parent"]) == 0
    assert services.judge_version_id() == base_id
    assert cli.main(["activate", "parent"]) == 2
    assert "no parent to roll back to" in capsys.readouterr().err
    assert cli.main(["activate", "999"]) == 2


# ---------------------------------------------------------------- the Retrain tab's handlers


def test_retrain_tab_handlers_render_runs_and_versions(services):
    from webui.retrain_tab import RetrainHandlers, progress_text

    running = {
        "id": 3,
        "method": "dpo",
        "status": "running",
        "error": None,
        "progress": {"phase": "training", "step": 3, "max_steps": 10, "loss": 0.5, "eta_s": 42},
    }
    assert progress_text(running) == (
        "Run 3 (dpo): running · Training · step 3 of 10 · loss 0.5000 · about 42 s left"
    )
    failed = {**running, "status": "failed", "error": ENDED_MESSAGE}
    assert progress_text(failed) == f"Run 3 (dpo): failed. {ENDED_MESSAGE}"

    h = RetrainHandlers(services)
    status, losses, metrics, versions, curve = h.poll()
    assert "No training run yet" in status and losses.empty and curve.empty
    assert list(metrics["figure"])[0] == "accuracy"
    assert "Nothing is running" in h.cancel()
    assert "Not started: only 0 usable labels" in h.start("sft", "lora", 1, 8, 1e-4, 0.2)
    message, versions = h.rollback()
    assert "no parent to roll back to" in message and list(versions["active"]) == ["yes"]


def test_the_retrain_form_puts_each_value_in_its_place() -> None:
    from types import SimpleNamespace

    from webui.retrain_tab import RetrainHandlers

    started: list[TrainConfig] = []
    services = SimpleNamespace(start_training_run=lambda config: started.append(config) or 5)
    h = RetrainHandlers(services)
    assert "Run 5 started" in h.start("verdict", "full", 2, 8, None, 0.25, 15)
    assert "Run 5 started" in h.start("sft", "lora", 1, 4, 1e-4, 0.2, None)
    assert started == [
        TrainConfig(method="verdict", weights="full", epochs=2.0, lora_rank=8, trained_layers=15,
                    heldout_share=0.25),
        TrainConfig(method="sft", weights="lora", epochs=1.0, lora_rank=4, learning_rate=1e-4,
                    heldout_share=0.2),
    ]  # fmt: skip


def test_cli_evaluate_prints_the_active_versions_figures(services, monkeypatch, capsys):
    from fakes import FakeBackend

    add_labeled_pairs(services, ["A", "A", "B", "B"])
    services.judge.options = JudgeOptions(logprobs=False)
    services.use_backend(FakeBackend(script=lambda messages: "Verdict: [[A]]"))
    monkeypatch.setattr(cli, "_services", lambda: services)
    assert cli.main(["evaluate", "--dataset", "retrain"]) == 0
    out = capsys.readouterr().out
    assert "on retrain" in out
    lines = {line[:24].strip(): line[24:].split() for line in out.splitlines()}
    assert lines["accuracy"] == ["0.500"] and lines["pairs scored"] == ["4"]


def test_cli_train_refusal_and_progress_line(services, capsys):
    add_labeled_pairs(services, ["A", "B", "A"])
    assert cli.main(["train", "--method", "sft", "--max-steps", "2", "--min-labels", "4"]) == 2
    assert "training refused: only 3 usable labels" in capsys.readouterr().err
    run = {"id": 1, "status": "running", "progress": {"phase": "training", "step": 2,
           "max_steps": 8, "loss": 1.25, "eta_s": 30.4}}  # fmt: skip
    assert cli.progress_line(run) == "run 1 running  training  step 2/8  loss 1.2500  30 s left"
    judging = {"id": 1, "status": "running", "progress": {"phase": "evaluating_before",
               "done": 1, "total": 3}}  # fmt: skip
    assert cli.progress_line(judging) == "run 1 running  evaluating_before  1/3 pairs"


def worse_paired(p_value: float) -> dict:
    return {"first_accuracy": 0.7, "second_accuracy": 0.5, "difference": -0.2, "p_value": p_value}


@pytest.mark.parametrize(("p_value", "refused"), [(0.01, True), (0.2, False)])
def test_a_significantly_worse_version_needs_confirmation(services, capsys, p_value, refused):
    base_id = services.judge_version_id()
    worse = child_version(
        services, "run2-verdict", {"accuracy": 0.5, "paired": worse_paired(p_value)}
    )
    assert cli.main(["activate", str(worse)]) == (2 if refused else 0)
    if refused:
        err = capsys.readouterr().err
        assert "agrees with people less than its parent" in err and "--force" in err
        assert services.judge_version_id() == base_id  # nothing changed
        assert cli.main(["activate", str(worse), "--force"]) == 0
    assert services.judge_version_id() == worse


def test_before_after_pairs_the_two_evaluations_on_shared_pairs():
    from judges.evaluation import before_after, significantly_worse

    def rows(verdicts: str) -> dict:
        humans = "ABABABABABAB"
        return {
            "per_pair": [
                {"pair_id": i, "human": h, "judge": v}
                for i, (h, v) in enumerate(zip(humans, verdicts, strict=True))
            ]
            + [{"pair_id": 99, "human": "both_bad", "judge": "A"}]  # not scored
        }

    paired = before_after(rows("ABABABABABAB"), rows("BBBBBBBBBBBB"))
    assert paired["n"] == 12 and paired["first_accuracy"] == 1.0
    assert paired["second_accuracy"] == 0.5 and paired["difference"] == -0.5
    assert (paired["only_first"], paired["only_second"]) == (6, 0)
    assert paired["p_value"] == pytest.approx(2 / 2**6)  # 0.031: significantly worse
    assert significantly_worse(paired) and not significantly_worse(None)
    five_of_ten = before_after(rows("ABABABABABAB"), rows("BBBBBBBBBBAB"))
    assert five_of_ten["p_value"] == pytest.approx(2 / 2**5)  # 0.0625: not (yet) significant
    assert not significantly_worse(five_of_ten)
    assert before_after({"per_pair": []}, rows("ABABABABABAB")) is None


def test_the_retrain_tab_curve_puts_each_version_at_the_labels_it_used():
    from webui.retrain_tab import CURVE_SERIES, curve_frame

    def version(name: str, train: int, before: float, after: float) -> dict:
        paired = {"first_accuracy": before, "second_accuracy": after}
        split = {"train": list(range(train)), "heldout": [1, 2, 3]}
        return {"name": name, "metrics": {"paired": paired, "training": {"split": split}}}

    base = {"name": "base:m", "metrics": None}
    frame = curve_frame(
        [base, version("run2-verdict", 150, 0.44, 0.59), version("run1", 50, 0.44, 0.32)]
    )
    assert frame.values.tolist() == [
        [50, 0.44, CURVE_SERIES[0], "run1"],
        [50, 0.32, CURVE_SERIES[1], "run1"],
        [150, 0.44, CURVE_SERIES[0], "run2-verdict"],
        [150, 0.59, CURVE_SERIES[1], "run2-verdict"],
    ]
