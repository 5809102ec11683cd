"""The scheduler: daily usage snapshots, digests on their slots, approvals expiry, quarantine end.

Every bot instance runs one (a background task of the app, or `python -m bot.scheduler`);
only the **leader** works. Leadership is a row of `scheduler_lease` with an expiry: a tick
renews it if this instance holds it, or takes it over once it has expired, in one conditional
UPDATE (or the INSERT of the first row), so two instances can never both win. A leader that
dies is replaced within one lease period.

Each digest slot is sent **once**: before posting, the leader claims the slot by inserting the
`digest_delivery` row (unique on digest + slot); whoever fails that insert does not post. So
even two leaders at once (a paused process whose lease ran out) cannot post a slot twice. A
claim left pending by an instance that died mid-send is taken over once it is older than
`STALE_CLAIM` (longer than a send may take: `ProactiveSender` gives up within minutes); that
is the one case where a digest may be posted twice — it was posted but the crash came before
the row said so.

A slot missed while no instance was running is posted once when one starts, if it is still
recent: within half the schedule's period and at most `MAX_CATCH_UP`; older slots are skipped
(never a burst of stale digests). A slot earlier than the subscription itself is never sent.
Conversations where the bot was removed are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q

from bot.commands.digests import digest_reply
from bot.config import Settings
from bot.domain import approvals, numbers
from bot.domain.digests import (
    FAILED,
    PENDING,
    REMOVED,
    SENT,
    DigestReport,
    add_changes,
    build_report,
    schedule_of,
    take_snapshot,
)
from bot.domain.models import DigestDelivery, DigestSubscription, SchedulerLease
from bot.provisioning.nightly import nightly_reconcile
from bot.teams.proactive import ProactiveSender, SendOutcome, SendResult, Target, TokenSource
from bot.teams.render import render

log = logging.getLogger("bot.scheduler")

LEASE_NAME = "scheduler"
MAX_CATCH_UP = timedelta(hours=12)
STALE_CLAIM = timedelta(minutes=30)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Delivery:
    """What happened to one digest slot in this tick."""

    digest_id: int
    slot: datetime
    status: str
    attempts: int = 0
    error: str | None = None


@dataclass
class TickReport:
    leader: bool
    snapshot_rows: int = 0
    approvals_expired: int = 0
    numbers_released: int = 0
    reconciled: int = 0  # subscriptions compared with their tenant by the nightly reconcile
    deliveries: list[Delivery] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        sender: ProactiveSender | None,
        *,
        holder: str | None = None,
        clock: Clock = utc_now,
        lease_seconds: float | None = None,
        concurrency: int = 16,
    ) -> None:
        self.settings = settings
        self.sender = sender
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._clock = clock
        interval = settings.scheduler_interval_seconds
        self.lease = timedelta(seconds=lease_seconds or max(3 * interval, 60))
        self._concurrency = concurrency
        self._next_slot: datetime | None = None
        self._snapshot_day: Any = None

    # ----- leadership -------------------------------------------------------------------

    async def acquire_lease(self, now: datetime) -> bool:
        """Renew this instance's lease, or take an expired one over. True if leader now."""
        expires = now + self.lease
        taken = await SchedulerLease.filter(
            Q(name=LEASE_NAME) & (Q(holder=self.holder) | Q(expires_at__lt=now))
        ).update(holder=self.holder, expires_at=expires)
        if taken:
            return True
        try:
            await SchedulerLease.create(name=LEASE_NAME, holder=self.holder, expires_at=expires)
        except IntegrityError:
            return False
        return True

    async def release_lease(self) -> None:
        """Step down (at shutdown), so another instance takes over at its next tick."""
        await SchedulerLease.filter(name=LEASE_NAME, holder=self.holder).delete()

    # ----- one tick ---------------------------------------------------------------------

    async def tick(self) -> TickReport:
        now = self._clock()
        if not await self.acquire_lease(now):
            return TickReport(leader=False)
        report = TickReport(leader=True)
        day = now.astimezone(UTC).date()
        if self._snapshot_day != day:
            report.snapshot_rows = await self._job("usage snapshot", take_snapshot(day), 0)
            self._snapshot_day = day
        report.approvals_expired = await self._job("approval expiry", approvals.expire_due(now), 0)
        report.numbers_released = await self._job(
            "quarantine release", numbers.release_quarantined(now), 0
        )
        report.reconciled = await self._job(
            "nightly reconcile", nightly_reconcile(self.settings, now), 0
        )
        if self.settings.digest_enabled and self.sender is not None:
            report.deliveries = await self.deliver_due(now)
        return report

    @staticmethod
    async def _job(name: str, work: Any, default: int) -> int:
        try:
            return int(await work)
        except Exception:  # one failing job must not stop the others
            log.exception("scheduled job failed", extra={"job": name})
            return default

    # ----- digests ----------------------------------------------------------------------

    def _due_slot(
        self, sub: DigestSubscription, now: datetime, cache: dict[Any, Any]
    ) -> datetime | None:
        key = (sub.cron, sub.timezone)
        if key not in cache:
            schedule = schedule_of(sub)
            slot = schedule.latest_at_or_before(now)
            window = MAX_CATCH_UP
            if slot is not None:
                before = schedule.latest_at_or_before(slot - timedelta(microseconds=1))
                if before is not None:
                    window = min(window, (slot - before) / 2)
            nxt = schedule.next_after(now)
            if self._next_slot is None or nxt < self._next_slot:
                self._next_slot = nxt
            cache[key] = (slot, window)
        slot, window = cache[key]
        if slot is None or slot < now - window or slot < sub.created_at:
            return None
        return slot

    async def _claim(
        self, due: list[tuple[DigestSubscription, datetime]], now: datetime
    ) -> list[tuple[DigestSubscription, datetime]]:
        """Claim the due slots nobody has claimed (one unique row each); return ours."""
        ids = [s.id for s, _ in due]
        first = min(slot for _, slot in due)
        rows = await DigestDelivery.filter(digest_id__in=ids, slot__gte=first).values(
            "id", "digest_id", "slot", "status", "claimed_at"
        )
        existing = {(r["digest_id"], r["slot"]): r for r in rows}
        fresh = [
            DigestDelivery(
                digest_id=s.id, slot=slot, status=PENDING, claimed_by=self.holder, claimed_at=now
            )
            for s, slot in due
            if (s.id, slot) not in existing
        ]
        if fresh:
            # A row another instance inserted first stays theirs (the insert is skipped).
            await DigestDelivery.bulk_create(fresh, ignore_conflicts=True)
        for r in existing.values():
            stale = r["claimed_at"] is None or r["claimed_at"] < now - STALE_CLAIM
            if r["status"] == PENDING and stale:
                # Left pending by an instance that died mid-send: take it over.
                await DigestDelivery.filter(
                    Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - STALE_CLAIM),
                    id=r["id"],
                    status=PENDING,
                ).update(claimed_by=self.holder, claimed_at=now)
        mine = set(
            await DigestDelivery.filter(
                digest_id__in=ids, slot__gte=first, status=PENDING, claimed_by=self.holder
            ).values_list("digest_id", "slot")
        )
        return [(s, slot) for s, slot in due if (s.id, slot) in mine]

    async def deliver_due(self, now: datetime) -> list[Delivery]:
        """Post every digest whose latest slot is due and unclaimed; one claim per slot."""
        self._next_slot = None
        subs = await DigestSubscription.filter(
            active=True, conversation__active=True
        ).select_related("conversation")
        cache: dict[Any, Any] = {}
        due = [(s, slot) for s in subs if (slot := self._due_slot(s, now, cache)) is not None]
        if not due:
            return []
        claimed = await self._claim(due, now)
        if not claimed:
            return []
        try:
            base = await build_report(now, self.settings.alert_threshold_percent)
            previous = await self._previous_slots(claimed)
            # Digests with the same "since" get the same card: build each card once.
            cards: dict[datetime, tuple[dict[str, Any], str]] = {}
            for since in set(previous.values()):
                report = replace(base)
                await add_changes(report, since)
                reply = digest_reply(report, page=1, page_size=self.settings.page_size)
                cards[since] = (render(reply), _summary(report))
        except Exception as exc:
            log.exception("digest could not be built")
            await self._release_claims(claimed, f"the digest could not be built: {exc}")
            raise
        gate = asyncio.Semaphore(self._concurrency)

        async def deliver(sub: DigestSubscription, slot: datetime) -> Delivery:
            async with gate:
                return await self._deliver(sub, slot, *cards[previous[sub.id]])

        return list(await asyncio.gather(*(deliver(s, slot) for s, slot in claimed)))

    async def _previous_slots(
        self, claimed: list[tuple[DigestSubscription, datetime]]
    ) -> dict[int, datetime]:
        """Changes are reported since the digest's last posted slot, or one period back."""
        rows = await DigestDelivery.filter(
            digest_id__in=[s.id for s, _ in claimed], status=SENT
        ).values("digest_id", "slot")
        last: dict[int, datetime] = {}
        for r in rows:
            if r["digest_id"] not in last or r["slot"] > last[r["digest_id"]]:
                last[r["digest_id"]] = r["slot"]
        out: dict[int, datetime] = {}
        before: dict[tuple[str, str, datetime], datetime | None] = {}
        for sub, slot in claimed:
            if sub.id in last:
                out[sub.id] = last[sub.id]
                continue
            key = (sub.cron, sub.timezone, slot)
            if key not in before:
                before[key] = schedule_of(sub).latest_at_or_before(slot - timedelta(microseconds=1))
            out[sub.id] = before[key] or slot - timedelta(days=1)
        return out

    async def _deliver(
        self, sub: DigestSubscription, slot: datetime, card: dict[str, Any], summary: str
    ) -> Delivery:
        assert self.sender is not None
        try:
            result = await self.sender.post_card(Target.of(sub.conversation), card, summary)
        except Exception as exc:  # a bug or outage for one digest must not stop the others
            log.exception("digest delivery failed", extra={"digest_id": sub.id})
            result = SendResult(SendOutcome.FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
        status = {SendOutcome.SENT: SENT, SendOutcome.REMOVED: REMOVED}.get(result.outcome, FAILED)
        await DigestDelivery.filter(digest_id=sub.id, slot=slot, claimed_by=self.holder).update(
            status=status,
            attempts=result.attempts,
            sent_at=self._clock() if status == SENT else None,
            error=result.error,
            activity_id=result.activity_id,
        )
        log.info(
            "digest delivery",
            extra={
                "digest_id": sub.id,
                "slot": slot.isoformat(),
                "status": status,
                "attempts": result.attempts,
                "error": result.error,
            },
        )
        return Delivery(sub.id, slot, status, result.attempts, result.error)

    async def _release_claims(
        self, claimed: list[tuple[DigestSubscription, datetime]], why: str
    ) -> None:
        """Nothing was sent: record the failure so the rows do not look in flight."""
        for sub, slot in claimed:
            await DigestDelivery.filter(digest_id=sub.id, slot=slot, claimed_by=self.holder).update(
                status=FAILED, error=why[:500]
            )

    # ----- the loop ---------------------------------------------------------------------

    def next_wait(self, now: datetime) -> float:
        """Seconds until the next tick: the interval, or sooner if a digest slot comes first."""
        wait = float(self.settings.scheduler_interval_seconds)
        if self._next_slot is not None:
            wait = min(wait, max((self._next_slot - now).total_seconds() + 0.5, 0.5))
        return wait

    async def run(self, ticks: int | None = None) -> None:
        """Tick until cancelled (or `ticks` times); step down from leadership when stopping."""
        done = 0
        try:
            while ticks is None or done < ticks:
                try:
                    report = await self.tick()
                    sent = sum(1 for d in report.deliveries if d.status == SENT)
                    log.info(
                        "scheduler tick: holder=%s leader=%s sent=%d",
                        self.holder,
                        "yes" if report.leader else "no",
                        sent,
                    )
                except Exception:  # e.g. the database is down: try again next time
                    log.exception("scheduler tick failed")
                done += 1
                if ticks is None or done < ticks:
                    await asyncio.sleep(self.next_wait(self._clock()))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.release_lease())


def _summary(report: DigestReport) -> str:
    parts = [f"Usage digest: {len(report.products)} products"]
    if report.pool_alerts:
        parts.append(f"{len(report.pool_alerts)} pools at or over {report.threshold_percent} %")
    if report.approvals_total:
        parts.append(f"{report.approvals_total} approvals pending")
    return ", ".join(parts)


__all__ = ["Delivery", "Scheduler", "TickReport", "main", "run_scheduler"]


# ----- standalone: python -m bot.scheduler -------------------------------------------------


async def run_scheduler(
    settings: Settings,
    session: aiohttp.ClientSession,
    token: TokenSource | None,
    is_trusted: Callable[[str], bool],
    *,
    ticks: int | None = None,
) -> None:
    """The scheduler as a background task of the app: runs until cancelled.

    `session` is the app's shared HTTP session, `token` the bot's Bot Connector token source
    (None in local development mode), `is_trusted` the trusted service URL check.
    """
    sender = ProactiveSender(session, token=token, is_trusted=is_trusted)
    await Scheduler(settings, sender).run(ticks)


async def _main(ticks: int | None) -> None:
    from bot.auth.credentials import ClientCredentials, client_ssl_context
    from bot.domain import db
    from bot.domain.naming import set_naming_rule
    from bot.teams.connector import TrustedServiceUrls

    settings = Settings.from_env()
    set_naming_rule(settings.naming_rule)
    await db.open_database(settings.database_url, migrate=settings.migrate_on_start)
    credentials = None if settings.dev_mode else ClientCredentials(settings)
    trusted = TrustedServiceUrls(settings.trusted_service_urls, allow_loopback=settings.dev_mode)
    connector = aiohttp.TCPConnector(ssl=client_ssl_context())
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            token = credentials.connector_token if credentials else None
            await run_scheduler(settings, session, token, trusted.trusts, ticks=ticks)
    finally:
        if credentials is not None:
            credentials.close()
        await db.close_database()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot.scheduler",
        description="Run the scheduler without the web app (same settings as app.py).",
    )
    parser.add_argument("--ticks", type=int, default=None, help="stop after this many ticks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_main(args.ticks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
