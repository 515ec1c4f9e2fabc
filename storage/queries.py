"""Every query function under one name, for callers that write `queries.save_label(s, ...)`.

The queries live by job: storage.pairs (datasets, pairs, the label queue), storage.labels
(save, undo, history), storage.judgments (judgments, judge versions), storage.records (labels
with the verdict to compare, stats), storage.training_runs and storage.judging_jobs. Each
takes the session first and leaves the transaction to the caller; what comes out is plain
values, never ORM objects.
"""

from __future__ import annotations

from storage.judging_jobs import (
    advance_judging_job,
    cancel_judging_job,
    claim_judging_job,
    create_judging_job,
    end_judging_job,
    fail_judging_job,
    get_judging_job,
    heartbeat_judging_job,
    job_pending_pairs,
    list_judging_jobs,
    lock_job_starts,
    unfinished_judging_jobs,
)
from storage.judgments import (
    JUDGMENT_COLUMNS,
    active_judge_version,
    add_judgments,
    ensure_judge_version,
    list_judge_versions,
    pair_judgments,
    pending_pairs,
    set_active_version,
    version_judgments,
)
from storage.labels import (
    MAX_ANNOTATOR_LENGTH,
    LabelView,
    current_labels,
    judge_agreement_counts,
    label_history,
    save_label,
    undo_last_label,
)
from storage.pairs import (
    DatasetInfo,
    PairView,
    QueueCounts,
    dataset_id,
    get_or_create_dataset,
    get_pair,
    list_datasets,
    next_pair,
    queue_counts,
)
from storage.records import labeled_records, stats
from storage.rows import FAILED_JUDGMENT_STATUS, ID_CHUNK, SKIP, NotFoundError
from storage.rows import as_dicts as _dicts  # noqa: F401 (storage.judgment_runs reads it here)
from storage.training_runs import (
    RUN_FIELDS,
    create_training_run,
    get_training_run,
    list_training_runs,
    running_training_run,
    update_training_run,
)

__all__ = [
    "FAILED_JUDGMENT_STATUS",
    "ID_CHUNK",
    "JUDGMENT_COLUMNS",
    "MAX_ANNOTATOR_LENGTH",
    "RUN_FIELDS",
    "SKIP",
    "DatasetInfo",
    "LabelView",
    "NotFoundError",
    "PairView",
    "QueueCounts",
    "active_judge_version",
    "add_judgments",
    "create_training_run",
    "current_labels",
    "dataset_id",
    "ensure_judge_version",
    "get_or_create_dataset",
    "get_pair",
    "get_training_run",
    "judge_agreement_counts",
    "label_history",
    "labeled_records",
    "list_datasets",
    "list_judge_versions",
    "list_training_runs",
    "lock_job_starts",
    "next_pair",
    "pair_judgments",
    "pending_pairs",
    "queue_counts",
    "running_training_run",
    "save_label",
    "set_active_version",
    "stats",
    "undo_last_label",
    "update_training_run",
    "version_judgments",
    "advance_judging_job",
    "cancel_judging_job",
    "claim_judging_job",
    "create_judging_job",
    "end_judging_job",
    "fail_judging_job",
    "get_judging_job",
    "heartbeat_judging_job",
    "job_pending_pairs",
    "list_judging_jobs",
    "unfinished_judging_jobs",
]
