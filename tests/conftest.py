"""Shared fixtures: loopback-only network, test databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.config import DEFAULT_NAMING_RULE
from bot.domain import change, db
from bot.domain.naming import set_naming_rule
from tests.fakes.network_guard import install_loopback_guard
from tests.support import dbutil

install_loopback_guard()

pytest_plugins = ["tests.support.teams_fixtures"]

# Nothing a test runs may pick up a developer's .env or real Bot Framework settings.
for _name in list(os.environ):
    if _name.startswith(("Microsoft", "FUSION_")) and _name not in {
        "FUSION_TEST_POSTGRES_URL",
        "FUSION_REQUIRE_POSTGRES",
        "FUSION_REQUIRE_BROWSER",
    }:
        del os.environ[_name]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

#: How long the interpreter may take to exit once the session is over, before every thread's
#: stack is printed and the run ends with status 1 (a hang must not eat CI's time silently).
EXIT_GRACE_SECONDS = 180


def _lingering(before: set[threading.Thread]) -> list[threading.Thread]:
    """Non-daemon threads started since `before` that are still alive: Python waits for each
    at exit, so one that never ends (an unclosed aiosqlite connection's) hangs the run."""
    return [
        t
        for t in threading.enumerate()
        if t not in before and not t.daemon and t is not threading.main_thread()
    ]


_THREADS_BEFORE = pytest.StashKey[set[threading.Thread]]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_THREADS_BEFORE] = set(threading.enumerate())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """A test may not leave a thread behind that would keep the process from exiting: its
    teardown fails, naming the thread and where it waits."""
    yield
    left = _lingering(item.stash.get(_THREADS_BEFORE, set()))
    deadline = time.monotonic() + 5
    for thread in left:  # a connection being closed ends its thread a moment later
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [t for t in left if t.is_alive()]
    if left:
        frames = sys._current_frames()
        where = "\n".join(
            f"{t.name}:\n" + "".join(traceback.format_stack(frames[t.ident])[-3:])
            for t in left
            if t.ident in frames
        )
        pytest.fail(
            f"left {len(left)} non-daemon thread(s) running, which would keep the process "
            f"from exiting:\n{where}",
            pytrace=False,
        )


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    faulthandler.dump_traceback_later(EXIT_GRACE_SECONDS, exit=True, file=sys.__stderr__)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite://{tmp_path_factory.mktemp('db') / 'fusion-test.sqlite3'}"
    dbutil.prepare(url)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    problem = dbutil.postgres_available()
    if problem is not None:
        if dbutil.REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required (FUSION_REQUIRE_POSTGRES=1) but: {problem}")
        pytest.skip(f"PostgreSQL not available: {problem}")
    dbutil.prepare(dbutil.POSTGRES_URL)
    yield dbutil.POSTGRES_URL
    dbutil.drop(dbutil.POSTGRES_URL)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty, migrated database — SQLite and PostgreSQL in turn."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest_asyncio.fixture
async def database(db_url: str) -> AsyncIterator[str]:
    """An open, empty database on this test's event loop; yields its URL."""
    set_naming_rule(DEFAULT_NAMING_RULE)
    await db.open_database(db_url, migrate=False)
    try:
        await dbutil.empty(db_url)
        yield db_url
    finally:
        await db.close_database()


@pytest_asyncio.fixture
async def pg_database(postgres_url: str) -> AsyncIterator[str]:
    """PostgreSQL only (concurrency proofs): open, empty, on this test's loop."""
    set_naming_rule(DEFAULT_NAMING_RULE)
    await db.open_database(postgres_url, migrate=False)
    try:
        await dbutil.empty(postgres_url)
        yield postgres_url
    finally:
        await db.close_database()


@pytest.fixture
def unqueued_changes() -> Iterator[None]:
    """Every change of this process goes to the database at once (no queue in the process), so
    that a race is decided by the database's locks alone."""
    change.limit_writers(0)
    try:
        yield
    finally:
        change.limit_writers(change.WRITERS_AT_ONCE)


@pytest.fixture
def empty_db_url(db_url: str) -> Iterator[str]:
    """An emptied database URL that the test opens itself (e.g. through the app or the CLI)."""
    import asyncio

    async def run() -> None:
        await db.open_database(db_url, migrate=False)
        try:
            await dbutil.empty(db_url)
        finally:
            await db.close_database()

    asyncio.run(run())
    yield db_url
