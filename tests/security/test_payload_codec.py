"""Workflow payloads are encrypted in Temporal's history; the codec server gives operators them back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client
from temporalio.converter import DataConverter

from ordersaga.codec_server import create_app
from ordersaga.replay import replay_histories
from services.kit.codec import CodecSettings, EncryptionCodec, data_converter, new_key_spec, parse_keys
from tests.support.driver import Driver
from tests.support.identity import INTERNAL_TOKEN
from tests.support.stack import Stack
from workers.main import running_worker
from workers.settings import WorkerSettings
from workflows.order import OrderWorkflow
from workflows.payloads import OrderInput, OrderLine, OrderResult, workflow_id_for

UI_ORIGIN = "http://localhost:8233"


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every Payload anywhere inside a protobuf message (inputs, results, failures, headers, ...)."""
    if isinstance(message, Payload):
        yield path, message
        return
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        where = f"{path}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    yield from payloads_in(item, f"{where}[{key}]")
        elif field.is_repeated:
            for index, item in enumerate(value):
                yield from payloads_in(item, f"{where}[{index}]")
        else:
            yield from payloads_in(value, where)


# The SDK core's own bookkeeping for a local activity (sequence number, activity type, attempt,
# times) is written beside the result without the codec; it holds no data of ours.
# A `workflow.patched` marker likewise holds only the patch's name ({"id": ..., "deprecated": ...}).
CORE_BOOKKEEPING = frozenset(
    {
        ".marker_recorded_event_attributes.details[data].payloads[0]",
        ".marker_recorded_event_attributes.details[patch-data].payloads[0]",
    }
)


def codec_with(*kids: str) -> tuple[EncryptionCodec, str]:
    spec = ",".join(new_key_spec(kid) for kid in kids)
    return EncryptionCodec(parse_keys(spec)), spec


async def test_rotation_keeps_old_payloads_readable_and_unknown_keys_fail() -> None:
    old, old_spec = codec_with("k1")
    sealed = await old.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"alice@example.com"')])
    assert sealed[0].metadata["encryption-key-id"] == b"k1"
    assert b"alice" not in sealed[0].data

    # Rotation: a new current key first, the old one still listed.
    rotated = EncryptionCodec(parse_keys(new_key_spec("k2") + "," + old_spec))
    assert (await rotated.decode(sealed))[0].data == b'"alice@example.com"'
    assert (await rotated.encode(sealed))[0].metadata["encryption-key-id"] == b"k2"

    # Dropped key, or a payload relabelled with another key id: refused, never garbage.
    stranger, _ = codec_with("k3")
    with pytest.raises(ValueError, match="k1"):
        await stranger.decode(sealed)
    relabelled = Payload()
    relabelled.CopyFrom(sealed[0])
    relabelled.metadata["encryption-key-id"] = b"k2"
    with pytest.raises(Exception):  # noqa: B017 - AESGCM raises InvalidTag
        await rotated.decode([relabelled])

    # Plain payloads from before the codec was turned on pass through.
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b"1")
    assert (await rotated.decode([plain]))[0] == plain


def test_codec_is_off_without_keys_and_refuses_bad_keys() -> None:
    assert data_converter(CodecSettings(payload_keys="")) is DataConverter.default
    for bad in ("nokid", "k:not-base64!", "k:" + "QUJD", new_key_spec("k") + "," + new_key_spec("k")):
        with pytest.raises(ValueError):
            parse_keys(bad)


@pytest.mark.slow
@pytest.mark.temporal
async def test_stored_history_holds_only_ciphertext_and_the_codec_server_decrypts_it(
    driver: Driver, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = CodecSettings(payload_keys=new_key_spec("2026-11"))
    codec = EncryptionCodec(settings.keys())
    customer = await driver.customer()
    product = await driver.product(stock=5, price_cents=1_234)
    worker_settings = WorkerSettings(
        internal_token=INTERNAL_TOKEN,
        users_url=stack.url("users"),
        inventory_url=stack.url("inventory"),
        payments_url=stack.url("payments"),
        orders_url=stack.url("orders"),
        notifications_url=stack.url("notifications"),
    )
    encrypted = await Client.connect(stack.temporal_address, data_converter=data_converter(settings))
    order_id = str(uuid.uuid4())
    await driver.record_order(order_id, customer, [(product, 2)])  # the saga marks it started
    async with running_worker(encrypted, worker_settings, task_queue="orders-codec"):
        result: OrderResult = await encrypted.execute_workflow(
            OrderWorkflow.run,
            OrderInput(order_id, customer.user_id, customer.payment_method_id, [OrderLine(product, 2)]),
            id=workflow_id_for(order_id),
            task_queue="orders-codec",
        )
    assert result.status == "CONFIRMED"

    # Read the history as it is stored, through a client that has no keys.
    raw = await Client.connect(stack.temporal_address)
    history = await raw.get_workflow_handle(workflow_id_for(order_id)).fetch_history()
    found = [(path, p) for event in history.events for path, p in payloads_in(event)]
    # Search attributes are the visibility index, never encoded by a codec; the SDK records a
    # patch's name there (TemporalChangeVersion). The secrets check above covers them too.
    stored = [p for path, p in found if path not in CORE_BOOKKEEPING and "search_attributes" not in path]
    assert len(stored) >= 10, "the saga's inputs and results should all be in the history"
    secrets = [customer.email, customer.user_id, customer.payment_method_id, product, order_id]
    for _, payload in found:
        for secret in secrets:
            assert secret.encode() not in payload.data
    for payload in stored:
        assert payload.metadata["encoding"] == b"binary/encrypted", payload
        assert payload.metadata["encryption-key-id"] == b"2026-11"
    # The email in particular appears nowhere in the history, payload or not.
    assert customer.email.encode() not in b"".join(e.SerializeToString() for e in history.events)

    # An operator's Web UI posts the stored payloads to the codec server and sees the plain data.
    app = create_app(codec, [UI_ORIGIN])
    body: dict[str, Any] = json_format.MessageToDict(Payloads(payloads=stored))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec") as http:
        response = await http.post(
            "/decode", json=body, headers={"Origin": UI_ORIGIN, "X-Namespace": "default"}
        )
        preflight = await http.options(
            "/codec/decode",
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            },
        )
        tampered = await http.post(
            "/codec/decode",
            json={"payloads": [{"metadata": body["payloads"][0]["metadata"], "data": "AAAA"}]},
        )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    assert preflight.status_code == 200
    assert tampered.status_code == 422
    decoded = json_format.ParseDict(response.json(), Payloads()).payloads
    plain = b"".join(p.data for p in decoded)
    assert all(p.metadata["encoding"] != b"binary/encrypted" for p in decoded)
    for secret in (customer.email, customer.user_id, product, order_id):
        assert secret.encode() in plain

    # `ordersaga replay` reads the same keys from the environment and replays the encrypted history.
    monkeypatch.setenv("ORDERSAGA_PAYLOAD_KEYS", settings.payload_keys)
    [outcome] = await replay_histories([("encrypted", history)])
    assert outcome.ok, outcome.reason
