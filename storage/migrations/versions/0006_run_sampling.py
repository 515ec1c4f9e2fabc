"""A judgment run records the sampling it was judged with.

`judgment_run.temperature`, `repetition_penalty`, `max_new_tokens`, `seed` and `logprobs`: the
judge options that change what a run's samples say (the setup's protocol, prompt version, k and
swap were columns already). `grm compare` reuses a stored run only where these match the setup's
options too; before, a run judged at temperature 0.7 or with 64 new tokens stood in for a
greedy 512-token setup. Runs stored before this are left NULL: how they were sampled is not
known, so compare judges their pairs again rather than guess.

Revision ID: 0006_run_sampling
Revises: 0005_judging_job
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_run_sampling"
down_revision = "0005_judging_job"
branch_labels = None
depends_on = None

COLUMNS = (
    ("temperature", sa.Float()),
    ("repetition_penalty", sa.Float()),
    ("max_new_tokens", sa.Integer()),
    ("seed", sa.Integer()),
    ("logprobs", sa.Boolean()),
)


def upgrade() -> None:
    with op.batch_alter_table("judgment_run") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("judgment_run") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
