"""The users table. Emails are stored lowercased, so one unique constraint makes them case-insensitive."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from services.kit.models import UTCDateTime, new_id, utcnow

# Named so that the IntegrityError of either backend tells which one was violated.
EMAIL_CONSTRAINT = "uq_users_email"
USERNAME_CONSTRAINT = "uq_users_username"

EMAIL_MAX = 320
USERNAME_MAX = 32
NAME_MAX = 100
AVATAR_MAX = 2048
BIO_MAX = 2000
PHONE_MAX = 16


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("email", name=EMAIL_CONSTRAINT),
        UniqueConstraint("username", name=USERNAME_CONSTRAINT),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    email: str = Field(max_length=EMAIL_MAX)
    username: str = Field(max_length=USERNAME_MAX)
    password_hash: str = Field(max_length=512)
    role: str = Field(default="customer", max_length=16)
    first_name: str | None = Field(default=None, max_length=NAME_MAX)
    last_name: str | None = Field(default=None, max_length=NAME_MAX)
    avatar: str | None = Field(default=None, max_length=AVATAR_MAX)
    bio: str | None = Field(default=None, max_length=BIO_MAX)
    phone: str | None = Field(default=None, max_length=PHONE_MAX)
    version: int = Field(default=1)
    # Bumped by a password change, a role change and a deletion; tokens carry it as `ver`, and one
    # whose `ver` is not the current value is refused, so those changes revoke earlier tokens.
    token_version: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    # Soft delete: the row stays (its email and username stay taken) so the saga can see `active: false`.
    deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def active(self) -> bool:
        return self.deleted_at is None


PROFILE_FIELDS: tuple[str, ...] = ("first_name", "last_name", "avatar", "bio", "phone")
