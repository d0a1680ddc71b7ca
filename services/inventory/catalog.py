"""The product catalog: creating, listing and reading products, and setting their on-hand stock."""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.inventory import stock
from services.inventory.models import InventoryProduct
from services.inventory.schemas import ProductCreate
from services.kit.errors import Problem
from services.kit.keyset import after, split_page
from services.kit.outbox import add_event

log = structlog.get_logger(__name__)


def product_not_found(product_id: uuid.UUID) -> Problem:
    return Problem(404, "product_not_found", f"Product {product_id} does not exist.")


async def create_product(session: AsyncSession, data: ProductCreate) -> InventoryProduct:
    product = InventoryProduct(
        sku=data.sku,
        name=data.name,
        description=data.description,
        price_cents=data.price_cents,
        currency=data.currency,
        on_hand=data.stock,
    )
    try:
        async with session.begin():
            session.add(product)
            # Flush now so that a duplicate SKU fails here, on the unique constraint.
            await session.flush()
            add_event(
                session,
                source=stock.EVENT_SOURCE,
                type="product.created",
                subject=str(product.id),
                data={
                    "product_id": str(product.id),
                    "sku": product.sku,
                    "name": product.name,
                    "price_cents": product.price_cents,
                    "currency": product.currency,
                    "on_hand": product.on_hand,
                },
            )
    except IntegrityError:
        raise Problem(409, "sku_taken", f"A product with SKU {data.sku!r} already exists.") from None
    log.info("product_created", product_id=str(product.id), sku=product.sku)
    return product


async def get_product(session: AsyncSession, product_id: uuid.UUID) -> InventoryProduct:
    async with session.begin():
        product = await session.get(InventoryProduct, product_id)
    if product is None:
        raise product_not_found(product_id)
    return product


async def list_products(
    session: AsyncSession, *, limit: int, cursor: str | None
) -> tuple[list[InventoryProduct], str | None]:
    """One page in (created_at, id) order, and the cursor of the next page if there is one."""
    created = col(InventoryProduct.created_at)
    ident = col(InventoryProduct.id)
    query = select(InventoryProduct).order_by(created, ident).limit(limit + 1)
    if cursor is not None:
        query = query.where(after(created, ident, cursor, descending=False))
    async with session.begin():
        rows = list((await session.exec(query)).all())
    return split_page(rows, limit)


async def set_stock(
    session: AsyncSession, product_id: uuid.UUID, on_hand: int, *, low_threshold: int
) -> stock.StockLevel:
    async with session.begin():
        # Locked so that the level before the change, which decides `stock.low`, stays true.
        current = (
            await session.exec(
                select(InventoryProduct).where(col(InventoryProduct.id) == product_id).with_for_update()
            )
        ).first()
        if current is None:
            raise product_not_found(product_id)
        available_before = current.available
        connection = await session.connection()
        level = await connection.run_sync(stock.set_on_hand, product_id, on_hand)
        if level is None:
            raise Problem(
                409,
                "stock_below_reserved",
                f"{current.reserved} units of this product are reserved; on-hand stock cannot go below that.",
                reserved=current.reserved,
            )
        stock.stage_stock_events(
            session, level, available_before=available_before, low_threshold=low_threshold
        )
    log.info("stock_set", product_id=str(product_id), on_hand=level.on_hand, reserved=level.reserved)
    return level


async def stock_level(session: AsyncSession, product_id: uuid.UUID) -> stock.StockLevel:
    product = await get_product(session, product_id)
    return stock.StockLevel(product.id, product.sku, product.name, product.on_hand, product.reserved)
