"""The floor a Python gateway on this stack can reach: an ASGI app that relays each request to one
upstream over aiohttp's pool and does nothing else (no routing table, auth, limits, breaker, header
rules, metrics or logs). `gateway_overhead.py --bare-relay` measures it beside the real gateway, so
that what the gateway adds splits into what uvicorn, aiohttp and the extra hop cost anyway and what
the gateway's own work costs. Not part of the product.

    BARE_RELAY_UPSTREAM=http://127.0.0.1:8002 .venv/bin/uvicorn --app-dir benchmarks bare_relay:app
"""

from __future__ import annotations

import os

import aiohttp
from starlette.types import Receive, Scope, Send
from yarl import URL

UPSTREAM = os.environ.get("BARE_RELAY_UPSTREAM", "http://127.0.0.1:8002")
PREFIX = "/api/v1"
_DROPPED = (b"host", b"date", b"server")

_session: aiohttp.ClientSession | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _session
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        if _session is not None:
            await _session.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if _session is None:
        _session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
    url = URL(UPSTREAM + scope["path"].removeprefix(PREFIX), encoded=True)
    headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in _DROPPED]
    async with _session.request(scope["method"], url, headers=headers, allow_redirects=False) as answer:
        body = await answer.read()
        kept = [(k.lower(), v) for k, v in answer.raw_headers if k.lower() not in _DROPPED]
        await send({"type": "http.response.start", "status": answer.status, "headers": kept})
        await send({"type": "http.response.body", "body": body})
