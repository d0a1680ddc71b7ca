"""The card-network simulator: the only simulated part of the system.

It behaves like a real provider as far as the rest of the service can tell: cards are exchanged for
opaque tokens (the vault keeps a keyed fingerprint, never the number), and charges and
authorisations are idempotent by key (the ledger holds one row per key, so a repeated capture
returns the same reference and never captures twice). An authorisation holds the amount until it
expires; it is then captured once, or voided. Its state lives in its own tables, so attempt counts
survive a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.db import Database
from services.kit.models import utcnow
from services.payments.models import ProviderLedgerEntry, ProviderVaultEntry

log = structlog.get_logger(__name__)


class Behaviour(StrEnum):
    """How a test card answers a charge or an authorisation."""

    OK = "ok"
    DECLINED = "declined"
    INSUFFICIENT = "insufficient"
    TRANSIENT_TWICE = "transient2"
    TRANSIENT_ALWAYS = "transient_always"


TEST_CARDS: dict[str, Behaviour] = {
    "4000000000000002": Behaviour.DECLINED,
    "4000000000009995": Behaviour.INSUFFICIENT,
    "4000000000000119": Behaviour.TRANSIENT_TWICE,
    "4000000000000101": Behaviour.TRANSIENT_ALWAYS,
}
TRANSIENT_TWICE_FAILURES = 2

DECLINE_CODES: dict[Behaviour, str] = {
    Behaviour.DECLINED: "card_declined",
    Behaviour.INSUFFICIENT: "insufficient_funds",
}


@dataclass(frozen=True)
class Captured:
    provider_ref: str


@dataclass(frozen=True)
class Declined:
    decline_code: str


@dataclass(frozen=True)
class Transient:
    reason: str


@dataclass(frozen=True)
class Voided:
    pass


@dataclass(frozen=True)
class NotCharged:
    """A void found no charge under that key and made sure none can happen any more."""


@dataclass(frozen=True)
class Authorized:
    """The amount is held; it can be captured (once) until `expires_at`."""

    provider_ref: str
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Expired:
    """The authorisation ran out before its capture: nothing was captured."""


@dataclass(frozen=True)
class NotAuthorized:
    """No authorisation holds an amount under that key (unknown, still pending, or declined)."""


ChargeOutcome = Captured | Declined | Transient | Voided
AuthorizeOutcome = Authorized | Declined | Transient | Voided
CaptureOutcome = Captured | Voided | Expired | NotAuthorized


class CardProvider:
    def __init__(
        self, db: Database, *, vault_secret: str, latency_ms: int = 0, failure_rate: float = 0.0
    ) -> None:
        self._db = db
        self._secret = vault_secret.encode()
        self._latency = latency_ms / 1000
        self._failure_rate = failure_rate

    def tokenise(self, session: AsyncSession, card_number: str) -> str:
        """Stage the vault entry for a card in the caller's transaction and return its token."""
        token = "pm_tok_" + secrets.token_urlsafe(24)
        fingerprint = hmac.new(self._secret, card_number.encode(), hashlib.sha256).hexdigest()
        behaviour = TEST_CARDS.get(card_number, Behaviour.OK)
        session.add(ProviderVaultEntry(token=token, fingerprint=fingerprint, behaviour=behaviour.value))
        return token

    async def charge(self, key: str, token: str, amount_cents: int, currency: str) -> ChargeOutcome:
        """Capture once per key. A final outcome is replayed; a transient one may be retried."""
        outcome = await self._attempt("charge", key, token, amount_cents, currency, valid_until=None)
        assert not isinstance(outcome, Authorized)
        return outcome

    async def authorize(
        self, key: str, token: str, amount_cents: int, currency: str, valid_until: datetime
    ) -> AuthorizeOutcome:
        """Hold the amount once per key until `valid_until`; the test cards answer as for a charge."""
        outcome = await self._attempt(
            "authorize", key, token, amount_cents, currency, valid_until=valid_until
        )
        assert not isinstance(outcome, Captured)
        return outcome

    async def capture(self, key: str, now: datetime) -> CaptureOutcome:
        """Capture an authorisation once; a repeat answers the same capture, never a second one."""
        await self._network_delay()
        async with self._db.session() as session, session.begin():
            # The conditional update takes the row lock, so a concurrent void or capture waits for it;
            # the row comes back as captured, or (not capturable) is read as it is.
            captured = await _written_entry(
                session,
                update(ProviderLedgerEntry)
                .where(
                    col(ProviderLedgerEntry.charge_key) == key,
                    col(ProviderLedgerEntry.status) == "authorized",
                    or_(
                        col(ProviderLedgerEntry.expires_at).is_(None),
                        col(ProviderLedgerEntry.expires_at) > now,
                    ),
                )
                .values(status="captured", updated_at=now)
                .returning(ProviderLedgerEntry),
            )
            entry = captured or await _ledger_entry_or_none(session, key)
        outcome: CaptureOutcome
        if entry is None or entry.status in ("pending", "declined"):
            outcome = NotAuthorized()
        elif entry.status == "captured" and entry.provider_ref:
            outcome = Captured(entry.provider_ref)
        elif entry.status == "voided":
            outcome = Voided()
        elif entry.status == "authorized":
            outcome = Expired()
        else:
            outcome = NotAuthorized()
        log.info("provider_capture", charge_key=key, outcome=type(outcome).__name__)
        return outcome

    async def _attempt(
        self,
        operation: str,
        key: str,
        token: str,
        amount_cents: int,
        currency: str,
        *,
        valid_until: datetime | None,
    ) -> ChargeOutcome | AuthorizeOutcome:
        """One attempt of a charge or an authorisation (`valid_until` set) under the key's row lock."""
        await self._network_delay()
        if self._failure_rate and random.random() < self._failure_rate:
            log.info("provider_transient", charge_key=key, reason="random")
            return Transient("network")
        now = utcnow()
        authorizing = valid_until is not None
        async with self._db.session() as session, session.begin():
            entry_values = {
                "charge_key": key,
                "token": token,
                "amount_cents": amount_cents,
                "currency": currency,
                "status": "pending",
                "attempts": 1,
                "created_at": now,
                "updated_at": now,
            }
            # One statement: a new key's row, or the next attempt on a pending one, handed back as
            # written. Its row lock serialises concurrent attempts on one key; a key already final is
            # left alone (locked all the same) and read.
            entry = await _count_attempt(session, self._db.is_sqlite, entry_values) or await _ledger_entry(
                session, key
            )
            if entry.status != "pending":
                return _final_outcome(entry, authorizing=authorizing)
            behaviour = await self._behaviour(session, entry.token or token)
            refusal = _decide(behaviour, entry.attempts)
            outcome: ChargeOutcome | AuthorizeOutcome
            if refusal is not None:
                outcome = refusal
                if isinstance(refusal, Declined):
                    await _finish(session, key, status="declined", decline_code=refusal.decline_code)
            elif valid_until is not None:
                outcome = Authorized("au_" + secrets.token_hex(12), valid_until)
                await _finish(
                    session,
                    key,
                    status="authorized",
                    provider_ref=outcome.provider_ref,
                    expires_at=valid_until,
                )
            else:
                outcome = Captured("ch_" + secrets.token_hex(12))
                await _finish(session, key, status="captured", provider_ref=outcome.provider_ref)
        log.info(
            f"provider_{operation}", charge_key=key, attempt=entry.attempts, outcome=type(outcome).__name__
        )
        return outcome

    async def void(self, key: str) -> ChargeOutcome | NotCharged:
        """Forbid any further capture under `key`, or report the final outcome it already had.

        A pending attempt or an authorisation not yet captured is voided; an unseen key gets a voided
        row, so a later charge or authorisation with it is refused.
        """
        await self._network_delay()
        now = utcnow()
        async with self._db.session() as session, session.begin():
            values = {
                "charge_key": key,
                "status": "voided",
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            await session.exec(_insert_ignoring_duplicate(self._db.is_sqlite, values))
            await session.exec(
                update(ProviderLedgerEntry)
                .where(
                    col(ProviderLedgerEntry.charge_key) == key,
                    col(ProviderLedgerEntry.status).in_(("pending", "authorized")),
                )
                .values(status="voided", updated_at=now)
            )
            entry = await _ledger_entry(session, key)
        log.info("provider_void", charge_key=key, status=entry.status)
        if entry.status == "voided":
            return NotCharged()
        outcome = _final_outcome(entry, authorizing=False)
        assert not isinstance(outcome, Authorized)
        return outcome

    async def _behaviour(self, session: AsyncSession, token: str) -> Behaviour:
        vault = await session.get(ProviderVaultEntry, token)
        if vault is None:
            # Tokens are only minted by tokenise(); a missing one is a broken invariant, not input.
            raise LookupError("unknown provider token")
        return Behaviour(vault.behaviour)

    async def _network_delay(self) -> None:
        if self._latency:
            await asyncio.sleep(self._latency)


def _decide(behaviour: Behaviour, attempt: int) -> Declined | Transient | None:
    """The card's answer to this attempt; None approves it."""
    if behaviour is Behaviour.TRANSIENT_ALWAYS:
        return Transient("card_network_unavailable")
    if behaviour is Behaviour.TRANSIENT_TWICE and attempt <= TRANSIENT_TWICE_FAILURES:
        return Transient("card_network_unavailable")
    if behaviour in DECLINE_CODES:
        return Declined(DECLINE_CODES[behaviour])
    return None


def _final_outcome(entry: ProviderLedgerEntry, *, authorizing: bool) -> ChargeOutcome | AuthorizeOutcome:
    """The replayed answer of a key that already has an outcome."""
    if authorizing and entry.status in ("authorized", "captured") and entry.provider_ref:
        return Authorized(entry.provider_ref, entry.expires_at)
    if not authorizing and entry.status == "captured" and entry.provider_ref:
        return Captured(entry.provider_ref)
    if entry.status == "declined" and entry.decline_code:
        return Declined(entry.decline_code)
    return Voided()


def _insert_ignoring_duplicate(is_sqlite: bool, values: dict[str, Any]) -> Any:
    table = ProviderLedgerEntry.__table__  # type: ignore[attr-defined]
    insert = sqlite.insert if is_sqlite else postgresql.insert
    return insert(table).values(**values).on_conflict_do_nothing(index_elements=["charge_key"])


async def _count_attempt(
    session: AsyncSession, is_sqlite: bool, values: dict[str, Any]
) -> ProviderLedgerEntry | None:
    """Insert the key's pending row (attempt 1), or add an attempt to it while it is pending; the row
    as written, or None when the key already has a final outcome."""
    table = ProviderLedgerEntry.__table__  # type: ignore[attr-defined]
    insert = sqlite.insert if is_sqlite else postgresql.insert
    statement = (
        insert(ProviderLedgerEntry)
        .values(**values)
        .on_conflict_do_update(
            index_elements=["charge_key"],
            set_={"attempts": table.c.attempts + 1, "updated_at": values["updated_at"]},
            where=table.c.status == "pending",
        )
        .returning(ProviderLedgerEntry)
    )
    return await _written_entry(session, statement)


async def _written_entry(session: AsyncSession, statement: Any) -> ProviderLedgerEntry | None:
    """The ledger row a write RETURNING it handed back (the session's copy refreshed), or None."""
    written = await session.exec(statement.execution_options(populate_existing=True))
    entry: ProviderLedgerEntry | None = written.scalars().one_or_none()
    return entry


async def _ledger_entry(session: AsyncSession, key: str) -> ProviderLedgerEntry:
    entry = await _ledger_entry_or_none(session, key)
    if entry is None:
        raise LookupError("provider ledger entry vanished")
    return entry


async def _ledger_entry_or_none(session: AsyncSession, key: str) -> ProviderLedgerEntry | None:
    statement = (
        select(ProviderLedgerEntry)
        .where(col(ProviderLedgerEntry.charge_key) == key)
        .execution_options(populate_existing=True)
    )
    return (await session.exec(statement)).one_or_none()


async def _finish(session: AsyncSession, key: str, **values: Any) -> None:
    await session.exec(
        update(ProviderLedgerEntry)
        .where(col(ProviderLedgerEntry.charge_key) == key)
        .values(updated_at=utcnow(), **values)
    )
