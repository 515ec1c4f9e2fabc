"""A stored judgment run: one row per judge call on a pair, with the verdict its samples made.

`judgment_run` holds what used to be rebuilt from the samples wherever it was needed: protocol,
prompt version, judge version, k, swap, the aggregation rule, the aggregated verdict, the vote
split, P(verdict), the mean rule's margin, position consistency and the run's scores.
`judgment.run_id` points each sample at its run; `label.judgment_run_id` at the run a person
agreed with or corrected (the run of `label.judgment_id`).

Existing judgments are grouped into runs the way the app found a pair's latest run before this
revision (a run goes on while the judge version and protocol stay the same and no (sample index,
order) repeats), made exact by the order every version of the judge stored a run's samples in,
its plan: (0, original), (0, swapped), (1, original), ... A pair's rows, oldest first, stay in one
run while version and protocol match and each (sample index, swapped) comes after the one
before; so a one-order run stored after a swap run is a run of its own, where the old backward
walk would have taken the swap run's last sample into it. Each run is decided here, by
plain Python over the stored rows (no import of the app's judges or models, whose rules may
change after this revision is written):
- verdict: majority of the samples' stated verdicts ("none" does not vote), "tie" when the
  leaders draw, "none" when no sample stated one; aggregation "vote" (the rule that made it,
  whatever rule the rows were judged by: they keep it in judgment.aggregation);
- votes: every stated verdict counted, "none" included; verdict probability and margin NULL;
- position consistency (both orders present): each order's majority alone, True when they match,
  NULL when an order has no verdict; NULL without swap;
- scores: summed over the samples with scores (pointwise), their mean (other protocols);
- k: distinct sample indexes; swap: any sample in the swapped order; created_at: its first row.

Revision ID: 0003_judgment_run
Revises: 0002_judgment_prompt_and_rule
Create Date: 2026-12-09
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003_judgment_run"
down_revision = "0002_judgment_prompt_and_rule"
branch_labels = None
depends_on = None

TZ_DATETIME = sa.DateTime(timezone=True)
VOTE_ORDER = ("A", "B", "tie", "none")

# The tables as this revision knows them (never the app's models).
JUDGMENT = sa.table(
    "judgment",
    sa.column("id", sa.Integer),
    sa.column("pair_id", sa.Integer),
    sa.column("judge_version_id", sa.Integer),
    sa.column("protocol", sa.String),
    sa.column("prompt_version", sa.String),
    sa.column("verdict", sa.String),
    sa.column("score_a", sa.Float),
    sa.column("score_b", sa.Float),
    sa.column("swapped", sa.Boolean),
    sa.column("sample_index", sa.Integer),
    sa.column("created_at", TZ_DATETIME),
    sa.column("run_id", sa.Integer),
)
JUDGMENT_RUN = sa.table(
    "judgment_run",
    *(sa.column(name, sa.Integer) for name in ("id", "pair_id", "judge_version_id", "k")),
    *(sa.column(name, sa.String) for name in ("protocol", "prompt_version", "aggregation")),
    sa.column("verdict", sa.String),
    sa.column("votes", sa.JSON),
    sa.column("verdict_probability", sa.Float),
    sa.column("margin", sa.Float),
    sa.column("swap", sa.Boolean),
    sa.column("position_consistent", sa.Boolean),
    sa.column("score_a", sa.Float),
    sa.column("score_b", sa.Float),
    sa.column("created_at", TZ_DATETIME),
)


def upgrade() -> None:
    _create_judgment_run()
    with op.batch_alter_table("judgment") as batch:
        batch.add_column(sa.Column("run_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_judgment_run_id_judgment_run",
            "judgment_run",
            ["run_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index("ix_judgment_run", ["run_id"])
    with op.batch_alter_table("label") as batch:
        batch.add_column(sa.Column("judgment_run_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_label_judgment_run_id_judgment_run", "judgment_run", ["judgment_run_id"], ["id"]
        )
    _fill_runs(op.get_bind())


def _create_judgment_run() -> None:
    op.create_table(
        "judgment_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pair_id", sa.Integer(), nullable=False),
        sa.Column("judge_version_id", sa.Integer(), nullable=True),
        sa.Column("protocol", sa.String(40), nullable=False),
        sa.Column("prompt_version", sa.String(40), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("swap", sa.Boolean(), nullable=False),
        sa.Column("aggregation", sa.String(20), nullable=True),
        sa.Column("verdict", sa.String(10), nullable=False),
        sa.Column("votes", sa.JSON(), nullable=False),
        sa.Column("verdict_probability", sa.Float(), nullable=True),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("position_consistent", sa.Boolean(), nullable=True),
        sa.Column("score_a", sa.Float(), nullable=True),
        sa.Column("score_b", sa.Float(), nullable=True),
        sa.Column("created_at", TZ_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_judgment_run"),
        sa.ForeignKeyConstraint(
            ["pair_id"], ["pair.id"], name="fk_judgment_run_pair_id_pair", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["judge_version_id"],
            ["judge_version.id"],
            name="fk_judgment_run_judge_version_id_judge_version",
        ),
    )
    op.create_index("ix_judgment_run_pair", "judgment_run", ["pair_id", "id"])


# --- filling the runs of existing judgments ----------------------------------------------------


def _fill_runs(bind: sa.Connection) -> None:
    """Group every existing judgment into a run, store the runs, point judgments and labels."""
    columns = [c for c in JUDGMENT.c if c.name != "run_id"]
    ordered = sa.select(*columns).order_by(JUDGMENT.c.pair_id, JUDGMENT.c.id)
    rows = [dict(r._mapping) for r in bind.execute(ordered)]
    runs = [
        run
        for _, pair_rows in itertools.groupby(rows, key=lambda r: r["pair_id"])
        for run in _walk_runs(list(pair_rows))
    ]
    runs.sort(key=lambda run: run[0]["id"])  # run ids in the order the runs were made
    if not runs:
        return
    # The table was created above and is empty: ids are given here, so the samples can be
    # pointed at their runs with one executemany each.
    bind.execute(JUDGMENT_RUN.insert(), [_run_values(i, run) for i, run in enumerate(runs, 1)])
    bind.execute(
        sa.update(JUDGMENT)
        .where(JUDGMENT.c.id == sa.bindparam("judgment_id"))
        .values(run_id=sa.bindparam("new_run_id")),
        [
            {"judgment_id": row["id"], "new_run_id": run_id}
            for run_id, run in enumerate(runs, 1)
            for row in run
        ],
    )
    if bind.dialect.name == "postgresql":  # the id sequence must start after the given ids
        bind.execute(
            sa.text("SELECT setval(pg_get_serial_sequence('judgment_run', 'id'), :last)"),
            {"last": len(runs)},
        )
    bind.execute(
        sa.text(
            "UPDATE label SET judgment_run_id = "
            "(SELECT judgment.run_id FROM judgment WHERE judgment.id = label.judgment_id) "
            "WHERE label.judgment_id IS NOT NULL"
        )
    )


def _walk_runs(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """One pair's rows (oldest first) as runs (each oldest first): a run goes on while version
    and protocol match and (sample index, swapped) moves forward in the judge's plan order."""
    runs: list[list[dict[str, Any]]] = []
    for row in rows:
        last = runs[-1][-1] if runs else None
        goes_on = (
            last is not None
            and row["judge_version_id"] == last["judge_version_id"]
            and row["protocol"] == last["protocol"]
            and _plan_key(row) > _plan_key(last)
        )
        if goes_on:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def _plan_key(row: dict[str, Any]) -> tuple[int, bool]:
    return (row["sample_index"], bool(row["swapped"]))


def _run_values(run_id: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    first = rows[0]
    score_a, score_b = _scores(rows)
    counts = Counter(r["verdict"] for r in rows)
    return {
        "id": run_id,
        "pair_id": first["pair_id"],
        "judge_version_id": first["judge_version_id"],
        "protocol": first["protocol"],
        "prompt_version": first["prompt_version"],
        "k": len({r["sample_index"] for r in rows}),
        "swap": any(bool(r["swapped"]) for r in rows),
        "aggregation": "vote",
        "verdict": _majority([r["verdict"] for r in rows]),
        "votes": {v: counts[v] for v in (*VOTE_ORDER, *sorted(counts)) if counts.get(v)},
        "verdict_probability": None,
        "margin": None,
        "position_consistent": _consistent(rows),
        "score_a": score_a,
        "score_b": score_b,
        "created_at": first["created_at"],
    }


def _majority(verdicts: list[str]) -> str:
    """The most stated verdict; "none" does not vote; leaders that draw make a tie."""
    counts = Counter(v for v in verdicts if v and v != "none")
    if not counts:
        return "none"
    top = max(counts.values())
    leaders = [v for v, c in counts.items() if c == top]
    return leaders[0] if len(leaders) == 1 else "tie"


def _consistent(rows: list[dict[str, Any]]) -> bool | None:
    original = [r["verdict"] for r in rows if not r["swapped"]]
    flipped = [r["verdict"] for r in rows if r["swapped"]]
    if not original or not flipped:
        return None
    first, second = _majority(original), _majority(flipped)
    return None if "none" in (first, second) else first == second


def _scores(rows: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    pairs = [(r["score_a"], r["score_b"]) for r in rows]
    scored = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not scored:
        return None, None
    a, b = sum(s[0] for s in scored), sum(s[1] for s in scored)
    if rows[0]["protocol"] != "pointwise":
        a, b = a / len(scored), b / len(scored)
    return a, b


def downgrade() -> None:
    with op.batch_alter_table("label") as batch:
        batch.drop_constraint("fk_label_judgment_run_id_judgment_run", type_="foreignkey")
        batch.drop_column("judgment_run_id")
    with op.batch_alter_table("judgment") as batch:
        batch.drop_index("ix_judgment_run")
        batch.drop_constraint("fk_judgment_run_id_judgment_run", type_="foreignkey")
        batch.drop_column("run_id")
    op.drop_index("ix_judgment_run_pair", table_name="judgment_run")
    op.drop_table("judgment_run")
