"""The public OpenAPI document: the services' own operations, exactly those the gateway routes.

It is merged from the services' FastAPI apps (built in-process, never started, so no database or
upstream is touched): for each route in the table, the owning service's operation is copied under
`/api/v1`, with the schemas it references. What is documented is therefore what is routed, and the
request and response shapes are the services' real ones.
"""

from __future__ import annotations

import copy
from typing import Any

from services.gateway.routes import PREFIX, ROUTES
from services.registry import SERVICES

_AUTH_DESCRIPTION = {
    "anyone": "No token needed.",
    "user": "Needs a bearer token.",
    "admin": "Needs a bearer token with the admin role (403 otherwise).",
}


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def service_documents() -> dict[str, dict[str, Any]]:
    documents = {}
    for name in sorted({route.upstream for route in ROUTES}):
        spec = SERVICES[name]
        settings = spec.settings(database_url="sqlite+aiosqlite:///:memory:", auto_migrate=False)
        documents[name] = spec.create_app(settings).openapi()
    return documents


def build_openapi(documents: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    documents = documents or service_documents()
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    for route in ROUTES:
        document = documents[route.upstream]
        operation = copy.deepcopy(document["paths"][route.path][route.method.lower()])
        operation["tags"] = [route.upstream]
        who = _AUTH_DESCRIPTION[route.access]
        operation["description"] = (operation.get("description", "") + "\n\n" + who).strip()
        if route.access != "anyone":
            operation["security"] = [{"bearer": []}]
        paths.setdefault(PREFIX + route.path, {})[route.method.lower()] = operation
        available = document.get("components", {}).get("schemas", {})
        pending = _refs(operation)
        while pending:
            name = pending.pop()
            schema = available[name]
            if name in schemas:
                if schemas[name] != schema:
                    raise ValueError(f"schema {name!r} differs between services")
                continue
            schemas[name] = schema
            pending |= _refs(schema) - schemas.keys()
    paths["/.well-known/jwks.json"] = {
        "get": {
            "summary": "Public keys that sign access tokens (the users service's, cached)",
            "tags": ["auth"],
            "responses": {"200": {"description": "JWKS"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ordersaga public API",
            "version": "1.0.0",
            "description": "Served by the gateway. Errors are application/problem+json (RFC 9457)"
            " with a `code`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }
