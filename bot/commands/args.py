"""Typed command arguments, validated with pydantic for text commands and card submissions alike.

Card data comes from the client: these models are the only way it reaches a handler, so a
wrong type, an unknown field or an oversized value is refused before anything runs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from bot.domain.naming import MAX_QUANTITY

_WHOLE = re.compile(r"[+]?\d{1,12}")


def _quantity(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and _WHOLE.fullmatch(value.strip().replace(",", "").replace("_", "")):
        n = int(value.strip().replace(",", "").replace("_", ""))
    else:
        raise ValueError(f"must be a positive whole number, got {str(value)[:40]!r}")
    if n < 1:
        raise ValueError(f"must be a positive whole number, got {n}")
    if n > MAX_QUANTITY:
        raise ValueError(f"{n} is too large (at most {MAX_QUANTITY:,})")
    return n


def _count(value: Any) -> int:
    """Like a quantity but zero is allowed (capacity 0)."""
    if isinstance(value, str) and value.strip() == "0" or value == 0 and not isinstance(value, bool):
        return 0
    return _quantity(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be text")
    value = value.strip()
    if not value:
        raise ValueError("is empty")
    if len(value) > 500:
        raise ValueError(f"is {len(value)} characters long; at most 500")
    return value


Quantity = Annotated[int, BeforeValidator(_quantity)]
Count = Annotated[int, BeforeValidator(_count)]
Text = Annotated[str, BeforeValidator(_text)]


class Args(BaseModel):
    """Base of every command's arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    dry_run: bool = False


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
            msg = msg.replace("Input should be", "must be")
        elif err["type"] in {"bool_parsing", "bool_type"}:
            msg = "must be true or false"
        elif err["type"] in {"string_type"}:
            msg = "must be text"
        parts.append(f"{label} {msg}")
    return "; ".join(parts) + "."
