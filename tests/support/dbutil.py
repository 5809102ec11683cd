"""Test databases: a SQLite file and a PostgreSQL database, migrated once per session and
emptied before each test (much faster than migrating for every test)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tortoise import Tortoise

from bot.domain import db

GENESIS = "0" * 64
# The server to test against. Each test session makes its own database on it (named after
# the session's process id), so parallel sessions never drop each other's database.
SERVER_URL = os.environ.get(
    "FUSION_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/fusion_test"
)
POSTGRES_URL = f"{SERVER_URL.rsplit('/', 1)[0]}/{SERVER_URL.rsplit('/', 1)[1]}_{os.getpid()}"
REQUIRE_POSTGRES = os.environ.get("FUSION_REQUIRE_POSTGRES", "") == "1"


def _admin_dsn(url: str) -> tuple[str, str]:
    base, name = url.rsplit("/", 1)
    return base + "/postgres", name


async def _create_postgres_database(url: str) -> None:
    import asyncpg

    admin, name = _admin_dsn(url)
    conn = await asyncpg.connect(admin.replace("postgres://", "postgresql://", 1), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def postgres_available() -> str | None:
    """None if the server answers, else why not."""
    import asyncpg

    admin, _ = _admin_dsn(POSTGRES_URL)

    async def ping() -> None:
        conn = await asyncpg.connect(admin.replace("postgres://", "postgresql://", 1), timeout=3)
        await conn.close()

    try:
        asyncio.run(ping())
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"{type(exc).__name__}: {exc}"


def drop(url: str) -> None:
    """Remove a session's PostgreSQL database."""
    import asyncpg

    async def run() -> None:
        admin, name = _admin_dsn(url)
        conn = await asyncpg.connect(admin.replace("postgres://", "postgresql://", 1), timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(run())


def prepare(url: str) -> None:
    """Create a fresh database and apply every migration (in its own event loop)."""

    if db.connection_name(url) == "sqlite":
        path = Path(url.split("://", 1)[1].split("?", 1)[0])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)

    async def run() -> None:
        if db.connection_name(url) == "postgres":
            await _create_postgres_database(url)
        await db.open_database(url, migrate=True)
        await db.close_database()

    asyncio.run(run())


async def empty(url: str) -> None:
    """Remove every row (the schema stays) and reset the audit chain to its genesis."""
    conn_name = db.connection_name(url)
    conn = Tortoise.get_connection(conn_name)
    tables = [m._meta.db_table for m in Tortoise.apps["models"].values()]
    if conn_name == "postgres":
        await conn.execute_script(
            "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
        )
    else:
        # Tables go in model order, not dependency order: let the foreign keys wait.
        await conn.execute_script("PRAGMA foreign_keys = OFF")
        try:
            for table in tables:
                await conn.execute_script(f'DELETE FROM "{table}"')
            await conn.execute_script("DELETE FROM sqlite_sequence")
        finally:
            await conn.execute_script("PRAGMA foreign_keys = ON")
    await conn.execute_script(
        f"INSERT INTO audit_head (id, last_id, last_hash) VALUES (1, 0, '{GENESIS}')"
    )
