"""Leadership among bot instances: a named row of `scheduler_lease` with an expiry.

`acquire` renews the lease if `holder` holds it, or takes it over once it has expired, in one
conditional UPDATE (or the INSERT of the first row), so two instances can never both win. A
holder that dies is replaced within one lease period; `release` steps down at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q

from bot.domain.models import SchedulerLease


async def acquire(name: str, holder: str, now: datetime, period: timedelta) -> bool:
    """Renew `holder`'s lease, or take an expired one over. True if `holder` holds it now."""
    expires = now + period
    taken = await SchedulerLease.filter(
        Q(name=name) & (Q(holder=holder) | Q(expires_at__lt=now))
    ).update(holder=holder, expires_at=expires)
    if taken:
        return True
    try:
        await SchedulerLease.create(name=name, holder=holder[:100], expires_at=expires)
    except IntegrityError:
        return False
    return True


async def release(name: str, holder: str) -> None:
    """Step down, so that another instance takes over at its next try."""
    await SchedulerLease.filter(name=name, holder=holder).delete()
