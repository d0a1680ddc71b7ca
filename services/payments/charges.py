"""Charges, authorisations and refunds: idempotent by key, with provider calls outside any transaction.

A charge or an authorisation first records a `pending` payment holding a short lease, then calls the
provider, then records the outcome. The unique key decides which request owns a payment; the lease
decides which request may talk to the provider for it right now; conditional updates make every
outcome land once.

An authorisation only holds the amount (`authorized`); its capture later takes exactly that amount
(`captured`), or its void releases it (`voided`). A capture and a void of one key are ordered by the
provider's row lock: whichever the provider saw first wins, and the other one's record of it is a
conditional update from `authorized` that matches nothing. A void that finds the capture won refunds
it in full, so the key never keeps the money.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from cachetools import LRUCache
from fastapi import Response
from sqlalchemy import Table, bindparam, case, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.business import PAYMENTS_CAPTURED_CENTS, PAYMENTS_REFUNDED_CENTS
from services.kit.errors import Problem
from services.kit.models import new_id, utcnow
from services.kit.outbox import add_event
from services.payments.models import KEY_LENGTH, Payment, PaymentMethod, PaymentTransaction
from services.payments.provider import (
    AnyRow,
    Authorized,
    Captured,
    CardProvider,
    Declined,
    Expired,
    NotCharged,
    Transient,
    Voided,
)
from services.payments.schemas import ChargeCreate

log = structlog.get_logger(__name__)

SOURCE = "payments"
SETTLED_CAPTURE = ("captured", "refunded")
# What a replay of a charge or authorisation key answers with 200 (a charge is never `authorized`).
SUCCEEDED = ("authorized", *SETTLED_CAPTURE)
RETRY_AFTER = {"Retry-After": "1"}
DEFAULT_AUTHORIZATION_VALIDITY_SECONDS = 7 * 24 * 3600.0

# A payment method is never changed or deleted: its owner and token, once read, stay true.
MethodTokens = LRUCache[uuid.UUID, tuple[uuid.UUID, str]]
METHOD_TOKENS_CACHED = 10_000

PAYMENTS: Table = Payment.__table__  # type: ignore[attr-defined]
TRANSACTIONS: Table = PaymentTransaction.__table__  # type: ignore[attr-defined]
METHODS: Table = PaymentMethod.__table__  # type: ignore[attr-defined]


@dataclass(slots=True)
class PaymentRecord:
    """A payments row as this request wrote or read it (Core rows, not ORM objects: no unit of work)."""

    id: uuid.UUID
    idempotency_key: str
    request_hash: str | None
    order_id: uuid.UUID | None
    user_id: uuid.UUID | None
    payment_method_id: uuid.UUID | None
    amount_cents: int | None
    currency: str | None
    status: str
    refunded_cents: int
    decline_code: str | None
    provider_ref: str | None
    authorized_until: datetime | None
    lease_owner: uuid.UUID | None
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: AnyRow) -> PaymentRecord:
        return cls(**row._mapping)

    @classmethod
    def placeholder_void(cls, key: str, now: datetime) -> PaymentRecord:
        """The row that holds a key voided before anything ran under it."""
        return cls(
            new_id(), key, None, None, None, None, None, None, "voided", 0, None, None, None, None, None,
            now, now,
        )  # fmt: skip


# Bind names of WHERE clauses start with b_, apart from the column names a statement's SET takes
# from the parameters (Core UPDATE without .values() sets exactly the columns passed).
_PAYMENT_BY_KEY = select(PAYMENTS).where(PAYMENTS.c.idempotency_key == bindparam("b_key"))
_PAYMENT_BY_ID = select(PAYMENTS).where(PAYMENTS.c.id == bindparam("b_id"))
_METHOD_OWNER_AND_TOKEN = select(METHODS.c.user_id, METHODS.c.token).where(
    METHODS.c.id == bindparam("b_method_id")
)
_INSERT_PAYMENT = insert(PAYMENTS)
_INSERT_TRANSACTION = insert(TRANSACTIONS)
_REFUND_BY_KEY = select(TRANSACTIONS.c.payment_id, TRANSACTIONS.c.request_hash).where(
    TRANSACTIONS.c.idempotency_key == bindparam("b_key")
)
# The conditional update every outcome lands with: it matches only from the status it expects.
_MOVE = update(PAYMENTS).where(
    PAYMENTS.c.id == bindparam("b_id"), PAYMENTS.c.status == bindparam("b_from_status")
)
_TAKE_LEASE = update(PAYMENTS).where(
    PAYMENTS.c.id == bindparam("b_id"),
    PAYMENTS.c.status == "pending",
    or_(PAYMENTS.c.lease_until.is_(None), PAYMENTS.c.lease_until < bindparam("b_now")),
)
_OWNED_PENDING = update(PAYMENTS).where(
    PAYMENTS.c.id == bindparam("b_id"),
    PAYMENTS.c.status == "pending",
    PAYMENTS.c.lease_owner == bindparam("b_owner"),
)
_NEW_REFUNDED_TOTAL = PAYMENTS.c.refunded_cents + bindparam("b_amount")
# Never refunds past the capture; the row comes back as refunded, for the event and the answer.
_APPLY_REFUND = (
    update(PAYMENTS)
    .where(
        PAYMENTS.c.id == bindparam("b_id"),
        PAYMENTS.c.status.in_(SETTLED_CAPTURE),
        PAYMENTS.c.amount_cents >= _NEW_REFUNDED_TOTAL,
    )
    .values(
        refunded_cents=_NEW_REFUNDED_TOTAL,
        status=case((PAYMENTS.c.amount_cents == _NEW_REFUNDED_TOTAL, "refunded"), else_=PAYMENTS.c.status),
        updated_at=bindparam("b_now"),
    )
    .returning(*PAYMENTS.c)
)


@dataclass(frozen=True)
class ChargeResult:
    payment: PaymentRecord
    created: bool

    def answered(self, response: Response) -> PaymentRecord:
        """The payment, with 200 instead of the route's 201 when its key had already been settled."""
        if not self.created:
            response.status_code = 200
        return self.payment


class _RefundTooLarge(Exception):
    """Rolls back a refund whose conditional update found too little left to refund."""


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _body_hash(request: ChargeCreate, *, authorizing: bool) -> str:
    """A charge's hash is that of its body; an authorisation's differs, so a key serves only one of them."""
    body = request.model_dump(mode="json")
    return request_hash({**body, "operation": "authorization"} if authorizing else body)


def charge_in_progress() -> Problem:
    return Problem(
        503,
        "charge_in_progress",
        "Another request is processing this charge; retry shortly.",
        headers=RETRY_AFTER,
    )


class PaymentLedger:
    """Charge, authorisation and refund flows over one request's session and the provider.

    Every statement is Core. A transaction that stages an outbox event runs on the session (whose
    commit writes the events staged with `add_event`); the others run on an engine connection, without
    the session's bookkeeping. Answers are built from what was written, not read back.
    """

    def __init__(
        self,
        session: AsyncSession,
        engine: AsyncEngine,
        provider: CardProvider,
        *,
        method_tokens: MethodTokens,
        lease_seconds: float,
        authorization_validity_seconds: float = DEFAULT_AUTHORIZATION_VALIDITY_SECONDS,
    ) -> None:
        self._session = session
        self._engine = engine
        self._provider = provider
        self._method_tokens = method_tokens
        self._lease = timedelta(seconds=lease_seconds)
        self._validity = timedelta(seconds=authorization_validity_seconds)

    async def _connection(self) -> AsyncConnection:
        return await self._session.connection()

    # -- charges and authorisations ------------------------------------------------------------

    async def charge(self, key: str, request: ChargeCreate) -> ChargeResult:
        """Authorise and capture at once."""
        return await self._start(key, request, authorizing=False)

    async def authorize(self, key: str, request: ChargeCreate) -> ChargeResult:
        """Hold the amount until `capture` takes it or `void` releases it."""
        return await self._start(key, request, authorizing=True)

    async def _start(self, key: str, request: ChargeCreate, *, authorizing: bool) -> ChargeResult:
        body_hash = _body_hash(request, authorizing=authorizing)
        owner = new_id()
        now = utcnow()
        payment = PaymentRecord(
            id=new_id(),
            idempotency_key=key,
            request_hash=body_hash,
            order_id=request.order_id,
            user_id=request.user_id,
            payment_method_id=request.payment_method_id,
            amount_cents=request.amount_cents,
            currency=request.currency,
            status="pending",
            refunded_cents=0,
            decline_code=None,
            provider_ref=None,
            authorized_until=None,
            lease_owner=owner,
            lease_until=now + self._lease,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._engine.begin() as conn:
                await conn.execute(_INSERT_PAYMENT, asdict(payment))
                token = await self._method_token(conn, request.payment_method_id, request.user_id)
                if token is None:
                    # Raising rolls the pending row back, so a retry with this key decides afresh.
                    raise Problem(
                        422, "invalid_payment_method", "The payment method is unknown or not this user's."
                    )
        except IntegrityError:
            resumed = await self._resume_charge(key, body_hash, owner)
            if isinstance(resumed, ChargeResult):
                return resumed
            payment, token = resumed
        return await self._call_provider(payment, token, owner, authorizing=authorizing)

    async def _resume_charge(
        self, key: str, body_hash: str, owner: uuid.UUID
    ) -> ChargeResult | tuple[PaymentRecord, str]:
        """The key exists: replay its answer, or take over a pending charge whose lease ran out."""
        existing = await self._by_key(key)
        if existing is None:  # payments are never deleted; a vanished row means a broken invariant
            raise charge_in_progress()
        answer = _settled_answer(existing, body_hash)
        if answer is not None:
            return answer
        if not await self._take_lease(existing.id, owner):
            existing = await self._reload(existing.id)
            answer = _settled_answer(existing, body_hash)
            if answer is not None:
                return answer
            raise charge_in_progress()
        async with self._engine.begin() as conn:
            payment = await self._reload(existing.id, conn)
            assert payment.payment_method_id is not None and payment.user_id is not None
            token = await self._method_token(conn, payment.payment_method_id, payment.user_id)
        if token is None:
            raise LookupError("payment method of a pending payment vanished")
        log.info("charge_lease_taken_over", charge_key=key, payment_id=str(payment.id))
        return payment, token

    async def _call_provider(
        self, payment: PaymentRecord, token: str, owner: uuid.UUID, *, authorizing: bool
    ) -> ChargeResult:
        assert payment.amount_cents is not None
        assert payment.currency is not None
        key = payment.idempotency_key
        outcome: Authorized | Captured | Declined | Transient | Voided
        if authorizing:
            valid_until = utcnow() + self._validity
            outcome = await self._provider.authorize(
                key, token, payment.amount_cents, payment.currency, valid_until
            )
        else:
            outcome = await self._provider.charge(key, token, payment.amount_cents, payment.currency)
        if isinstance(outcome, Transient):
            await self._release_lease(payment.id, owner)
            log.warning("charge_provider_unavailable", charge_key=key, reason=outcome.reason)
            held = "held" if authorizing else "captured"
            raise Problem(
                503,
                "provider_unavailable",
                f"The payment provider is unavailable; nothing was {held}. Retry with the same key.",
                headers=RETRY_AFTER,
            )
        if isinstance(outcome, Voided):
            raise _voided_problem()
        settled: PaymentRecord | None
        if isinstance(outcome, Declined):
            settled = await self._record_decline(payment, outcome.decline_code)
        elif isinstance(outcome, Authorized):
            settled = await self._record_authorization(payment, outcome)
        else:
            settled = await self._record_capture(payment, outcome.provider_ref)
        if settled is None:  # another request recorded the outcome: read what it wrote
            payment = await self._reload(payment.id)
        else:
            payment = settled
        # Raises the 402 of a decline; an outcome recorded by someone else replays as 200.
        answer = _settled_answer(payment, payment.request_hash or "")
        if answer is None:
            raise charge_in_progress()
        return ChargeResult(payment, created=settled is not None)

    async def _record_capture(
        self,
        payment: PaymentRecord,
        provider_ref: str,
        *,
        from_status: str = "pending",
        kind: str = "charge",
    ) -> PaymentRecord | None:
        """A charge's capture (from `pending`), or an authorisation's (from `authorized`, kind `capture`)."""
        settled = await self._settle(
            payment,
            from_status=from_status,
            status="captured",
            kind=kind,
            columns={"provider_ref": provider_ref},
            event_data={"payment_method_id": str(payment.payment_method_id)},
        )
        if settled is not None:
            _log_outcome("payment_captured", payment)
            PAYMENTS_CAPTURED_CENTS.inc(payment.amount_cents or 0)
        return settled

    async def _record_authorization(
        self, payment: PaymentRecord, outcome: Authorized
    ) -> PaymentRecord | None:
        until = (outcome.expires_at or utcnow() + self._validity).astimezone(UTC)
        settled = await self._settle(
            payment,
            status="authorized",
            kind="authorization",
            columns={"provider_ref": outcome.provider_ref, "authorized_until": until},
            event_data={
                "payment_method_id": str(payment.payment_method_id),
                "authorized_until": _timestamp(until),
            },
        )
        if settled is not None:
            _log_outcome("payment_authorized", payment)
        return settled

    async def _record_decline(self, payment: PaymentRecord, decline_code: str) -> PaymentRecord | None:
        settled = await self._settle(
            payment,
            status="declined",
            kind="decline",
            columns={"decline_code": decline_code},
            event_data={"decline_code": decline_code},
        )
        if settled is not None:
            _log_outcome("payment_declined", payment, decline_code=decline_code)
        return settled

    async def _settle(
        self,
        payment: PaymentRecord,
        *,
        status: str,
        kind: str,
        columns: dict[str, Any],
        event_data: dict[str, Any],
        from_status: str = "pending",
    ) -> PaymentRecord | None:
        """Move a payment from `from_status` to `status`, with its transaction row and event, exactly once.

        The payment as written, or None when another request moved it first (the conditional update
        matched nothing).
        """
        now = utcnow()
        written = {"status": status, "lease_owner": None, "lease_until": None, "updated_at": now, **columns}
        assert payment.amount_cents is not None
        async with self._session.begin():
            conn = await self._connection()
            result = await conn.execute(_MOVE, {"b_id": payment.id, "b_from_status": from_status, **written})
            if result.rowcount != 1:
                return None
            await conn.execute(
                _INSERT_TRANSACTION,
                {
                    "id": new_id(),
                    "payment_id": payment.id,
                    "kind": kind,
                    "amount_cents": payment.amount_cents,
                    "idempotency_key": None,
                    "request_hash": None,
                    "created_at": now,
                },
            )
            add_event(
                self._session,
                source=SOURCE,
                type=f"payment.{status}",
                subject=str(payment.id),
                data={**_event_base(payment), **event_data},
            )
        # The row now holds exactly what this update wrote: the answer needs no reading back.
        return replace(payment, **written)

    # -- captures and voids of authorisations --------------------------------------------------

    async def capture(self, key: str) -> PaymentRecord:
        """Capture exactly the authorised amount, once; a repeat answers the same captured payment."""
        payment = await self._by_key(key)
        if payment is None:
            raise _authorization_not_found()
        if payment.status == "authorized":
            # The provider decides, under its row lock, whether a void (or the expiry) came first.
            outcome = await self._provider.capture(key, utcnow())
            if isinstance(outcome, Captured):
                settled = await self._record_capture(
                    payment, outcome.provider_ref, from_status="authorized", kind="capture"
                )
            elif isinstance(outcome, Voided):
                settled = await self._record_authorization_void(payment)  # a void whose answer was lost
            elif isinstance(outcome, Expired):
                log.info("authorization_expired", charge_key=key, payment_id=str(payment.id))
                raise _authorization_expired()
            else:
                raise LookupError("the provider holds no authorisation for an authorized payment")
            if settled is None:  # another request recorded the outcome first: read what it wrote
                payment = await self._reload(payment.id)
            else:
                payment = settled
        return _capture_answer(payment)

    async def void(self, key: str) -> PaymentRecord:
        """Release whatever the key holds: void an authorisation, or refund a capture in full.

        An unseen key gets a placeholder void, so a late authorisation or charge with it is refused.
        """
        payment = await self._by_key(key)
        if payment is None:
            payment = await self._void_unseen_charge(key)
        if payment.status == "pending":
            payment = await self._void_pending_charge(payment)
        if payment.status == "authorized":
            payment = await self._void_authorization(payment)
        if payment.status == "captured":
            # A capture landed (perhaps late, its saga gone): the void must not let it keep the money.
            refund_hash = request_hash({"charge_key": key, "amount_cents": None})
            payment = await self._refund_capture(payment, _void_refund_key(key), refund_hash, None)
        return payment  # voided, refunded or declined: nothing is held any more

    async def _void_authorization(self, payment: PaymentRecord) -> PaymentRecord:
        outcome = await self._provider.void(payment.idempotency_key)
        settled: PaymentRecord | None
        if isinstance(outcome, Captured):
            # The capture won the provider's lock; record it (if its request did not), then refund it.
            settled = await self._record_capture(
                payment, outcome.provider_ref, from_status="authorized", kind="capture"
            )
        elif isinstance(outcome, NotCharged | Voided):
            settled = await self._record_authorization_void(payment)
        else:  # an authorized payment was never declined, and void() never answers a transient failure
            raise TypeError(f"unexpected void outcome {outcome!r}")
        if settled is not None:
            return settled
        return await self._reload(payment.id)

    async def _record_authorization_void(self, payment: PaymentRecord) -> PaymentRecord | None:
        settled = await self._settle(
            payment, from_status="authorized", status="voided", kind="void", columns={}, event_data={}
        )
        if settled is not None:
            log.info("authorization_voided", payment_id=str(payment.id), order_id=str(payment.order_id))
        return settled

    # -- refunds -------------------------------------------------------------------------------

    async def refund(self, charge_key: str, refund_key: str, amount_cents: int | None) -> PaymentRecord:
        refund_hash = request_hash({"charge_key": charge_key, "amount_cents": amount_cents})
        async with self._engine.begin() as conn:
            previous = await self._refund_by_key(refund_key, conn)
            if previous is not None:
                return await self._replayed_refund(previous, refund_hash, conn)
            payment = await self._by_key(charge_key, conn)
        if payment is None:
            payment = await self._void_unseen_charge(charge_key)
        if payment.status == "pending":
            payment = await self._void_pending_charge(payment)
        if payment.status not in SETTLED_CAPTURE:
            return payment  # voided or declined: nothing was captured, so nothing to refund
        return await self._refund_capture(payment, refund_key, refund_hash, amount_cents)

    async def _replayed_refund(
        self, previous: AnyRow, refund_hash: str, conn: AsyncConnection
    ) -> PaymentRecord:
        if previous.request_hash != refund_hash:
            raise _key_reused()
        return await self._reload(previous.payment_id, conn)

    async def _void_unseen_charge(self, charge_key: str) -> PaymentRecord:
        """Record a void for a key never charged, so that a late charge with it is refused."""
        session = self._session
        voided = PaymentRecord.placeholder_void(charge_key, utcnow())
        try:
            async with session.begin():
                conn = await self._connection()
                await conn.execute(_INSERT_PAYMENT, asdict(voided))
                add_event(
                    session,
                    source=SOURCE,
                    type="payment.voided",
                    subject=str(voided.id),
                    data={"payment_id": str(voided.id), "order_id": None, "user_id": None},
                )
        except IntegrityError:
            # A charge (or another void) took the key first: carry on with whatever it recorded.
            existing = await self._by_key(charge_key)
            if existing is None:
                raise
            return existing
        log.info("charge_voided_before_start", charge_key=charge_key, payment_id=str(voided.id))
        return voided

    async def _void_pending_charge(self, payment: PaymentRecord) -> PaymentRecord:
        """Void a charge nobody is working on; the provider settles whether it had captured after all."""
        owner = new_id()
        if not await self._take_lease(payment.id, owner):
            payment = await self._reload(payment.id)
            if payment.status == "pending":
                raise charge_in_progress()
            return payment
        outcome = await self._provider.void(payment.idempotency_key)
        if isinstance(outcome, Captured):
            await self._record_capture(payment, outcome.provider_ref)
        elif isinstance(outcome, Declined):
            await self._record_decline(payment, outcome.decline_code)
        elif isinstance(outcome, NotCharged | Voided):
            await self._record_void(payment, owner)
        else:  # void() never answers a transient failure
            raise TypeError(f"unexpected void outcome {outcome!r}")
        return await self._reload(payment.id)

    async def _record_void(self, payment: PaymentRecord, owner: uuid.UUID) -> None:
        session = self._session
        async with session.begin():
            conn = await self._connection()
            result = await conn.execute(
                _OWNED_PENDING,
                {
                    "b_id": payment.id,
                    "b_owner": owner,
                    "status": "voided",
                    "lease_owner": None,
                    "lease_until": None,
                    "updated_at": utcnow(),
                },
            )
            if result.rowcount == 1:
                add_event(
                    session,
                    source=SOURCE,
                    type="payment.voided",
                    subject=str(payment.id),
                    data={
                        "payment_id": str(payment.id),
                        "order_id": str(payment.order_id),
                        "user_id": str(payment.user_id),
                    },
                )
        log.info("pending_charge_voided", payment_id=str(payment.id))

    async def _refund_capture(
        self, payment: PaymentRecord, refund_key: str, refund_hash: str, requested: int | None
    ) -> PaymentRecord:
        session = self._session
        # With no amount given, a concurrent refund may shrink what is left between read and write.
        for _ in range(3):
            assert payment.amount_cents is not None
            amount = requested if requested is not None else payment.amount_cents - payment.refunded_cents
            if amount <= 0:
                return payment
            try:
                async with session.begin():
                    conn = await self._connection()
                    await conn.execute(
                        _INSERT_TRANSACTION,
                        {
                            "id": new_id(),
                            "payment_id": payment.id,
                            "kind": "refund",
                            "amount_cents": amount,
                            "idempotency_key": refund_key,
                            "request_hash": refund_hash,
                            "created_at": utcnow(),
                        },
                    )
                    refunded = await self._apply_refund(conn, payment.id, amount)
                PAYMENTS_REFUNDED_CENTS.inc(amount)  # committed
                return refunded
            except IntegrityError:
                async with self._engine.begin() as conn:
                    previous = await self._refund_by_key(refund_key, conn)
                    if previous is None:
                        raise
                    return await self._replayed_refund(previous, refund_hash, conn)
            except _RefundTooLarge:
                payment = await self._reload(payment.id)
                if requested is None:
                    continue
                raise _refund_exceeds() from None
        raise _refund_exceeds()

    async def _apply_refund(self, conn: AsyncConnection, payment_id: uuid.UUID, amount: int) -> PaymentRecord:
        """Inside the refund's transaction: the conditional update that never refunds past the capture."""
        row = (
            await conn.execute(_APPLY_REFUND, {"b_id": payment_id, "b_amount": amount, "b_now": utcnow()})
        ).one_or_none()
        if row is None:
            raise _RefundTooLarge
        updated = PaymentRecord.from_row(row)
        add_event(
            self._session,
            source=SOURCE,
            type="payment.refunded",
            subject=str(payment_id),
            data={**_event_base(updated), "amount_cents": amount, "refunded_cents": updated.refunded_cents},
        )
        log.info("payment_refunded", payment_id=str(payment_id), amount_cents=amount)
        return updated

    # -- leases and lookups --------------------------------------------------------------------

    async def _take_lease(self, payment_id: uuid.UUID, owner: uuid.UUID) -> bool:
        now = utcnow()
        async with self._engine.begin() as conn:
            result = await conn.execute(
                _TAKE_LEASE,
                {
                    "b_id": payment_id,
                    "b_now": now,
                    "lease_owner": owner,
                    "lease_until": now + self._lease,
                    "updated_at": now,
                },
            )
        return bool(result.rowcount == 1)

    async def _release_lease(self, payment_id: uuid.UUID, owner: uuid.UUID) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                _OWNED_PENDING,
                {
                    "b_id": payment_id,
                    "b_owner": owner,
                    "lease_owner": None,
                    "lease_until": None,
                    "updated_at": utcnow(),
                },
            )

    async def _method_token(
        self, conn: AsyncConnection, method_id: uuid.UUID, user_id: uuid.UUID
    ) -> str | None:
        """The provider token of the user's payment method; None when it is unknown or another user's."""
        cached = self._method_tokens.get(method_id)
        if cached is None:
            row = (await conn.execute(_METHOD_OWNER_AND_TOKEN, {"b_method_id": method_id})).one_or_none()
            if row is None:
                return None
            cached = self._method_tokens[method_id] = (row.user_id, row.token)
        owner, token = cached
        return token if owner == user_id else None

    # Reads run in the caller's transaction, or in one of their own.

    async def _by_key(self, key: str, conn: AsyncConnection | None = None) -> PaymentRecord | None:
        row = await self._one_or_none(_PAYMENT_BY_KEY, {"b_key": key}, conn)
        return None if row is None else PaymentRecord.from_row(row)

    async def _refund_by_key(self, key: str, conn: AsyncConnection) -> AnyRow | None:
        return await self._one_or_none(_REFUND_BY_KEY, {"b_key": key}, conn)

    async def _reload(self, payment_id: uuid.UUID, conn: AsyncConnection | None = None) -> PaymentRecord:
        row = await self._one_or_none(_PAYMENT_BY_ID, {"b_id": payment_id}, conn)
        if row is None:
            raise LookupError("payment vanished")
        return PaymentRecord.from_row(row)

    async def _one_or_none(
        self, statement: Any, params: dict[str, Any], conn: AsyncConnection | None
    ) -> AnyRow | None:
        if conn is not None:
            return (await conn.execute(statement, params)).one_or_none()
        async with self._engine.begin() as own:
            return (await own.execute(statement, params)).one_or_none()


def _settled_answer(payment: PaymentRecord, body_hash: str) -> ChargeResult | None:
    """The replayed answer for a charge or authorisation key with an outcome; None while it is pending."""
    if payment.status == "voided":
        raise _voided_problem()
    if payment.request_hash != body_hash:
        raise _key_reused()
    if payment.status in SUCCEEDED:
        return ChargeResult(payment, created=False)
    if payment.status == "declined":
        raise _declined(payment)
    return None


def _capture_answer(payment: PaymentRecord) -> PaymentRecord:
    """The answer of a capture once the provider had its say (or when the key is past authorising)."""
    if payment.status == "voided":
        raise Problem(409, "authorization_voided", "This authorisation was voided; nothing can be captured.")
    if payment.status == "declined":
        raise _declined(payment)
    if payment.status in SETTLED_CAPTURE:
        if payment.authorized_until is None:  # a charge, captured at once: not an authorisation
            raise _authorization_not_found()
        return payment
    raise charge_in_progress()  # still authorising


def _void_refund_key(key: str) -> str:
    """The refund key of a void that finds a capture; within the column's length for the longest keys."""
    candidate = f"{key}:void"
    if len(candidate) <= KEY_LENGTH:
        return candidate
    return "void:" + hashlib.sha256(key.encode()).hexdigest()


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _event_base(payment: PaymentRecord) -> dict[str, Any]:
    return {
        "payment_id": str(payment.id),
        "order_id": str(payment.order_id),
        "user_id": str(payment.user_id),
        "amount_cents": payment.amount_cents,
        "currency": payment.currency,
    }


def _declined(payment: PaymentRecord) -> Problem:
    return Problem(
        402,
        "payment_declined",
        "The card was declined.",
        decline_code=payment.decline_code,
        payment_id=str(payment.id),
    )


def _authorization_not_found() -> Problem:
    return Problem(404, "authorization_not_found", "No authorisation has this key.")


def _authorization_expired() -> Problem:
    return Problem(409, "authorization_expired", "This authorisation expired; nothing was captured.")


def _voided_problem() -> Problem:
    return Problem(
        409, "charge_voided", "This key was voided (by a refund or a void); nothing can be charged with it."
    )


def _key_reused() -> Problem:
    return Problem(422, "idempotency_key_reused", "This idempotency key was used with another request.")


def _refund_exceeds() -> Problem:
    return Problem(409, "refund_exceeds_capture", "The refund exceeds what is left of the capture.")


def _log_outcome(event: str, payment: PaymentRecord, **extra: str) -> None:
    """The one line an outcome this request recorded gets, with the keys to find the payment by."""
    log.info(
        event,
        charge_key=payment.idempotency_key,
        payment_id=str(payment.id),
        order_id=str(payment.order_id),
        **extra,
    )
