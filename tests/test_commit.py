"""When the database goes away at the moment a change commits, the answer never claims more than
is known: a lost connection before COMMIT is "try again, nothing was changed", a lost one at
COMMIT is "may or may not have been made", and asyncpg's errors while the server shuts down
count as an outage (not "something went wrong")."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from asyncpg.exceptions._base import InternalClientError

from bot.domain.change import change
from bot.domain.db import is_outage
from bot.domain.errors import Unavailable, Unconfirmed
from bot.domain.models import AuditEvent, Customer
from tests.support.ledger_state import origin

OPS = origin()


def test_asyncpg_losing_track_of_a_connection_while_the_server_stops_is_an_outage() -> None:
    seen = InternalClientError("cannot switch to state 15; another operation (2) is in progress")
    assert is_outage(seen)
    assert not is_outage(ValueError("another operation"))  # only the driver's own errors


async def _backend_pid(conn: object) -> int:
    rows = await conn.execute_query_dict("SELECT pg_backend_pid() AS pid")  # type: ignore[attr-defined]
    return int(rows[0]["pid"])


async def _terminate(postgres_url: str, pid: int) -> None:
    other = await asyncpg.connect(postgres_url.replace("postgres://", "postgresql://", 1))
    try:
        await other.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await other.close()
    await asyncio.sleep(0.2)  # the backend is gone before the transaction goes on


@pytest.mark.postgres
async def test_a_connection_lost_at_commit_is_answered_as_unconfirmed(pg_database: str) -> None:
    with pytest.raises(Unconfirmed, match="may or may not have been made"):
        async with change(OPS) as ch:
            await Customer.create(using_db=ch.conn, name="LOST-AT-COMMIT")
            await _terminate(pg_database, await _backend_pid(ch.conn))
    # Here it was not made (the server ended the session before COMMIT arrived): the answer
    # did not claim either way.
    assert not await Customer.filter(name="LOST-AT-COMMIT").exists()


@pytest.mark.postgres
async def test_a_connection_lost_before_commit_is_try_again_and_nothing_changed(
    pg_database: str,
) -> None:
    with pytest.raises(Unavailable, match="nothing was changed"):
        async with change(OPS) as ch:
            await Customer.create(using_db=ch.conn, name="LOST-BEFORE")
            await _terminate(pg_database, await _backend_pid(ch.conn))
            ch.record("customer.add", "customer:LOST-BEFORE", None, {"name": "LOST-BEFORE"})
    # The audit event is written after the body: on the lost connection, before COMMIT.
    assert not await Customer.filter(name="LOST-BEFORE").exists()
    assert not await AuditEvent.filter(target="customer:LOST-BEFORE").exists()
