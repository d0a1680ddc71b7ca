"""Demo controls: kill and restart children of `ordersaga up` from the console, as an admin.

The routes exist only when `GATEWAY_DEMO_CONTROL_URL` points at the supervisor's control endpoint
(ordersaga/supervisor.py `ControlServer`, localhost only, its own bearer token), which only
`ordersaga up` sets; production settings refuse it. They are not under `/api/v1`: they are no part
of the public API and never in its OpenAPI document.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.kit.errors import Problem, problem_response

if TYPE_CHECKING:
    from services.gateway.app import Gateway


# The supervisor's children: `worker`, `inventory`, `orders-2`... Anything else (a NUL, a newline,
# `..`) is no process, and must not reach the relayed URL, where it would be refused (a 500) or
# walk to another of the supervisor's paths.
PROCESS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def install_demo_controls(ops: FastAPI, gateway: Gateway) -> None:
    settings = gateway.settings
    if not settings.demo_control_url:
        return
    base = settings.demo_control_url.rstrip("/")
    headers = {"Authorization": f"Bearer {settings.demo_control_token}"}

    async def admin_only(request: Request) -> None:
        claims = await gateway.authenticate(request.headers.get("authorization"))
        if claims is None:
            raise Problem(
                401, "unauthenticated", "Authentication is required.", headers={"WWW-Authenticate": "Bearer"}
            )
        if claims.role != "admin":
            raise Problem(403, "forbidden", "This action needs the admin role.")

    async def relay(method: str, path: str) -> JSONResponse:
        try:
            # A restart waits for the child to be healthy again: up to a worker's start time.
            answer = await gateway.client.request(method, base + path, headers=headers, timeout=150.0)
        except httpx.HTTPError as exc:
            return problem_response(503, "supervisor_unavailable", f"The supervisor did not answer: {exc!r}")
        media_type = answer.headers.get("content-type", "application/json")
        return JSONResponse(answer.json(), status_code=answer.status_code, media_type=media_type)

    @ops.get("/demo/processes", include_in_schema=False)
    async def processes(request: Request) -> JSONResponse:
        await admin_only(request)
        return await relay("GET", "/processes")

    @ops.post("/demo/processes/{name}/{action}", include_in_schema=False)
    async def act(request: Request, name: str, action: Literal["kill", "restart"]) -> JSONResponse:
        await admin_only(request)
        if not PROCESS_NAME.fullmatch(name):
            return problem_response(404, "unknown_process", "No controllable process of that name.")
        return await relay("POST", f"/processes/{name}/{action}")
