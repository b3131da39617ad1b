"""Per-clip test predictions of every trial and task (compact arrays); the precision and
attention kernel each trial ran with.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("classes", sa.Text(), nullable=False),
        sa.Column("clips", sa.LargeBinary(), nullable=False),
        sa.Column("groups", sa.LargeBinary(), nullable=False),
        sa.Column("folds", sa.LargeBinary(), nullable=False),
        sa.Column("truth", sa.LargeBinary(), nullable=False),
        sa.Column("pred", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["trial_id"], ["trials.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("trial_id", "task"),
    )
    op.create_index(op.f("ix_predictions_trial_id"), "predictions", ["trial_id"])
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("precision", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("attention", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("attention")
        batch.drop_column("precision")
    op.drop_index(op.f("ix_predictions_trial_id"), table_name="predictions")
    op.drop_table("predictions")
