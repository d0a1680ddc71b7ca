"""Temporal's remote codec protocol over HTTP, so that the Web UI and the CLI show decrypted payloads.

The UI posts `{"payloads": [...]}` (payloads in protobuf JSON) to `<endpoint>/decode` (and
`/encode`) and expects the same shape back. Start the dev server with
`temporal server start-dev --ui-codec-endpoint http://127.0.0.1:8089`. The same routes are also
served under `/codec`. It holds the payload keys: run it where only operators can reach it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from google.protobuf import json_format
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.api.common.v1 import Payload, Payloads

from services.kit.codec import CodecSettings, EncryptionCodec, payload_codec
from services.kit.errors import Problem, install_problem_handlers

DEFAULT_PORT = 8089


class CodecServerSettings(BaseSettings):
    """`CODEC_SERVER_*`; the keys themselves come from `ORDERSAGA_PAYLOAD_KEYS`."""

    model_config = SettingsConfigDict(env_prefix="CODEC_SERVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # The Web UI calls from the browser, so its origin must be allowed (dev server UI on :8233).
    cors_origins: list[str] = Field(default=["http://localhost:8233", "http://127.0.0.1:8233"])


def create_app(codec: EncryptionCodec, cors_origins: Sequence[str] = ()) -> FastAPI:
    app = FastAPI(title="ordersaga payload codec", openapi_url=None)
    install_problem_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(cors_origins),
        allow_methods=["POST", "OPTIONS"],
        allow_headers=["Content-Type", "X-Namespace", "Authorization"],
    )

    def route(transform: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]) -> Any:
        async def handle(request: Request) -> dict[str, Any]:
            try:
                payloads = json_format.Parse(await request.body(), Payloads())
            except (json_format.ParseError, UnicodeDecodeError) as exc:
                raise Problem(400, "invalid_payloads", "The body is not a JSON Payloads message.") from exc
            try:
                result = await transform(list(payloads.payloads))
            except Exception as exc:  # a wrong or unknown key, or a tampered payload
                raise Problem(422, "codec_failed", "The payloads could not be transformed.") from exc
            return json_format.MessageToDict(Payloads(payloads=result))

        return handle

    for prefix in ("", "/codec"):
        app.add_api_route(f"{prefix}/encode", route(codec.encode), methods=["POST"])
        app.add_api_route(f"{prefix}/decode", route(codec.decode), methods=["POST"])
    return app


def serve(settings: CodecServerSettings | None = None, codec_settings: CodecSettings | None = None) -> None:
    """`ordersaga codec-server`: refuses to start without keys, since it would have nothing to do."""
    settings = settings or CodecServerSettings()
    codec = payload_codec(codec_settings)
    if codec is None:
        raise SystemExit("ORDERSAGA_PAYLOAD_KEYS is not set: there is nothing to decode.")
    uvicorn.run(create_app(codec, settings.cors_origins), host=settings.host, port=settings.port)
