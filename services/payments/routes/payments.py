"""Reading payments: by id (owner, admin, saga), their transactions, and an order's payments (audit)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from sqlmodel import col, select

from services.kit.db import SessionDep
from services.kit.errors import Problem, problem_responses
from services.kit.identity import AdminDep, CallerDep, Identity
from services.kit.keyset import after, cursor_for
from services.kit.pagination import Page, PageDep
from services.payments.models import Payment, PaymentTransaction
from services.payments.schemas import PaymentOut, TransactionList, TransactionOut

router = APIRouter(tags=["payments"])


def _is_bookkeeping(payment: Payment) -> bool:
    """A charge still in flight, or a placeholder void (its key voided before anything ran).

    Neither is a payment to its customer; a voided authorisation of an order is, and stays visible.
    """
    return payment.status == "pending" or (payment.status == "voided" and payment.order_id is None)


async def _visible_payment(session: SessionDep, payment_id: uuid.UUID, caller: Identity) -> Payment:
    payment = await session.get(Payment, payment_id)
    visible = payment is not None and (
        caller.is_privileged or (payment.user_id == caller.user_id and not _is_bookkeeping(payment))
    )
    if payment is None or not visible:
        raise Problem(404, "payment_not_found", "No such payment.")
    return payment


@router.get(
    "/payments/{payment_id}",
    response_model=PaymentOut,
    summary="One payment",
    responses=problem_responses(401, 404, 422),
)
async def get_payment(payment_id: uuid.UUID, caller: CallerDep, session: SessionDep) -> Payment:
    return await _visible_payment(session, payment_id, caller)


@router.get(
    "/payments/{payment_id}/transactions",
    response_model=TransactionList,
    summary="A payment's transactions: charge or authorisation, capture, void, decline, refunds",
    responses=problem_responses(401, 404, 422),
)
async def list_transactions(payment_id: uuid.UUID, caller: CallerDep, session: SessionDep) -> TransactionList:
    await _visible_payment(session, payment_id, caller)
    statement = (
        select(PaymentTransaction)
        .where(PaymentTransaction.payment_id == payment_id)
        .order_by(col(PaymentTransaction.created_at), col(PaymentTransaction.id))
    )
    rows = (await session.exec(statement)).all()
    return TransactionList(items=[TransactionOut.model_validate(row, from_attributes=True) for row in rows])


@router.get(
    "/orders/{order_id}/payments",
    response_model=Page[PaymentOut],
    summary="Every payment recorded for an order, oldest first (admin and saga: audits)",
    responses=problem_responses(401, 403, 422),
)
async def list_order_payments(
    order_id: uuid.UUID, _: AdminDep, session: SessionDep, page: PageDep
) -> Page[PaymentOut]:
    statement = select(Payment).where(Payment.order_id == order_id)
    if page.cursor is not None:
        statement = statement.where(after(Payment.created_at, Payment.id, page.cursor, descending=False))
    statement = statement.order_by(col(Payment.created_at), col(Payment.id)).limit(page.limit + 1)
    rows = list((await session.exec(statement)).all())
    items = rows[: page.limit]
    next_cursor = cursor_for(items[-1].created_at, items[-1].id) if len(rows) > page.limit else None
    return Page[PaymentOut](
        items=[PaymentOut.model_validate(row, from_attributes=True) for row in items], next_cursor=next_cursor
    )
