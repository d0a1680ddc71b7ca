"""Payment methods: cards exchanged for provider tokens; the number itself is never kept."""

from __future__ import annotations

import uuid

import structlog
from fastapi import APIRouter
from sqlmodel import col, select

from services.kit.db import SessionDep
from services.kit.errors import problem_responses
from services.kit.identity import CallerDep, CustomerDep, require_owner
from services.kit.keyset import after, cursor_for
from services.kit.models import utcnow
from services.kit.outbox import add_event
from services.kit.pagination import Page, PageDep
from services.payments.cards import card_brand, ensure_not_expired, normalise_card_number
from services.payments.deps import ProviderDep
from services.payments.models import PaymentMethod
from services.payments.schemas import PaymentMethodCreate, PaymentMethodOut

router = APIRouter(tags=["payment methods"])
log = structlog.get_logger(__name__)


@router.post(
    "/payment-methods",
    status_code=201,
    response_model=PaymentMethodOut,
    summary="Add a card (tokenised)",
    responses=problem_responses(400, 401, 403, 422),
)
async def add_payment_method(
    body: PaymentMethodCreate, caller: CustomerDep, session: SessionDep, provider: ProviderDep
) -> PaymentMethod:
    digits = normalise_card_number(body.card_number)
    ensure_not_expired(body.exp_month, body.exp_year, utcnow())
    assert caller.user_id is not None
    async with session.begin():
        method = PaymentMethod(
            user_id=caller.user_id,
            brand=card_brand(digits),
            last4=digits[-4:],
            exp_month=body.exp_month,
            exp_year=body.exp_year,
            token=provider.tokenise(session, digits),
        )
        session.add(method)
        await session.flush()
        add_event(
            session,
            source="payments",
            type="payment_method.created",
            subject=str(method.id),
            data={
                "payment_method_id": str(method.id),
                "user_id": str(method.user_id),
                "brand": method.brand,
                "last4": method.last4,
            },
        )
    log.info("payment_method_added", payment_method_id=str(method.id), brand=method.brand)
    return method


@router.get(
    "/users/{user_id}/payment-methods",
    response_model=Page[PaymentMethodOut],
    summary="A user's payment methods, newest first",
    responses=problem_responses(401, 404, 422),
)
async def list_payment_methods(
    user_id: uuid.UUID, caller: CallerDep, session: SessionDep, page: PageDep
) -> Page[PaymentMethodOut]:
    require_owner(caller, user_id)
    statement = select(PaymentMethod).where(PaymentMethod.user_id == user_id)
    if page.cursor is not None:
        statement = statement.where(
            after(PaymentMethod.created_at, PaymentMethod.id, page.cursor, descending=True)
        )
    statement = statement.order_by(
        col(PaymentMethod.created_at).desc(),
        col(PaymentMethod.id).desc(),
    ).limit(page.limit + 1)
    rows = list((await session.exec(statement)).all())
    items = rows[: page.limit]
    next_cursor = cursor_for(items[-1].created_at, items[-1].id) if len(rows) > page.limit else None
    return Page[PaymentMethodOut](
        items=[PaymentMethodOut.model_validate(row, from_attributes=True) for row in items],
        next_cursor=next_cursor,
    )
