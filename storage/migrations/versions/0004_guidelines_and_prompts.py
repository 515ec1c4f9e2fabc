"""A dataset's guidelines and judge prompts as stored, versioned data.

`dataset.guidelines`: the team's guidelines for a dataset (markdown), shown to annotators and
given to the judge as its starting principles; NULL where none were set.
`prompt_version`: one judge prompt per row under a unique version name (the name every
judgment records in judgment.prompt_version): its protocol, system and user messages, answer
prefix, character budgets, the version it was copied from, whether it is a read-only built-in,
a note and when it was made. The app stores its built-in templates there on first use; this
revision writes no rows (it imports nothing of the app's judges).

Revision ID: 0004_guidelines_and_prompts
Revises: 0003_judgment_run
Create Date: 2026-12-16
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_guidelines_and_prompts"
down_revision = "0003_judgment_run"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset") as batch:
        batch.add_column(sa.Column("guidelines", sa.Text(), nullable=True))
    op.create_table(
        "prompt_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("protocol", sa.String(40), nullable=False),
        sa.Column("system", sa.Text(), nullable=False),
        sa.Column("user", sa.Text(), nullable=False),
        sa.Column("answer_prefix", sa.Text(), nullable=False),
        sa.Column("budgets", sa.JSON(), nullable=False),
        sa.Column("parent_version", sa.String(40), nullable=True),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prompt_version"),
        sa.UniqueConstraint("version", name="uq_prompt_version_version"),
    )


def downgrade() -> None:
    op.drop_table("prompt_version")
    with op.batch_alter_table("dataset") as batch:
        batch.drop_column("guidelines")
