"""The analysis room: how often the judge agrees with people (the Agreement tab), and a judge
version's figures against the human labels (`grm evaluate`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from judges.judge import JudgeOptions
from judges.metrics import consistency_figures
from services.judging import Judging
from services.training_records import training_records, version_row
from storage import queries
from storage.db import reading


class Analysis:
    def __init__(self, sessions: sessionmaker[Session], judging: Judging) -> None:
        self.sessions = sessions
        self.judging = judging

    def agreement(self, dataset_id: int | None = None) -> dict[str, Any]:
        """Judge vs human on labeled pairs: the metrics report by category, judge version and
        annotator, plus inter-annotator agreement and how many labels had no judgment.

        Each label is compared with its judgment run's stored verdict (the aggregate of its k
        samples and both orders), and position consistency is the runs' own, as stored."""
        from judges import metrics

        with reading(self.sessions) as s:
            records = queries.labeled_records(s, dataset_id=dataset_id)
            names = {v["id"]: v["name"] for v in queries.list_judge_versions(s)}
        judged = [r for r in records if r["judgment_id"] is not None]
        rows = [
            {
                "judge": r["judge_verdict"],
                "human": r["label"],
                "category": r["category"],
                "judge_version": names.get(r["judge_version_id"], r["judge_version_id"]),
                "annotator": r["annotator"],
            }
            for r in judged
        ]
        report = metrics.agreement_report(rows, group_by=("category", "judge_version", "annotator"))
        report["position_consistency"] = position_figures(judged)
        people = [
            {"pair_id": r["pair_id"], "annotator": r["annotator"], "verdict": r["label"]}
            for r in records
        ]
        report["inter_annotator"] = metrics.inter_annotator_table(people)
        report["labels"] = len(records)
        report["unjudged_labels"] = len(records) - len(judged)
        return report

    def evaluate_version(
        self,
        version_id: int | None = None,
        dataset: str | None = None,
        options: JudgeOptions | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """A version's figures against the human labels (of one dataset, or all)."""
        from judges.evaluation import evaluate_judge
        from judges.training_data import parse_records

        options = options or self.judging.judge.options
        version_id = version_id or self.judging.version_id()
        with reading(self.sessions) as s:
            version = version_row(s, version_id)
            dataset_id = queries.dataset_id(s, dataset) if dataset else None
            records = training_records(s, None, options.protocol, dataset_id=dataset_id)
        pairs = [p for p in parse_records(records) if p.trainable][:limit]
        if not pairs:
            raise ValueError(
                f"no A/B/tie labels to evaluate against{' in ' + dataset if dataset else ''}"
            )
        backend, owned = self.version_backend(version)
        try:
            report = evaluate_judge(
                backend,
                [p.pair for p in pairs],
                [p.label for p in pairs],
                options,
                categories=[p.category for p in pairs],
            )
        finally:
            if owned:
                backend.close()
        report["version"] = version["name"]
        return report

    def version_backend(self, version: dict[str, Any]) -> tuple[Any, bool]:
        """The version's judge and whether the caller owns it (must close it)."""
        if version["is_active"]:
            return self.judging.backend(), False
        return self.judging.make_backend(version["adapter_path"]), True


def position_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the labels' swap runs said the same in both orders (judges.metrics' shape):
    n runs with both orders, `compared` those where both orders gave a verdict."""
    swapped = [r for r in records if r.get("judge_swap")]
    complete = [r["judge_position_consistent"] for r in swapped]
    complete = [same for same in complete if same is not None]  # both orders gave a verdict
    return consistency_figures(len(swapped), complete)
