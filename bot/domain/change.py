"""A change to the ledger: one transaction, its audit events, its idempotency key.

Every mutating service runs inside `change(origin)`. The audit events are appended to the
hash chain in the same transaction as the change, so either both commit or neither does.
A dry run goes through exactly the same checks and writes, then rolls back: what it shows
is what the real change would do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import unicodedata
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError

from bot.domain import db
from bot.domain.errors import Conflict, Duplicate, InvalidInput, Unavailable, Unconfirmed
from bot.domain.models import AuditEvent, AuditHead

SOURCES = frozenset({"chat", "card", "approval", "schedule", "cli", "system", "provisioning"})
#: Who acted, as the audit stores it. An Entra object id is 36 characters and a UPN at most 113
#: (Entra's limits); a display name at most 256 (Entra's displayName). Bounded here, once, so
#: that every column that holds them can hold any value a door lets through.
MAX_ACTOR_ID = 255
MAX_ACTOR_NAME = 256
#: A correlation id (the Teams activity id) is a reference for people reading the audit: a
#: longer one is kept to this length.
MAX_CORRELATION_ID = 255


def check_actor_id(value: str, what: str = "operator") -> str:
    """An actor id as given at a door (the CLI's `--as`): like a name, no control or bidi
    characters (they would rewrite how the audit reads), and at most MAX_ACTOR_ID long."""
    text = value.strip()
    if not text:
        raise InvalidInput(f"The {what} is empty.")
    if len(text) > MAX_ACTOR_ID:
        raise InvalidInput(
            f"The {what} is {len(text):,} characters long; at most {MAX_ACTOR_ID} are allowed."
        )
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for ch in text):
        raise InvalidInput(f"The {what} contains control, line-break or text-direction characters.")
    return text


@dataclass(frozen=True)
class Origin:
    """Who asks for a change, through which door, under which correlation id."""

    actor_id: str
    actor_name: str
    source: str
    correlation_id: str | None = None
    # Set when a retried delivery of the same request must have no second effect.
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}")
        if len(self.actor_id) > MAX_ACTOR_ID:
            raise InvalidInput(
                f"Your user id is {len(self.actor_id):,} characters long; at most "
                f"{MAX_ACTOR_ID} can be recorded."
            )
        if len(self.actor_name) > MAX_ACTOR_NAME:
            raise InvalidInput(
                f"Your display name is {len(self.actor_name):,} characters long; at most "
                f"{MAX_ACTOR_NAME} can be recorded."
            )
        if self.correlation_id is not None and len(self.correlation_id) > MAX_CORRELATION_ID:
            object.__setattr__(self, "correlation_id", self.correlation_id[:MAX_CORRELATION_ID])


@dataclass
class Event:
    action: str
    target: str
    before: Any
    after: Any


@dataclass
class Change:
    origin: Origin
    conn: BaseDBAsyncClient
    dry_run: bool
    events: list[Event] = field(default_factory=list)
    # PostgreSQL: the audit chain's head (last id, last hash) when a statement of the change
    # already locked and read it, saving the append a round trip.
    head: tuple[int, str] | None = None

    def record(self, action: str, target: str, before: Any, after: Any) -> None:
        self.events.append(Event(action, target, jsonable(before), jsonable(after)))


class _RollBack(Exception):
    pass


class _Replayed(Exception):
    pass


def jsonable(value: Any) -> Any:
    """The value as plain JSON data, so what is hashed is exactly what is stored."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(prev_hash: str, row: dict[str, Any]) -> str:
    body = json.dumps(
        {
            "prev": prev_hash,
            "at": _stamp(row["at"]),
            "actor_id": row["actor_id"],
            "actor_name": row["actor_name"],
            "source": row["source"],
            "action": row["action"],
            "target": row["target"],
            "before": row["before"],
            "after": row["after"],
            "correlation_id": row["correlation_id"],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(body.encode()).hexdigest()


async def _head(conn: BaseDBAsyncClient) -> tuple[int, str]:
    """The chain's head, locked to the end of the transaction (appends queue here)."""
    _, rows = await conn.execute_query(db.sql(AUDIT_HEAD + db.dialect().row_lock))
    if not rows:
        raise RuntimeError("audit chain head is missing: migrations not applied?")
    return int(rows[0][0]), str(rows[0][1])


def _rows(origin: Origin, events: list[Event], prev: str) -> list[dict[str, Any]]:
    """The audit rows of a change, each hashed onto the one before it."""
    at = datetime.now(UTC)  # one timestamp per change
    rows = []
    for event in events:
        row = {
            "at": at,
            "actor_id": origin.actor_id,
            "actor_name": origin.actor_name,
            "source": origin.source,
            "action": event.action,
            "target": event.target[:255],
            "before": event.before,
            "after": event.after,
            "correlation_id": origin.correlation_id,
        }
        row["prev_hash"] = prev
        row["hash"] = prev = event_hash(prev, row)
        rows.append(row)
    return rows


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


# The audit append and the request key, written as SQL: through the ORM, building the
# statements cost more CPU than running them (docs/benchmarks.md). Parameters of an event:
# _COLUMNS in order.
_COLUMNS = (
    "at",
    "actor_id",
    "actor_name",
    "source",
    "action",
    "target",
    "before",
    "after",
    "correlation_id",
    "prev_hash",
    "hash",
)
_JSON_COLUMNS = frozenset({"before", "after"})
_INSERT_EVENT = (
    f"INSERT INTO audit_event ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}) RETURNING id"
)
AUDIT_HEAD = "SELECT last_id, last_hash FROM audit_head WHERE id = 1"
_MOVE_HEAD = "UPDATE audit_head SET last_id = ?, last_hash = ? WHERE id = 1"
_INSERT_KEY = "INSERT INTO request_key (key, outcome, created_at) VALUES (?, ?, ?)"
_KEY_OUTCOME = "SELECT outcome FROM request_key WHERE key = ?"
# Where one statement may write several tables (db.Dialect.writing_ctes): a change's audit
# event, the chain's new head and the request key in one round trip while the head (and
# usually a product) is locked. Parameters: the event's, its hash, then the key's.
_APPEND_IN_ONE = f"""
WITH event AS ({_INSERT_EVENT}),
head AS (UPDATE audit_head SET last_id = (SELECT id FROM event), last_hash = ? WHERE id = 1)
"""
_APPEND_ONLY = _APPEND_IN_ONE + "SELECT id FROM event"
_APPEND_AND_KEY = _APPEND_IN_ONE + _INSERT_KEY


async def request_outcome(key: str, conn: BaseDBAsyncClient | None = None) -> tuple[bool, Any]:
    """Whether the request key was carried out already, and what its change did."""
    client = conn or db.connection()
    rows = await client.execute_query_dict(db.sql(_KEY_OUTCOME), [key[:255]])
    if not rows:
        return False, None
    outcome = rows[0]["outcome"]
    return True, json.loads(outcome) if isinstance(outcome, str) else outcome


def _values(row: dict[str, Any]) -> list[Any]:
    return [_json(row[c]) if c in _JSON_COLUMNS else row[c] for c in _COLUMNS]


async def _finish(
    conn: BaseDBAsyncClient,
    origin: Origin,
    events: list[Event],
    key: str | None,
    head: list[tuple[int, str]] | None,
    locked: tuple[int, str] | None = None,
) -> None:
    """Append the change's events to the chain and remember its request key. A key that is
    already there means another delivery of the same request got here first (_Replayed).
    `head`: SQLite's head as read when the write lock was taken, moved along here; `locked`:
    PostgreSQL's, when the change has locked and read it already."""
    outcome = [e.__dict__ for e in events]
    try:
        if db.dialect().writing_ctes and len(events) == 1 and head is None:
            _, prev = locked or await _head(conn)
            [row] = _rows(origin, events, prev)
            values = [*_values(row), row["hash"]]
            if key is None:
                await conn.execute_query(db.sql(_APPEND_ONLY), values)
            else:
                key_values = [key, _json(outcome), row["at"]]
                await conn.execute_query(db.sql(_APPEND_AND_KEY), [*values, *key_values])
            return
        if events:
            last_id, prev = head[0] if head is not None else locked or await _head(conn)
            for row in _rows(origin, events, prev):
                [created] = await conn.execute_query_dict(db.sql(_INSERT_EVENT), _values(row))
                last_id, prev = int(created["id"]), row["hash"]
            await conn.execute_query(db.sql(_MOVE_HEAD), [last_id, prev])
            if head is not None:
                head[0] = (last_id, prev)
        if key is not None:
            await conn.execute_query(db.sql(_INSERT_KEY), [key, _json(outcome), datetime.now(UTC)])
    except IntegrityError as exc:
        if key is not None:
            raise _Replayed() from exc
        raise


# Changes of this process inside a transaction at once. Every change appends to the audit chain,
# so they pass its head one at a time whatever this number; the others wait here instead of at
# the database, where each release of a row lock wakes every one of its waiters (measured with
# two bot processes allocating one product: docs/benchmarks.md).
WRITERS_AT_ONCE = 2
_writers_at_once = WRITERS_AT_ONCE
_WRITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
# Set inside a change: a change nested in it (an approval carrying out its change) has its place.
_IN_CHANGE: ContextVar[bool] = ContextVar("in_change", default=False)


def limit_writers(at_once: int) -> None:
    """How many changes of this process may be inside a transaction at once (0: no limit).
    The limit is for speed only: what keeps the ledger right is the database's locks."""
    global _writers_at_once
    if at_once < 0:
        raise ValueError("at_once must be 0 (no limit) or more")
    _writers_at_once = at_once
    _WRITERS.clear()


def writers_at_once() -> int:
    return _writers_at_once


@asynccontextmanager
async def _writer_place() -> AsyncIterator[None]:
    if _IN_CHANGE.get() or not _writers_at_once:
        yield
        return
    loop = asyncio.get_running_loop()
    writers = _WRITERS.get(loop)
    if writers is None:
        writers = _WRITERS[loop] = asyncio.Semaphore(_writers_at_once)
    async with writers:
        token = _IN_CHANGE.set(True)
        try:
            yield
        finally:
            _IN_CHANGE.reset(token)


# SQLite: the chain's head as the outermost change read it with the write lock; a change nested
# in it (an approval carrying out its change, in a savepoint) appends from it and moves it on.
_SQLITE_HEAD: ContextVar[list[tuple[int, str]] | None] = ContextVar("sqlite_head", default=None)


async def _take_write_lock(conn: BaseDBAsyncClient) -> tuple[int, str]:
    """SQLite: hold the write lock from the start, and read the chain's head with it. A
    transaction that reads first and writes later cannot wait for another process's write
    (SQLITE_BUSY at once, busy_timeout or not); one that writes first queues behind it. So the
    bot and the CLI on one file take turns, and the head cannot move until this one commits."""
    rows = await conn.execute_query_dict(
        "UPDATE audit_head SET last_id = last_id WHERE id = 1 RETURNING last_id, last_hash"
    )
    if not rows:
        raise RuntimeError("audit chain head is missing: migrations not applied?")
    return int(rows[0]["last_id"]), str(rows[0]["last_hash"])


@asynccontextmanager
async def change(origin: Origin, *, dry_run: bool = False) -> AsyncIterator[Change]:
    """Run a change in one transaction with its audit; roll back for a dry run.

    A request key is looked up before the transaction (a redelivery is answered at once,
    without waiting for any lock) and written with the outcome at its end; two deliveries
    racing both get past the look-up, and the database keeps the first one's key.
    """
    key = None if dry_run or not origin.idempotency_key else origin.idempotency_key[:255]
    try:
        if key is not None:
            seen, outcome = await request_outcome(key)
            if seen:
                raise Duplicate(origin.idempotency_key or "", outcome)
        async with _writer_place(), db.transaction() as conn:
            head, taken = _SQLITE_HEAD.get(), None
            if head is None and db.dialect().locks_database_on_write:
                head = [await _take_write_lock(conn)]
                taken = _SQLITE_HEAD.set(head)
            try:
                current = Change(origin=origin, conn=conn, dry_run=dry_run)
                yield current
                if dry_run:
                    raise _RollBack()
                if current.events or key is not None:
                    await _finish(conn, origin, current.events, key, head, current.head)
            finally:
                if taken is not None:
                    _SQLITE_HEAD.reset(taken)
    except _RollBack:
        return
    except _Replayed:
        _, outcome = await request_outcome(key or "")
        raise Duplicate(origin.idempotency_key or "", outcome) from None
    except IntegrityError as exc:
        # Two changes raced past the same "already exists?" check; the database kept one.
        raise Conflict(CLASH) from exc
    except db.CommitUnknown as exc:
        raise Unconfirmed(UNCONFIRMED) from exc
    except Exception as exc:
        if db.is_outage(exc):
            raise Unavailable(OUTAGE) from exc
        raise


CLASH = (
    "Another change to the same record was made at the same moment; nothing was changed. "
    "Look again and retry."
)
OUTAGE = "The database is not answering right now; nothing was changed. Try again in a moment."
UNCONFIRMED = (
    "The database stopped answering while this change was being saved, so it may or may not "
    "have been made. Look at `audit` (or `usage`) once it answers again, before you repeat it."
)


async def verify_chain() -> tuple[bool, int, str]:
    """Walk the chain in order; (intact, events checked, first problem found)."""
    prev = "0" * 64
    count = 0
    last_id = 0
    batch = 2000
    while True:
        rows = await AuditEvent.filter(id__gt=last_id).order_by("id").limit(batch)
        if not rows:
            break
        for row in rows:
            if row.prev_hash != prev:
                return False, count, f"event {row.id}: link to the previous event is broken"
            expected = event_hash(prev, row.__dict__)
            if expected != row.hash:
                return False, count, f"event {row.id}: contents do not match its hash"
            prev = row.hash
            last_id = row.id
            count += 1
    head = await AuditHead.get_or_none(id=1)
    if head is None or head.last_hash != prev or head.last_id != last_id:
        return False, count, "the chain's head does not match its last event (events removed?)"
    return True, count, ""
