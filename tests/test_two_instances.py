"""Two bot instances on one PostgreSQL database, as deployed: two `python app.py` processes
(each serving HTTP and running its scheduler on the real clock) in local development mode,
posting to the fake Bot Connector on 127.0.0.1 (own thread, plain http, no token in dev mode).

- Both start together while digest slots a couple of minutes old are still recent, so both
  would catch them up: each digest is posted exactly once for its slot, one `digest_delivery`
  claim per (digest, slot), the housekeeping (approval expiry, quarantine end) done once, both
  processes ticking all along, the audit chain intact (`python -m bot audit verify`), and the
  lease released when both stop on SIGTERM.
- The leader is killed with SIGKILL (no step-down): the other instance takes the lease over
  once it has run out (one lease period, 60 s) and posts the next slot that came due.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import pytest_asyncio
from tortoise.backends.base.client import BaseDBAsyncClient

from bot.domain import approvals, conversations, db, digests, ledger, numbers
from bot.domain.digests import parse_schedule
from bot.domain.models import (
    ApprovalRequest,
    ApprovalStatus,
    AuditEvent,
    DigestDelivery,
    DigestSubscription,
    NumberState,
    PhoneNumber,
    ProductKind,
    SchedulerLease,
)
from tests.fakes import FakeBotConnector
from tests.support.ledger_state import origin

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
OPS = origin()
TENANT = "11111111-2222-4333-8444-555555555555"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# Without a step-down, the survivor waits for the dead leader's lease to run out:
# max(3 × interval, 60 s) with FUSION_SCHEDULER_INTERVAL_SECONDS=1.
LEASE_SECONDS = 60


# ----- the processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Tick:
    at: datetime
    holder: str
    leader: bool
    sent: int


@dataclass
class Instance:
    """One `python app.py` with its stderr (JSON log lines) in a file."""

    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def ticks(self) -> list[Tick]:
        """The `scheduler tick: holder=… leader=yes|no sent=N` lines, oldest first."""
        found = []
        for entry in self.lines():
            message = str(entry.get("message", ""))
            if entry.get("logger") == "bot.scheduler" and message.startswith("scheduler tick:"):
                fields = dict(part.split("=", 1) for part in message.split()[2:])
                at = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
                found.append(
                    Tick(at, fields["holder"], fields["leader"] == "yes", int(fields["sent"]))
                )
        return found

    def troubles(self) -> list[dict[str, Any]]:
        """Log entries above info (a failed tick, a failed send, an error at shutdown)."""
        return [e for e in self.lines() if e.get("level") not in ("debug", "info")]

    def tail(self) -> str:
        return (
            f"--- {self.name} (pid {self.pid}) ---\n" + self.log.read_text(errors="replace")[-4000:]
        )

    def stop(self) -> int:
        """SIGTERM (the app steps down and closes), SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode


def start_instance(
    name: str, database_url: str, connector: FakeBotConnector, where: Path
) -> Instance:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "Microsoft"))}
    env.update(
        DATABASE_URL=database_url,
        HOST="127.0.0.1",
        PORT=str(port),
        FUSION_SCHEDULER_INTERVAL_SECONDS="1",
        FUSION_TRUSTED_SERVICE_URLS=connector.service_url,
        PYTHONUNBUFFERED="1",
    )
    log = where / f"{name}.log"
    with log.open("wb") as sink:
        # Its own working folder: no developer .env is read.
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py")],
            cwd=where,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return Instance(name, port, log, proc)


Launch = Callable[[], Awaitable[tuple[Instance, Instance]]]


@pytest_asyncio.fixture
async def launch(
    pg_database: str, connector: FakeBotConnector, tmp_path: Path
) -> AsyncIterator[Launch]:
    """Starts two app processes on the test's (emptied) PostgreSQL database once the test has
    seeded it, waits until both serve /healthz; stops whatever still runs afterwards."""
    started: list[Instance] = []

    async def run() -> tuple[Instance, Instance]:
        a, b = (start_instance(n, pg_database, connector, tmp_path) for n in ("app-a", "app-b"))
        started.extend((a, b))
        await asyncio.gather(wait_healthy(a), wait_healthy(b))
        return a, b

    try:
        yield run
    finally:
        for instance in started:
            instance.stop()


async def wait_healthy(instance: Instance) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    url = f"http://127.0.0.1:{instance.port}/healthz"
    async with aiohttp.ClientSession() as http:
        while True:
            assert instance.proc.poll() is None, instance.tail()
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, instance.tail()
            await asyncio.sleep(0.2)


async def wait_blocked(conn: BaseDBAsyncClient, count: int) -> None:
    """Until `count` sessions of this database wait for a lock (the test's one on the lease)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        rows = await conn.execute_query_dict(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if rows[0]["n"] >= count:
            return
        assert time.monotonic() < deadline, f"{rows[0]['n']} sessions wait for the lease table"
        await asyncio.sleep(0.1)


async def wait_ticks(instance: Instance, after: datetime, count: int, within: float) -> None:
    """Until `instance` has logged `count` scheduler ticks after `after` (at most `within` s)."""
    deadline = time.monotonic() + within
    while sum(1 for t in instance.ticks() if t.at > after) < count:
        assert instance.proc.poll() is None, instance.tail()
        assert time.monotonic() < deadline, instance.tail()
        await asyncio.sleep(0.2)


async def wait_logged_sent(count: int, *instances: Instance) -> None:
    """Until the ticks that posted `count` digests in all have been logged."""
    deadline = time.monotonic() + 10
    while sum(t.sent for i in instances for t in i.ticks()) < count:
        assert time.monotonic() < deadline, "".join(i.tail() for i in instances)
        await asyncio.sleep(0.1)


@pytest.fixture
def connector() -> Iterator[FakeBotConnector]:
    """Local development mode: no identity provider, the bot's posts carry no token."""
    with FakeBotConnector(None) as fake:
        yield fake


# ----- the data ------------------------------------------------------------------------------


async def subscribe(
    connector: FakeBotConnector, conversation_id: str, kind: str, at: str | None, zone: str
) -> DigestSubscription:
    reference = {
        "conversation": {"id": conversation_id, "tenantId": TENANT},
        "serviceUrl": connector.service_url,
        "channelId": "msteams",
        "bot": {"id": "28:fusion-bot", "name": "Fusion"},
    }
    await conversations.remember(reference, TENANT, connector.service_url)
    await digests.subscribe(OPS, conversation_id, parse_schedule(kind, at, zone))
    return await DigestSubscription.get(conversation__conversation_id=conversation_id)


async def seed_ledger() -> None:
    await ledger.add_customer(OPS, "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 100)
    await ledger.allocate(OPS, 95, "TEAMS-SEATS", "ACME-01")


def posted(connector: FakeBotConnector) -> Counter[str]:
    return Counter(a.conversation_id for a in connector.activities)


def audit_verify(database_url: str, where: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "Microsoft"))}
    env.update(DATABASE_URL=database_url, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--json", "audit", "verify"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# ----- the tests -----------------------------------------------------------------------------


async def test_two_app_instances_post_each_digest_slot_once(
    connector: FakeBotConnector, launch: Launch, pg_database: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    slot = (now - timedelta(minutes=2)).replace(second=0, microsecond=0)
    await seed_ledger()
    # Hourly (UTC) and daily (Asia/Kolkata, a half-hour offset) digests whose latest slot is
    # the same instant two minutes ago: recent enough for any instance that starts to catch up.
    local = slot.astimezone(ZoneInfo("Asia/Kolkata"))
    hourly = [f"19:hourly-{i:02d}@thread.tacv2" for i in range(8)]
    daily = [f"19:daily-{i:02d}@thread.tacv2" for i in range(4)]
    for cid in hourly:
        await subscribe(connector, cid, f"{slot.minute} * * * *", None, "UTC")
    for cid in daily:
        await subscribe(connector, cid, "daily", f"{local:%H:%M}", "Asia/Kolkata")
    await DigestSubscription.all().update(created_at=now - timedelta(hours=2))
    # Housekeeping that is due: an approval whose time is up, a number out of quarantine.
    request = await approvals.request_change(
        origin(name="Bob"),
        approvals.ALLOCATE,
        {"quantity": 5, "product": "TEAMS-SEATS", "subscription": "ACME-01"},
        ttl_hours=1,
    )
    await ApprovalRequest.filter(id=request.id).update(expires_at=now - timedelta(minutes=1))
    await numbers.add_numbers(OPS, "+442071838750")
    await PhoneNumber.all().update(
        state=NumberState.QUARANTINED, quarantined_until=now - timedelta(minutes=1)
    )
    # The instance that led before the outage died without stepping down.
    await SchedulerLease.create(
        name="scheduler", holder="old-host:1:dead", expires_at=now - timedelta(minutes=5)
    )
    events_before = await AuditEvent.all().count()

    # Both take the lease at the same moment: the test holds the lease table until both are up
    # and both first ticks wait on it, then lets them race for the expired lease.
    began = time.monotonic()
    async with db.transaction() as conn:
        await conn.execute_script("LOCK TABLE scheduler_lease IN EXCLUSIVE MODE")
        a, b = await launch()
        await wait_blocked(conn, 2)
    released = datetime.now(UTC)
    expected = hourly + daily
    await connector.wait_for_async(len(expected), timeout=60)
    delivered_after = time.monotonic() - began
    await wait_logged_sent(len(expected), a, b)
    # Let both run on for a few more ticks: nothing more may be posted.
    settled = datetime.now(UTC)
    await asyncio.gather(*(wait_ticks(i, settled, 3, within=30) for i in (a, b)))
    assert [i.stop() for i in (a, b)] == [0, 0], a.tail() + b.tail()
    print(f"\nboth up and {len(expected)} digests posted {delivered_after:.1f} s after launch")

    # Each digest posted exactly once, in one request each (nothing retried, nothing twice).
    assert posted(connector) == {cid: 1 for cid in expected}
    assert len(connector.requests) == len(expected)
    assert all(r.bearer is None for r in connector.requests)  # dev mode: unsigned
    card = connector.activities[0].attachments[0]["content"]
    assert card["body"][0]["items"][0]["text"].startswith("Usage digest")

    # One claim per (digest, slot), for that slot, sent, by the one leader.
    rows = await DigestDelivery.all().values("digest_id", "slot", "status", "claimed_by")
    assert len(rows) == len(expected)
    assert Counter((r["digest_id"], r["slot"]) for r in rows) == {
        (s.id, slot): 1 for s in await DigestSubscription.all()
    }
    assert {r["status"] for r in rows} == {"sent"}
    claimers = {r["claimed_by"] for r in rows}
    assert len(claimers) == 1
    leader_pid = int(next(iter(claimers)).split(":")[-2])
    assert leader_pid in {a.pid, b.pid}

    # Both were alive and ticking from the start; one led throughout, the other never did.
    ticks = {i.name: i.ticks() for i in (a, b)}
    for instance in (a, b):
        mine = ticks[instance.name]
        assert len(mine) >= 4, instance.tail()
        assert released <= mine[0].at < released + timedelta(seconds=5), instance.tail()
        assert len({t.holder for t in mine}) == 1
        assert int(mine[0].holder.split(":")[-2]) == instance.pid
        assert {t.leader for t in mine} == {instance.pid == leader_pid}
    assert sum(t.sent for mine in ticks.values() for t in mine) == len(expected)
    assert a.troubles() == [] and b.troubles() == []

    # Housekeeping happened once, audited once; the chain is intact.
    assert (await ApprovalRequest.get(id=request.id)).status is ApprovalStatus.EXPIRED
    assert (await PhoneNumber.get()).state is NumberState.AVAILABLE
    done = Counter(await AuditEvent.filter(id__gt=events_before).values_list("action", flat=True))
    assert done == {"approval.expire": 1, "number.unquarantine": 1}
    total = await AuditEvent.all().count()
    assert audit_verify(pg_database, tmp_path) == {
        "intact": True,
        "checked": total,
        "problem": None,
    }
    # Stopped cleanly: the leader stepped down, no lease is left to wait out.
    assert await SchedulerLease.all().count() == 0


async def test_the_leader_killed_the_other_instance_takes_over_and_posts_the_next_slot(
    connector: FakeBotConnector, launch: Launch
) -> None:
    a, b = await launch()
    started = datetime.now(UTC)
    await asyncio.gather(*(wait_ticks(i, started, 2, within=30) for i in (a, b)))
    holder = (await SchedulerLease.get()).holder
    leader, survivor = (a, b) if int(holder.split(":")[-2]) == a.pid else (b, a)
    assert int(holder.split(":")[-2]) == leader.pid

    leader.proc.kill()  # no step-down: its lease stays until it runs out
    leader.proc.wait(STOP_TIMEOUT)
    killed = datetime.now(UTC)
    lease = await SchedulerLease.get()
    assert lease.holder == holder
    # A digest subscribed after the crash, due at the next full minute (the next due slot).
    slot = (killed + timedelta(seconds=62)).replace(second=0, microsecond=0)
    expected = [f"19:after-crash-{i}@thread.tacv2" for i in range(3)]
    for cid in expected:
        await subscribe(connector, cid, f"{slot.minute} * * * *", None, "UTC")

    await connector.wait_for_async(len(expected), timeout=LEASE_SECONDS + 60 + 30)
    posted_at = max(x.received_at for x in connector.activities)
    await wait_logged_sent(len(expected), survivor)
    takeover = next(t.at for t in survivor.ticks() if t.leader)
    taken_after = (takeover - killed).total_seconds()
    posted_after = (posted_at - killed).total_seconds()
    print(
        f"\nleader killed; lease taken over {taken_after:.1f} s later; "
        f"slot {slot:%H:%M:%S} posted {posted_after:.1f} s after the kill"
    )
    assert posted(connector) == {cid: 1 for cid in expected}
    assert posted_at >= slot
    # The survivor waited for the dead leader's lease to run out, then led.
    assert takeover >= lease.expires_at
    rows = await DigestDelivery.all().values("slot", "status", "claimed_by")
    assert [(r["slot"], r["status"]) for r in rows] == [(slot, "sent")] * len(expected)
    assert {int(r["claimed_by"].split(":")[-2]) for r in rows} == {survivor.pid}
    assert (await SchedulerLease.get()).holder.split(":")[-2] == str(survivor.pid)
    assert survivor.stop() == 0, survivor.tail()
    assert survivor.troubles() == []
