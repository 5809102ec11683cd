"""The command-line front door: `fusion COMMAND ...` (also `python -m bot COMMAND ...`), the
same commands as in Teams.

    fusion usage --json
    fusion --as ops@contoso.com allocate 10 TEAMS-SEATS to ACME-01
    fusion --json --all numbers          # every number, not one page

Exit status (docs/cli.md): 0 done; 1 the command refused or malformed; 2 the command line or a
setting is wrong; 3 the database cannot be used (missing, refused, timed out). The message goes
to standard error; with `--json` every answer, errors included, is one JSON document.
`-h`/`--help`/`--version` answer without reading settings or touching a database.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import textwrap
import uuid
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from bot.auth.actor import Actor
from bot.auth.policy import OperatorPolicy
from bot.commands.dispatch import run_words
from bot.commands.registry import Context, find
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
from bot.domain.change import check_actor_id
from bot.domain.errors import InvalidInput, did_you_mean
from bot.domain.naming import set_naming_rule
from bot.logs import configure_logging

PROG = "fusion"
USAGE = f"usage: {PROG} [--json] [--as UPN] [--all | --page-size N] COMMAND [ARGS...]"
HELP = f"""{USAGE}
       {PROG} -h | --help [COMMAND]     {PROG} --version

Manage Fusion products from the command line: the same commands as in Teams.
`{PROG} help` lists them, `{PROG} help COMMAND` (or `{PROG} COMMAND --help`) shows one.

options:
  -h, --help        show this help (or a command's) and exit
  --version         show the version and exit
  --json            one JSON document on standard output (errors on standard error);
                    keys in docs/cli.md
  --as UPN          who you are, recorded in the audit (default: operator)
  --all             lists: every row, not one page (for exports)
  --page-size N     lists: N rows a page (default FUSION_PAGE_SIZE, 25)

exit status: 0 done, 1 refused or malformed, 2 bad command line or setting,
3 the database cannot be used (nothing was changed)

Settings come from the environment and a .env file in the working folder (DATABASE_URL,
FUSION_*; see the README).
"""
#: Whatever --all asks for, a list is one page of at most this many rows.
ALL_ROWS = 10_000_000
GLOBAL_OPTIONS = ("--json", "--as", "--all", "--page-size", "--help", "--version")


class CommandLineError(Exception):
    """The command line itself is wrong (exit status 2)."""


@dataclass
class Invocation:
    words: list[str]
    as_json: bool = False
    operator: str | None = None
    help: bool = False
    version: bool = False
    all_rows: bool = False
    page_size: int | None = None


def parse_command_line(argv: list[str]) -> Invocation:
    """The global options (anywhere on the line) and the command's own words."""
    found = Invocation(words=[])
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if arg in ("-h", "--help"):
            found.help = True
        elif arg == "--version":
            found.version = True
        elif arg == "--json":
            found.as_json = True
        elif arg == "--all":
            found.all_rows = True
            found.words.append(arg)  # commands with an --all of their own see it too
        elif name in ("--as", "--page-size"):
            if eq:
                value = inline
            elif i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            else:
                raise CommandLineError(f"{name} needs a {'UPN' if name == '--as' else 'number'}")
            if name == "--as":
                try:
                    found.operator = check_actor_id(value, "--as value")
                except InvalidInput as exc:
                    raise CommandLineError(exc.message) from None
            else:
                if not value.isascii() or not value.isdigit() or int(value) < 1:
                    raise CommandLineError(
                        f"--page-size must be a positive whole number, got {value!r}"
                    )
                found.page_size = int(value)
        elif (
            arg.startswith("-")
            and len(arg) > 1
            and not arg[1:].lstrip("-")[:1].isdigit()
            and not found.words
        ):
            # Before the command, only the global options are known.
            guesses = did_you_mean(name, list(GLOBAL_OPTIONS))
            hint = f" Did you mean {' or '.join(guesses)}?" if guesses else ""
            raise CommandLineError(f"unknown option {name}.{hint}")
        else:
            found.words.append(arg)
        i += 1
    if found.all_rows and found.page_size:
        raise CommandLineError("--all and --page-size do not go together")
    if found.all_rows:
        spec = find(found.words)
        if spec is None or "--all" not in spec.pattern.flag_options:
            found.words.remove("--all")
    return found


def terminal_width() -> int:
    """`COLUMNS`, else the terminal's width, else 80."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def fit(text: str, reply: Reply, width: int) -> str:
    """The text answer without trailing blanks; a table too wide for `width` becomes one block
    per row: its first cell, then the other cells indented and wrapped."""
    lines = [line.rstrip() for line in text.splitlines()]
    if not isinstance(reply, Table) or max((len(line) for line in lines), default=0) <= width:
        return "\n".join(lines)
    out = [reply.title]
    indent = "    "
    for row in reply.rows:
        out.append(textwrap.fill(row[0], width, subsequent_indent=indent) if row else "")
        for column, cell in zip(reply.columns[1:], row[1:], strict=False):
            if not cell:
                continue
            label = "" if len(reply.columns) == 2 else f"{column}: "
            hanging = indent if len(reply.columns) == 2 else indent * 2
            out.append(
                textwrap.fill(label + cell, width, initial_indent=indent, subsequent_indent=hanging)
            )
    if reply.pages > 1:
        out.append(
            textwrap.fill(f"page {reply.page} of {reply.pages}; next: {reply.next_command}", width)
        )
    if reply.note:
        out.append(textwrap.fill(reply.note, width))
    return "\n".join(out)


def version() -> str:
    try:
        return metadata.version("fusion-products-bot")
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown"


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
        return {"error": "usage", "message": "Arguments are missing.", "usage": reply.usage}
    return reply.data


class DatabaseProblem(Exception):
    """The database cannot be used; `code` and the message say which way (exit status 3)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def database_problem(exc: BaseException, url: str) -> DatabaseProblem | None:
    """What an error at connecting means, for people: a missing database, a refused connection
    or a timeout each say so. None: not a database problem."""
    parts = urlsplit(url)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    name = parts.path.lstrip("/") or "?"
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:  # Tortoise wraps the driver's error
        chain.append(link)
        link = link.__cause__ or link.__context__
    text = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    if "invalidcatalogname" in text or ("database" in text and "does not exist" in text):
        return DatabaseProblem(
            "database-missing",
            f"The database {name!r} does not exist on {where}; nothing was changed. "
            f"Create it (createdb -h {parts.hostname or 'localhost'} {name}) or correct "
            "DATABASE_URL.",
        )
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in text:
        return DatabaseProblem(
            "database-refused",
            f"Nothing accepts connections at {where} (connection refused): is the database "
            "server running, and is DATABASE_URL right? Nothing was changed.",
        )
    if any(isinstance(e, TimeoutError) for e in chain) or "timeout" in text or "timed out" in text:
        return DatabaseProblem(
            "database-timeout",
            f"The database at {where} did not answer in time; nothing was changed. Try again "
            "in a moment (DATABASE_URL's ?timeout=SECONDS sets how long to wait).",
        )
    if "password" in text or "authentication" in text or "invalidauthorization" in text:
        return DatabaseProblem(
            "database-login",
            f"The database at {where} refused the login ({type(exc).__name__}); nothing was "
            "changed. Check the user and password in DATABASE_URL.",
        )
    if db.is_outage(exc):
        return DatabaseProblem(
            "unavailable",
            f"The database is not answering ({type(exc).__name__}: {exc}); nothing was "
            "changed. Try again in a moment.",
        )
    return None


def fail(status: int, code: str, message: str, *, as_json: bool, usage: str | None = None) -> int:
    """An error before or beside any command: to standard error, as JSON if asked."""
    if as_json:
        document = {"error": code, "message": message, "usage": usage}
        print(json.dumps(document, indent=2, ensure_ascii=False), file=sys.stderr)
    else:
        print(message + ("\n" + usage if usage else ""), file=sys.stderr)
    return status


async def main(argv: list[str]) -> int:
    try:
        cli = parse_command_line(argv)
    except CommandLineError as exc:
        return fail(2, "usage", str(exc), as_json="--json" in argv, usage=USAGE)
    if cli.version:
        print(f"{PROG} {version()}")
        return 0
    if cli.help and not cli.words:
        print(HELP, end="")
        return 0
    if cli.help:  # `fusion allocate 5 X --help`: the help of allocate
        asked = find(cli.words)
        cli.words = ["help", *(asked.name.split() if asked else cli.words[:2])]
    if not cli.words:
        return fail(2, "usage", "No command given.", as_json=cli.as_json, usage=USAGE)
    try:
        settings = Settings.from_env(env_file=".env")
    except ConfigError as exc:
        return fail(2, "configuration", f"configuration error: {exc}", as_json=cli.as_json)
    configure_logging(settings.log_format, settings.log_level or "WARNING")
    if cli.all_rows or cli.page_size:
        settings = replace(settings, page_size=cli.page_size or ALL_ROWS)
    set_naming_rule(settings.naming_rule)
    run_id = f"cli-{uuid.uuid4()}"
    actor = Actor(
        object_id=cli.operator or "operator",
        name=cli.operator or "operator",
        upn=cli.operator,
        source="cli",
        correlation_id=run_id,
    )
    spec = find(cli.words)
    # help reads the command registry only: no database is opened (or created) for it.
    needs_database = spec is None or spec.name != "help"
    if needs_database:
        try:
            await db.open_database(settings.database_url, migrate=settings.migrate_on_start)
        except Exception as exc:
            problem = database_problem(exc, settings.database_url)
            if problem is None:
                raise
            await db.close_database()
            return fail(3, problem.code, problem.message, as_json=cli.as_json)
    try:
        ctx = Context(actor=actor, settings=settings, policy=OperatorPolicy())
        # The shell already split the words: they go to the same grammar as typed text.
        reply = await run_words(cli.words, ctx)
    finally:
        if needs_database:
            await db.close_database()
    if isinstance(reply, Form):
        reply = Error(
            title=f"Usage: {reply.command}",
            text="Arguments are missing.",
            usage=reply.usage,
            code="usage",
        )
    out = (
        json.dumps(to_json(reply), indent=2, ensure_ascii=False, default=str)
        if cli.as_json
        else fit(to_text(reply), reply, terminal_width())
    )
    if reply.ok:
        print(out)
        return 0
    print(out, file=sys.stderr)
    return 1


def run() -> int:
    """The `fusion` console command."""
    return asyncio.run(main(sys.argv[1:]))


if __name__ == "__main__":
    raise SystemExit(run())
