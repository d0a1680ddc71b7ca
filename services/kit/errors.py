"""RFC 9457 problem details with a machine-readable `code`, for every error a service returns."""

from __future__ import annotations

import errno
import socket
import sqlite3
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://ordersaga.dev/problems/"

log = structlog.get_logger(__name__)

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


class Problem(Exception):
    """Raise anywhere in a request to answer with problem+json."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers
        self.extensions = extensions


class BodyTooLarge(StarletteHTTPException):
    """Raised by the body-size guard while a request body is streamed in.

    An HTTPException, because FastAPI turns any other error raised while it reads a body into a
    400 ("error parsing the body"); this one it re-raises, so a chunked oversized body is a 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


def problem_response(
    status: int,
    code: str,
    detail: str | None = None,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or HTTPStatus(status).description,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def problem_answer(problem: Problem, instance: str) -> JSONResponse:
    """The problem+json answer to a raised Problem, for the request at path `instance`."""
    return problem_response(
        problem.status,
        problem.code,
        problem.detail,
        title=problem.title,
        instance=instance,
        headers=problem.headers,
        **problem.extensions,
    )


def too_large(exc: BodyTooLarge) -> Problem:
    return Problem(413, "payload_too_large", exc.detail)


def internal_error() -> Problem:
    """What an unexpected error answers: nothing of its cause reaches the caller."""
    return Problem(500, "internal_error", "An unexpected error occurred.")


# What a caller is told to wait before retrying a 503: about the time a restarted database or saga
# engine takes to answer again, and well inside any client's patience.
RETRY_AFTER_SECONDS = 2

# sqlite3.OperationalError messages that mean the file or the disk is away, not that the SQL is wrong.
# "database is locked" is a lock wait that ran out (busy timeout): transient too, worth a retry.
_SQLITE_UNAVAILABLE = ("unable to open database", "disk i/o error", "database is locked", "disk is full")
_CONNECTION_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EPIPE,
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what caused it: SQLAlchemy wraps the driver's error, which wraps asyncpg's."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        # SQLAlchemy keeps the driver's exception in `orig`, not always as the cause.
        orig = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__ or current.__context__


def _is_connection_level(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free within pool_timeout
        return True
    if isinstance(exc, sa_exc.DisconnectionError):  # a pooled connection failed its checkout ping
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return any(part in message for part in _SQLITE_UNAVAILABLE)
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError  # class 08: the connection failed or was lost
        | asyncpg.CannotConnectNowError  # 57P03: starting up or shutting down
        | asyncpg.AdminShutdownError  # 57P01: the server is stopping
        | asyncpg.CrashShutdownError  # 57P02
        | asyncpg.QueryCanceledError  # 57014: statement_timeout
        | asyncpg.TooManyConnectionsError,  # 53300
    ):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return "connection" in str(exc).lower() and "closed" in str(exc).lower()
    # TimeoutError (a connect or command timeout) and refused or reset connections are OSErrors.
    if isinstance(exc, TimeoutError | ConnectionError | socket.gaierror):
        return True
    return isinstance(exc, OSError) and exc.errno in _CONNECTION_ERRNOS


def outage_cause(exc: BaseException) -> BaseException | None:
    """The link of `exc`'s chain that says a dependency (the database) is unreachable or timed out,
    so that a retry later may succeed; None for everything that is our own bug or the request's
    fault (an IntegrityError, a ProgrammingError), however it is wrapped."""
    for link in _chain(exc):
        if isinstance(link, sa_exc.IntegrityError | sa_exc.ProgrammingError | sqlite3.IntegrityError):
            return None
        if isinstance(link, asyncpg.IntegrityConstraintViolationError | asyncpg.SyntaxOrAccessError):
            return None
        if _is_connection_level(link):
            return link
    return None


def unavailable_dependency(exc: BaseException) -> bool:
    return outage_cause(exc) is not None


def _cause_text(cause: BaseException) -> str:
    # Only the driver's own message: SQLAlchemy's text carries the statement and its parameters.
    inner = cause.orig if isinstance(cause, sa_exc.DBAPIError) and cause.orig is not None else cause
    return f"{type(inner).__name__}: {inner}"[:300]


def dependency_unavailable(
    detail: str = "A service this request needs is not reachable right now.",
) -> Problem:
    """503 with Retry-After: nothing was done, and the same request later is expected to work."""
    return Problem(503, "dependency_unavailable", detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def _safe_validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # pydantic puts the offending input in each error; it may be a password or a card number.
    return [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_answer(exc, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES_BY_STATUS.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(
            exc.status_code, code, detail, instance=request.url.path, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _safe_validation_errors(exc)
        if any(err["type"] == "json_invalid" for err in errors):
            return problem_response(
                400, "malformed_json", "The request body is not valid JSON.", instance=request.url.path
            )
        return problem_response(
            422,
            "validation_error",
            "The request does not match the schema.",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return problem_answer(too_large(exc), request.url.path)

    # Registered for the exception types a down database raises (rather than only in the catch-all
    # below) so that they are answered inside the middleware stack like any other problem.
    async def _driver_error(request: Request, exc: Exception) -> JSONResponse:
        if (cause := outage_cause(exc)) is not None:
            log.warning("dependency_unavailable", path=request.url.path, error=_cause_text(cause))
            return problem_answer(dependency_unavailable(), request.url.path)
        log.exception("unhandled_error", path=request.url.path)
        return problem_answer(internal_error(), request.url.path)

    for kind in (sa_exc.SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        app.add_exception_handler(kind, _driver_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if unavailable_dependency(exc):  # wrapped in something else, e.g. an ExceptionGroup's cause
            return await _driver_error(request, exc)
        log.exception("unhandled_error", path=request.url.path)
        return problem_answer(internal_error(), request.url.path)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem+json answers."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
