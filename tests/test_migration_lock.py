"""Instances starting together (issue 16 item 4): three processes open a fresh database at the
same moment and each applies pending migrations, as `python app.py` does at start. All three
start (exit 0), each migration is recorded once, and the schema is whole — on SQLite and on
PostgreSQL. Then migration 0005's rescoping of the request keys written before it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tortoise import Tortoise

from bot.domain import db
from tests.support import dbutil

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 3
ROUNDS = 3

# Each process waits for the same wall-clock instant, then opens the database with migrations
# on (bot.domain.db.open_database, what app.py, the CLI and the scheduler call at start).
STARTER = """
import asyncio, sys, time
from bot.domain import db

async def main(url, at):
    time.sleep(max(0.0, at - time.time()))
    await db.open_database(url, migrate=True)
    await db.connection().execute_query("SELECT count(*) FROM audit_head")
    await db.close_database()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def start_together(url: str) -> list[subprocess.CompletedProcess[str]]:
    at = time.time() + 3.0  # after every interpreter has imported the bot
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, url, str(at)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


async def recorded_migrations(url: str) -> list[tuple[str, str]]:
    await db.open_database(url, migrate=False)
    try:
        _, rows = await db.connection().execute_query(
            "SELECT app, name FROM tortoise_migrations ORDER BY name"
        )
        return [(r["app"], r["name"]) for r in rows]
    finally:
        await db.close_database()


def fresh_sqlite(tmp_path: Path, n: int) -> str:
    return f"sqlite://{tmp_path / f'fresh-{n}.sqlite3'}"


@pytest.fixture
def fresh_postgres() -> Iterator[list[str]]:
    problem = dbutil.postgres_available()
    if problem is not None:
        if dbutil.REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required but: {problem}")
        pytest.skip(f"PostgreSQL not available: {problem}")
    urls = [f"{dbutil.POSTGRES_URL}_fresh{n}" for n in range(ROUNDS)]
    for url in urls:
        asyncio.run(dbutil._create_postgres_database(url))
    yield urls
    for url in urls:
        dbutil.drop(url)


def migration_names() -> list[str]:
    return sorted(
        p.stem for p in (ROOT / "bot" / "domain" / "migrations").glob("0*.py") if p.is_file()
    )


async def check_started_once(url: str, runs: list[subprocess.CompletedProcess[str]]) -> None:
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    recorded = await recorded_migrations(url)
    assert [name for _, name in recorded] == migration_names()


async def test_three_instances_start_at_once_on_a_fresh_sqlite_database(tmp_path: Path) -> None:
    for n in range(ROUNDS):
        url = fresh_sqlite(tmp_path, n)
        await check_started_once(url, await asyncio.to_thread(start_together, url))


@pytest.mark.postgres
async def test_three_instances_start_at_once_on_a_fresh_postgres_database(
    fresh_postgres: list[str],
) -> None:
    for url in fresh_postgres:
        await check_started_once(url, await asyncio.to_thread(start_together, url))


# ----- migration 0005: the keys written before it -----------------------------------------------

OLD_KEYS = {
    "1736500000000001": "legacy:1736500000000001",  # a Teams activity id alone
    "f:abc-123#9f2c": "legacy:f:abc-123#9f2c",  # an activity's key per user of a bulk change
    "form:0123456789abcdef": "form:0123456789abcdef",  # a card form keeps its key
    "form:0123456789abcdef#77aa": "form:0123456789abcdef#77aa",
}


async def _keys_after_migrating(url: str) -> dict[str, str]:
    config = db.tortoise_config(url)
    from tortoise.migrations.api import migrate

    await migrate(config=config, target="models.0004_account_upn_case_insensitive")
    await Tortoise.close_connections()
    await db.open_database(url, migrate=False)
    conn = db.connection()
    for key in OLD_KEYS:
        await conn.execute_query(
            db.sql(
                "INSERT INTO request_key (key, outcome, created_at) "
                "VALUES (?, ?, CURRENT_TIMESTAMP)"
            ),
            [key, '{"events": []}'],
        )
    await db.close_database()
    await db.open_database(url, migrate=True)
    try:
        _, rows = await db.connection().execute_query("SELECT key, outcome FROM request_key")
        return {r["key"]: r["outcome"] for r in rows}
    finally:
        await db.close_database()


async def test_migration_0005_keeps_old_activity_keys_apart_and_form_keys_as_they_are(
    tmp_path: Path,
) -> None:
    keys = await _keys_after_migrating(fresh_sqlite(tmp_path, 99))
    assert sorted(keys) == sorted(OLD_KEYS.values())
    assert all(outcome for outcome in keys.values())  # the outcomes are kept


@pytest.mark.postgres
async def test_migration_0005_on_postgres(fresh_postgres: list[str]) -> None:
    keys = await _keys_after_migrating(fresh_postgres[0])
    assert sorted(keys) == sorted(OLD_KEYS.values())


# ----- two openers in one process ---------------------------------------------------------------


def _connection_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


async def test_two_openers_in_one_process_share_the_connections_until_the_last_closes(
    empty_db_url: str,
) -> None:
    """Two apps in one process (the tests run two instances so) open the same database: the
    first to close leaves the other's connections working, and the last close closes them.
    Closed by the first, they were reopened by the other's workers and never closed again: an
    aiosqlite thread then kept the test run from exiting (CI ran out of time)."""
    url = empty_db_url
    before = set(_connection_threads())
    await db.open_database(url, migrate=False)
    await db.open_database(url, migrate=False)
    shared = db.connection()
    await db.close_database()
    assert db.connection() is shared
    await shared.execute_query("SELECT count(*) FROM audit_head")
    await db.close_database()
    left = [t for t in _connection_threads() if t not in before]
    for thread in left:
        thread.join(5)
    assert not [t for t in left if t.is_alive()], "a connection was left open"
    with pytest.raises(Exception):  # noqa: B017 - Tortoise's "not initialised" error
        db.connection()


# ----- migration 0009: data that already broke one number per account -----------------------


async def _shared_numbers_then_migrate(url: str) -> str:
    """At 0008, an account given two numbers behind the ledger's back; then the rest of the
    migrations, as `python app.py` runs them at start. What stopped them."""
    from tortoise.migrations.api import migrate

    from bot.domain.change import Origin
    from bot.domain.models import NumberState, PhoneNumber
    from tests.support.ledger_state import one_user_with_a_number

    await migrate(config=db.tortoise_config(url), target="models.0008_licenses_reconcile")
    await Tortoise.close_connections()
    origin = Origin(actor_id="t", actor_name="T", source="cli")
    await db.open_database(url, migrate=False)
    try:
        holder = await one_user_with_a_number(origin, spare=2)
        await PhoneNumber.filter(e164="+442071230002").update(
            state=NumberState.ASSIGNED, holder_id=holder
        )
    finally:
        await db.close_database()
    with pytest.raises(Exception) as stopped:  # noqa: B017 - the migration's own error
        await db.open_database(url, migrate=True)
    await Tortoise.close_connections()
    recorded = [name for _, name in await recorded_migrations(url)]
    assert recorded[-1] == "0008_licenses_reconcile", recorded  # 0009 and after: not applied
    return str(stopped.value)


async def test_migration_0009_names_the_accounts_that_hold_two_numbers(tmp_path: Path) -> None:
    said = await _shared_numbers_then_migrate(fresh_sqlite(tmp_path, 98))
    assert "Migration 0009 stopped, nothing changed: 1 account(s)" in said, said
    assert "user0@contoso.com: +442071230000, +442071230002" in said, said


@pytest.mark.postgres
async def test_migration_0009_on_postgres(fresh_postgres: list[str]) -> None:
    said = await _shared_numbers_then_migrate(fresh_postgres[0])
    assert "user0@contoso.com: +442071230000, +442071230002" in said, said
