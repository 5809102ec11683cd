"""The queue in front of the database: at most FUSION_MAX_CONCURRENT_CHANGES changes of one
process inside a transaction at once (bot/domain/change.py); the others wait in the process.

Measured on PostgreSQL, where transactions really run side by side (SQLite's one connection
runs them one at a time whatever the queue).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bot.config import ConfigError, Settings
from bot.domain import change as change_module
from bot.domain.change import change, limit_writers, writers_at_once
from bot.domain.models import AuditEvent
from tests.support.ledger_state import origin

OPS = origin()


@pytest.fixture
def limit() -> Iterator[None]:
    yield
    limit_writers(change_module.WRITERS_AT_ONCE)


async def most_inside_at_once(changes: int) -> tuple[int, int]:
    """Start `changes` changes together, each staying inside its transaction a moment; (most
    seen inside at once, audit events written)."""
    inside = most = 0

    async def one(i: int) -> None:
        nonlocal inside, most
        async with change(OPS) as ch:
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.05)
            ch.record("test.queue", f"change:{i}", None, {"i": i})
            inside -= 1

    await asyncio.gather(*(one(i) for i in range(changes)))
    return most, await AuditEvent.filter(action="test.queue").count()


@pytest.mark.postgres
@pytest.mark.usefixtures("limit")
async def test_a_process_has_at_most_the_limit_of_changes_in_a_transaction(
    pg_database: str,
) -> None:
    assert writers_at_once() == 2  # the default
    assert await most_inside_at_once(6) == (2, 6)
    limit_writers(3)
    assert await most_inside_at_once(6) == (3, 12)
    limit_writers(0)  # no limit: all six at the database at once
    assert await most_inside_at_once(6) == (6, 18)


@pytest.mark.postgres
@pytest.mark.usefixtures("limit")
async def test_a_change_nested_in_a_change_does_not_wait_for_a_place(pg_database: str) -> None:
    """An approval carries out its change inside its own: with one place, waiting for a second
    would never end."""
    limit_writers(1)

    async def nested() -> None:
        async with change(OPS) as outer:
            async with change(OPS) as inner:
                inner.record("test.inner", "change:inner", None, {})
            outer.record("test.outer", "change:outer", None, {})

    await asyncio.wait_for(asyncio.gather(nested(), nested()), 10)
    assert await AuditEvent.filter(action__in=["test.inner", "test.outer"]).count() == 4


def test_the_setting() -> None:
    assert Settings.from_env({}, env_file=None).max_concurrent_changes == 2
    env = {"FUSION_MAX_CONCURRENT_CHANGES": "0"}
    assert Settings.from_env(env, env_file=None).max_concurrent_changes == 0
    for bad in ("-1", "two"):
        with pytest.raises(ConfigError, match="FUSION_MAX_CONCURRENT_CHANGES"):
            Settings.from_env({"FUSION_MAX_CONCURRENT_CHANGES": bad}, env_file=None)
    with pytest.raises(ValueError):
        limit_writers(-1)


@pytest.mark.usefixtures("limit")
async def test_the_running_app_takes_the_limit_from_its_settings(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes import FakeBotConnector
    from tests.support.teams_env import dev_settings, running_bot, trust_fakes

    trust_fakes(monkeypatch)
    with FakeBotConnector(None) as connector:
        for at_once in (5, 0):
            settings = dev_settings(empty_db_url, connector, max_concurrent_changes=at_once)
            async with running_bot(settings):
                assert writers_at_once() == at_once
