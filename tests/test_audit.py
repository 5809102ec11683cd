"""SPEC §2 invariant 7 through the command gate: every change writes one audit event (who,
through which door, what, before → after, correlation id); nothing else writes one; the chain
verifies, and tampering with it — an edited row, a deleted row, a cut tail — is detected."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.commands.dispatch import run_text
from bot.commands.reply import Changed, Error, Message, Reply, Table
from bot.domain import db
from bot.domain.models import AuditEvent
from tests.support.ledger_state import context, dev_context, snapshot

pytestmark = pytest.mark.usefixtures("database")


async def run(text: str, correlation_id: str = "activity-0", **who: Any) -> Reply:
    return await run_text(text, context(correlation_id=correlation_id, **who))


async def ok(text: str, correlation_id: str = "activity-0", **who: Any) -> Reply:
    reply = await run(text, correlation_id, **who)
    assert reply.ok, (text, reply)
    return reply


async def seed() -> None:
    await ok('customer add "Contoso Ltd"')
    await ok('subscription add ACME-01 --customer "Contoso Ltd"')
    await ok("product add TEAMS-SEATS --kind teams-seats --capacity 10")


async def raw_sql(sql: str, *params: Any) -> None:
    """Write behind the application's back, as someone with database access could.
    `sql` is in PostgreSQL's notation ($1, ::jsonb) and rewritten for SQLite."""
    if db.dialect() is db.SQLITE:
        sql = re.sub(r"\$\d+", "?", sql.replace("::jsonb", ""))
    await db.connection().execute_query(sql, list(params))


CHANGES = [
    (
        'customer add "Fabrikam Inc" --tenant 6f1c3a52-7d4e-4f3a-9b2c-1d2e3f405162',
        "customer.add",
        "customer:Fabrikam Inc",
        None,
        {"name": "Fabrikam Inc", "tenant": "6f1c3a52-7d4e-4f3a-9b2c-1d2e3f405162"},
    ),
    (
        'subscription add ACME-02 --customer "contoso ltd" --mode operator-connect',
        "subscription.add",
        "subscription:ACME-02",
        None,
        {
            "code": "ACME-02",
            "customer": "Contoso Ltd",
            "mode": "operator-connect",
            "status": "active",
        },
    ),
    (
        "product add NUMBERS-GB-MOB --kind numbers --country GB --type mobile --capacity 50 "
        "--sku NUM-GB",
        "product.add",
        "product:NUMBERS-GB-MOB",
        None,
        {
            "name": "NUMBERS-GB-MOB",
            "category": "technical",
            "kind": "numbers",
            "unit": "number",
            "capacity": 50,
            "country": "GB",
            "type": "mobile",
            "sku": "NUM-GB",
            "status": "active",
        },
    ),
    (
        "product capacity TEAMS-SEATS 20",
        "product.capacity",
        "product:TEAMS-SEATS",
        {"capacity": 10},
        {"capacity": 20},
    ),
    (
        "allocate 6 TEAMS-SEATS to ACME-01",
        "allocation.allocate",
        "allocation:ACME-01/TEAMS-SEATS",
        {"allocated": 0, "product_allocated": 0},
        {"allocated": 6, "product_allocated": 6},
    ),
    (
        "release 2 TEAMS-SEATS from ACME-01",
        "allocation.release",
        "allocation:ACME-01/TEAMS-SEATS",
        {"allocated": 6, "product_allocated": 6, "in_use": 0},
        {"allocated": 4, "product_allocated": 4, "in_use": 0},
    ),
    (
        "product retire NUMBERS-GB-MOB",
        "product.retire",
        "product:NUMBERS-GB-MOB",
        {"status": "active"},
        {"status": "retired"},
    ),
]


async def test_every_change_command_writes_one_audit_event() -> None:
    await seed()
    for i, (text, action, target, before, after) in enumerate(CHANGES):
        count = await AuditEvent.all().count()
        reply = await ok(
            text, correlation_id=f"activity-{i}", object_id=f"oid-{i}", name=f"Admin {i}"
        )
        assert isinstance(reply, Changed) and not reply.dry_run
        events = await AuditEvent.filter(id__gt=count)
        assert len(events) == 1, text
        e = events[0]
        assert (e.actor_id, e.actor_name, e.source) == (f"oid-{i}", f"Admin {i}", "chat")
        assert (e.action, e.target, e.before, e.after) == (action, target, before, after)
        assert e.correlation_id == f"activity-{i}"
        assert datetime.now(UTC) - e.at < timedelta(minutes=1)
        # What the command answered is what was recorded.
        assert (reply.before, reply.after) == (before, after)


async def test_reads_refusals_and_dry_runs_write_nothing() -> None:
    await seed()
    await ok("allocate 10 TEAMS-SEATS to ACME-01")
    state = await snapshot()
    for text in [
        "help",
        "whoami",
        "products",
        "customers",
        "subscriptions",
        "usage",
        "usage ACME-01",
        "audit",
        "audit verify",
        "audit export",
        "allocate 1 TEAMS-SEATS to ACME-01",  # 11 of 10
        "product capacity TEAMS-SEATS 9",  # below allocated
        "release 11 TEAMS-SEATS from ACME-01",
        "customer add CONTOSO LTD",  # exists
        "allocate 1 TEAMS-SEATS to ACME-01 --dry-run",
        "release 5 TEAMS-SEATS from ACME-01 --dry-run",
        "product add FAX --kind custom --capacity 1 --dry-run",
        "product retire TEAMS-SEATS --dry-run",
    ]:
        await run(text)
        assert await snapshot() == state, text


async def test_audit_verify_passes_on_a_clean_chain() -> None:
    reply = await ok("audit verify")
    assert isinstance(reply, Message) and reply.data == {
        "intact": True,
        "checked": 0,
        "problem": None,
    }
    await seed()
    for text, *_ in CHANGES:
        await ok(text)
    reply = await ok("audit verify")
    assert reply.data == {"intact": True, "checked": 3 + len(CHANGES), "problem": None}


async def _chain() -> list[AuditEvent]:
    await seed()
    for text, *_ in CHANGES:
        await ok(text)
    return await AuditEvent.all().order_by("id")


async def _broken() -> Error:
    reply = await run("audit verify")
    assert isinstance(reply, Error) and reply.code == "audit-broken", reply
    assert reply.data["intact"] is False
    return reply


async def test_audit_verify_detects_an_edited_row() -> None:
    events = await _chain()
    target = events[6]  # allocate 6 → pretend it was 3
    await raw_sql(
        "UPDATE audit_event SET after = $1::jsonb WHERE id = $2",
        '{"allocated": 3, "product_allocated": 3}',
        target.id,
    )
    reply = await _broken()
    assert reply.data["problem"] == f"event {target.id}: contents do not match its hash"
    assert reply.data["checked"] == 6


async def test_audit_verify_detects_an_edited_actor() -> None:
    events = await _chain()
    await raw_sql(
        "UPDATE audit_event SET actor_name = $1 WHERE id = $2", "Someone Else", events[2].id
    )
    reply = await _broken()
    assert reply.data["problem"] == f"event {events[2].id}: contents do not match its hash"


async def test_audit_verify_detects_a_deleted_row() -> None:
    events = await _chain()
    await raw_sql("DELETE FROM audit_event WHERE id = $1", events[4].id)
    reply = await _broken()
    assert reply.data["problem"] == f"event {events[5].id}: link to the previous event is broken"
    assert reply.data["checked"] == 4


async def test_audit_verify_detects_a_truncated_tail() -> None:
    events = await _chain()
    await raw_sql("DELETE FROM audit_event WHERE id >= $1", events[-2].id)
    reply = await _broken()
    assert "events removed" in reply.data["problem"]
    assert reply.data["checked"] == len(events) - 2


async def test_audit_verify_detects_a_rehashed_row() -> None:
    """Recomputing the edited row's own hash does not help: the next row links to the old one."""
    from bot.domain.change import event_hash

    events = await _chain()
    target = events[6]
    row = {**target.__dict__, "after": {"allocated": 3, "product_allocated": 3}}
    await raw_sql(
        "UPDATE audit_event SET after = $1::jsonb, hash = $2 WHERE id = $3",
        '{"allocated": 3, "product_allocated": 3}',
        event_hash(target.prev_hash, row),
        target.id,
    )
    reply = await _broken()
    assert reply.data["problem"] == f"event {events[7].id}: link to the previous event is broken"


async def test_audit_filters_by_actor_target_since_and_limit() -> None:
    await ok('customer add "Contoso Ltd"', object_id="oid-alice", name="Alice Admin")
    await ok(
        'subscription add ACME-01 --customer "Contoso Ltd"',
        object_id="oid-alice",
        name="Alice Admin",
    )
    await ok(
        "product add TEAMS-SEATS --kind teams-seats --capacity 10",
        object_id="oid-bob",
        name="Bob Ops",
    )
    await ok("allocate 2 TEAMS-SEATS to ACME-01", object_id="oid-bob", name="Bob Ops")
    await ok("allocate 3 TEAMS-SEATS to ACME-01", object_id="oid-alice", name="Alice Admin")

    async def actions(text: str) -> list[str]:
        reply = await ok(text)
        assert isinstance(reply, Table)
        assert len(reply.rows) == len(reply.data)
        return [e["action"] for e in reply.data]

    # Newest first.
    assert await actions("audit") == [
        "allocation.allocate",
        "allocation.allocate",
        "product.add",
        "subscription.add",
        "customer.add",
    ]
    assert await actions("audit --actor alice") == [
        "allocation.allocate",
        "subscription.add",
        "customer.add",
    ]
    assert await actions("audit --actor oid-bob") == ["allocation.allocate", "product.add"]
    assert await actions('audit --actor "BOB OPS"') == ["allocation.allocate", "product.add"]
    assert await actions("audit --target TEAMS-SEATS") == [
        "allocation.allocate",
        "allocation.allocate",
        "product.add",
    ]
    assert await actions("audit --target acme-01 --actor bob") == ["allocation.allocate"]
    assert await actions("audit --limit 2") == ["allocation.allocate", "allocation.allocate"]
    assert await actions("audit --actor nobody") == []
    # Wildcards are text, not patterns.
    assert await actions("audit --target %") == []
    assert await actions("audit --target _") == []

    # Age the first two events by ten days (the chain breaks, the filter is what is tested).
    first = await AuditEvent.all().order_by("id").limit(2)
    old = datetime.now(UTC) - timedelta(days=10)
    for e in first:
        await AuditEvent.filter(id=e.id).update(at=old)
    assert await actions("audit --since 7d") == [
        "allocation.allocate",
        "allocation.allocate",
        "product.add",
    ]
    assert len(await actions("audit --since 2w")) == 5
    assert len(await actions(f"audit --since {old.date().isoformat()}")) == 5
    assert await actions(f"audit --since {(datetime.now(UTC) + timedelta(days=2)).date()}") == []
    for bad in (
        "audit --since yesterday",
        "audit --since 7y",
        "audit --limit 0",
        "audit --limit x",
    ):
        reply = await run(bad)
        assert isinstance(reply, Error) and reply.code == "usage" and reply.usage, bad


async def test_audit_rows_carry_the_documented_json_keys() -> None:
    await seed()
    reply = await ok("audit --limit 1")
    assert set(reply.data[0]) == {
        "id",
        "at",
        "actor_id",
        "actor_name",
        "source",
        "action",
        "target",
        "before",
        "after",
        "correlation_id",
        "hash",
    }
    export = await ok("audit export")
    assert [e["action"] for e in export.data] == ["customer.add", "subscription.add", "product.add"]
    assert export.data[-1] == reply.data[0]


async def test_only_administrators_read_the_audit() -> None:
    await seed()
    outsider = dev_context(("oid-admin",), object_id="oid-guest")
    for text in ("audit", "audit verify", "audit export", "audit --actor oid-admin"):
        reply = await run_text(text, outsider)
        assert isinstance(reply, Error) and reply.code == "forbidden", text
        assert "Contoso" not in str(reply.data) and "TEAMS-SEATS" not in str(reply.data)
    admin = dev_context(("oid-admin",), object_id="oid-admin")
    assert (await run_text("audit", admin)).ok
