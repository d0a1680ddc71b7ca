"""The codec server (`ordersaga codec-server`) over real HTTP: bearer token, body limit, bad bodies."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from ordersaga.codec_server import DEFAULT_MAX_BODY_BYTES
from services.kit.codec import new_key_spec
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, tcp_open

UI_ORIGIN = "http://localhost:8233"
TOKEN = secrets.token_hex(16)
PLAIN = Payloads(
    payloads=[Payload(metadata={"encoding": b"json/plain"}, data=b'{"email":"ada@example.com"}')]
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORDERSAGA_", "CODEC_SERVER_"))}
    return {**env, "ORDERSAGA_PAYLOAD_KEYS": new_key_spec("k1"), **extra}


@pytest.fixture(scope="module")
def codec_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = _env(ORDERSAGA_ENV="production", ORDERSAGA_CODEC_AUTH_TOKEN=TOKEN, CODEC_SERVER_PORT=str(port))
    log = tmp_path_factory.mktemp("codec") / "codec-server.log"
    server = ManagedProcess(
        "codec-server",
        [str(VENV_BIN / "ordersaga"), "codec-server"],
        log,
        env=env,
        ready=lambda: tcp_open(port),
    )
    server.env = env  # only the variables above, not the test runner's ORDERSAGA_*
    server.start(timeout=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _body(payloads: Payloads) -> str:
    return json_format.MessageToJson(payloads)


def test_an_anonymous_or_wrongly_authenticated_call_is_refused(codec_url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer " + "0" * 32}, {"Authorization": f"Basic {TOKEN}"}):
        response = httpx.post(
            f"{codec_url}/decode", content=_body(PLAIN), headers={"Origin": UI_ORIGIN, **headers}
        )
        assert response.status_code == 401, headers
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        # The Web UI can read the refusal (CORS headers on the error too) instead of a network error.
        assert response.headers["access-control-allow-origin"] == UI_ORIGIN
        assert "ada@example.com" not in response.text


def test_the_token_opens_encode_and_decode_and_the_ui_may_send_it(codec_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "Origin": UI_ORIGIN}
    encoded = httpx.post(f"{codec_url}/codec/encode", content=_body(PLAIN), headers=auth)
    assert encoded.status_code == 200, encoded.text
    sealed = json_format.ParseDict(encoded.json(), Payloads())
    assert sealed.payloads[0].metadata["encoding"] == b"binary/encrypted"
    assert b"ada@example.com" not in sealed.payloads[0].data

    decoded = httpx.post(f"{codec_url}/decode", content=_body(sealed), headers=auth)
    assert decoded.status_code == 200, decoded.text
    assert json_format.ParseDict(decoded.json(), Payloads()) == PLAIN
    assert decoded.headers["access-control-allow-origin"] == UI_ORIGIN

    # The browser's preflight, before it sends the Authorization header cross-origin.
    preflight = httpx.options(
        f"{codec_url}/decode",
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN


def test_an_oversized_body_is_413_whether_declared_or_streamed(codec_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    big = b'{"payloads":[{"data":"' + b"A" * DEFAULT_MAX_BODY_BYTES + b'"}]}'
    declared = httpx.post(f"{codec_url}/decode", content=big, headers=auth)
    assert declared.status_code == 413
    assert declared.headers["content-type"] == "application/problem+json"
    assert declared.json()["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while the body streams in
        for start in range(0, len(big), 256 * 1024):
            yield big[start : start + 256 * 1024]

    try:
        streamed = httpx.post(f"{codec_url}/decode", content=chunks(), headers=auth)
    except httpx.RemoteProtocolError:
        pytest.fail("the server dropped the connection instead of answering 413")
    assert streamed.status_code == 413
    assert streamed.json()["code"] == "payload_too_large"

    # Just under the limit is still served.
    fits = _body(Payloads(payloads=[Payload(metadata={"encoding": b"json/plain"}, data=b"x" * 1024 * 1024)]))
    assert httpx.post(f"{codec_url}/encode", content=fits, headers=auth, timeout=30).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"null",
        b'"x"',
        b"[" * 100_000,
        b'{"payloads": 5}',
        b'{"payloads":[null]}',
        b"\xff\xfe",
    ],
    ids=["empty", "text", "null", "string", "deep", "wrong-type", "null-payload", "not-utf8"],
)
def test_a_malformed_body_is_400_not_500(codec_url: str, body: bytes) -> None:
    response = httpx.post(f"{codec_url}/decode", content=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_payloads"


def test_production_refuses_to_start_the_codec_server_without_a_token(tmp_path: Path) -> None:
    for token in ("", "change-me", "short-token"):
        run = subprocess.run(
            [str(VENV_BIN / "ordersaga"), "codec-server"],
            env=_env(ORDERSAGA_ENV="production", ORDERSAGA_CODEC_AUTH_TOKEN=token, CODEC_SERVER_PORT="1"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode != 0, token
        assert "ORDERSAGA_CODEC_AUTH_TOKEN" in run.stderr, run.stderr
