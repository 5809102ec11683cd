"""The command-line front door: `python -m bot COMMAND ...`, the same commands as in Teams.

    python -m bot usage --json
    python -m bot --as ops@contoso.com allocate 10 TEAMS-SEATS to ACME-01

Exit status 0 on success; otherwise non-zero with the error on standard error.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

from bot.auth.actor import Actor
from bot.auth.policy import OperatorPolicy
from bot.commands.approvals import ApprovalGate
from bot.commands.dispatch import run_words
from bot.commands.registry import Context
from bot.commands.reply import (
    Approval,
    Changed,
    Error,
    Form,
    Message,
    Progress,
    Reply,
    Table,
    Usage,
)
from bot.commands.words import would
from bot.config import ConfigError, Settings
from bot.domain import db
from bot.domain.naming import set_naming_rule

USAGE = "usage: python -m bot [--json] [--as UPN] COMMAND [ARGS...]   (python -m bot help)"


def split_globals(argv: list[str]) -> tuple[bool, str | None, list[str]]:
    as_json = False
    operator = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--json":
            as_json = True
        elif arg == "--as":
            if i + 1 >= len(argv):
                print("--as needs a UPN\n" + USAGE, file=sys.stderr)
                raise SystemExit(2)
            operator = argv[i + 1]
            i += 1
        elif arg.startswith("--as="):
            operator = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return as_json, operator, rest


def _word(value: Any) -> str:
    """A value in CLI text: words and figures, never a Python literal."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_word(v)}" for k, v in value.items()) or "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(_word(v) for v in value) or "none"
    return str(value)


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [len(c) for c in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
        for line in [header, *rows]
    ]


def _usage_text(reply: Usage) -> list[str]:
    from bot.domain.digests import OPEN_LICENSE_CAPACITY

    rows = []
    for u in reply.products:
        open_capacity = u.capacity >= OPEN_LICENSE_CAPACITY
        rows.append(
            [
                u.name,
                "open" if open_capacity else f"{u.capacity:,}",
                f"{u.allocated:,}",
                "—" if open_capacity else f"{u.unallocated:,}",
                f"{u.in_use:,}",
                f"{u.allocated - u.in_use:,}",
                "—" if open_capacity else f"{100 * u.utilisation:.0f} %",
            ]
        )
        for s in u.subscriptions:
            rows.append(
                [f"  {s.code}", "", f"{s.allocated:,}", "", f"{s.in_use:,}", f"{s.free:,}", ""]
            )
    header = ["Product / subscription", "Capacity", "Allocated", "Unallocated", "In use"]
    lines = _columns([*header, "Free", "Utilisation"], rows)
    if rows:
        lines.append(
            "unallocated = capacity − allocated; free = allocated − in use; "
            "utilisation = allocated ÷ capacity"
        )
    return lines


def _paging_text(reply: Table | Usage) -> list[str]:
    if reply.pages <= 1:
        return []
    more = f"; next page: {reply.next_command}" if reply.next_command else ""
    return [f"page {reply.page} of {reply.pages}{more}"]


def to_text(reply: Reply) -> str:
    lines = [reply.title]
    if isinstance(reply, Table):
        if reply.records is not None:
            group = None
            for r in reply.records:
                if r.group and r.group != group:
                    group = r.group
                    lines.append(f"\n{group}")
                lines.append(f"  {_plain(r.title)}")
                if r.detail:
                    lines.append(f"      {_plain(r.detail)}")
        elif reply.rows:
            lines.extend(_columns(reply.columns, reply.rows))
        lines.extend(_paging_text(reply))
        if reply.note:
            lines.append(_plain(reply.note))
    elif isinstance(reply, Usage):
        lines.extend(_usage_text(reply))
        lines.extend(_paging_text(reply))
        if reply.note:
            lines.append(reply.note)
    elif isinstance(reply, Changed):
        if reply.dry_run:
            outcome = reply.title.removeprefix("Dry run — nothing changed: ")
            lines[0] = f"Dry run — nothing changed. {would(outcome)}"
            if reply.text and reply.text not in reply.title:
                lines.append(reply.text)
        keys = list(dict.fromkeys([*(reply.before or {}), *(reply.after or {})]))
        for key in keys:
            old = (reply.before or {}).get(key)
            new = (reply.after or {}).get(key)
            if old is None and new is None:
                continue
            lines.append(f"  {key.replace('_', ' ')}: {_word(old)} → {_word(new)}")
    elif isinstance(reply, Error):
        lines.append(_plain(reply.text))
        if reply.usage:
            lines.append("usage: " + reply.usage.replace("\n", "\n       "))
    elif isinstance(reply, Message):
        if reply.text:
            lines.append(_plain(reply.text))
        lines.extend(f"  {k}: {_word(v)}" for k, v in reply.facts)
    elif isinstance(reply, Progress):
        if reply.text:
            lines.append(reply.text)
        lines.extend(f"  ok    {item}" for item in reply.succeeded)
        lines.extend(f"  FAIL  {item}: {why}" for item, why in reply.failed)
    elif isinstance(reply, Approval):
        if reply.text:
            lines.append(_plain(reply.text))
        lines.append(f"  request {reply.short_id or reply.request_id}: {reply.status}")
        keys = list(dict.fromkeys([*(reply.before or {}), *(reply.after or {})]))
        for key in keys:
            old, new = (reply.before or {}).get(key), (reply.after or {}).get(key)
            if old is not None or new is not None:
                lines.append(f"  {key.replace('_', ' ')}: {_word(old)} → {_word(new)}")
        if reply.status == "pending" and reply.expires_at:
            lines.append(f"  expires {reply.expires_at}")
        elif reply.decided_by:
            lines.append(f"  decided by {reply.decided_by} at {reply.decided_at}")
        if reply.reason and reply.reason not in (reply.text or ""):
            lines.append(f"  reason: {reply.reason}")
    elif isinstance(reply, Form):
        lines.append("usage: " + reply.usage)
    return "\n".join(lines)


def _plain(text: str) -> str:
    """Card markdown (bold, code) as plain terminal text."""
    return text.replace("**", "").replace("`", "")


def to_json(reply: Reply) -> Any:
    if isinstance(reply, Form):
        return {"error": "usage", "message": "arguments are missing", "usage": reply.usage}
    return reply.data


async def main(argv: list[str]) -> int:
    as_json, operator, words = split_globals(argv)
    if not words:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(env_file=".env")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    set_naming_rule(settings.naming_rule)
    run_id = f"cli-{uuid.uuid4()}"
    actor = Actor(
        object_id=operator or "operator",
        name=operator or "operator",
        upn=operator,
        source="cli",
        correlation_id=run_id,
    )
    try:
        await db.open_database(settings.database_url, migrate=settings.migrate_on_start)
    except Exception as exc:
        if not db.is_outage(exc):
            raise
        await db.close_database()
        print(
            f"The database is not answering ({type(exc).__name__}: {exc}); nothing was changed. "
            "Try again in a moment.",
            file=sys.stderr,
        )
        return 3
    try:
        ctx = Context(
            actor=actor,
            settings=settings,
            policy=OperatorPolicy(),
            services={"approvals": ApprovalGate()},
        )
        # The shell already split the words: they go to the same grammar as typed text.
        reply = await run_words(words, ctx)
    finally:
        await db.close_database()
    if isinstance(reply, Form):
        reply = Error(
            title=f"Usage: {reply.command}", text="Arguments are missing.", usage=reply.usage
        )
    out = (
        json.dumps(to_json(reply), indent=2, ensure_ascii=False, default=str)
        if as_json
        else to_text(reply)
    )
    if reply.ok:
        print(out)
        return 0
    print(out, file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
