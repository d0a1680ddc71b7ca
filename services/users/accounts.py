"""Account rules: register, authenticate, update (optimistic concurrency), soft delete.

Uniqueness of email and username is decided by the table's unique constraints, and every change
stages its outbox event in the same transaction. Password hashing always happens before a
transaction opens, so no lock is held while argon2 runs.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.errors import Problem
from services.kit.models import utcnow
from services.kit.outbox import add_event
from services.users.models import EMAIL_CONSTRAINT, PROFILE_FIELDS, USERNAME_CONSTRAINT, User
from services.users.passwords import HashingOverloaded, Passwords
from services.users.schemas import ProfileIn, UpdateRequest

if TYPE_CHECKING:
    from services.users.revocations import Revocations
    from services.users.throttle import LoginThrottle

SOURCE = "users"

log = structlog.get_logger(__name__)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def user_not_found() -> Problem:
    return Problem(404, "user_not_found", "No such user.")


def _conflict(exc: IntegrityError) -> Problem:
    # SQLite names the column ("UNIQUE constraint failed: users.email"), PostgreSQL the constraint.
    message = str(exc.orig)
    if EMAIL_CONSTRAINT in message or "users.email" in message:
        return Problem(409, "email_taken", "That email address is already registered.")
    if USERNAME_CONSTRAINT in message or "users.username" in message:
        return Problem(409, "username_taken", "That username is already taken.")
    raise exc


def _created_event(user: User) -> dict[str, Any]:
    return {
        "user_id": str(user.id),
        "email": user.email,
        "username": user.username,
        "role": user.role,
        "phone": user.phone,
    }


async def insert_user(session: AsyncSession, user: User) -> User:
    """Insert with its `user.created` event; 409 `email_taken`/`username_taken` from the constraints."""
    try:
        async with session.begin():
            session.add(user)
            add_event(
                session, source=SOURCE, type="user.created", subject=str(user.id), data=_created_event(user)
            )
    except IntegrityError as exc:
        raise _conflict(exc) from None
    log.info("user_created", user_id=str(user.id), role=user.role)
    return user


async def register(
    session: AsyncSession,
    passwords: Passwords,
    *,
    email: str,
    username: str,
    password: str,
    profile: ProfileIn | None,
) -> User:
    password_hash = await passwords.hash(password)
    user = User(
        email=normalise_email(email),
        username=username,
        password_hash=password_hash,
        role="customer",
        **(profile.model_dump() if profile else {}),
    )
    return await insert_user(session, user)


async def _find_active(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    statement = select(User).where(User.id == user_id, col(User.deleted_at).is_(None))
    return (await session.exec(statement)).first()


async def get_active(session: AsyncSession, user_id: uuid.UUID) -> User:
    async with session.begin():
        user = await _find_active(session, user_id)
    if user is None:
        raise user_not_found()
    return user


async def token_version(session: AsyncSession, user_id: uuid.UUID) -> tuple[int, bool]:
    """(token version, active) of any user, deleted ones included; 404 for an unknown id."""
    async with session.begin():
        statement = select(col(User.token_version), col(User.deleted_at)).where(col(User.id) == user_id)
        row = (await session.exec(statement)).first()
    if row is None:
        raise user_not_found()
    return row[0], row[1] is None


async def get_any(session: AsyncSession, user_id: uuid.UUID) -> User:
    """Deleted users included: the saga must learn that a user exists but is no longer active."""
    async with session.begin():
        user = await session.get(User, user_id)
    if user is None:
        raise user_not_found()
    return user


async def throttle_key(session: AsyncSession, login: str) -> str:
    """The per-account throttle's key: the user id, so an account's email and username share one
    budget; an unknown login is throttled just the same (by its digest, kept out of logs and Redis),
    so a 429 does not tell which logins exist."""
    login = login.strip().lower()
    column = User.email if "@" in login else User.username
    async with session.begin():
        statement = select(col(User.id)).where(column == login, col(User.deleted_at).is_(None))
        user_id = (await session.exec(statement)).first()
    if user_id is not None:
        return f"user:{user_id}"
    return "login:" + hashlib.sha256(login.encode()).hexdigest()[:32]


async def authenticate(session: AsyncSession, passwords: Passwords, login: str, password: str) -> User | None:
    """The active user whose email or username is `login` and whose password matches, else None."""
    login = login.strip().lower()
    column = User.email if "@" in login else User.username
    async with session.begin():
        statement = select(User).where(column == login, col(User.deleted_at).is_(None))
        user = (await session.exec(statement)).first()
    if user is None:
        await passwords.verify_unknown_user(password)
        return None
    if not await passwords.verify(user.password_hash, password):
        return None
    if passwords.needs_rehash(user.password_hash):
        try:
            await _rehash(session, passwords, user, password)
        except HashingOverloaded:
            # The password was right; the upgrade can wait for a calmer login.
            log.info("password_rehash_deferred", user_id=str(user.id))
    return user


async def _rehash(session: AsyncSession, passwords: Passwords, user: User, password: str) -> None:
    # Not a change the user made: no version bump, no event. Conditional, so that a password
    # changed meanwhile is never overwritten with the old one.
    new_hash = await passwords.hash(password)
    async with session.begin():
        await session.exec(
            update(User)
            .where(col(User.id) == user.id, col(User.password_hash) == user.password_hash)
            .values(password_hash=new_hash)
        )
    log.info("password_rehashed", user_id=str(user.id))


def _changes(user: User, request: UpdateRequest) -> dict[str, Any]:
    """The fields whose value the request actually changes (the password is handled apart)."""
    wanted: dict[str, Any] = {}
    if request.email is not None:
        wanted["email"] = normalise_email(request.email)
    if request.username is not None:
        wanted["username"] = request.username
    if request.role is not None:
        wanted["role"] = request.role
    if request.profile is not None:
        for name in request.profile.model_fields_set & set(PROFILE_FIELDS):
            wanted[name] = getattr(request.profile, name)
    return {name: value for name, value in wanted.items() if getattr(user, name) != value}


async def _prove_current_password(
    passwords: Passwords, user: User, request: UpdateRequest, throttle: LoginThrottle | None
) -> None:
    if request.current_password is None:
        raise Problem(
            422, "current_password_required", "Changing your password or email needs `current_password`."
        )
    key = f"user:{user.id}"
    if throttle is not None:
        await throttle.attempt(key)  # a stolen session must not become a password oracle
    if not await passwords.verify(user.password_hash, request.current_password.get_secret_value()):
        log.info("current_password_wrong", user_id=str(user.id))
        raise Problem(403, "current_password_wrong", "The current password is wrong.")
    if throttle is not None:
        await throttle.succeeded(key)


async def update_user(
    session: AsyncSession,
    passwords: Passwords,
    user_id: uuid.UUID,
    request: UpdateRequest,
    *,
    by_owner: bool = True,
    throttle: LoginThrottle | None = None,
    revocations: Revocations | None = None,
) -> User:
    """Apply a partial update if `request.version` is still current; 409 `version_conflict` if not.

    The owner changing their password or email must prove the current password (`by_owner`); an
    admin changing another user need not. A password or role change bumps the token version, which
    revokes the user's earlier tokens.
    """
    # Read and prove outside the transaction: argon2 runs with no lock held. The write below is
    # conditional on `version`, which every change (a password change included) bumps, so what was
    # proven is still what is stored when it lands.
    read = await get_active(session, user_id)
    if read.version != request.version:
        raise _version_conflict()
    if by_owner and (request.password is not None or "email" in _changes(read, request)):
        await _prove_current_password(passwords, read, request, throttle)
    new_hash = await passwords.hash(request.password.get_secret_value()) if request.password else None
    revokes = new_hash is not None or (request.role is not None and request.role != read.role)
    if revokes and revocations is not None:
        await revocations.before_commit(user_id)
    try:
        async with session.begin():
            user = await _find_active(session, user_id)
            if user is None:
                raise user_not_found()
            if user.version != request.version:
                raise _version_conflict()
            changed = _changes(user, request)
            if not changed and new_hash is None:
                return user
            values: dict[str, Any] = dict(changed)
            if new_hash is not None:
                values["password_hash"] = new_hash
            if new_hash is not None or "role" in changed:
                values["token_version"] = User.token_version + 1
            now = utcnow()
            result = await session.exec(
                update(User)
                .where(
                    col(User.id) == user_id,
                    col(User.version) == request.version,
                    col(User.deleted_at).is_(None),
                )
                .values(**values, version=User.version + 1, updated_at=now)
            )
            if result.rowcount == 0:
                # Someone else won the race between our read and our write.
                if await _find_active(session, user_id) is None:
                    raise user_not_found()
                raise _version_conflict()
            # The new password or its hash never goes into an event: only the fact that it changed.
            changed_fields = sorted([*changed, *(["password"] if new_hash is not None else [])])
            event = {"user_id": str(user_id), "changed": changed, "changed_fields": changed_fields}
            add_event(session, source=SOURCE, type="user.updated", subject=str(user_id), data=event)
            await session.refresh(user)
    except IntegrityError as exc:
        raise _conflict(exc) from None
    if revokes and revocations is not None:
        await revocations.after_commit(user_id)
    log.info(
        "user_updated",
        user_id=str(user_id),
        fields=changed_fields,
        version=user.version,
        token_version=user.token_version,
    )
    return user


def _version_conflict() -> Problem:
    return Problem(409, "version_conflict", "The user was changed since that version was read.")


async def soft_delete(
    session: AsyncSession, user_id: uuid.UUID, *, revocations: Revocations | None = None
) -> None:
    if revocations is not None:
        await get_active(session, user_id)  # an unknown id is a 404, not a revocation to announce
        await revocations.before_commit(user_id)
    now = utcnow()
    async with session.begin():
        result = await session.exec(
            update(User)
            .where(col(User.id) == user_id, col(User.deleted_at).is_(None))
            .values(
                deleted_at=now,
                updated_at=now,
                version=User.version + 1,
                token_version=User.token_version + 1,
            )
        )
        if result.rowcount == 0:
            raise user_not_found()
        add_event(
            session, source=SOURCE, type="user.deleted", subject=str(user_id), data={"user_id": str(user_id)}
        )
    if revocations is not None:
        await revocations.after_commit(user_id)
    log.info("user_deleted", user_id=str(user_id))
