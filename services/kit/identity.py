"""Who is calling: identity headers set by the gateway (or the saga), trusted only with the internal token.

The gateway verifies the user's JWT, strips any identity headers the client sent, and forwards
`X-Ordersaga-User-Id` and `X-Ordersaga-Role` together with the shared internal credential
`X-Ordersaga-Internal-Token`. A service ignores identity headers that arrive without that credential.

The dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency in
a worker thread, a thread hop per dependency per request for a header read. The same holds for the
services' other dependencies that only read `app.state` or a parameter.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request

from services.kit.errors import Problem

USER_ID_HEADER = "x-ordersaga-user-id"
ROLE_HEADER = "x-ordersaga-role"
INTERNAL_TOKEN_HEADER = "x-ordersaga-internal-token"

Role = Literal["customer", "admin", "service"]
ROLES: tuple[Role, ...] = ("customer", "admin", "service")


@dataclass(frozen=True)
class Identity:
    role: Role
    user_id: uuid.UUID | None = None

    @property
    def is_privileged(self) -> bool:
        """Admins and the saga itself see every resource."""
        return self.role in ("admin", "service")

    def owns(self, owner_id: uuid.UUID) -> bool:
        return self.is_privileged or self.user_id == owner_id


def identity_headers(
    internal_token: str, role: Role, user_id: uuid.UUID | str | None = None
) -> dict[str, str]:
    """The headers a trusted caller (gateway, saga activity) sends to a service."""
    headers = {INTERNAL_TOKEN_HEADER: internal_token, ROLE_HEADER: role}
    if user_id is not None:
        headers[USER_ID_HEADER] = str(user_id)
    return headers


def read_identity(request: Request) -> Identity | None:
    token = request.headers.get(INTERNAL_TOKEN_HEADER)
    expected: str = request.app.state.settings.internal_token
    if not token or not hmac.compare_digest(token.encode(), expected.encode()):
        return None
    role = request.headers.get(ROLE_HEADER)
    if role not in ROLES:
        return None
    raw_user = request.headers.get(USER_ID_HEADER)
    user_id: uuid.UUID | None = None
    if raw_user:
        try:
            user_id = uuid.UUID(raw_user)
        except ValueError:
            return None
    if role != "service" and user_id is None:
        return None
    return Identity(role=role, user_id=user_id)


async def optional_identity(request: Request) -> Identity | None:
    return read_identity(request)


async def require_identity(request: Request) -> Identity:
    identity = read_identity(request)
    if identity is None:
        raise Problem(401, "unauthenticated", "Authentication is required.")
    return identity


async def require_admin(identity: Annotated[Identity, Depends(require_identity)]) -> Identity:
    if not identity.is_privileged:
        raise Problem(403, "forbidden", "This action needs the admin role.")
    return identity


async def require_service(identity: Annotated[Identity, Depends(require_identity)]) -> Identity:
    """Saga-only endpoints: charge, refund, reserve, release, commit, order commands."""
    if identity.role != "service":
        raise Problem(403, "forbidden", "Only the order saga may call this endpoint.")
    return identity


async def require_customer(identity: Annotated[Identity, Depends(require_identity)]) -> Identity:
    if identity.role != "customer" or identity.user_id is None:
        raise Problem(403, "forbidden", "This action is for customers.")
    return identity


CallerDep = Annotated[Identity, Depends(require_identity)]
OptionalCallerDep = Annotated[Identity | None, Depends(optional_identity)]
AdminDep = Annotated[Identity, Depends(require_admin)]
ServiceDep = Annotated[Identity, Depends(require_service)]
CustomerDep = Annotated[Identity, Depends(require_customer)]


def require_owner(caller: Identity, user_id: uuid.UUID) -> None:
    """A user's resources exist only for that user and admins; to anyone else they answer 404,
    so that ids cannot be probed for existence."""
    if not caller.owns(user_id):
        raise Problem(404, "user_not_found", "No user has this id.")
