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
from bot.commands.reply import Approval, Changed, Error, Form, Message, Progress, Reply, Table
from bot.config import ConfigError, Settings
from bot.domain import db
from bot.domain.change import check_actor_id
from bot.domain.errors import InvalidInput
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
    if operator is not None:
        try:
            operator = check_actor_id(operator, "--as value")
        except InvalidInput as exc:
            print(f"{exc.message}\n{USAGE}", file=sys.stderr)
            raise SystemExit(2) from None
    return as_json, operator, rest


def to_text(reply: Reply) -> str:
    lines = [reply.title]
    if isinstance(reply, Table):
        widths = [len(c) for c in reply.columns]
        for row in reply.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(reply.columns, widths, strict=False)))
        lines.extend(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in reply.rows
        )
        if reply.pages > 1:
            lines.append(f"page {reply.page} of {reply.pages}; next: {reply.next_command}")
        if reply.note:
            lines.append(reply.note)
    elif isinstance(reply, Changed):
        keys = list(dict.fromkeys([*(reply.before or {}), *(reply.after or {})]))
        for key in keys:
            old = (reply.before or {}).get(key)
            new = (reply.after or {}).get(key)
            if old is None and new is None:
                continue
            old = "—" if old is None else old
            new = "—" if new is None else new
            lines.append(f"  {key}: {old} → {new}")
    elif isinstance(reply, Error):
        lines.append(reply.text)
        if reply.usage:
            lines.append("usage: " + reply.usage.replace("\n", "\n       "))
    elif isinstance(reply, Message):
        if reply.text:
            lines.append(reply.text)
        lines.extend(f"  {k}: {v}" for k, v in reply.facts)
    elif isinstance(reply, Progress):
        lines.append(reply.text)
        lines.extend(f"  ok    {item}" for item in reply.succeeded)
        lines.extend(f"  FAIL  {item}: {why}" for item, why in reply.failed)
    elif isinstance(reply, Approval):
        lines.append(reply.text or reply.summary)
        lines.append(f"  request {reply.request_id}: {reply.status}")
    elif isinstance(reply, Form):
        lines.append("usage: " + reply.usage)
    return "\n".join(lines)


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
