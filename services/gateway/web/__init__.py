"""The web pages served by the gateway at `/`: a shop, order tracking and an operator console.

Static HTML, CSS and JavaScript modules (no build step), using only the public API under `/api/v1`
from the same origin. Served by the gateway's own FastAPI app, so neither the API's
authentication, rate limits nor its 404 handler apply to them. Every page and asset carries a
strict Content-Security-Policy (no inline script, no framing, same-origin connections only).
The token lives in the page's memory only: no cookie is set, so there is no CSRF surface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from services.gateway.settings import Settings

STATIC = Path(__file__).parent / "static"

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class _SecuredStatic(StaticFiles):
    """Static assets with the pages' security headers; revalidated, so an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "no-cache"
        return response


def web_config(settings: Settings) -> dict[str, Any]:
    """What the pages need to know of the deployment; no secret goes here."""
    return {
        "temporal_ui_url": settings.temporal_ui_url.rstrip("/") or None,
        "temporal_namespace": settings.temporal_ui_namespace,
        "demo_controls": bool(settings.demo_control_url),
    }


def install_web(ops: FastAPI, settings: Settings) -> None:
    """`/` (the single page), `/static/...` and `/web/config.json` on the gateway's own app."""

    @ops.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    @ops.get("/web/config.json", include_in_schema=False)
    async def config() -> JSONResponse:
        return JSONResponse(web_config(settings), headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    ops.mount("/static", _SecuredStatic(directory=STATIC), name="web-static")
