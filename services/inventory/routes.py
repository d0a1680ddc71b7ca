"""HTTP routes: the public catalog (products, stock) and the saga-only reservations."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from services.inventory import catalog, reservations
from services.inventory.models import InventoryProduct
from services.inventory.schemas import (
    Availability,
    ProductCreate,
    ProductOut,
    ReleaseOut,
    ReservationCreate,
    ReservationOut,
    StockUpdate,
)
from services.inventory.settings import Settings
from services.inventory.stock import StockLevel
from services.kit.db import SessionDep
from services.kit.errors import problem_responses
from services.kit.identity import AdminDep, ServiceDep
from services.kit.pagination import Page, PageDep


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(_settings)]

products_router = APIRouter(tags=["products"])
reservations_router = APIRouter(
    prefix="/reservations", tags=["reservations"], responses=problem_responses(401, 403)
)


def _product_out(product: InventoryProduct) -> ProductOut:
    return ProductOut(
        id=product.id,
        sku=product.sku,
        name=product.name,
        description=product.description,
        price_cents=product.price_cents,
        currency=product.currency,
        available=product.available,
    )


def _availability(level: StockLevel) -> Availability:
    return Availability(
        product_id=level.product_id, on_hand=level.on_hand, reserved=level.reserved, available=level.available
    )


@products_router.get(
    "/products", response_model=Page[ProductOut], summary="List products", responses=problem_responses(422)
)
async def list_products(session: SessionDep, page: PageDep) -> Page[ProductOut]:
    products, next_cursor = await catalog.list_products(session, limit=page.limit, cursor=page.cursor)
    return Page[ProductOut](items=[_product_out(p) for p in products], next_cursor=next_cursor)


@products_router.post(
    "/products",
    response_model=ProductOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a product (admin)",
    responses=problem_responses(401, 403, 409, 422),
)
async def create_product(body: ProductCreate, session: SessionDep, _: AdminDep) -> ProductOut:
    return _product_out(await catalog.create_product(session, body))


@products_router.get(
    "/products/{product_id}",
    response_model=ProductOut,
    summary="One product",
    responses=problem_responses(404),
)
async def get_product(product_id: uuid.UUID, session: SessionDep) -> ProductOut:
    return _product_out(await catalog.get_product(session, product_id))


@products_router.put(
    "/products/{product_id}/stock",
    response_model=Availability,
    summary="Set the on-hand stock (admin)",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def set_stock(
    product_id: uuid.UUID, body: StockUpdate, session: SessionDep, settings: SettingsDep, _: AdminDep
) -> Availability:
    level = await catalog.set_stock(
        session, product_id, body.stock, low_threshold=settings.low_stock_threshold
    )
    return _availability(level)


@products_router.get(
    "/products/{product_id}/availability",
    response_model=Availability,
    summary="Stock of one product",
    responses=problem_responses(404),
)
async def get_availability(product_id: uuid.UUID, session: SessionDep) -> Availability:
    return _availability(await catalog.stock_level(session, product_id))


@reservations_router.post(
    "",
    response_model=ReservationOut,
    status_code=status.HTTP_201_CREATED,
    summary="Reserve stock for every line of an order, or none (saga only)",
    responses={
        200: {"description": "This order id was already reserved (or committed): the stored reservation."},
        **problem_responses(409, 422),
    },
)
async def reserve(
    body: ReservationCreate, response: Response, session: SessionDep, settings: SettingsDep, _: ServiceDep
) -> ReservationOut:
    reservation, created = await reservations.reserve(
        session, body, low_threshold=settings.low_stock_threshold
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return reservation


@reservations_router.get(
    "/{order_id}",
    response_model=ReservationOut,
    summary="One order's reservation (saga only)",
    responses=problem_responses(404),
)
async def get_reservation(order_id: uuid.UUID, session: SessionDep, _: ServiceDep) -> ReservationOut:
    return await reservations.get_reservation(session, order_id)


@reservations_router.post(
    "/{order_id}/release",
    response_model=ReleaseOut,
    summary="Release an order's reservation; idempotent (saga only)",
    responses=problem_responses(409),
)
async def release(
    order_id: uuid.UUID, session: SessionDep, settings: SettingsDep, _: ServiceDep
) -> ReleaseOut:
    await reservations.release(session, order_id, low_threshold=settings.low_stock_threshold)
    return ReleaseOut(order_id=order_id, status="released")


@reservations_router.post(
    "/{order_id}/commit",
    response_model=ReservationOut,
    summary="Commit an order's reservation: its units leave the stock; idempotent (saga only)",
    responses=problem_responses(404, 409),
)
async def commit(
    order_id: uuid.UUID, session: SessionDep, settings: SettingsDep, _: ServiceDep
) -> ReservationOut:
    return await reservations.commit(session, order_id, low_threshold=settings.low_stock_threshold)
