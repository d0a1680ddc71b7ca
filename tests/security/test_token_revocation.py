"""A password change, a role change and a deletion refuse the user's earlier tokens at once, through
the gateway, including a token the gateway has already verified and remembered; and failed logins
on one account from many addresses meet the users service's per-account limit.

Real processes: nats-server, the users service and three gateways in front of it: one subscribed to
the revocation announcements (it remembers users' token versions), one without NATS and one whose
NATS is not there (both ask the users service on every request). What each gateway asked is read
from the users service's own request metrics.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.identity import INTERNAL_TOKEN
from tests.support.nats import NatsServer
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"
NEW_PASSWORD = "an entirely new passphrase"
ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "admin password for the revocation tests"
VERSION_ROUTE = "/internal/users/{user_id}/token-version"
GATEWAYS = ("subscribed", "without-nats", "nats-away")
MAX_AGE_SECONDS = 5


@dataclass
class Setup:
    nats: NatsServer
    users: ManagedProcess
    users_url: str
    gateways: dict[str, str]  # name → /api/v1 base URL


def _env(directory: Path, **extra: str) -> dict[str, str]:
    return {
        "ORDERSAGA_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "ORDERSAGA_DATA_DIR": str(directory / "data"),
        **extra,
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("revocation")
    nats = NatsServer(directory / "nats").start()
    started: list[ManagedProcess] = []
    try:
        port = free_port()
        users_url = f"http://127.0.0.1:{port}"
        users_env = _env(
            directory,
            NATS_URL=nats.url,
            USERS_DATABASE_URL=f"sqlite+aiosqlite:///{directory / 'users.db'}",
            USERS_ARGON2_TIME_COST="1",
            USERS_ARGON2_MEMORY_COST_KIB="64",
            USERS_ARGON2_PARALLELISM="1",
            ORDERSAGA_ADMIN_EMAIL=ADMIN_EMAIL,
            ORDERSAGA_ADMIN_PASSWORD=ADMIN_PASSWORD,
        )
        argv = [str(VENV_BIN / "ordersaga"), "serve", "users", "--port", str(port)]
        users = ManagedProcess(
            "users", argv, directory / "users.log", users_env, ready=http_ok(users_url + "/ready")
        )
        started.append(users.start(timeout=60))
        gateways: dict[str, str] = {}
        nats_urls = {
            "subscribed": nats.url,
            "without-nats": "",
            "nats-away": f"nats://127.0.0.1:{free_port()}",
        }
        nowhere = f"http://127.0.0.1:{free_port()}"  # an inventory that is not there
        for name in GATEWAYS:
            port = free_port()
            env = _env(
                directory,
                NATS_URL=nats_urls[name],
                GATEWAY_USERS_URL=users_url,
                GATEWAY_INVENTORY_URL=nowhere,
                GATEWAY_TOKEN_VERSION_MAX_AGE_SECONDS=str(MAX_AGE_SECONDS),
                GATEWAY_RATE_LIMIT_AUTH="100000/minute",
                GATEWAY_RATE_LIMIT_USER="100000/minute",
            )
            argv = [str(VENV_BIN / "ordersaga"), "serve", "gateway", "--port", str(port)]
            url = f"http://127.0.0.1:{port}"
            process = ManagedProcess(
                f"gateway-{name}",
                argv,
                directory / f"gateway-{name}.log",
                env,
                ready=http_ok(url + "/health"),
            )
            started.append(process.start(timeout=60))
            gateways[name] = url + "/api/v1"
        # Behind a trusted proxy, so each test "client" picks its address with X-Forwarded-For.
        port = free_port()
        env = _env(
            directory,
            GATEWAY_USERS_URL=users_url,
            GATEWAY_TRUSTED_PROXIES="127.0.0.1",
            GATEWAY_RATE_LIMIT_AUTH="4/minute",
        )
        argv = [str(VENV_BIN / "ordersaga"), "serve", "gateway", "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        process = ManagedProcess(
            "gateway-proxied", argv, directory / "gateway-proxied.log", env, ready=http_ok(url + "/health")
        )
        started.append(process.start(timeout=60))
        gateways["proxied"] = url + "/api/v1"
        yield Setup(nats, users, users_url, gateways)
    finally:
        for process in reversed(started):
            process.stop()
        nats.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def _version_fetches(http: httpx.AsyncClient, setup: Setup) -> float:
    """How many token-version lookups the users service has answered."""
    text = (await http.get(setup.users_url + "/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "http_requests_total" and sample.labels.get("route") == VERSION_ROUTE:
                total += sample.value
    return total


async def _login(
    http: httpx.AsyncClient, api: str, username: str, password: str = PASSWORD
) -> dict[str, str]:
    answer = await http.post(api + "/auth/token", data={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


async def _customer(http: httpx.AsyncClient, api: str) -> tuple[dict[str, object], dict[str, str]]:
    name = f"r{uuid.uuid4().hex[:10]}"
    created = await http.post(
        api + "/users", json={"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    )
    assert created.status_code == 201, created.text
    return created.json(), await _login(http, api, name)


async def _remembered(http: httpx.AsyncClient, api: str, user_id: object, auth: dict[str, str]) -> None:
    """Two successful calls: the gateway has verified the token and remembers it."""
    for _ in range(2):
        answer = await http.get(f"{api}/users/{user_id}", headers=auth)
        assert answer.status_code == 200, answer.text


def _refused(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.json()["code"] == "invalid_token"
    assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_a_password_change_refuses_earlier_tokens_at_once(
    http: httpx.AsyncClient, setup: Setup, gateway: str
) -> None:
    api = setup.gateways[gateway]
    user, old = await _customer(http, api)
    second_device = await _login(http, api, str(user["username"]))
    await _remembered(http, api, user["id"], old)
    await _remembered(http, api, user["id"], second_device)
    body = {"version": user["version"], "password": NEW_PASSWORD, "current_password": PASSWORD}
    changed = await http.put(f"{api}/users/{user['id']}", json=body, headers=old)
    assert changed.status_code == 200, changed.text
    _refused(await http.get(f"{api}/users/{user['id']}", headers=old))
    _refused(await http.get(f"{api}/users/{user['id']}", headers=second_device))
    fresh = await _login(http, api, str(user["username"]), NEW_PASSWORD)
    assert (await http.get(f"{api}/users/{user['id']}", headers=fresh)).status_code == 200


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_a_role_change_refuses_earlier_tokens_at_once(
    http: httpx.AsyncClient, setup: Setup, gateway: str
) -> None:
    api = setup.gateways[gateway]
    admin = await _login(http, api, ADMIN_EMAIL, ADMIN_PASSWORD)
    user, old = await _customer(http, api)
    await _remembered(http, api, user["id"], old)
    promoted = await http.put(
        f"{api}/users/{user['id']}", json={"version": user["version"], "role": "admin"}, headers=admin
    )
    assert promoted.status_code == 200, promoted.text
    _refused(await http.get(f"{api}/users/{user['id']}", headers=old))
    # The admin's own token is untouched, and a new login carries the new role.
    assert (await http.get(f"{api}/users/{user['id']}", headers=admin)).status_code == 200
    fresh = await _login(http, api, str(user["username"]))
    claims = jwt.decode(fresh["Authorization"].split()[1], options={"verify_signature": False})
    assert claims["role"] == "admin"
    assert (await http.get(f"{api}/users/{user['id']}", headers=fresh)).status_code == 200


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_a_deletion_refuses_earlier_tokens_at_once(
    http: httpx.AsyncClient, setup: Setup, gateway: str
) -> None:
    api = setup.gateways[gateway]
    user, old = await _customer(http, api)
    await _remembered(http, api, user["id"], old)
    assert (await http.delete(f"{api}/users/{user['id']}", headers=old)).status_code == 204
    _refused(await http.get(f"{api}/users/{user['id']}", headers=old))


async def test_only_the_subscribed_gateway_remembers_versions(http: httpx.AsyncClient, setup: Setup) -> None:
    calls = 10
    for gateway, expected in (("subscribed", 0), ("without-nats", calls), ("nats-away", calls)):
        api = setup.gateways[gateway]
        user, auth = await _customer(http, api)
        await _remembered(http, api, user["id"], auth)
        before = await _version_fetches(http, setup)
        for _ in range(calls):
            assert (await http.get(f"{api}/users/{user['id']}", headers=auth)).status_code == 200
        assert await _version_fetches(http, setup) - before == expected, gateway


async def test_while_nats_is_away_nothing_is_remembered_and_revocation_still_holds(
    http: httpx.AsyncClient, setup: Setup
) -> None:
    api = setup.gateways["subscribed"]
    user, auth = await _customer(http, api)
    await _remembered(http, api, user["id"], auth)
    setup.nats.stop()
    try:
        await asyncio.sleep(0.5)  # the gateway sees its connection close
        before = await _version_fetches(http, setup)
        for _ in range(3):
            assert (await http.get(f"{api}/users/{user['id']}", headers=auth)).status_code == 200
        assert await _version_fetches(http, setup) - before == 3  # asked every time, nothing trusted
        # The users service cannot announce a revocation: it refuses the change and writes nothing.
        body = {"version": user["version"], "password": NEW_PASSWORD, "current_password": PASSWORD}
        refused = await http.put(f"{api}/users/{user['id']}", json=body, headers=auth)
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "revocation_unavailable"
        assert (await http.get(f"{api}/users/{user['id']}", headers=auth)).json()["version"] == user[
            "version"
        ]
    finally:
        setup.nats.start()
    # Back: the change goes through once the users service has reconnected, and is seen at once.
    deadline = time.monotonic() + 30
    while (
        changed := await http.put(f"{api}/users/{user['id']}", json=body, headers=auth)
    ).status_code == 503:
        assert time.monotonic() < deadline, "the users service never reconnected to NATS"
        await asyncio.sleep(0.2)
    assert changed.status_code == 200, changed.text
    _refused(await http.get(f"{api}/users/{user['id']}", headers=auth))


async def test_failed_logins_from_many_addresses_meet_the_per_account_limit(
    http: httpx.AsyncClient, setup: Setup
) -> None:
    api = setup.gateways["proxied"]  # 4 logins a minute per address; the account allows 10 failures
    victim, _ = await _customer(http, setup.gateways["without-nats"])
    bystander, _ = await _customer(http, setup.gateways["without-nats"])
    answers = []
    for n in range(12):
        address = f"198.51.100.{n // 3 + 1}"  # four addresses, three each: under their own limit
        form = {"username": str(victim["username"]), "password": f"guess {n}"}
        answers.append(await http.post(api + "/auth/token", data=form, headers={"X-Forwarded-For": address}))
    assert [a.status_code for a in answers] == [401] * 10 + [429] * 2
    refused = answers[-1]
    assert refused.json()["code"] == "too_many_attempts"  # the account's limit, not the address's
    assert int(refused.headers["Retry-After"]) >= 1
    # The right password from a fresh address is refused too, until the window moves on ...
    fresh = {"X-Forwarded-For": "198.51.100.99"}
    form = {"username": str(victim["username"]), "password": PASSWORD}
    assert (await http.post(api + "/auth/token", data=form, headers=fresh)).status_code == 429
    # ... while another account logs in from one of the guessing addresses.
    form = {"username": str(bystander["username"]), "password": PASSWORD}
    assert (
        await http.post(api + "/auth/token", data=form, headers={"X-Forwarded-For": "198.51.100.4"})
    ).status_code == 200


async def test_while_the_users_service_is_away_only_remembered_versions_let_calls_through(
    http: httpx.AsyncClient, setup: Setup
) -> None:
    subscribed, plain = setup.gateways["subscribed"], setup.gateways["without-nats"]
    user, remembered = await _customer(http, subscribed)
    # After the NATS restart above, the gateway remembers again once it has resubscribed.
    deadline = time.monotonic() + 20
    while True:
        await _remembered(http, subscribed, user["id"], remembered)
        before = await _version_fetches(http, setup)
        await _remembered(http, subscribed, user["id"], remembered)
        if await _version_fetches(http, setup) == before:
            break
        assert time.monotonic() < deadline, "the gateway never resubscribed"
        await asyncio.sleep(0.2)
    _, not_asked_yet = await _customer(http, subscribed)  # logged in, never called with
    other, plain_auth = await _customer(http, plain)
    await _remembered(http, plain, other["id"], plain_auth)
    await asyncio.sleep(MAX_AGE_SECONDS + 0.5)  # past its age: the subscribed gateway asks again
    setup.users.stop()
    try:
        # GET /products is open to anyone, but a token sent along is checked all the same; past the
        # check it meets the inventory that is not there.
        passed = await http.get(subscribed + "/products", headers=remembered)
        assert passed.json()["code"] in ("upstream_unreachable", "upstream_unavailable"), passed.text
        for api, auth in ((subscribed, not_asked_yet), (plain, plain_auth)):
            refused = await http.get(api + "/products", headers=auth)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "auth_unavailable"
    finally:
        setup.users.start(timeout=60)
