"""orders: indexes for the admin listing, newest first, all orders and by status

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 18:30:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # GET /orders pages over (created_at, id) newest first, with or without a status filter: an
    # index scan in that order reads one page's rows instead of sorting the whole table.
    op.create_index("ix_orders_created", "orders", ["created_at", "id"])
    op.create_index("ix_orders_status_created", "orders", ["status", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_orders_status_created", table_name="orders")
    op.drop_index("ix_orders_created", table_name="orders")
