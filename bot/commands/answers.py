"""How the commands answer: a change as before → after, a list a page at a time."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from bot.commands.reply import Changed, Table
from bot.domain.ledger import Outcome
from bot.domain.paging import window


def changed(outcome: Outcome) -> Changed:
    title = ("Dry run — nothing changed: " if outcome.dry_run else "") + outcome.message
    return Changed(
        title=title,
        text=outcome.message,
        target=outcome.target,
        before=outcome.before,
        after=outcome.after,
        dry_run=outcome.dry_run,
        data={
            "action": outcome.action,
            "target": outcome.target,
            "before": outcome.before,
            "after": outcome.after,
            "dry_run": outcome.dry_run,
        },
    )


def next_page(command: str | Sequence[str], page: int, pages: int) -> str | None:
    """The command that shows the page after this one, if there is one: `command` is the
    listing's command line, or its words (quoted here as needed)."""
    if page >= pages:
        return None
    line = command if isinstance(command, str) else shlex.join(command)
    return f"{line} --page {page + 1}"


def paged(
    title: str,
    columns: list[str],
    rows: list[list[str]],
    data: Any,
    page: int,
    size: int,
    next_command: str,
    note: str = "",
) -> Table:
    """A table cut into pages of `size` rows (cards stay small)."""
    page, pages, start = window(len(rows), page, size)
    return Table(
        title=title,
        columns=columns,
        rows=rows[start : start + size],
        data=data,
        note=note,
        page=page,
        pages=pages,
        next_command=next_page(next_command, page, pages),
    )
