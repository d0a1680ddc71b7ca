"""Inventory: products, reservations and their lines, and the outbox.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.kit.outbox_schema import create_outbox_v1, drop_outbox_v1

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inventory_products",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=5000), nullable=False),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sku", name="uq_inventory_products_sku"),
        sa.CheckConstraint("on_hand >= 0", name="ck_inventory_products_on_hand_nonnegative"),
        sa.CheckConstraint("reserved >= 0", name="ck_inventory_products_reserved_nonnegative"),
        sa.CheckConstraint("reserved <= on_hand", name="ck_inventory_products_reserved_within_on_hand"),
        sa.CheckConstraint("price_cents >= 0", name="ck_inventory_products_price_nonnegative"),
    )
    op.create_index("ix_inventory_products_created_at_id", "inventory_products", ["created_at", "id"])

    op.create_table(
        "inventory_reservations",
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("order_id"),
        sa.CheckConstraint(
            "status IN ('reserved', 'released', 'committed')", name="ck_inventory_reservations_status"
        ),
    )

    op.create_table(
        "inventory_reservation_lines",
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("product_id", sa.Uuid(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price_cents", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["inventory_reservations.order_id"]),
        sa.ForeignKeyConstraint(["product_id"], ["inventory_products.id"]),
        sa.PrimaryKeyConstraint("order_id", "product_id"),
    )

    create_outbox_v1()


def downgrade() -> None:
    drop_outbox_v1()
    op.drop_table("inventory_reservation_lines")
    op.drop_table("inventory_reservations")
    op.drop_index("ix_inventory_products_created_at_id", table_name="inventory_products")
    op.drop_table("inventory_products")
