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
from cachetools import LRUCache
from sqlalchemy import Row, Table, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.db import Database
from services.kit.models import utcnow
from services.payments.models import ProviderLedgerEntry, ProviderVaultEntry

log = structlog.get_logger(__name__)

# A Core row of any shape (fields by name).
AnyRow = Row[*tuple[Any, ...]]


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
BEHAVIOURS_CACHED = 10_000

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
        self._statements = _LedgerStatements(sqlite.insert if db.is_sqlite else postgresql.insert)
        # Vault entries are never changed or deleted, so a token's behaviour, once read, stays true.
        self._behaviours: LRUCache[str, Behaviour] = LRUCache(maxsize=BEHAVIOURS_CACHED)

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
        async with self._db.engine.begin() as conn:
            # The conditional update takes the row lock, so a concurrent void or capture waits for it;
            # the row comes back as captured, or (not capturable) is read as it is.
            captured = await conn.execute(self._statements.capture, {"b_key": key, "b_now": now})
            entry = captured.one_or_none() or await _ledger_entry_or_none(conn, key)
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
        entry_values = {
            "charge_key": key,
            "token": token,
            "amount_cents": amount_cents,
            "currency": currency,
            "status": "pending",
            "attempts": 1,
            "provider_ref": None,
            "decline_code": None,
            "expires_at": None,
            "created_at": now,
            "updated_at": now,
        }
        async with self._db.engine.begin() as conn:
            behaviour = self._behaviours.get(token)
            if behaviour is None:
                behaviour = await self._behaviour(conn, token)
            if behaviour in _ANSWER_ON_ANY_ATTEMPT:
                attempts, outcome = await self._decide_in_one_write(
                    conn, behaviour, entry_values, valid_until=valid_until
                )
            else:
                attempts, outcome = await self._decide_by_attempt(conn, entry_values, valid_until=valid_until)
        log.info(f"provider_{operation}", charge_key=key, attempt=attempts, outcome=type(outcome).__name__)
        return outcome

    async def _decide_in_one_write(
        self,
        conn: AsyncConnection,
        behaviour: Behaviour,
        entry_values: dict[str, Any],
        *,
        valid_until: datetime | None,
    ) -> tuple[int, ChargeOutcome | AuthorizeOutcome]:
        """A card whose answer does not depend on the attempt: the key's row is written final at once
        (new, or the next attempt on a pending one); a key already final is read and replayed."""
        outcome: ChargeOutcome | AuthorizeOutcome
        if behaviour in DECLINE_CODES:
            outcome = Declined(DECLINE_CODES[behaviour])
            final: dict[str, Any] = {"status": "declined", "decline_code": outcome.decline_code}
        elif valid_until is not None:
            outcome = Authorized("au_" + secrets.token_hex(12), valid_until)
            final = {"status": "authorized", "provider_ref": outcome.provider_ref, "expires_at": valid_until}
        else:
            outcome = Captured("ch_" + secrets.token_hex(12))
            final = {"status": "captured", "provider_ref": outcome.provider_ref}
        written = await conn.execute(self._statements.settle_attempt, {**entry_values, **final})
        attempts = written.scalar_one_or_none()
        if attempts is not None:
            return attempts, outcome
        entry = await _ledger_entry(conn, entry_values["charge_key"])
        return entry.attempts, _final_outcome(entry, authorizing=valid_until is not None)

    async def _decide_by_attempt(
        self, conn: AsyncConnection, entry_values: dict[str, Any], *, valid_until: datetime | None
    ) -> tuple[int, ChargeOutcome | AuthorizeOutcome]:
        """A card whose answer depends on the attempt: count it, then decide and record the outcome."""
        key = entry_values["charge_key"]
        # One statement: a new key's row, or the next attempt on a pending one, handed back as
        # written. Its row lock serialises concurrent attempts on one key; a key already final is
        # left alone (locked all the same) and read.
        counted = await conn.execute(self._statements.count_attempt, entry_values)
        entry = counted.one_or_none() or await _ledger_entry(conn, key)
        if entry.status != "pending":
            return entry.attempts, _final_outcome(entry, authorizing=valid_until is not None)
        behaviour = self._behaviours.get(entry.token) if entry.token else None
        if behaviour is None:
            behaviour = await self._behaviour(conn, entry.token or entry_values["token"])
        refusal = _decide(behaviour, entry.attempts)
        outcome: ChargeOutcome | AuthorizeOutcome
        if refusal is not None:
            outcome = refusal
            if isinstance(refusal, Declined):
                await _finish(conn, key, status="declined", decline_code=refusal.decline_code)
        elif valid_until is not None:
            outcome = Authorized("au_" + secrets.token_hex(12), valid_until)
            await _finish(
                conn, key, status="authorized", provider_ref=outcome.provider_ref, expires_at=valid_until
            )
        else:
            outcome = Captured("ch_" + secrets.token_hex(12))
            await _finish(conn, key, status="captured", provider_ref=outcome.provider_ref)
        return entry.attempts, outcome

    async def void(self, key: str) -> ChargeOutcome | NotCharged:
        """Forbid any further capture under `key`, or report the final outcome it already had.

        A pending attempt or an authorisation not yet captured is voided; an unseen key gets a voided
        row, so a later charge or authorisation with it is refused.
        """
        await self._network_delay()
        now = utcnow()
        async with self._db.engine.begin() as conn:
            values = {
                "charge_key": key,
                "status": "voided",
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            await conn.execute(self._statements.insert_ignoring_duplicate, values)
            voided = await conn.execute(self._statements.void, {"b_key": key, "b_now": now})
            # Nothing voidable: the key already has its final outcome (perhaps an earlier void).
            entry = voided.one_or_none() or await _ledger_entry(conn, key)
        log.info("provider_void", charge_key=key, status=entry.status)
        if entry.status == "voided":
            return NotCharged()
        outcome = _final_outcome(entry, authorizing=False)
        assert not isinstance(outcome, Authorized)
        return outcome

    async def _behaviour(self, conn: AsyncConnection, token: str) -> Behaviour:
        stored = (await conn.execute(_VAULT_BEHAVIOUR, {"b_token": token})).scalar_one_or_none()
        if stored is None:
            # Tokens are only minted by tokenise(); a missing one is a broken invariant, not input.
            raise LookupError("unknown provider token")
        behaviour = self._behaviours[token] = Behaviour(stored)
        return behaviour

    async def _network_delay(self) -> None:
        if self._latency:
            await asyncio.sleep(self._latency)


LEDGER: Table = ProviderLedgerEntry.__table__  # type: ignore[attr-defined]
VAULT: Table = ProviderVaultEntry.__table__  # type: ignore[attr-defined]
# The columns an outcome is read from: a write hands them back, so nothing is read twice.
_ENTRY = (
    LEDGER.c.status,
    LEDGER.c.attempts,
    LEDGER.c.token,
    LEDGER.c.provider_ref,
    LEDGER.c.decline_code,
    LEDGER.c.expires_at,
)
_ENTRY_BY_KEY = select(*_ENTRY).where(LEDGER.c.charge_key == bindparam("b_key"))
_VAULT_BEHAVIOUR = select(VAULT.c.behaviour).where(VAULT.c.token == bindparam("b_token"))
# Cards that answer the same on every attempt: their outcome is decided before the row is written.
_ANSWER_ON_ANY_ATTEMPT = frozenset({Behaviour.OK, *DECLINE_CODES})


class _LedgerStatements:
    """The ledger's writes, built once for the dialect (its INSERT ... ON CONFLICT flavour)."""

    def __init__(self, insert: Any) -> None:
        excluded = insert(LEDGER).excluded
        pending = LEDGER.c.status == "pending"
        self.count_attempt = (
            insert(LEDGER)
            .on_conflict_do_update(
                index_elements=["charge_key"],
                set_={"attempts": LEDGER.c.attempts + 1, "updated_at": excluded.updated_at},
                where=pending,
            )
            .returning(*_ENTRY)
        )
        # A new key's row, or the next attempt on a pending one, written with its final outcome.
        self.settle_attempt = (
            insert(LEDGER)
            .on_conflict_do_update(
                index_elements=["charge_key"],
                set_={
                    "attempts": LEDGER.c.attempts + 1,
                    "status": excluded.status,
                    "provider_ref": excluded.provider_ref,
                    "decline_code": excluded.decline_code,
                    "expires_at": excluded.expires_at,
                    "updated_at": excluded.updated_at,
                },
                where=pending,
            )
            .returning(LEDGER.c.attempts)
        )
        self.insert_ignoring_duplicate = insert(LEDGER).on_conflict_do_nothing(index_elements=["charge_key"])
        self.void = (
            update(LEDGER)
            .where(
                LEDGER.c.charge_key == bindparam("b_key"),
                LEDGER.c.status.in_(("pending", "authorized")),
            )
            .values(status="voided", updated_at=bindparam("b_now"))
            .returning(*_ENTRY)
        )
        self.capture = (
            update(LEDGER)
            .where(
                LEDGER.c.charge_key == bindparam("b_key"),
                LEDGER.c.status == "authorized",
                or_(LEDGER.c.expires_at.is_(None), LEDGER.c.expires_at > bindparam("b_now")),
            )
            .values(status="captured", updated_at=bindparam("b_now"))
            .returning(*_ENTRY)
        )


def _decide(behaviour: Behaviour, attempt: int) -> Declined | Transient | None:
    """The card's answer to this attempt; None approves it."""
    if behaviour is Behaviour.TRANSIENT_ALWAYS:
        return Transient("card_network_unavailable")
    if behaviour is Behaviour.TRANSIENT_TWICE and attempt <= TRANSIENT_TWICE_FAILURES:
        return Transient("card_network_unavailable")
    if behaviour in DECLINE_CODES:
        return Declined(DECLINE_CODES[behaviour])
    return None


def _final_outcome(entry: AnyRow, *, authorizing: bool) -> ChargeOutcome | AuthorizeOutcome:
    """The replayed answer of a key that already has an outcome."""
    if authorizing and entry.status in ("authorized", "captured") and entry.provider_ref:
        return Authorized(entry.provider_ref, entry.expires_at)
    if not authorizing and entry.status == "captured" and entry.provider_ref:
        return Captured(entry.provider_ref)
    if entry.status == "declined" and entry.decline_code:
        return Declined(entry.decline_code)
    return Voided()


async def _ledger_entry(conn: AsyncConnection, key: str) -> AnyRow:
    entry = await _ledger_entry_or_none(conn, key)
    if entry is None:
        raise LookupError("provider ledger entry vanished")
    return entry


async def _ledger_entry_or_none(conn: AsyncConnection, key: str) -> AnyRow | None:
    return (await conn.execute(_ENTRY_BY_KEY, {"b_key": key})).one_or_none()


async def _finish(conn: AsyncConnection, key: str, **values: Any) -> None:
    await conn.execute(update(LEDGER).where(LEDGER.c.charge_key == key).values(updated_at=utcnow(), **values))
