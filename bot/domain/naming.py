"""Input rules shared by every service: the naming convention, quantities, countries."""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

from bot.config import DEFAULT_NAMING_RULE
from bot.domain.errors import InvalidInput

MAX_QUANTITY = 1_000_000_000
MAX_NAME = 100

_rule = re.compile(DEFAULT_NAMING_RULE)
_rule_text = DEFAULT_NAMING_RULE


def set_naming_rule(pattern: str) -> None:
    """Install the provider's convention (from settings) for every name checked afterwards."""
    global _rule, _rule_text
    _rule = re.compile(pattern)
    _rule_text = pattern


def naming_rule() -> str:
    return _rule_text


def check_name(name: str, what: str = "name") -> str:
    if not name:
        raise InvalidInput(f"The {what} is empty.")
    if len(name) > MAX_NAME:
        raise InvalidInput(
            f"The {what} is {len(name)} characters long; at most {MAX_NAME} are allowed."
        )
    if not _rule.fullmatch(name):
        raise InvalidInput(
            f"The {what} {name!r} breaks the naming convention: it must match `{_rule_text}` "
            "(by default: upper-case letters and digits, words joined by hyphens, "
            "e.g. TEAMS-SEATS-UK)."
        )
    return name


def check_free_text(text: str, what: str, max_len: int = MAX_NAME) -> str:
    # One spelling per name: "Zürich" typed composed or decomposed is the same customer.
    text = unicodedata.normalize("NFC", text.strip())
    if not text:
        raise InvalidInput(f"The {what} is empty.")
    if len(text) > max_len:
        raise InvalidInput(
            f"The {what} is {len(text)} characters long; at most {max_len} are allowed."
        )
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"} for ch in text):
        raise InvalidInput(f"The {what} contains control or invisible characters.")
    return text


def check_quantity(value: int, what: str = "quantity", *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"The {what} must be a whole number.")
    if value < 0 or (value == 0 and not allow_zero):
        lowest = 0 if allow_zero else 1
        raise InvalidInput(f"The {what} must be a whole number of at least {lowest}, got {value}.")
    if value > MAX_QUANTITY:
        raise InvalidInput(f"The {what} {value} is too large; at most {MAX_QUANTITY:,} is allowed.")
    return value


def check_country(code: str) -> str:
    """An ISO 3166-1 alpha-2 code that has telephone numbering (known to `phonenumbers`)."""
    upper = code.strip().upper()
    if len(upper) != 2 or not upper.isascii() or not upper.isalpha():
        raise InvalidInput(
            f"{code!r} is not a country code: use ISO 3166-1 alpha-2, such as GB or US."
        )
    if upper not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidInput(
            f"{upper!r} is not a known ISO 3166-1 alpha-2 country with phone numbers."
        )
    return upper
