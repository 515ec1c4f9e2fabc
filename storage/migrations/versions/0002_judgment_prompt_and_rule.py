"""Judgments keep the exact prompt the judge was given and the rule that combined their run.

`prompt_messages`: the chat messages sent to the judge (prefilled answer start included), so a
person can see what the judge saw, cuts and all. `aggregation`: how the run's samples and orders
were combined into one verdict (e.g. "mean-logodds", "vote"). Both stay NULL for older rows.

Revision ID: 0002_judgment_prompt_and_rule
Revises: 0001_initial
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_judgment_prompt_and_rule"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("judgment") as batch:
        batch.add_column(sa.Column("prompt_messages", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("aggregation", sa.String(20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("judgment") as batch:
        batch.drop_column("aggregation")
        batch.drop_column("prompt_messages")
