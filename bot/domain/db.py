"""Opening the database, applying migrations, and the one place transactions are opened."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.connection import get_connection
from tortoise.migrations.api import migrate as run_migrations
from tortoise.transactions import in_transaction

log = logging.getLogger("bot.domain.db")

MODELS = "bot.domain.models"
MIGRATIONS = "bot.domain.migrations"
#: PostgreSQL connections per process unless DATABASE_URL says `?maxsize=N`.
POSTGRES_POOL_SIZE = 20


def connection_name(database_url: str) -> str:
    """A connection name per dialect: Tortoise caches INSERT SQL per connection name."""
    scheme = database_url.split(":", 1)[0].lower()
    if scheme in {"postgres", "postgresql", "asyncpg", "psycopg"}:
        return "postgres"
    if scheme == "sqlite":
        return "sqlite"
    raise ValueError(
        "DATABASE_URL must start with sqlite:// or postgres://, "
        f"got {database_url.split(':', 1)[0]!r}"
    )


def tortoise_config(database_url: str) -> dict[str, Any]:
    name = connection_name(database_url)
    url = database_url
    if name == "sqlite" and "journal_mode" not in url:
        # WAL lets the CLI read while the bot writes; busy_timeout makes writers queue, not fail.
        sep = "&" if "?" in url else "?"
        url = f"{url}{sep}journal_mode=WAL&busy_timeout=10000"
    if name == "postgres" and "maxsize=" not in url:
        # Tortoise's pool holds 5 connections by default: with several turns at once each
        # report query queued for one (usage on PostgreSQL at 32 conversations: p99 355 → 285
        # ms with 20). Two bot processes with 20 each stay well under max_connections (100).
        sep = "&" if "?" in url else "?"
        url = f"{url}{sep}maxsize={POSTGRES_POOL_SIZE}"
    return {
        "connections": {name: url},
        "apps": {
            "models": {
                "models": [MODELS],
                "default_connection": name,
                "migrations": MIGRATIONS,
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


_current_connection = "sqlite"


def connection() -> BaseDBAsyncClient:
    return get_connection(_current_connection)


def dialect() -> str:
    return _current_connection


def sql(text: str) -> str:
    """A statement written with `?` placeholders, in the current dialect's (`$1, $2…` on
    PostgreSQL)."""
    if _current_connection != "postgres":
        return text
    parts = text.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


async def open_database(database_url: str, *, migrate: bool = True) -> None:
    """Connect (and bring the schema up to date). Call `close_database` when done."""
    global _current_connection
    config = tortoise_config(database_url)
    _current_connection = connection_name(database_url)
    if migrate:
        await run_migrations(config=config)
        await Tortoise.close_connections()
    await Tortoise.init(config=config, _enable_global_fallback=True)


async def close_database() -> None:
    await Tortoise.close_connections()


class CommitUnknown(Exception):
    """COMMIT was sent but its answer never came: the transaction may or may not have been
    committed."""


@asynccontextmanager
async def transaction() -> AsyncIterator[BaseDBAsyncClient]:
    """The one place a transaction is opened; domain services run their writes inside it.

    Leaving it commits. If the database fails at that moment, the commit may already have
    happened: when Tortoise recorded it as done (only handing the connection back to the pool
    failed, e.g. the server shutting down) the transaction counts as committed; otherwise
    `CommitUnknown` says that nobody can tell.
    """
    conn: BaseDBAsyncClient | None = None
    body_done = False
    try:
        async with in_transaction(_current_connection) as conn:
            yield conn
            body_done = True
    except Exception as exc:
        if not body_done:
            raise
        if getattr(conn, "_finalized", False):
            log.warning("committed; handing the connection back to the pool failed", exc_info=exc)
            return
        raise CommitUnknown(str(exc)) from exc


def is_outage(exc: BaseException) -> bool:
    """Whether an exception means the database cannot be reached right now (try again later)."""
    from tortoise.exceptions import DBConnectionError, OperationalError

    if isinstance(exc, (DBConnectionError, ConnectionError, OSError, TimeoutError)):
        return True
    text = f"{type(exc).__module__}.{type(exc).__name__} {exc}".lower()
    markers = (
        "connect",
        "closed",
        "terminat",
        "shutdown",
        "refused",
        "timeout",
        "database is locked",
        "cannotconnectnow",
        "connectiondoesnotexist",
        "admin_shutdown",
        "too many clients",
        # asyncpg handing a connection back to its pool while the server shuts down
        "another operation",
    )
    return (
        isinstance(exc, OperationalError)
        and any(m in text for m in markers)
        or ("asyncpg" in text and any(m in text for m in markers))
    )


async def pending_migrations() -> list[str]:
    """The project's migrations not applied to the open database yet (for readiness)."""
    import importlib
    import pkgutil

    from tortoise.migrations.recorder import MigrationRecorder

    package = importlib.import_module(MIGRATIONS)
    on_disk = {
        name
        for _, name, is_pkg in pkgutil.iter_modules(package.__path__)
        if not is_pkg and name[0] not in "_~"
    }
    applied = await MigrationRecorder(connection()).applied_migrations()
    return sorted(on_disk - {key.name for key in applied if key.app_label == "models"})
