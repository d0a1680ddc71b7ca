"""Start-up of the users service: the signing key, and the admin account from settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog
from pydantic import EmailStr, TypeAdapter, ValidationError
from sqlmodel import select

from services.kit.app import LifespanHook
from services.kit.db import Database
from services.kit.errors import Problem
from services.users.accounts import insert_user, normalise_email
from services.users.models import User
from services.users.passwords import PASSWORD_MAX, PASSWORD_MIN, Passwords
from services.users.revocations import Revocations
from services.users.settings import Settings
from services.users.tokens import TokenIssuer, load_or_create_key_file, load_private_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from fastapi import FastAPI

ADMIN_USERNAME = "admin"

log = structlog.get_logger(__name__)

_email_adapter: TypeAdapter[str] = TypeAdapter(EmailStr)


async def ensure_admin(
    db: Database, email: str, password: str, *, passwords: Passwords | None = None
) -> bool:
    """Create the admin (username `admin`) unless that email is registered; True if it was created.

    Safe to run from several processes at once: the unique constraints pick one winner.
    """
    try:
        email = normalise_email(_email_adapter.validate_python(email))
    except ValidationError:
        raise ValueError("the admin email is not a valid email address") from None
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise ValueError(f"the admin password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long")
    passwords = passwords or Passwords()
    async with db.session() as session:
        async with session.begin():
            existing = (await session.exec(select(User).where(User.email == email))).first()
        if existing is not None:
            if existing.role != "admin":
                log.warning("admin_bootstrap_skipped", reason="email registered by a non-admin user")
            return False
        admin = User(
            email=email, username=ADMIN_USERNAME, password_hash=await passwords.hash(password), role="admin"
        )
        try:
            await insert_user(session, admin)
        except Problem as problem:
            if problem.code == "username_taken":
                log.warning("admin_bootstrap_skipped", reason="username admin is taken")
            return False
    log.info("admin_created", user_id=str(admin.id))
    return True


def _signing_key(settings: Settings) -> RSAPrivateKey:
    pem = settings.jwt_private_key.get_secret_value()
    if pem:
        return load_private_key(pem)
    return load_or_create_key_file(settings.data_dir)


def users_lifespan(settings: Settings) -> LifespanHook:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        key = await asyncio.to_thread(_signing_key, settings)
        app.state.tokens = TokenIssuer(key, settings.token_ttl_seconds)
        passwords: Passwords = app.state.passwords
        await passwords.warm_up()
        admin_password = settings.admin_password.get_secret_value()
        if admin_password and settings.admin_email:
            await ensure_admin(app.state.db, settings.admin_email, admin_password, passwords=passwords)
        revocations = Revocations(settings.nats_url)
        await revocations.start()
        app.state.revocations = revocations
        try:
            yield
        finally:
            await revocations.aclose()

    return lifespan
