"""Batch judging as a recorded job that a restarted process continues.

`judging_job`: one batch judging of a dataset's pending pairs (dataset NULL: every dataset's):
the judge version and options it judges with (protocol, prompt version, k, swap, aggregate, and
every option as JSON), the highest pair id in its scope, status, total and done, judging time,
the process that owns it and when that process last showed it was alive, error, and its times.
`judgment_run.judging_job_id`: the job that made the run (NULL for every run stored before,
and for runs judged live). Existing rows are kept as they are; no job is made for them.

Revision ID: 0005_judging_job
Revises: 0004_guidelines_and_prompts
Create Date: 2026-12-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_judging_job"
down_revision = "0004_guidelines_and_prompts"
branch_labels = None
depends_on = None

TZ_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "judging_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=True),
        sa.Column("judge_version_id", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(40), nullable=False),
        sa.Column("prompt_version", sa.String(40), nullable=True),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("swap", sa.Boolean(), nullable=False),
        sa.Column("aggregate", sa.String(20), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("last_pair_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("busy_seconds", sa.Float(), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("heartbeat_at", TZ_DATETIME, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", TZ_DATETIME, nullable=False),
        sa.Column("updated_at", TZ_DATETIME, nullable=False),
        sa.Column("finished_at", TZ_DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset.id"],
            name="fk_judging_job_dataset_id_dataset",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["judge_version_id"],
            ["judge_version.id"],
            name="fk_judging_job_judge_version_id_judge_version",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_judging_job"),
    )
    op.create_index("ix_judging_job_status", "judging_job", ["status", "id"])
    with op.batch_alter_table("judgment_run") as batch:
        batch.add_column(sa.Column("judging_job_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_judgment_run_judging_job_id_judging_job",
            "judging_job",
            ["judging_job_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index("ix_judgment_run_job", ["judging_job_id", "pair_id"])


def downgrade() -> None:
    with op.batch_alter_table("judgment_run") as batch:
        batch.drop_index("ix_judgment_run_job")
        batch.drop_constraint("fk_judgment_run_judging_job_id_judging_job", type_="foreignkey")
        batch.drop_column("judging_job_id")
    op.drop_index("ix_judging_job_status", table_name="judging_job")
    op.drop_table("judging_job")
