"""Card rules that need no storage: normalising, Luhn, brand from the IIN, expiry."""

from __future__ import annotations

import re
from datetime import datetime

from services.kit.errors import Problem

_SEPARATORS = re.compile(r"[ -]")
_DIGITS = re.compile(r"^[0-9]{12,19}$")


def normalise_card_number(raw: str) -> str:
    """The bare digits of a card number, or 422 `invalid_card_number` (the number is never echoed)."""
    digits = _SEPARATORS.sub("", raw)
    if not _DIGITS.match(digits) or not luhn_valid(digits):
        raise Problem(422, "invalid_card_number", "The card number is not valid.")
    return digits


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def card_brand(digits: str) -> str:
    if digits.startswith("4"):
        return "visa"
    if digits.startswith(("34", "37")):
        return "amex"
    if digits.startswith(("6011", "65")):
        return "discover"
    if 51 <= int(digits[:2]) <= 55 or 2221 <= int(digits[:4]) <= 2720:
        return "mastercard"
    return "unknown"


def ensure_not_expired(exp_month: int, exp_year: int, now: datetime) -> None:
    """A card is valid through the last day of its expiry month."""
    if (exp_year, exp_month) < (now.year, now.month):
        raise Problem(422, "card_expired", "The card has expired.")
