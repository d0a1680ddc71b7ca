"""Request and response bodies of the users service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, EmailStr, Field, SecretStr, StringConstraints, model_validator

from services.users.models import AVATAR_MAX, BIO_MAX, NAME_MAX, USERNAME_MAX, User
from services.users.passwords import PASSWORD_MAX, PASSWORD_MIN

Username = Annotated[str, StringConstraints(min_length=3, max_length=USERNAME_MAX, pattern=r"^[a-z0-9_.-]+$")]
Password = Annotated[SecretStr, Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX)]
Avatar = Annotated[str, StringConstraints(max_length=AVATAR_MAX, pattern=r"^https?://[^\s]+$")]
Bio = Annotated[str, StringConstraints(max_length=BIO_MAX)]
Phone = Annotated[str, StringConstraints(pattern=r"^\+[1-9]\d{1,14}$")]
Role = Literal["customer", "admin"]


class ProfileIn(BaseModel):
    """Every field is optional; in an update, a field left out is unchanged and `null` clears it."""

    model_config = ConfigDict(extra="forbid")

    first_name: Name | None = None
    last_name: Name | None = None
    avatar: Avatar | None = Field(default=None, description="An http(s) URL.")
    bio: Bio | None = None
    phone: Phone | None = Field(default=None, description="E.164, for example +14155550123.")


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    username: Username
    password: Password
    profile: ProfileIn | None = None


class UpdateRequest(BaseModel):
    """A partial update; `version` is the one the client read, so a concurrent change is not lost."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=2**31 - 1)
    email: EmailStr | None = None
    username: Username | None = None
    password: Password | None = None
    role: Role | None = Field(default=None, description="Admins only.")
    profile: ProfileIn | None = None
    current_password: SecretStr | None = Field(
        default=None,
        max_length=PASSWORD_MAX,
        description=(
            "Required to change your own password or email (422 `current_password_required`; "
            "a wrong one is 403 `current_password_wrong`). Not needed by an admin changing another user."
        ),
    )

    @model_validator(mode="after")
    def _no_null_for_required_fields(self) -> Self:
        # These cannot be cleared; `null` is refused rather than silently read as "unchanged".
        for name in ("email", "username", "password", "role", "profile", "current_password"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class Profile(BaseModel):
    first_name: str | None
    last_name: str | None
    avatar: str | None
    bio: str | None
    phone: str | None


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    username: str
    role: Role
    profile: Profile
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            email=user.email,
            username=user.username,
            role=user.role,
            profile=Profile(
                first_name=user.first_name,
                last_name=user.last_name,
                avatar=user.avatar,
                bio=user.bio,
                phone=user.phone,
            ),
            created_at=user.created_at,
            updated_at=user.updated_at,
            version=user.version,
        )


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


class InternalUserOut(BaseModel):
    """What the saga needs to validate a customer and to notify them."""

    user_id: uuid.UUID
    active: bool
    email: str
    username: str
    phone: str | None
    role: Role


class TokenVersionOut(BaseModel):
    """What the gateway checks a token's `ver` claim against."""

    user_id: uuid.UUID
    token_version: int
    active: bool


class Jwk(BaseModel):
    kty: str
    n: str
    e: str
    kid: str
    alg: str
    use: str


class Jwks(BaseModel):
    keys: list[Jwk]
