"""`ordersaga seed`: an admin, a demo customer with a test card, and a small catalog. Idempotent."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from services.kit.identity import identity_headers

DEMO_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"

# (sku, name, description, price_cents, stock): one item over the review threshold on purpose.
CATALOG: tuple[tuple[str, str, str, int, int], ...] = (
    ("MUG-001", "Enamel mug", "A camping mug that survives drops.", 1_200, 120),
    ("TEE-002", "Saga T-shirt", "Organic cotton, compensations printed on the back.", 2_500, 80),
    (
        "BOOK-003",
        "Designing Data-Intensive Applications",
        "The book on the shelf of every backend team.",
        4_999,
        40,
    ),
    ("KB-004", "Mechanical keyboard", "Tactile switches, hot-swappable.", 12_900, 25),
    ("MOUSE-005", "Wireless mouse", "Quiet clicks, long battery.", 3_900, 60),
    ("HEAD-006", "Noise-cancelling headphones", "For long on-call nights.", 24_900, 15),
    ("LAMP-007", "Desk lamp", "Warm light, USB-C.", 4_500, 30),
    ("PLANT-008", "Office plant", "Hard to kill, like a durable workflow.", 1_900, 50),
    ("BOTTLE-009", "Steel bottle", "Keeps coffee hot for 12 hours.", 2_900, 70),
    ("STICK-010", "Sticker pack", "Temporal, NATS, FastAPI and friends.", 500, 500),
    ("CHAIR-011", "Ergonomic chair", "Adjustable everything.", 59_900, 8),
    ("ESPRESSO-012", "Espresso machine", "Over the review threshold: an admin must approve it.", 129_900, 5),
)


@dataclass
class Credentials:
    """Development secrets, generated once per data dir and kept in `<data dir>/credentials.json`."""

    internal_token: str
    admin_email: str
    admin_password: str
    demo_email: str
    demo_password: str
    # The payload codec server's bearer token (`ordersaga up` with ORDERSAGA_PAYLOAD_KEYS set).
    codec_token: str = ""
    generated_now: bool = field(default=False, compare=False)

    @classmethod
    def load_or_create(
        cls,
        data_dir: Path,
        *,
        admin_email: str,
        admin_password: str | None,
        demo_email: str,
        demo_password: str | None,
        internal_token: str | None,
    ) -> Credentials:
        path = data_dir / "credentials.json"
        stored: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        creds = cls(
            internal_token=internal_token or stored.get("internal_token") or secrets.token_urlsafe(32),
            admin_email=admin_email,
            admin_password=admin_password or stored.get("admin_password") or secrets.token_urlsafe(12),
            demo_email=demo_email,
            demo_password=demo_password or stored.get("demo_password") or secrets.token_urlsafe(12),
            codec_token=stored.get("codec_token") or secrets.token_urlsafe(32),
        )
        creds.generated_now = not path.exists()
        data_dir.mkdir(parents=True, exist_ok=True)
        payload = {k: v for k, v in asdict(creds).items() if k != "generated_now"}
        _write_private(path, json.dumps(payload, indent=2) + "\n")
        return creds


@dataclass
class SeedResult:
    demo_user_id: str
    demo_payment_method_id: str
    declined_payment_method_id: str
    products: list[dict[str, Any]]


class Seeder:
    def __init__(self, urls: dict[str, str], creds: Credentials, client: httpx.Client) -> None:
        self.urls = urls
        self.creds = creds
        self.http = client

    def _as(self, role: str, user_id: str | None = None) -> dict[str, str]:
        return identity_headers(self.creds.internal_token, role, user_id)  # type: ignore[arg-type]

    def run(self) -> SeedResult:
        self._ensure_admin()
        demo_id = self._ensure_user(self.creds.demo_email, "demo", self.creds.demo_password)
        good = self._ensure_card(demo_id, DEMO_CARD)
        declined = self._ensure_card(demo_id, DECLINED_CARD)
        return SeedResult(demo_id, good, declined, self._ensure_catalog())

    def _login(self, email: str, password: str) -> str | None:
        response = self.http.post(
            self.urls["users"] + "/auth/token", data={"username": email, "password": password}
        )
        if response.status_code != 200:
            return None
        claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
        return str(claims["sub"])

    def _ensure_user(self, email: str, username: str, password: str) -> str:
        user_id = self._login(email, password)
        if user_id:
            return user_id
        response = self.http.post(
            self.urls["users"] + "/users",
            json={
                "email": email,
                "username": username,
                "password": password,
                "profile": {"first_name": username},
            },
        )
        if response.status_code != 201:
            raise RuntimeError(f"cannot create {email}: {response.status_code} {response.text}")
        return str(response.json()["id"])

    def _ensure_admin(self) -> None:
        # The users service bootstraps the admin from ORDERSAGA_ADMIN_*; this covers a standalone seed.
        user_id = self._ensure_user(self.creds.admin_email, "admin", self.creds.admin_password)
        user = self.http.get(
            f"{self.urls['users']}/users/{user_id}", headers=self._as("admin", user_id)
        ).json()
        if user.get("role") != "admin":
            self.http.put(
                f"{self.urls['users']}/users/{user_id}",
                json={"version": user["version"], "role": "admin"},
                headers=self._as("admin", user_id),
            ).raise_for_status()

    def _ensure_card(self, user_id: str, number: str) -> str:
        listed = self.http.get(
            f"{self.urls['payments']}/users/{user_id}/payment-methods", headers=self._as("customer", user_id)
        )
        listed.raise_for_status()
        for method in listed.json()["items"]:
            if method["last4"] == number[-4:]:
                return str(method["id"])
        created = self.http.post(
            self.urls["payments"] + "/payment-methods",
            json={"card_number": number, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
            headers=self._as("customer", user_id),
        )
        created.raise_for_status()
        return str(created.json()["id"])

    def _ensure_catalog(self) -> list[dict[str, Any]]:
        admin = self._as("admin", self._admin_id())
        for sku, name, description, price, stock in CATALOG:
            response = self.http.post(
                self.urls["inventory"] + "/products",
                json={
                    "sku": sku,
                    "name": name,
                    "description": description,
                    "price_cents": price,
                    "currency": "USD",
                    "stock": stock,
                },
                headers=admin,
            )
            if response.status_code not in (201, 409):
                raise RuntimeError(f"cannot create product {sku}: {response.status_code} {response.text}")
        listed = self.http.get(self.urls["inventory"] + "/products", params={"limit": 200})
        listed.raise_for_status()
        skus = {sku for sku, *_ in CATALOG}
        return [p for p in listed.json()["items"] if p["sku"] in skus]

    def _admin_id(self) -> str:
        return (
            self._login(self.creds.admin_email, self.creds.admin_password)
            or "00000000-0000-0000-0000-000000000000"
        )


def _write_private(path: Path, text: str) -> None:
    """Write a secrets file that is never readable by others, not even for an instant."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # O_CREAT's mode applies only to a new file; an older one made before this fix is narrowed too.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
