"""The scheduler: a lease and a loop. Daily usage snapshots, digests on their slots, approvals
expiry and quarantine end, run by whichever instance holds the lease.

Every bot instance runs one (a background task of the app, or `python -m bot.scheduler`);
only the **leader** works. Leadership is `bot.domain.lease` (one conditional UPDATE: two
instances never both win; a leader that dies is replaced within one lease period). Which digest
slots are due, the claim that makes each slot posted once even with two leaders, the catch-up
window and the bookkeeping of what became of each slot are the domain's
(`bot.domain.digests.claim_due`, `record_delivery`); here the claimed digests are rendered and
posted through the process's one `ProactiveSender`.
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

from bot import metrics
from bot.commands.digests import digest_reply
from bot.config import Settings
from bot.domain import approvals, digests, lease, numbers
from bot.domain.digests import (
    FAILED,
    MAX_CATCH_UP,
    REMOVED,
    SENT,
    STALE_CLAIM,
    Claim,
    DigestReport,
    add_changes,
    build_report,
    take_snapshot,
)
from bot.logs import configure_logging
from bot.provisioning.nightly import nightly_reconcile, prune
from bot.teams.proactive import ProactiveSender, SendOutcome, SendResult, Target
from bot.teams.render import render

log = logging.getLogger("bot.scheduler")

LEASE_NAME = "scheduler"

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
    reconcile_runs_pruned: int = 0  # runs older than FUSION_RECONCILE_KEEP_DAYS deleted
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
        return await lease.acquire(LEASE_NAME, self.holder, now, self.lease)

    async def release_lease(self) -> None:
        """Step down (at shutdown), so another instance takes over at its next tick."""
        await lease.release(LEASE_NAME, self.holder)

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
        report.reconcile_runs_pruned = await self._job(
            "reconcile retention", prune(self.settings, now), 0
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

    async def deliver_due(self, now: datetime) -> list[Delivery]:
        """Post every digest whose latest slot is due and that this instance claimed."""
        due = await digests.claim_due(self.holder, now)
        self._next_slot = due.next_slot
        claimed = due.claims
        if not claimed:
            return []
        try:
            base = await build_report(now, self.settings.alert_threshold_percent)
            # Digests with the same "since" get the same card: build each card once.
            cards: dict[datetime, tuple[dict[str, Any], str]] = {}
            for since in {c.since for c in claimed}:
                report = replace(base)
                await add_changes(report, since)
                reply = digest_reply(report, page=1, page_size=self.settings.page_size)
                cards[since] = (render(reply), _summary(report))
        except Exception as exc:
            log.exception("digest could not be built")
            await digests.release_claims(
                self.holder, claimed, f"the digest could not be built: {exc}"
            )
            raise
        gate = asyncio.Semaphore(self._concurrency)

        async def deliver(claim: Claim) -> Delivery:
            async with gate:
                return await self._deliver(claim, *cards[claim.since])

        return list(await asyncio.gather(*(deliver(c) for c in claimed)))

    async def _deliver(self, claim: Claim, card: dict[str, Any], summary: str) -> Delivery:
        assert self.sender is not None
        sub = claim.subscription
        try:
            result = await self.sender.post_card(Target.of(sub.conversation), card, summary)
        except Exception as exc:  # a bug or outage for one digest must not stop the others
            log.exception("digest delivery failed", extra={"digest_id": sub.id})
            result = SendResult(SendOutcome.FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
        status = {SendOutcome.SENT: SENT, SendOutcome.REMOVED: REMOVED}.get(result.outcome, FAILED)
        metrics.digest_delivered(status)
        await digests.record_delivery(
            self.holder,
            claim,
            status,
            attempts=result.attempts,
            error=result.error,
            activity_id=result.activity_id,
            at=self._clock(),
        )
        log.info(
            "digest delivery",
            extra={
                "digest_id": sub.id,
                "slot": claim.slot.isoformat(),
                "status": status,
                "attempts": result.attempts,
                "error": result.error,
            },
        )
        return Delivery(sub.id, claim.slot, status, result.attempts, result.error)

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


__all__ = [
    "MAX_CATCH_UP",
    "STALE_CLAIM",
    "Delivery",
    "Scheduler",
    "TickReport",
    "main",
    "run_scheduler",
]


# ----- standalone: python -m bot.scheduler -------------------------------------------------


async def run_scheduler(
    settings: Settings, sender: ProactiveSender, *, ticks: int | None = None
) -> None:
    """The scheduler as a background task of the app: runs until cancelled. `sender` is the
    process's one Bot Connector sender (the edge's), so digests share its rate limiter."""
    await Scheduler(settings, sender).run(ticks)


async def _main(ticks: int | None) -> None:
    from bot.auth.credentials import ClientCredentials, client_ssl_context
    from bot.domain import db
    from bot.domain.naming import set_naming_rule
    from bot.teams.edge import build_sender

    settings = Settings.from_env()
    set_naming_rule(settings.naming_rule)
    await db.open_database(settings.database_url, migrate=settings.migrate_on_start)
    credentials = None if settings.dev_mode else ClientCredentials(settings)
    connector = aiohttp.TCPConnector(ssl=client_ssl_context())
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            sender = build_sender(settings, session, credentials)
            await run_scheduler(settings, sender, ticks=ticks)
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
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level or "INFO")
    asyncio.run(_main(args.ticks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
