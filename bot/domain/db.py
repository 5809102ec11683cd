"""Opening the database, applying migrations, and the one place transactions are opened."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.backends.base.config_generator import expand_db_url
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
        # report query queued for one (docs/benchmarks.md). Two bot processes with 20 each stay
        # well under max_connections (100).
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


@dataclass(frozen=True)
class Dialect:
    """What differs between the two databases, said once: every other module asks this instead
    of comparing names."""

    name: str
    # Parameters are `$1, $2…` (PostgreSQL) instead of `?`.
    numbered_parameters: bool
    # Appended to a SELECT to lock its rows to the end of the transaction. SQLite has no row
    # locks (and Tortoise drops select_for_update() there): a writer holds the whole database.
    row_lock: str
    # A locking SELECT may pass over rows other transactions hold (FOR UPDATE SKIP LOCKED).
    skip_locked: bool
    # One statement may write several tables (WITH … INSERT/UPDATE …): fewer round trips while
    # a lock is held.
    writing_ctes: bool
    # Transaction-scoped advisory locks (pg_advisory_xact_lock).
    advisory_locks: bool
    # A transaction must take the database's write lock before it reads (SQLite: a reader that
    # writes later cannot wait for another writer; it fails with SQLITE_BUSY at once).
    locks_database_on_write: bool

    def sql(self, text: str) -> str:
        """A statement written with `?` placeholders, in this dialect's."""
        return _numbered(text) if self.numbered_parameters else text


@functools.lru_cache(maxsize=512)
def _numbered(text: str) -> str:
    parts = text.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


SQLITE = Dialect(
    name="sqlite",
    numbered_parameters=False,
    row_lock="",
    skip_locked=False,
    writing_ctes=False,
    advisory_locks=False,
    locks_database_on_write=True,
)
POSTGRES = Dialect(
    name="postgres",
    numbered_parameters=True,
    row_lock=" FOR UPDATE",
    skip_locked=True,
    writing_ctes=True,
    advisory_locks=True,
    locks_database_on_write=False,
)
_DIALECTS = {d.name: d for d in (SQLITE, POSTGRES)}
_current = SQLITE


def connection() -> BaseDBAsyncClient:
    return get_connection(_current.name)


def dialect() -> Dialect:
    return _current


def sql(text: str) -> str:
    """A statement written with `?` placeholders, in the current dialect's."""
    return _current.sql(text)


async def advisory_lock(conn: BaseDBAsyncClient, space: int, key: int) -> None:
    """Hold a lock on (space, key) to the end of the transaction, where the database has such
    locks (SQLite runs one writer at a time anyway)."""
    if _current.advisory_locks:
        await conn.execute_query(sql("SELECT pg_advisory_xact_lock(?, ?)"), [space, key])


#: The database this process has open, on which event loop, and how many openers share it.
_opened: tuple[str, asyncio.AbstractEventLoop] | None = None
_openers = 0


async def open_database(database_url: str, *, migrate: bool = True) -> None:
    """Connect (and bring the schema up to date). Call `close_database` when done.

    Tortoise's connections are one set per process. A second open of the same database on
    the same event loop (a second app in one process, as the tests run two instances) shares
    them, and they close with the last `close_database`: closed by the first, they would be
    reopened by the other's workers and then never closed (aiosqlite's threads would keep the
    process from exiting).
    """
    global _current, _opened, _openers
    loop = asyncio.get_running_loop()
    if _openers and _opened == (database_url, loop):
        _openers += 1
        return
    config = tortoise_config(database_url)
    _current = _DIALECTS[connection_name(database_url)]
    if migrate:
        async with migration_lock(database_url):
            await run_migrations(config=config)
            await Tortoise.close_connections()
    await Tortoise.init(config=config, _enable_global_fallback=True)
    _opened, _openers = (database_url, loop), 1


#: PostgreSQL advisory lock key of the migration run (any constant; this one spells "fusion").
MIGRATION_LOCK_KEY = 0x66_75_73_69_6F_6E


@asynccontextmanager
async def migration_lock(database_url: str) -> AsyncIterator[None]:
    """Held around a migration run, so that instances starting at once migrate one at a time:
    the first applies what is pending, the others wait and then find nothing left to do
    (without it, two at once both inserted the same row of the migration table).

    PostgreSQL: a session advisory lock on a connection of its own (released when it closes,
    even if this process dies). SQLite: an exclusive `flock` on a file beside the database
    (released by the kernel when the process dies); a database in memory needs none.
    """
    credentials = expand_db_url(database_url)["credentials"]
    if connection_name(database_url) == "postgres":
        import asyncpg

        conn = await asyncpg.connect(
            host=credentials.get("host"),
            port=credentials.get("port"),
            user=credentials.get("user"),
            password=credentials.get("password"),
            database=credentials.get("database"),
        )
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        finally:
            await conn.close()
        return
    path = str(credentials.get("file_path") or "")
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        yield
        return
    with open(path + ".migrate-lock", "a+b") as lock:  # noqa: ASYNC230 - once, at start
        # Waiting for another process blocks: in a thread, so this event loop keeps running.
        await asyncio.to_thread(fcntl.flock, lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


async def close_database() -> None:
    """Close what `open_database` opened (when no other opener still shares it)."""
    global _opened, _openers
    if _openers > 1:
        _openers -= 1
        return
    _opened, _openers = None, 0
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
        async with in_transaction(_current.name) as conn:
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
