"""Keyset pagination over (created_at, id): stable pages however rows are inserted meanwhile."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import and_, or_

from services.kit.errors import Problem
from services.kit.pagination import decode_cursor, encode_cursor


def cursor_for(created_at: datetime, row_id: uuid.UUID) -> str:
    return encode_cursor(created_at.isoformat(), row_id)


def read_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    raw_created, raw_id = decode_cursor(cursor, 2)
    try:
        created, row_id = datetime.fromisoformat(raw_created), uuid.UUID(raw_id)
    except ValueError:
        raise Problem(422, "invalid_cursor", "The cursor cannot be read.") from None
    if created.tzinfo is None:
        raise Problem(422, "invalid_cursor", "The cursor cannot be read.")
    return created, row_id


def after(created_column: Any, id_column: Any, cursor: str, *, descending: bool) -> Any:
    """The WHERE clause selecting rows strictly after the cursor in the list's order."""
    created, row_id = read_cursor(cursor)
    if descending:
        return or_(created_column < created, and_(created_column == created, id_column < row_id))
    return or_(created_column > created, and_(created_column == created, id_column > row_id))


class _Keyed(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


Row = TypeVar("Row", bound=_Keyed)


def split_page(rows: Sequence[Row], limit: int) -> tuple[list[Row], str | None]:
    """Given up to limit + 1 rows, the page and the cursor of the next one (None on the last page)."""
    if len(rows) <= limit:
        return list(rows), None
    page = list(rows[:limit])
    return page, cursor_for(page[-1].created_at, page[-1].id)
