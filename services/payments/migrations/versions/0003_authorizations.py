"""payments: authorisations: how long a payment's hold lasts, and the provider's expiry of it

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("payments", sa.Column("authorized_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "payment_provider_ledger", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    # Batch mode, because SQLite cannot drop a column in place.
    with op.batch_alter_table("payment_provider_ledger") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("authorized_until")
