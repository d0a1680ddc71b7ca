"""The outbox table's schema steps, shipped by the kit and called from each service's migrations.

Every service owns an `outbox` table of the same shape, so its migrations call these steps instead
of repeating them. Each step is frozen once released: a later change to the table is a new step,
called from a new revision, never an edit of an old one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def create_outbox_v1() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_outbox_unpublished", "outbox", ["published_at", "created_at"], unique=False)


def drop_outbox_v1() -> None:
    op.drop_index("ix_outbox_unpublished", table_name="outbox")
    op.drop_table("outbox")


def add_last_error_v2() -> None:
    """The relay's last publish error, so that a row it cannot publish says why."""
    op.add_column("outbox", sa.Column("last_error", sa.String(length=500), nullable=True))


def drop_last_error_v2() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("last_error")
