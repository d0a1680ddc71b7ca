"""outbox: last publish error, for the relay

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00

"""

from collections.abc import Sequence

from services.kit.outbox_schema import add_last_error_v2, drop_last_error_v2

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_last_error_v2()


def downgrade() -> None:
    drop_last_error_v2()
