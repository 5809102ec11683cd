"""The scheduler: leadership through the database, each digest slot posted once, missed slots
caught up once, 429s and 403s from the Bot Connector, housekeeping — and two scheduler
processes on one PostgreSQL database.

The scheduler's clock is injected so that slots can be reached without waiting; the Bot
Connector is the fake on 127.0.0.1 (own thread) and every post is signed with a real msal
token from the fake Entra ID. The two-process test runs `python -m bot.scheduler` twice,
as deployed, on the real clock.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from bot.auth.credentials import ClientCredentials
from bot.config import Settings
from bot.domain import approvals, conversations, digests, ledger, numbers
from bot.domain.digests import parse_schedule
from bot.domain.models import (
    ApprovalRequest,
    ApprovalStatus,
    AuditEvent,
    ConversationRef,
    DigestDelivery,
    DigestSubscription,
    NumberState,
    PhoneNumber,
    ProductKind,
    UsageSnapshot,
)
from bot.scheduler import Scheduler
from tests.fakes import Failure, FakeBotConnector, FakeIdentityProvider, shared_tls
from tests.support.digest_env import (
    APP_ID,
    APP_SECRET,
    TENANT,
    ca_bundle,
    connector,
    credentials,
    idp,
    make_sender,
    session,
)
from tests.support.ledger_state import origin

__all__ = ["ca_bundle", "connector", "credentials", "idp", "session"]  # fixtures

OPS = origin()
SETTINGS = Settings(scheduler_interval_seconds=30)
LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


async def subscribe(
    connector: FakeBotConnector, conversation_id: str, kind: str = "daily", at: str | None = "08:00"
) -> DigestSubscription:
    """A conversation the bot knows, subscribed long ago (so past slots belong to it)."""
    reference = {"conversation": {"id": conversation_id}, "serviceUrl": connector.service_url}
    await conversations.remember(reference, TENANT, connector.service_url)
    await digests.subscribe(OPS, conversation_id, parse_schedule(kind, at, "UTC"))
    sub = await DigestSubscription.get(conversation__conversation_id=conversation_id)
    await DigestSubscription.filter(id=sub.id).update(created_at=LONG_AGO)
    return await DigestSubscription.get(id=sub.id)


def posted(connector: FakeBotConnector) -> Counter[str]:
    return Counter(a.conversation_id for a in connector.activities)


# ----- leadership --------------------------------------------------------------------------


@pytest.mark.usefixtures("database")
async def test_one_leader_at_a_time_through_the_lease_row() -> None:
    clock = Clock(datetime(2026, 11, 25, 7, 0, tzinfo=UTC))
    a = Scheduler(SETTINGS, None, holder="a", clock=clock, lease_seconds=60)
    b = Scheduler(SETTINGS, None, holder="b", clock=clock, lease_seconds=60)
    assert (await a.tick()).leader is True
    assert (await b.tick()).leader is False
    clock.now += timedelta(seconds=50)
    assert (await a.tick()).leader is True  # renewed
    clock.now += timedelta(seconds=50)
    assert (await b.tick()).leader is False  # a's renewal still holds
    clock.now += timedelta(seconds=61)  # a stopped renewing (crashed): its lease ran out
    assert (await b.tick()).leader is True
    assert (await a.tick()).leader is False
    await b.release_lease()  # b shuts down cleanly: a takes over at once
    assert (await a.tick()).leader is True


@pytest.mark.usefixtures("database")
async def test_housekeeping_runs_on_the_leader_only(connector: FakeBotConnector) -> None:
    await ledger.add_customer(OPS, "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 100)
    await ledger.allocate(OPS, 10, "TEAMS-SEATS", "ACME-01")
    request = await approvals.request_change(
        origin(name="Bob"),
        approvals.ALLOCATE,
        {"quantity": 5, "product": "TEAMS-SEATS", "subscription": "ACME-01"},
        ttl_hours=1,
    )
    await numbers.add_numbers(OPS, "+442071838750")
    await PhoneNumber.all().update(
        state=NumberState.QUARANTINED, quarantined_until=datetime.now(UTC) + timedelta(days=30)
    )

    clock = Clock(datetime.now(UTC) + timedelta(days=31))
    leader = Scheduler(SETTINGS, None, holder="a", clock=clock)
    follower = Scheduler(SETTINGS, None, holder="b", clock=clock)
    await leader.tick()
    idle = await follower.tick()
    assert (idle.leader, idle.snapshot_rows, idle.approvals_expired, idle.numbers_released) == (
        False,
        0,
        0,
        0,
    )
    assert await UsageSnapshot.filter(day=clock.now.date()).count() == 1
    assert (await ApprovalRequest.get(id=request.id)).status is ApprovalStatus.EXPIRED
    assert (await PhoneNumber.get()).state is NumberState.AVAILABLE
    audited = dict(
        await AuditEvent.filter(action__in=["approval.expire", "number.unquarantine"]).values_list(
            "action", "source"
        )
    )
    assert audited == {"approval.expire": "system", "number.unquarantine": "schedule"}
    again = await leader.tick()  # the same day: no second snapshot
    assert again.snapshot_rows == 0 and await UsageSnapshot.all().count() == 1


# ----- each slot once -----------------------------------------------------------------------


@pytest.mark.usefixtures("database")
async def test_each_slot_is_posted_once_then_the_next_slot(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    sub = await subscribe(connector, "19:ops@thread.tacv2")
    clock = Clock(datetime(2026, 11, 25, 8, 0, 5, tzinfo=UTC))
    scheduler = Scheduler(SETTINGS, make_sender(session, credentials, connector), clock=clock)
    first = await scheduler.tick()
    assert [(d.digest_id, d.slot, d.status) for d in first.deliveries] == [
        (sub.id, datetime(2026, 11, 25, 8, 0, tzinfo=UTC), "sent")
    ]
    for seconds in (30, 600, 3600):  # later ticks the same day: nothing more
        clock.now = datetime(2026, 11, 25, 8, 0, 5, tzinfo=UTC) + timedelta(seconds=seconds)
        assert (await scheduler.tick()).deliveries == []
    clock.now = datetime(2026, 11, 26, 8, 0, 1, tzinfo=UTC)
    assert [d.status for d in (await scheduler.tick()).deliveries] == ["sent"]
    assert posted(connector) == {"19:ops@thread.tacv2": 2}
    rows = await DigestDelivery.filter(digest_id=sub.id).order_by("slot")
    assert [(r.slot.day, r.status, r.attempts) for r in rows] == [(25, "sent", 1), (26, "sent", 1)]
    assert rows[0].activity_id == connector.activities[0].activity_id
    # What was posted is the digest card.
    card = connector.activities[0].attachments[0]["content"]
    assert card["body"][0]["items"][0]["text"].startswith("Usage digest")
    assert scheduler.next_wait(clock.now) == 30.0


@pytest.mark.usefixtures("database")
async def test_a_slot_missed_while_down_is_sent_once_if_still_recent(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    await subscribe(connector, "19:daily@thread.tacv2")
    await subscribe(connector, "19:hourly@thread.tacv2", "0 * * * *", None)
    sender = make_sender(session, credentials, connector)
    # Down from 07:00 to 10:20: the daily 08:00 slot is 2 h 20 late (within 12 h) → sent;
    # the hourly 10:00 slot is 20 min late (within half its hour) → sent; 09:00 is not replayed.
    clock = Clock(datetime(2026, 11, 25, 10, 20, tzinfo=UTC))
    await Scheduler(SETTINGS, sender, holder="first", clock=clock).tick()
    assert posted(connector) == {"19:daily@thread.tacv2": 1, "19:hourly@thread.tacv2": 1}
    # Another start a little later (a restart): nothing twice.
    clock.now += timedelta(minutes=5)
    restarted = Scheduler(SETTINGS, sender, holder="second", clock=clock, lease_seconds=1)
    clock.now += timedelta(minutes=5)  # the first instance's lease has run out
    assert (await restarted.tick()).deliveries == []
    # Down again until 21:40 the next day: the daily slot is 13 h 40 late, the hourly one
    # 40 min late — both too stale, skipped, never sent in a burst.
    clock.now = datetime(2026, 11, 26, 21, 40, tzinfo=UTC)
    assert (await restarted.tick()).deliveries == []
    assert sum(posted(connector).values()) == 2
    slots = await DigestDelivery.all().order_by("slot").values_list("slot", flat=True)
    assert [s.strftime("%d %H:%M") for s in slots] == ["25 08:00", "25 10:00"]


@pytest.mark.usefixtures("database")
async def test_a_claim_left_by_a_dead_instance_is_taken_over_once_stale(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    """An instance claimed the 08:00 slot and died before posting (its row stays pending)."""
    crashed = await subscribe(connector, "19:crashed@thread.tacv2")
    busy = await subscribe(connector, "19:busy@thread.tacv2")
    slot = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    await DigestDelivery.create(
        digest_id=crashed.id,
        slot=slot,
        status="pending",
        claimed_by="dead:1:x",
        claimed_at=slot + timedelta(seconds=2),
    )
    clock = Clock(slot + timedelta(minutes=20))
    # The other claim is recent: its instance may still be sending it.
    await DigestDelivery.create(
        digest_id=busy.id,
        slot=slot,
        status="pending",
        claimed_by="slow:2:y",
        claimed_at=clock.now - timedelta(minutes=1),
    )
    scheduler = Scheduler(SETTINGS, make_sender(session, credentials, connector), clock=clock)
    assert (await scheduler.tick()).deliveries == []  # 20 min: not stale yet
    clock.now = slot + timedelta(minutes=33)
    assert [(d.digest_id, d.status) for d in (await scheduler.tick()).deliveries] == [
        (crashed.id, "sent")
    ]
    assert posted(connector) == {"19:crashed@thread.tacv2": 1}
    row = await DigestDelivery.get(digest_id=crashed.id)
    assert (row.status, row.claimed_by) == ("sent", scheduler.holder)
    clock.now += timedelta(minutes=1)
    assert (await scheduler.tick()).deliveries == []


@pytest.mark.usefixtures("database")
async def test_slots_before_the_subscription_are_not_sent(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    sub = await subscribe(connector, "19:new@thread.tacv2")
    await DigestSubscription.filter(id=sub.id).update(
        created_at=datetime(2026, 11, 25, 8, 30, tzinfo=UTC)
    )
    clock = Clock(datetime(2026, 11, 25, 9, 0, tzinfo=UTC))
    scheduler = Scheduler(SETTINGS, make_sender(session, credentials, connector), clock=clock)
    assert (await scheduler.tick()).deliveries == []
    clock.now = datetime(2026, 11, 26, 8, 0, 10, tzinfo=UTC)
    assert [d.status for d in (await scheduler.tick()).deliveries] == ["sent"]


@pytest.mark.usefixtures("database")
async def test_bot_removed_marks_the_conversation_and_later_slots_skip_it(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    await subscribe(connector, "19:gone@thread.tacv2")
    await subscribe(connector, "19:here@thread.tacv2")
    connector.remove_bot("19:gone@thread.tacv2")
    clock = Clock(datetime(2026, 11, 25, 8, 0, 5, tzinfo=UTC))
    scheduler = Scheduler(SETTINGS, make_sender(session, credentials, connector), clock=clock)
    statuses = sorted(d.status for d in (await scheduler.tick()).deliveries)
    assert statuses == ["removed", "sent"]
    gone = await ConversationRef.get(conversation_id="19:gone@thread.tacv2")
    assert gone.active is False
    requests_before = connector.call_count
    clock.now += timedelta(days=1)
    assert [d.status for d in (await scheduler.tick()).deliveries] == ["sent"]
    gone_paths = [r for r in connector.requests[requests_before:] if "gone" in r.path]
    assert gone_paths == []  # skipped, not even tried
    listed = await digests.list_subscriptions()
    assert {c.conversation_id: c.active for _, c in listed}["19:gone@thread.tacv2"] is False


@pytest.mark.usefixtures("database")
async def test_ten_percent_throttled_every_digest_once_never_before_retry_after(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    conversations_ = [f"19:team-{i:02d}@thread.tacv2" for i in range(40)]
    for cid in conversations_:
        await subscribe(connector, cid)
    connector.fail_fraction(0.1, Failure.throttled(0.3), seed=3)
    clock = Clock(datetime(2026, 11, 25, 8, 0, 5, tzinfo=UTC))
    scheduler = Scheduler(SETTINGS, make_sender(session, credentials, connector), clock=clock)
    deliveries = (await scheduler.tick()).deliveries
    assert len(deliveries) == 40 and all(d.status == "sent" for d in deliveries)
    throttled = [r for r in connector.requests if r.status == 429]
    assert len(throttled) >= 2, "the fake should have throttled some sends"
    assert posted(connector) == {cid: 1 for cid in conversations_}
    assert connector.retry_violations(tolerance=0.0) == []
    assert sum(d.attempts for d in deliveries) == len(connector.requests)
    clock.now += timedelta(minutes=1)
    assert (await scheduler.tick()).deliveries == []
    assert sum(posted(connector).values()) == 40


# ----- several instances --------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.usefixtures("pg_database")
async def test_two_leaders_at_once_still_post_each_slot_once(
    session: aiohttp.ClientSession, credentials: ClientCredentials, connector: FakeBotConnector
) -> None:
    """Two schedulers that both believe they lead (a paused process whose lease ran out) race
    through PostgreSQL's connection pool: the claim row lets only one post each slot. This
    proves the claim, not the lease (the lease has its own test above; the process test below
    runs both together)."""
    conversations_ = [f"19:race-{i:02d}@thread.tacv2" for i in range(20)]
    for cid in conversations_:
        await subscribe(connector, cid)
    clock = Clock(datetime(2026, 11, 25, 8, 0, 5, tzinfo=UTC))
    sender = make_sender(session, credentials, connector)
    a = Scheduler(SETTINGS, sender, holder="a", clock=clock)
    b = Scheduler(SETTINGS, sender, holder="b", clock=clock)
    got_a, got_b = await asyncio.gather(a.deliver_due(clock.now), b.deliver_due(clock.now))
    assert len(got_a) + len(got_b) == 20
    assert posted(connector) == {cid: 1 for cid in conversations_}
    claimers = Counter(await DigestDelivery.all().values_list("claimed_by", flat=True))
    assert sum(claimers.values()) == 20 and set(claimers) <= {"a", "b"}


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.usefixtures("pg_database")
async def test_two_scheduler_processes_on_one_database_post_each_slot_once(
    postgres_url: str, idp: FakeIdentityProvider, connector: FakeBotConnector
) -> None:
    """Two `python -m bot.scheduler` processes (own connections, real clock, msal tokens from
    the fake authority) start together on the same PostgreSQL database; 12 conversations each
    have an hourly digest whose latest slot is a minute or two old. Every conversation gets
    exactly one post, and the digest_delivery rows say so."""
    now = datetime.now(UTC)
    minute = (now - timedelta(minutes=1)).minute
    conversations_ = [f"19:proc-{i:02d}@thread.tacv2" for i in range(12)]
    for cid in conversations_:
        await subscribe(connector, cid, f"{minute} * * * *", None)
    await DigestSubscription.all().update(created_at=now - timedelta(hours=2))

    bundle = str(shared_tls().ca_bundle)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "Microsoft"))}
    env.update(
        DATABASE_URL=postgres_url,
        MicrosoftAppId=APP_ID,
        MicrosoftAppPassword=APP_SECRET,
        FUSION_LOGIN_AUTHORITY=idp.base_url,
        FUSION_TRUSTED_SERVICE_URLS=connector.service_url,
        FUSION_MIGRATE_ON_START="false",
        FUSION_SCHEDULER_INTERVAL_SECONDS="1",
        REQUESTS_CA_BUNDLE=bundle,
        SSL_CERT_FILE=bundle,
        HOST="127.0.0.1",
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.scheduler",
            "--ticks",
            "4",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
    for proc, (out, _) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]

    assert posted(connector) == {cid: 1 for cid in conversations_}
    rows = await DigestDelivery.all().values("status", "claimed_by")
    assert len(rows) == 12 and {r["status"] for r in rows} == {"sent"}
    # Both processes ticked from the start; the lease made one of them do the work.
    ticks = [_ticks(out.decode(errors="replace")) for out, _ in outputs]
    assert all(len(t) == 4 for t in ticks), ticks
    assert sum(sent for t in ticks for _, sent in t) == 12
    # Claims name the process that posted (holder = host:pid:random).
    assert {int(r["claimed_by"].split(":")[-2]) for r in rows} <= {p.pid for p in procs}
    for request in connector.requests:
        assert request.claims is not None and request.claims["appid"] == APP_ID


def _ticks(output: str) -> list[tuple[bool, int]]:
    """(leader, digests sent) for each `scheduler tick` line a process logged."""
    found = []
    for line in output.splitlines():
        if "scheduler tick:" in line:
            leader = "leader=yes" in line
            sent = int(line.split("sent=", 1)[1].split()[0])
            found.append((leader, sent))
    return found
