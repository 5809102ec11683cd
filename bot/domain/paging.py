"""Lists too long for one card are read a page at a time, in the database (never all rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    total: int
    page: int
    pages: int
    items: list[T] = field(default_factory=list)


def window(total: int, page: int, size: int) -> tuple[int, int, int]:
    """(page, pages, offset): `page` clamped to the pages that exist."""
    size = max(size, 1)
    pages = max(1, -(-total // size))
    page = min(max(page, 1), pages)
    return page, pages, (page - 1) * size
