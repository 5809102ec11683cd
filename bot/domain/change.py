"""A change to the ledger: one transaction, its audit events, its idempotency key.

Every mutating service runs inside `change(origin)`. The audit events are appended to the
hash chain in the same transaction as the change, so either both commit or neither does.
A dry run goes through exactly the same checks and writes, then rolls back: what it shows
is what the real change would do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError

from bot.domain import db
from bot.domain.errors import Conflict, Duplicate, Unavailable
from bot.domain.models import AuditEvent, AuditHead, RequestKey

SOURCES = frozenset({"chat", "card", "approval", "schedule", "cli", "system"})


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


async def _append_audit(conn: BaseDBAsyncClient, origin: Origin, events: list[Event]) -> None:
    head = await AuditHead.filter(id=1).select_for_update().using_db(conn).first()
    if head is None:
        raise RuntimeError("audit chain head is missing: migrations not applied?")
    prev = head.last_hash
    at = datetime.now(UTC)  # one timestamp per change
    last_id = head.last_id
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
        digest = event_hash(prev, row)
        created = await AuditEvent.create(using_db=conn, prev_hash=prev, hash=digest, **row)
        prev = digest
        last_id = created.id
    await AuditHead.filter(id=1).using_db(conn).update(last_id=last_id, last_hash=prev)


async def _take_write_lock(conn: BaseDBAsyncClient) -> None:
    """SQLite: hold the write lock from the start. A transaction that reads first and writes
    later cannot wait for another process's write (SQLITE_BUSY at once, busy_timeout or not);
    one that writes first queues behind it. So the bot and the CLI on one file take turns."""
    await conn.execute_query("UPDATE audit_head SET last_id = last_id WHERE id = 0")


@asynccontextmanager
async def change(origin: Origin, *, dry_run: bool = False) -> AsyncIterator[Change]:
    """Run a change in one transaction with its audit; roll back for a dry run."""
    key = None if dry_run else origin.idempotency_key
    try:
        async with db.transaction() as conn:
            if db.dialect() == "sqlite":
                await _take_write_lock(conn)
            if key is not None:
                try:
                    await RequestKey.create(key=key[:255], using_db=conn)
                except IntegrityError as exc:
                    raise _Replayed() from exc
            current = Change(origin=origin, conn=conn, dry_run=dry_run)
            yield current
            if dry_run:
                raise _RollBack()
            if current.events:
                await _append_audit(conn, origin, current.events)
            if key is not None:
                outcome = [e.__dict__ for e in current.events]
                await RequestKey.filter(key=key[:255]).using_db(conn).update(outcome=outcome)
    except _RollBack:
        return
    except _Replayed:
        row = await RequestKey.get_or_none(key=key[:255] if key else "")
        raise Duplicate(key or "", row.outcome if row else None) from None
    except IntegrityError as exc:
        # Two changes raced past the same "already exists?" check; the database kept one.
        raise Conflict(CLASH) from exc
    except Exception as exc:
        if db.is_outage(exc):
            raise Unavailable(OUTAGE) from exc
        raise


CLASH = (
    "Another change to the same record was made at the same moment; nothing was changed. "
    "Look again and retry."
)
OUTAGE = "The database is not answering right now; nothing was changed. Try again in a moment."


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
