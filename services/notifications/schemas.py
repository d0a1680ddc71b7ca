"""Request and response bodies of the notifications API."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from services.notifications.models import MAX_IDEMPOTENCY_KEY, MAX_RECIPIENT
from services.notifications.templates import TemplateName

ChannelName = Literal["email", "sms"]
# `unknown` is final: a send began and its outcome was never recorded; it is not re-sent.
StatusName = Literal["queued", "sent", "failed", "unknown"]

MAX_DATA_KEYS = 50
MAX_DATA_KEY_LENGTH = 64
MAX_DATA_BYTES = 16 * 1024

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


class NotificationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=MAX_IDEMPOTENCY_KEY)]
    user_id: uuid.UUID
    channel: ChannelName
    to: Annotated[str, StringConstraints(min_length=1, max_length=MAX_RECIPIENT, strip_whitespace=True)]
    template: TemplateName
    data: dict[str, Any] = Field(
        description=f"Template values: at most {MAX_DATA_KEYS} keys, {MAX_DATA_BYTES} bytes."
    )
    order_id: uuid.UUID | None = None

    @field_validator("data")
    @classmethod
    def _bounded_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_DATA_KEYS:
            raise ValueError(f"data has more than {MAX_DATA_KEYS} keys")
        if any(len(key) > MAX_DATA_KEY_LENGTH for key in value):
            raise ValueError(f"data keys are at most {MAX_DATA_KEY_LENGTH} characters")
        try:
            encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise ValueError("data must be JSON-serialisable") from None
        if len(encoded.encode()) > MAX_DATA_BYTES:
            raise ValueError(f"data exceeds {MAX_DATA_BYTES} bytes once encoded")
        return value

    @model_validator(mode="after")
    def _recipient_fits_channel(self) -> NotificationCreate:
        if self.channel == "email":
            try:
                self.to = validate_email(self.to, check_deliverability=False).normalized
            except EmailNotValidError:
                raise ValueError("to must be an email address for the email channel") from None
        elif not _E164.match(self.to):
            raise ValueError("to must be an E.164 phone number (+ and up to 15 digits) for the sms channel")
        return self

    def fingerprint(self) -> str:
        """Stable hash of the request, to tell a retry from a reuse of the key with another body."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class NotificationSummary(BaseModel):
    """What a customer sees in their list: never the address it went to."""

    id: uuid.UUID
    channel: ChannelName
    template: TemplateName
    status: StatusName
    order_id: uuid.UUID | None
    created_at: datetime
    sent_at: datetime | None


class NotificationOut(NotificationSummary):
    user_id: uuid.UUID
    to: str
    attempts: int
    last_error: str | None
