"""Temporal's remote codec protocol over HTTP, so that the Web UI and the CLI show decrypted payloads.

The UI posts `{"payloads": [...]}` (payloads in protobuf JSON) to `<endpoint>/decode` (and
`/encode`) and expects the same shape back. Start the dev server with
`temporal server start-dev --ui-codec-endpoint http://127.0.0.1:8089`. The same routes are also
served under `/codec`. It holds the payload keys: run it where only operators can reach it, and
give it `ORDERSAGA_CODEC_AUTH_TOKEN` (required with `ORDERSAGA_ENV=production`): every call must then
carry `Authorization: Bearer <token>` (docs/deploy.md says how the Web UI and the CLI send it).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from google.protobuf import json_format
from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict
from temporalio.api.common.v1 import Payload, Payloads

from services.kit.codec import CodecSettings, EncryptionCodec, payload_codec
from services.kit.errors import Problem, install_problem_handlers
from services.kit.middleware import BodySizeLimitMiddleware
from services.kit.secrets import SecretGuardedSettings

DEFAULT_PORT = 8089
# A workflow history page of payloads, with room to spare; Temporal caps one payload at 2 MiB.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

log = structlog.get_logger(__name__)


class CodecServerSettings(SecretGuardedSettings):
    """`CODEC_SERVER_*`; the keys themselves come from `ORDERSAGA_PAYLOAD_KEYS`."""

    model_config = SettingsConfigDict(env_prefix="CODEC_SERVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # The Web UI calls from the browser, so its origin must be allowed (dev server UI on :8233).
    cors_origins: list[str] = Field(default=["http://localhost:8233", "http://127.0.0.1:8233"])
    # Empty (development only, production refuses it): anyone who reaches the port may decode.
    auth_token: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("ORDERSAGA_CODEC_AUTH_TOKEN", "auth_token"),
        description="The bearer token every encode/decode call must present.",
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)


def create_app(
    codec: EncryptionCodec,
    cors_origins: Sequence[str] = (),
    *,
    auth_token: str = "",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    app = FastAPI(title="ordersaga payload codec", openapi_url=None)
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    # Added last, so outermost: the 401 and 413 answers carry CORS headers too, and the browser lets
    # the Web UI read them instead of reporting an opaque network error.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(cors_origins),
        allow_methods=["POST", "OPTIONS"],
        allow_headers=["Content-Type", "X-Namespace", "Authorization"],
    )
    expected = auth_token.encode()

    # Takes the Request rather than FastAPI's HTTPBearer: a closure's annotations cannot be resolved.
    async def authenticated(request: Request) -> None:
        if not expected:
            return
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        # Constant time, so the token cannot be guessed byte by byte from response times.
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
            raise Problem(
                401,
                "unauthenticated",
                "Send Authorization: Bearer <ORDERSAGA_CODEC_AUTH_TOKEN>.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def route(transform: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]) -> Any:
        async def handle(request: Request) -> dict[str, Any]:
            body = await request.body()
            try:
                payloads = json_format.Parse(body, Payloads())
            except (json_format.Error, ValueError, RecursionError) as exc:
                raise Problem(400, "invalid_payloads", "The body is not a JSON Payloads message.") from exc
            try:
                result = await transform(list(payloads.payloads))
            except Exception as exc:  # a wrong or unknown key, or a tampered payload
                raise Problem(422, "codec_failed", "The payloads could not be transformed.") from exc
            return json_format.MessageToDict(Payloads(payloads=result))

        return handle

    guarded = [Depends(authenticated)]
    for prefix in ("", "/codec"):
        app.add_api_route(f"{prefix}/encode", route(codec.encode), methods=["POST"], dependencies=guarded)
        app.add_api_route(f"{prefix}/decode", route(codec.decode), methods=["POST"], dependencies=guarded)
    return app


def serve(settings: CodecServerSettings | None = None, codec_settings: CodecSettings | None = None) -> None:
    """`ordersaga codec-server`: refuses to start without keys, since it would have nothing to do."""
    try:
        settings = settings or CodecServerSettings()
    except ValidationError as err:
        raise SystemExit("; ".join(problem["msg"] for problem in err.errors())) from None
    codec = payload_codec(codec_settings)
    if codec is None:
        raise SystemExit("ORDERSAGA_PAYLOAD_KEYS is not set: there is nothing to decode.")
    token = settings.auth_token.get_secret_value()
    if not token:
        log.warning("codec_server_unauthenticated", hint="set ORDERSAGA_CODEC_AUTH_TOKEN")
    app = create_app(codec, settings.cors_origins, auth_token=token, max_body_bytes=settings.max_body_bytes)
    uvicorn.run(app, host=settings.host, port=settings.port)
