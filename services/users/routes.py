"""HTTP routes of the users service: accounts, login and JWKS, and the saga's internal lookup."""

from __future__ import annotations

import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Form, Request, Response, status

from services.kit.db import SessionDep
from services.kit.errors import Problem, problem_responses
from services.kit.identity import CallerDep, Identity, ServiceDep
from services.users import accounts
from services.users.models import EMAIL_MAX
from services.users.passwords import PASSWORD_MAX, Passwords
from services.users.revocations import Revocations
from services.users.schemas import (
    InternalUserOut,
    Jwks,
    RegisterRequest,
    TokenOut,
    TokenVersionOut,
    UpdateRequest,
    UserOut,
)
from services.users.throttle import LoginThrottle
from services.users.tokens import TokenIssuer

log = structlog.get_logger(__name__)


async def _passwords(request: Request) -> Passwords:
    passwords: Passwords = request.app.state.passwords
    return passwords


async def _tokens(request: Request) -> TokenIssuer:
    tokens: TokenIssuer = request.app.state.tokens
    return tokens


async def _throttle(request: Request) -> LoginThrottle:
    throttle: LoginThrottle = request.app.state.login_throttle
    return throttle


async def _revocations(request: Request) -> Revocations:
    revocations: Revocations = request.app.state.revocations
    return revocations


PasswordsDep = Annotated[Passwords, Depends(_passwords)]
RevocationsDep = Annotated[Revocations, Depends(_revocations)]
TokensDep = Annotated[TokenIssuer, Depends(_tokens)]
ThrottleDep = Annotated[LoginThrottle, Depends(_throttle)]

users_router = APIRouter(tags=["users"])
auth_router = APIRouter(tags=["auth"])
internal_router = APIRouter(prefix="/internal", tags=["internal"])


def _visible_to(caller: Identity, user_id: uuid.UUID) -> None:
    # Another customer's account answers 404, so ids cannot be probed for existence.
    if not caller.owns(user_id):
        raise accounts.user_not_found()


@users_router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    summary="Register a customer",
    responses=problem_responses(400, 409, 413, 422, 503),
)
async def register(body: RegisterRequest, session: SessionDep, passwords: PasswordsDep) -> UserOut:
    user = await accounts.register(
        session,
        passwords,
        email=body.email,
        username=body.username,
        password=body.password.get_secret_value(),
        profile=body.profile,
    )
    return UserOut.of(user)


@users_router.get(
    "/users/{user_id}",
    response_model=UserOut,
    summary="A user (self or admin)",
    responses=problem_responses(401, 404, 422),
)
async def get_user(user_id: uuid.UUID, caller: CallerDep, session: SessionDep) -> UserOut:
    _visible_to(caller, user_id)
    return UserOut.of(await accounts.get_active(session, user_id))


@users_router.put(
    "/users/{user_id}",
    response_model=UserOut,
    summary="Partially update a user, given the version read",
    description=(
        "Changing your own password or email needs `current_password`. A password or role change "
        "revokes the user's earlier access tokens."
    ),
    responses=problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
)
async def update_user(
    user_id: uuid.UUID,
    body: UpdateRequest,
    caller: CallerDep,
    session: SessionDep,
    passwords: PasswordsDep,
    throttle: ThrottleDep,
    revocations: RevocationsDep,
) -> UserOut:
    _visible_to(caller, user_id)
    if body.role is not None and not caller.is_privileged:
        raise Problem(403, "forbidden", "Only an admin may change a role.")
    # An admin (or the saga) changing someone else resets their account: there is no password of
    # theirs to prove. Changing their own account, an admin proves it like anyone.
    by_owner = caller.user_id == user_id or not caller.is_privileged
    updated = await accounts.update_user(
        session, passwords, user_id, body, by_owner=by_owner, throttle=throttle, revocations=revocations
    )
    return UserOut.of(updated)


@users_router.delete(
    "/users/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user (soft delete); their access tokens are revoked",
    responses=problem_responses(401, 404, 422, 503),
)
async def delete_user(
    user_id: uuid.UUID, caller: CallerDep, session: SessionDep, revocations: RevocationsDep
) -> Response:
    _visible_to(caller, user_id)
    await accounts.soft_delete(session, user_id, revocations=revocations)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@auth_router.post(
    "/auth/token",
    response_model=TokenOut,
    summary="Log in with the OAuth2 password form (username = email or username)",
    description="Failed attempts per account are limited: past the limit, 429 with Retry-After.",
    responses=problem_responses(401, 413, 422, 429, 503),
)
async def login(
    username: Annotated[str, Form(min_length=1, max_length=EMAIL_MAX, description="Email or username.")],
    password: Annotated[str, Form(min_length=1, max_length=PASSWORD_MAX)],
    response: Response,
    session: SessionDep,
    passwords: PasswordsDep,
    tokens: TokensDep,
    throttle: ThrottleDep,
    grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
) -> TokenOut:
    account = await accounts.throttle_key(session, username)
    async with passwords.reserved():  # shed (503) before the account's budget is touched
        await throttle.attempt(account)
        user = await accounts.authenticate(session, passwords, username, password)
    if user is None:
        log.info("login_failed")
        raise Problem(
            401,
            "invalid_credentials",
            "The username or password is wrong.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    await throttle.succeeded(account)
    issued = tokens.issue(
        user.id, "admin" if user.role == "admin" else "customer", token_version=user.token_version
    )
    log.info("login_succeeded", user_id=str(user.id))
    # RFC 6749 5.1: token responses must not be cached.
    response.headers["Cache-Control"] = "no-store"
    return TokenOut(access_token=issued.access_token, expires_in=issued.expires_in)


@auth_router.get("/.well-known/jwks.json", response_model=Jwks, summary="Public keys that sign access tokens")
async def jwks(response: Response, tokens: TokensDep) -> Jwks:
    response.headers["Cache-Control"] = "public, max-age=300"
    return Jwks.model_validate(tokens.jwks())


@internal_router.get(
    "/users/{user_id}",
    response_model=InternalUserOut,
    summary="A user as the saga sees it, deleted ones included (active=false)",
    responses=problem_responses(401, 403, 404, 422),
)
async def internal_user(user_id: uuid.UUID, _caller: ServiceDep, session: SessionDep) -> InternalUserOut:
    user = await accounts.get_any(session, user_id)
    return InternalUserOut(
        user_id=user.id,
        active=user.active,
        email=user.email,
        username=user.username,
        phone=user.phone,
        role=user.role,
    )


@internal_router.get(
    "/users/{user_id}/token-version",
    response_model=TokenVersionOut,
    summary="The user's current token version, which the gateway checks tokens' `ver` against",
    responses=problem_responses(401, 403, 404, 422),
)
async def internal_token_version(
    user_id: uuid.UUID, _caller: ServiceDep, session: SessionDep, response: Response
) -> TokenVersionOut:
    version, active = await accounts.token_version(session, user_id)
    response.headers["Cache-Control"] = "no-store"
    return TokenVersionOut(user_id=user_id, token_version=version, active=active)
