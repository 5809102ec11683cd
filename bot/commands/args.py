"""Typed command arguments, validated with pydantic for text commands and card submissions alike.

Card data comes from the client: these models are the only way it reaches a handler, so a
wrong type, an unknown field or an oversized value is refused before anything runs.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from bot.domain.errors import did_you_mean
from bot.domain.naming import MAX_QUANTITY

# Longer than this is no count of anything; refused as too large, not parsed.
_WHOLE = re.compile(r"[+]?[0-9]{1,30}")


def _whole(value: Any, lowest: int) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    text = value.strip().replace(",", "").replace("_", "") if isinstance(value, str) else ""
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif _WHOLE.fullmatch(text):
        n = int(text)
    elif re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"is too large (at most {MAX_QUANTITY:,})")
    else:
        raise ValueError(f"must be a positive whole number, got {str(value)[:40]!r}")
    if n < lowest:
        wanted = "a positive whole number" if lowest else "zero or more"
        raise ValueError(f"must be {wanted}, got {n}")
    if n > MAX_QUANTITY:
        raise ValueError(f"{n} is too large (at most {MAX_QUANTITY:,})")
    return n


def _quantity(value: Any) -> int:
    return _whole(value, 1)


def _count(value: Any) -> int:
    """Like a quantity but zero is allowed (capacity 0)."""
    return _whole(value, 0)


def _keyword(value: Any) -> Any:
    """A word from the usage line (a kind, a mode, a category): case does not matter."""
    return value.strip().lower() if isinstance(value, str) else value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be text")
    value = unicodedata.normalize("NFC", value.strip())
    if not value:
        raise ValueError("is empty")
    if any(unicodedata.category(ch) in {"Cc", "Cs"} and not ch.isspace() for ch in value):
        raise ValueError("contains control or invalid characters")
    if len(value) > 500:
        raise ValueError(f"is {len(value)} characters long; at most 500")
    return value


Quantity = Annotated[int, BeforeValidator(_quantity)]
Count = Annotated[int, BeforeValidator(_count)]
Text = Annotated[str, BeforeValidator(_text)]
Keyword = BeforeValidator(_keyword)


class Args(BaseModel):
    """Base of every command's arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    dry_run: bool = False


def _guess(err: Any) -> str:
    """", not 'number': did you mean 'numbers'?" for a value close to one of the choices."""
    typed = err.get("input")
    choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
    guesses = did_you_mean(typed, choices) if isinstance(typed, str) and choices else []
    if not guesses:
        return ""
    return f" (not {typed!r}: did you mean " + " or ".join(repr(g) for g in guesses) + "?)"


def describe_errors(exc: ValidationError, labels: dict[str, str]) -> str:
    """Pydantic's errors as sentences naming the argument the way the usage line does."""
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        label = labels.get(field, field)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is missing"
        elif err["type"] == "extra_forbidden":
            msg = "is not an argument of this command"
        elif err["type"] == "enum" or err["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be") + _guess(err)
        elif err["type"] in {"bool_parsing", "bool_type"}:
            msg = "must be true or false"
        elif err["type"] in {"string_type"}:
            msg = "must be text"
        # A rule over several arguments (a model validator) names no field.
        parts.append(f"{label} {msg}" if label else msg[:1].upper() + msg[1:])
    return "; ".join(parts) + "."
