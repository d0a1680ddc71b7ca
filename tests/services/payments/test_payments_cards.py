"""Card rules without a database: Luhn, brand detection from the IIN, expiry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.kit.errors import Problem
from services.payments.cards import card_brand, ensure_not_expired, luhn_valid, normalise_card_number


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4242424242424242", "visa"),
        ("5105105105105100", "mastercard"),
        ("5555555555554444", "mastercard"),
        ("2221000000000009", "mastercard"),
        ("2720999999999996", "mastercard"),
        ("378282246310005", "amex"),
        ("341111111111111", "amex"),
        ("6011111111111117", "discover"),
        ("6500000000000002", "discover"),
        ("3530111333300000", "unknown"),
        ("2220990000000001", "unknown"),
        ("5000000000000009", "unknown"),
    ],
)
def test_brand_from_iin(number: str, brand: str) -> None:
    assert card_brand(number) == brand


def test_luhn() -> None:
    assert luhn_valid("4242424242424242")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4242424242424241")
    assert not luhn_valid("1234567812345678")


@pytest.mark.parametrize(
    "raw",
    ["4242 4242 4242 4242", "4242-4242-4242-4242", "4242424242424242", " 4242-4242 4242-4242 "],
)
def test_spaces_and_dashes_are_stripped(raw: str) -> None:
    assert normalise_card_number(raw) == "4242424242424242"


@pytest.mark.parametrize(
    "raw",
    [
        "4242424242424241",  # Luhn
        "42424242424",  # 11 digits
        "42424242424242424242",  # 20 digits
        "4242abcd42424242",
        "4242.4242.4242.4242",
        "",
    ],
)
def test_invalid_numbers_are_refused_without_echo(raw: str) -> None:
    with pytest.raises(Problem) as caught:
        normalise_card_number(raw)
    assert caught.value.code == "invalid_card_number"
    assert raw not in str(caught.value.detail) or raw == ""


def test_expiry_boundary() -> None:
    now = datetime(2030, 3, 31, 23, 59, tzinfo=UTC)
    ensure_not_expired(3, 2030, now)
    ensure_not_expired(1, 2031, now)
    for month, year in ((2, 2030), (12, 2029)):
        with pytest.raises(Problem) as caught:
            ensure_not_expired(month, year, now)
        assert caught.value.code == "card_expired"
