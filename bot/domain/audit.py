"""Reading the audit trail. Writing happens only in `change`, inside each change's transaction."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.expressions import Q

from bot.domain.change import verify_chain
from bot.domain.errors import InvalidInput
from bot.domain.models import AuditEvent

MAX_LIMIT = 500
_SINCE = re.compile(r"([0-9]{1,5})([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> datetime:
    """`7d`, `12h`, `30m`, `2w`, or an ISO date."""
    m = _SINCE.fullmatch(text.strip().lower())
    if m:
        return datetime.now(UTC) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInput(
            f"--since {text!r}: use 30m, 12h, 7d, 2w or a date such as 2026-11-01."
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def event_json(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at.astimezone(UTC).isoformat(),
        "actor_id": e.actor_id,
        "actor_name": e.actor_name,
        "source": e.source,
        "action": e.action,
        "target": e.target,
        "before": e.before,
        "after": e.after,
        "correlation_id": e.correlation_id,
        "hash": e.hash,
    }


async def search(
    actor: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[AuditEvent]:
    query = AuditEvent.all()
    if actor:
        query = query.filter(Q(actor_name__icontains=actor) | Q(actor_id__iexact=actor))
    if target:
        query = query.filter(target__icontains=target)
    if since:
        query = query.filter(at__gte=since)
    return await query.order_by("-id").limit(min(max(limit, 1), MAX_LIMIT))


async def export() -> AsyncIterator[dict[str, Any]]:
    """Every event in chain order, in batches (memory stays flat however long the trail)."""
    last = 0
    while True:
        rows = await AuditEvent.filter(id__gt=last).order_by("id").limit(1000)
        if not rows:
            return
        for row in rows:
            yield event_json(row)
        last = rows[-1].id


__all__ = ["event_json", "export", "parse_since", "search", "verify_chain"]
