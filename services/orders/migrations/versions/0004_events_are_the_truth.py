"""orders: the event log is the truth, the `orders` table its projection

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 01:45:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite's foreign keys of 0001 are unnamed; batch mode finds them under this convention.
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_REFERENCING = ("order_events", "order_commands")

_orders = sa.table(
    "orders",
    sa.column("id", sa.Uuid()),
    sa.column("idempotency_key", sa.String()),
    sa.column("request_hash", sa.String()),
)
_events = sa.table(
    "order_events",
    sa.column("id", sa.Uuid()),
    sa.column("order_id", sa.Uuid()),
    sa.column("version", sa.Integer()),
    sa.column("data", sa.JSON()),
)


def upgrade() -> None:
    op.create_table(
        "order_saga_starts",
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("order_id"),
    )
    op.execute(
        "INSERT INTO order_saga_starts (order_id, started_at) "
        "SELECT id, saga_started_at FROM orders WHERE saga_started_at IS NOT NULL"
    )
    _backfill_events()
    # The truth must not depend on its projection: a rebuild deletes every row of `orders`.
    bind = op.get_bind()
    for table in _REFERENCING:
        for fk in sa.inspect(bind).get_foreign_keys(table):
            name = fk["name"] or f"fk_{table}_order_id_orders"
            with op.batch_alter_table(table, naming_convention=_NAMING) as batch:
                batch.drop_constraint(name, type_="foreignkey")


def _backfill_events() -> None:
    """Give the events of orders written before this revision what the projection alone held."""
    bind = op.get_bind()
    # The creation's idempotency key and request fingerprint now travel in its event.
    keyed = bind.execute(
        sa.select(_orders.c.id, _orders.c.idempotency_key, _orders.c.request_hash).where(
            sa.or_(_orders.c.idempotency_key.is_not(None), _orders.c.request_hash.is_not(None))
        )
    ).all()
    for order_id, key, request_hash in keyed:
        created = bind.execute(
            sa.select(_events.c.id, _events.c.data).where(
                _events.c.order_id == order_id, _events.c.version == 1
            )
        ).first()
        if created is not None:
            data = {**created.data, "idempotency_key": key, "request_hash": request_hash}
            bind.execute(sa.update(_events).where(_events.c.id == created.id).values(data=data))
    # The old write path read the clock twice, once for the row and once for its event (microseconds
    # apart); the row's times are the ones every reader has seen, so the events take them.
    op.execute(
        "UPDATE order_events SET occurred_at = "
        "(SELECT o.created_at FROM orders o WHERE o.id = order_events.order_id) "
        "WHERE version = 1 AND EXISTS (SELECT 1 FROM orders o WHERE o.id = order_events.order_id)"
    )
    op.execute(
        "UPDATE order_events SET occurred_at = "
        "(SELECT o.updated_at FROM orders o WHERE o.id = order_events.order_id) "
        "WHERE EXISTS (SELECT 1 FROM orders o WHERE o.id = order_events.order_id "
        "AND o.version = order_events.version)"
    )


def downgrade() -> None:
    for table in _REFERENCING:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(f"fk_{table}_order_id_orders", "orders", ["order_id"], ["id"])
    op.drop_table("order_saga_starts")
