"""The README's quickstart, run against `ordersaga up` exactly as a newcomer would."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ordersaga.smtp_sink import read_mailbox
from tests.e2e.conftest import ARTIFACTS, UpProcess, start_up
from tests.support.prerequisites import chromium_path
from tests.support.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

WAIT_FOR_CONFIRMATION = (
    "for _ in $(seq 60); do\n"
    '  curl -s -H "$AUTH" $API/orders/$ORDER | grep -q CONFIRMED && exit 0; sleep 1\n'
    "done; exit 1\n"
)


def login(api: str, email: str, password: str) -> tuple[str, str]:
    response = httpx.post(f"{api}/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    payload = token.split(".")[1]
    user_id = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
    return token, user_id


def wait_for_saga(api: str, token: str, order_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = httpx.get(f"{api}/orders/{order_id}/saga", headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 200:
            view = response.json()
            done = {s["name"]: s["status"] for s in view["steps"]}["notify_customer"] == "done"
            if view["status"] in ("completed", "compensated") and done:
                return view
        time.sleep(0.3)
    raise AssertionError(f"saga of {order_id} did not finish: {view}")


def wait_for_mail(maildir: Path, recipient: str, text: str, timeout: float = 30) -> bool:
    """The local SMTP sink of `up` received a message to `recipient` that mentions `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in read_mailbox(maildir):
            body = message.get_payload(decode=False)
            if recipient in str(message["To"]) and text in str(body) + str(message["Subject"]):
                return True
        time.sleep(0.5)
    return False


def test_readme_quickstart_confirms_an_order_and_compensates_a_declined_one(up: UpProcess) -> None:
    creds = up.credentials()
    token, user_id = login(up.api, creds["demo_email"], creds["demo_password"])
    auth = {"Authorization": f"Bearer {token}"}

    products = httpx.get(f"{up.api}/products").json()["items"]
    mug = next(p for p in products if p["sku"] == "MUG-001")
    cards = httpx.get(f"{up.api}/users/{user_id}/payment-methods", headers=auth).json()["items"]
    good = next(c for c in cards if c["last4"] == "4242")
    declined = next(c for c in cards if c["last4"] == "0002")

    body = {"items": [{"product_id": mug["id"], "quantity": 1}], "payment_method_id": good["id"]}
    placed = httpx.post(f"{up.api}/orders", json=body, headers=auth | {"Idempotency-Key": "first-order"})
    assert placed.status_code == 202, placed.text
    order_id = placed.json()["id"]
    again = httpx.post(f"{up.api}/orders", json=body, headers=auth | {"Idempotency-Key": "first-order"})
    assert again.json()["id"] == order_id

    view = wait_for_saga(up.api, token, order_id)
    order = httpx.get(f"{up.api}/orders/{order_id}", headers=auth).json()
    assert order["status"] == "CONFIRMED"
    assert order["total_cents"] == mug["price_cents"]
    assert view["status"] == "completed"
    assert wait_for_mail(up.data_dir / "mail", creds["demo_email"], order_id), "no confirmation email"

    body = {"items": [{"product_id": mug["id"], "quantity": 1}], "payment_method_id": declined["id"]}
    refused = httpx.post(f"{up.api}/orders", json=body, headers=auth | {"Idempotency-Key": "declined-order"})
    view = wait_for_saga(up.api, token, refused.json()["id"])
    order = httpx.get(f"{up.api}/orders/{refused.json()['id']}", headers=auth).json()
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "payment_declined")
    steps = {s["name"]: s["status"] for s in view["steps"]}
    assert steps["reserve_stock"] == "compensated"
    assert steps["authorize_payment"] == "failed"
    assert view["status"] == "compensated"


def test_web_ui_lists_confirmed_orders_in_a_real_browser(up: UpProcess) -> None:
    chromium = chromium_path()
    creds = up.credentials()
    token, user_id = login(up.api, creds["demo_email"], creds["demo_password"])
    auth = {"Authorization": f"Bearer {token}"}
    stickers = next(p for p in httpx.get(f"{up.api}/products").json()["items"] if p["sku"] == "STICK-010")
    cards = httpx.get(f"{up.api}/users/{user_id}/payment-methods", headers=auth).json()["items"]
    good = next(c for c in cards if c["last4"] == "4242")
    body = {"items": [{"product_id": stickers["id"], "quantity": 2}], "payment_method_id": good["id"]}
    placed = httpx.post(f"{up.api}/orders", json=body, headers=auth).json()
    wait_for_saga(up.api, token, placed["id"])

    url = f"{up.web_ui}/namespaces/default/workflows?query=OrderStatus%3D%22CONFIRMED%22"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={up.data_dir.parent / 'chromium'}",
        "--virtual-time-budget=15000",
        "--window-size=1400,900",
    ]
    found = ""
    for _ in range(10):  # visibility is eventually consistent
        found = subprocess.run(
            [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
        ).stdout
        if placed["workflow_id"] in found:
            break
        time.sleep(1)
    subprocess.run(
        [*flags, f"--screenshot={ARTIFACTS / 'web-ui-confirmed.png'}", url], capture_output=True, timeout=120
    )
    assert placed["workflow_id"] in found, (
        "the confirmed order's workflow is not in the Web UI's filtered list"
    )
    assert (ARTIFACTS / "web-ui-confirmed.png").stat().st_size > 10_000


def test_readme_curl_sequence_runs_as_written(up: UpProcess, tmp_path: Path) -> None:
    """The README's first-order block, verbatim but for the gateway's port, in a real shell."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### A first order with curl", 1)[1]
    script = section.split("```sh\n", 1)[1].split("```", 1)[0]
    script = script.replace("API=http://127.0.0.1:8000/api/v1", f"API={up.api}")
    script += WAIT_FOR_CONFIRMATION
    (tmp_path / ".data").symlink_to(up.data_dir)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert '"steps"' in result.stdout


def test_load_generator_reports_every_order_final(up: UpProcess, tmp_path: Path) -> None:
    polled = 'method="GET"', 'upstream="orders"'
    posted = 'method="POST"', 'route="/api/v1/orders"', 'status="202"'
    polled_before = metric(up.url("gateway"), "gateway_upstream_requests_total", *polled)
    posted_before = metric(up.url("gateway"), "gateway_upstream_requests_total", *posted)
    report_path = tmp_path / "load.json"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ordersaga"),
            "load",
            "--api", up.api,
            "--orders", "12",
            "--rate", "6",
            "--cards", "success=3,declined=1",
            "--customers", "3",
            "--seed", "7",
            "--data-dir", str(up.data_dir),
            "--temporal-address", f"127.0.0.1:{up.ports['temporal']}",
            "--json", str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert (report["accepted"], report["final"], report["not_final"]) == (12, 12, 0)
    assert sum(report["outcomes"].values()) == 12
    assert set(report["outcomes"]) <= {"CONFIRMED", "CANCELLED:payment_declined"}
    assert report["accept_latency_ms"]["p50"] is not None
    assert report["completion_latency_ms"]["p99"] >= report["completion_latency_ms"]["p50"]
    # The saga's result came from Temporal, so no order was polled through the gateway.
    assert report["plan"]["completion"] == "temporal"
    assert metric(up.url("gateway"), "gateway_upstream_requests_total", *polled) == polled_before
    assert metric(up.url("gateway"), "gateway_upstream_requests_total", *posted) == posted_before + 12


def test_load_generator_posts_orders_straight_to_the_orders_service(up: UpProcess, tmp_path: Path) -> None:
    """`--direct-orders`: the saga started through the orders service alone, the gateway bypassed."""
    posted = 'method="POST"', 'route="/api/v1/orders"'
    placed = 'method="POST"', 'route="/orders"', 'status="202"'
    polled = 'method="GET"', 'upstream="orders"'
    through_gateway = metric(up.url("gateway"), "gateway_upstream_requests_total", *posted)
    polled_before = metric(up.url("gateway"), "gateway_upstream_requests_total", *polled)
    at_orders = metric(up.url("orders"), "http_requests_total", *placed)
    report_path = tmp_path / "load.json"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ordersaga"),
            "load",
            "--api", up.api,
            "--direct-orders", up.url("orders"),
            "--orders", "6",
            "--concurrency", "3",
            "--cards", "success=1",
            "--customers", "2",
            "--completion", "poll",
            "--data-dir", str(up.data_dir),
            "--json", str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert (report["accepted"], report["final"], report["outcomes"]) == (6, 6, {"CONFIRMED": 6})
    assert (report["plan"]["orders_via"], report["plan"]["completion"]) == ("orders service", "poll")
    assert metric(up.url("orders"), "http_requests_total", *placed) == at_orders + 6
    assert metric(up.url("gateway"), "gateway_upstream_requests_total", *posted) == through_gateway
    # Everything else still goes through the gateway: here, polling each order until it is final.
    assert metric(up.url("gateway"), "gateway_upstream_requests_total", *polled) >= polled_before + 6


def metric(base_url: str, name: str, *labels: str) -> float:
    """The sum of a Prometheus counter's samples whose labels include every one of `labels`."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(label in line for label in labels)
    )


PROCESSES = (
    "temporal",
    "nats",
    "users",
    "inventory",
    "payments",
    "orders",
    "notifications",
    "worker",
    "gateway",
)
SHOWN_LEVELS = {"warning", "error", "critical"}


def test_console_keeps_the_welcome_in_view_and_logs_go_to_files(up: UpProcess) -> None:
    """Off a terminal: the children's warnings as JSON lines; every line of each in logs/<process>.log."""
    for name in PROCESSES:
        assert (up.data_dir / "logs" / f"{name}.log").stat().st_size > 0, f"no log file for {name}"
    worker_log = (up.data_dir / "logs" / "worker.log").read_text()
    assert any(json.loads(line).get("event") == "worker_started" for line in worker_log.splitlines())
    console = up.log.read_text()
    # Info lines stay out of the console by default.
    assert "worker_started" not in console
    for line in console.splitlines():
        if line.startswith("{"):
            shown = json.loads(line)
            assert shown["process"] in PROCESSES and shown["level"] in SHOWN_LEVELS, line
    # The welcome comes once everything is ready, and below it only warnings and errors.
    ready, welcome = console.index("ready in"), console.index("ordersaga is up")
    assert ready < welcome
    assert str(up.data_dir / "logs") in console[welcome:]
    below = console[console.index("Stop with Ctrl-C") :].splitlines()[1:]
    assert all(line.startswith("{") for line in below if line.strip()), below


def test_status_reports_every_part_up(up: UpProcess) -> None:
    ordersaga = str(Path(sys.executable).parent / "ordersaga")
    result = subprocess.run(
        [ordersaga, "status", "--data-dir", str(up.data_dir), "--json"],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    parts = {part["name"]: part for part in json.loads(result.stdout)["parts"]}
    expected = {"ordersaga up", "temporal web UI", *PROCESSES}
    assert expected <= set(parts), parts
    assert all(part["up"] for part in parts.values()), parts
    assert parts["worker"]["detail"].startswith("1 polling")
    table = subprocess.run(
        [ordersaga, "status", "--data-dir", str(up.data_dir)],
        env=up.env | {"COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0 and "all up" in table.stdout, table.stdout


def test_ctrl_c_stops_everything(up: UpProcess) -> None:
    assert up.children, "up started no child processes"
    assert up.interrupt() == 0
    time.sleep(0.5)
    assert up.survivors() == [], f"orphans after Ctrl-C: {up.survivors()}"


# Long variant (ORDERSAGA_TEST_FULL=1), a stack of its own: the tests above on the shared `up` and
# tests/saga/test_saga_faults.py (a worker killed mid-saga) run by default.
@pytest.mark.full
def test_restart_mid_saga_resumes_and_charges_once(tmp_path: Path) -> None:
    # A wide window between charge attempts, to stop the stack while the saga is mid-flight.
    # This stack also shows the console format, with info lines, as a terminal would get it, and
    # runs with encrypted payloads, so that `up` starts the codec server for the Web UI.
    console = {"ORDERSAGA_LOG_FORMAT": "console", "ORDERSAGA_LOG_LEVEL": "info"}
    codec_port = free_port()
    codec = {
        "ORDERSAGA_PAYLOAD_KEYS": "t1:" + base64.b64encode(os.urandom(32)).decode(),
        "ORDERSAGA_CODEC_PORT": str(codec_port),
    }
    stack = start_up(tmp_path, {"WORKER_PAYMENT_INITIAL_INTERVAL_SECONDS": "2"} | console | codec)
    try:
        assert_codec_server_wired(stack, f"http://127.0.0.1:{codec_port}")
        creds = stack.credentials()
        token, _ = login(stack.api, creds["demo_email"], creds["demo_password"])
        auth = {"Authorization": f"Bearer {token}"}
        card = httpx.post(
            f"{stack.api}/payment-methods",
            json={"card_number": "4000000000000119", "exp_month": 12, "exp_year": 2035, "cvc": "123"},
            headers=auth,
        ).json()
        mug = next(p for p in httpx.get(f"{stack.api}/products").json()["items"] if p["sku"] == "MUG-001")
        body = {"items": [{"product_id": mug["id"], "quantity": 1}], "payment_method_id": card["id"]}
        order_id = httpx.post(f"{stack.api}/orders", json=body, headers=auth).json()["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the first authorisation has failed: the saga is mid-flight
            view = httpx.get(f"{stack.api}/orders/{order_id}/saga", headers=auth).json()
            charge = next(s for s in view["steps"] if s["name"] == "authorize_payment")
            if charge["status"] == "running":
                break
            time.sleep(0.2)
        assert stack.interrupt() == 0
        assert stack.survivors() == []

        stack.start()
        token, _ = login(stack.api, creds["demo_email"], creds["demo_password"])
        view = wait_for_saga(stack.api, token, order_id, timeout=90)
        order = httpx.get(
            f"{stack.api}/orders/{order_id}", headers={"Authorization": f"Bearer {token}"}
        ).json()
        assert order["status"] == "CONFIRMED"
        assert view["status"] == "completed"
        payment = httpx.get(
            f"{stack.api}/payments/{order['payment_id']}", headers={"Authorization": f"Bearer {token}"}
        )
        assert payment.json()["status"] == "captured"
        internal = {"X-Ordersaga-Internal-Token": creds["internal_token"], "X-Ordersaga-Role": "service"}
        all_payments = httpx.get(
            f"{stack.url('payments')}/orders/{order_id}/payments", headers=internal
        ).json()
        assert [p["status"] for p in all_payments["items"]] == ["captured"]

        lines = stack.log.read_text().splitlines()
        assert any(re.match(r"worker +\| \d\d:\d\d:\d\d INFO +worker_started", line) for line in lines)
        assert not any('"event":' in line for line in lines), "JSON on a console-format console"
        # Each run's logs start afresh; the previous run's stay beside them.
        logs = stack.data_dir / "logs"
        assert (logs / "worker.log.1").read_text().count("worker_started") == 1
        assert (logs / "worker.log").read_text().count("worker_started") == 1
    finally:
        if stack.proc is not None and stack.proc.poll() is None:
            stack.interrupt()


def assert_codec_server_wired(stack: UpProcess, codec_url: str) -> None:
    """The Web UI is pointed at the codec server, which answers only with the generated token."""
    assert httpx.get(f"{stack.web_ui}/api/v1/settings").json()["Codec"]["Endpoint"] == codec_url
    bearer = {"Authorization": f"Bearer {stack.credentials()['codec_token']}"}
    plain = {
        "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
        "data": base64.b64encode(b'"demo@example.com"').decode(),
    }
    encoded = httpx.post(f"{codec_url}/encode", json={"payloads": [plain]}, headers=bearer)
    assert encoded.status_code == 200, encoded.text
    assert b"demo@example.com" not in base64.b64decode(encoded.json()["payloads"][0]["data"])
    assert httpx.post(f"{codec_url}/decode", json=encoded.json()).status_code == 401
    decoded = httpx.post(f"{codec_url}/decode", json=encoded.json(), headers=bearer)
    assert decoded.json()["payloads"][0]["data"] == plain["data"]
