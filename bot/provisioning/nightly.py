"""The nightly reconcile (issue 18): once a day, at FUSION_RECONCILE_AT (UTC), the scheduler's
leader compares every linked subscription with its tenant; what it finds is in the digest and
in `/metrics` (from the newest run of each subscription). Off when provisioning is off.

Once a day, whatever the number of instances: only the scheduler's leader runs it, and a run is
due only if no scheduled run has started since today's time came (the runs are in the
database, so a restarted or new leader sees them)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta

from bot.config import Settings
from bot.domain import reconcile
from bot.domain.change import Origin
from bot.domain.models import ReconcileRun
from bot.provisioning import reconcile as reader
from bot.provisioning.session import open_tenant_graph
from bot.provisioning.teams_numbers import Refused, Retryable

log = logging.getLogger("bot.provisioning.nightly")

ORIGIN = Origin(actor_id="schedule", actor_name="Nightly reconcile", source="schedule")


def slot(settings: Settings, now: datetime) -> datetime | None:
    """Today's (UTC) reconcile time if it has come, else yesterday's; None when off."""
    if settings.provisioning_off_reason or settings.reconcile_at == "off":
        return None
    hours, minutes = (int(p) for p in settings.reconcile_at.split(":"))
    moment = now.astimezone(UTC)
    today = datetime.combine(moment.date(), time(hours, minutes), tzinfo=UTC)
    return today if moment >= today else today - timedelta(days=1)


async def due(settings: Settings, now: datetime) -> datetime | None:
    at = slot(settings, now)
    if at is None:
        return None
    if await ReconcileRun.filter(trigger="schedule", started_at__gte=at).exists():
        return None
    return at


async def nightly_reconcile(settings: Settings, now: datetime) -> int:
    """Reconcile every linked subscription if tonight's run is due; how many were compared."""
    if await due(settings, now) is None:
        return 0
    compared = 0
    read: dict[str, reconcile.TenantState] = {}
    async with open_tenant_graph(settings) as graph:
        for sub in await reconcile.linked_subscriptions():
            try:
                run = await reader.run(ORIGIN, graph, sub.code, "schedule", read)
            except (Retryable, Refused) as exc:
                # Its previous run stands; tomorrow's tries again.
                log.warning("nightly reconcile of %s: %s", sub.code, exc.message)
                continue
            compared += 1
            log.info(
                "nightly reconcile",
                extra={"subscription": sub.code, "differences": run.differences},
            )
    return compared


async def prune(settings: Settings, now: datetime) -> int:
    """The retention of reconcile runs (FUSION_RECONCILE_KEEP_DAYS), whether provisioning is
    on or not: runs older than it go, with their differences; each subscription's newest
    stays. How many runs were deleted."""
    return await reconcile.prune_runs(ORIGIN, timedelta(days=settings.reconcile_keep_days), now)
