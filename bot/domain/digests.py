"""Usage digests: who gets one and when (schedules), and what one says (the report).

Schedules
---------
A digest subscription is a 5-field cron expression read in an IANA time zone: `DAILY at 08:00`
is `0 8 * * *`, `WEEKLY at 08:00` is `0 8 * * 1` (Mondays). Slots are wall-clock times of that
zone, mapped to UTC instants once each:

- a wall-clock time skipped when the clocks go forward (02:30 on the spring-forward night in
  Europe/London) fires at the moment of the change (03:00 local), as classic cron does;
- a wall-clock time that happens twice when the clocks go back fires once, at its first
  occurrence.

So a daily digest is posted once a day, every day, whatever the time zone does. Schedules more
often than hourly are refused: a digest is a summary, not a feed.

The report
----------
One report for the whole provider (group administrators see everything): per product capacity,
allocated, in use and utilisation (allocated ÷ capacity — what is left to hand out); pools at
or over the alert threshold (`FUSION_ALERT_THRESHOLD_PERCENT`, default 90 %) and subscriptions
whose use of their allocation is at or over it (in use ÷ allocated); the forecast; the changes
since the last digest from the audit trail; the pending approvals. It is built with a fixed
number of queries whatever the size of the ledger (see `benchmarks/bench_digest.py`).

Forecast
--------
A pool runs out when nothing is left to allocate (invariant 1: allocations ≤ capacity). From
the daily `UsageSnapshot`s of the last `FORECAST_WINDOW_DAYS` days the trend of *allocated* is
the least-squares slope b = Σ(x−x̄)(y−ȳ) / Σ(x−x̄)² (x = day, y = allocated that day), in units
per day. With at least `FORECAST_MIN_POINTS` snapshot days and b > 0, the days left are the
headroom now (capacity − allocated, live figures) divided by b. A flat or falling trend has no
date: the pool is not running out. Products with an open capacity (licenses added without one)
are never forecast or alerted on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError
from tortoise.expressions import Q
from tortoise.functions import Count

from bot.domain.change import Origin, change
from bot.domain.errors import AlreadyExists, InvalidInput, NotFound, did_you_mean
from bot.domain.ledger import OPEN_LICENSE_CAPACITY, Outcome
from bot.domain.models import (
    ApprovalRequest,
    ApprovalStatus,
    AuditEvent,
    ConversationRef,
    DigestDelivery,
    DigestSubscription,
    Product,
    ProductStatus,
    UsageSnapshot,
)
from bot.domain.provisioning import counts as provisioning_counts
from bot.domain.reconcile import RECENT, open_differences
from bot.domain.usage import ProductUsage, usage_report

DEFAULT_TIME = "08:00"
DEFAULT_ZONE = "UTC"
FORECAST_WINDOW_DAYS = 28
FORECAST_MIN_POINTS = 3
# How many entries each list of the report keeps (the card pages the products; the rest of a
# list is counted, not shown).
LIST_LIMIT = 10
# Delivery states of a DigestDelivery row.
PENDING, SENT, FAILED, REMOVED = "pending", "sent", "failed", "removed"

_TIME = re.compile(r"([01]?[0-9]|2[0-3])[:.h]([0-5][0-9])")
# Far enough either side of a moment to cover any DST shift when iterating wall-clock slots.
_MARGIN = timedelta(hours=3)


# ----- schedules -------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _zones() -> dict[str, str]:
    return {z.lower(): z for z in available_timezones()}


def check_zone(name: str | None) -> str:
    """The canonical IANA name of a time zone (case-insensitive), or a clear refusal."""
    if name is None or not name.strip():
        return DEFAULT_ZONE
    text = name.strip()
    if text.upper() in {"UTC", "Z", "GMT"}:
        return "UTC"
    canonical = _zones().get(text.lower())
    if canonical is None:
        guesses = did_you_mean(text, _zones().values())
        hint = (" Did you mean " + " or ".join(guesses) + "?") if guesses else ""
        raise InvalidInput(
            f"{text!r} is not a time zone. Use an IANA name such as Europe/London, "
            f"America/New_York or UTC.{hint}"
        )
    try:
        ZoneInfo(canonical)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # pragma: no cover - listed but unusable
        raise InvalidInput(f"The time zone {canonical} cannot be loaded on this server.") from exc
    return canonical


def check_time(text: str | None) -> tuple[int, int]:
    value = (text or DEFAULT_TIME).strip()
    m = _TIME.fullmatch(value)
    if not m:
        raise InvalidInput(
            f"{value!r} is not a time of day: use HH:MM on a 24-hour clock, e.g. 08:30."
        )
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class Schedule:
    """When a digest is due: a cron expression read in a time zone."""

    cron: str
    timezone: str
    description: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _to_utc(self, wall: datetime) -> datetime:
        """One UTC instant for a wall-clock time of the zone (see the module docstring)."""
        zone = self.zone
        local = wall.replace(tzinfo=zone, fold=0)
        if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall:
            # Skipped by a clock change: the first wall-clock minute that exists after it.
            probe = wall
            for _ in range(24 * 60):
                probe += timedelta(minutes=1)
                candidate = probe.replace(tzinfo=zone, fold=0)
                if candidate.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == probe:
                    return candidate.astimezone(UTC)
        return local.astimezone(UTC)

    def _wall(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone).replace(tzinfo=None)

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after `moment` (UTC)."""
        it = croniter(self.cron, self._wall(moment) - _MARGIN)
        for _ in range(10_000):
            slot = self._to_utc(it.get_next(datetime))
            if slot > moment:
                return slot
        raise InvalidInput(f"The schedule {self.cron!r} has no next time.")  # pragma: no cover

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last slot at or before `moment` (UTC), None if there is none within a year."""
        it = croniter(self.cron, self._wall(moment) + _MARGIN)
        limit = moment - timedelta(days=370)
        while True:
            try:
                slot = self._to_utc(it.get_prev(datetime))
            except CroniterBadDateError:
                return None
            if slot <= moment:
                return slot
            if slot < limit:  # pragma: no cover - defensive
                return None

    def slots_between(self, start: datetime, end: datetime) -> list[datetime]:
        """Slots s with start < s <= end, each once."""
        out: list[datetime] = []
        moment = start
        while True:
            slot = self.next_after(moment)
            if slot > end:
                return out
            out.append(slot)
            moment = slot


def parse_schedule(kind: str, at: str | None = None, zone: str | None = None) -> Schedule:
    """`DAILY|WEEKLY [at HH:MM] [TZ]` or a 5-field cron expression `[TZ]` → a Schedule."""
    word = (kind or "").strip()
    tz = check_zone(zone)
    if word.lower() in {"daily", "weekly"}:
        hour, minute = check_time(at)
        if word.lower() == "daily":
            return Schedule(f"{minute} {hour} * * *", tz, f"daily at {hour:02d}:{minute:02d} {tz}")
        return Schedule(
            f"{minute} {hour} * * 1", tz, f"weekly on Mondays at {hour:02d}:{minute:02d} {tz}"
        )
    if at is not None:
        raise InvalidInput(
            "`at HH:MM` goes with DAILY or WEEKLY; a cron expression carries its own time."
        )
    return Schedule(check_cron(word), tz, f"cron {' '.join(word.split())} {tz}")


CRON_RULE = (
    "Standard cron: 5 fields, minute (0-59) hour (0-23) day-of-month (1-31) month (1-12 or "
    "JAN-DEC) day-of-week (0-7, 0 and 7 are Sunday, or SUN-SAT); each field is *, a number, a "
    "range a-b, a step */n or a-b/n, or a list of these joined by commas. Not accepted: ?, L, W, "
    "#, @daily and steps longer than the field."
)
# (name, lowest, highest, names for the values)
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    (
        "month",
        1,
        12,
        {
            m: i
            for i, m in enumerate(
                (
                    "JAN",
                    "FEB",
                    "MAR",
                    "APR",
                    "MAY",
                    "JUN",
                    "JUL",
                    "AUG",
                    "SEP",
                    "OCT",
                    "NOV",
                    "DEC",
                ),
                1,
            )
        },
    ),
    (
        "day of week",
        0,
        7,
        {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))},
    ),
)
_CRON_ITEM = re.compile(
    r"(?P<start>\*|[0-9]{1,2}|[A-Za-z]{3})(?:-(?P<end>[0-9]{1,2}|[A-Za-z]{3}))?"
    r"(?:/(?P<step>[0-9]{1,2}))?",
    re.ASCII,
)


def _cron_value(text: str, field: tuple[str, int, int, dict[str, int]]) -> int:
    name, lowest, highest, names = field
    if text.isalpha():
        if text.upper() not in names:
            raise InvalidInput(f"{name} {text!r}: names are allowed only for months and days.")
        return names[text.upper()]
    value = int(text)
    if not lowest <= value <= highest:
        raise InvalidInput(
            f"not a valid cron expression: the {name} {value} is outside {lowest}-{highest}."
        )
    return value


def _check_cron_field(text: str, field: tuple[str, int, int, dict[str, int]]) -> None:
    name, lowest, highest, _ = field
    for item in text.split(","):
        m = _CRON_ITEM.fullmatch(item)
        if m is None:
            raise InvalidInput(f"The {name} field {text!r} is not standard cron.")
        start, end, step = m.group("start"), m.group("end"), m.group("step")
        if start == "*":
            if end is not None:
                raise InvalidInput(f"The {name} field {text!r} is not standard cron.")
        else:
            first = _cron_value(start, field)
            if end is not None and _cron_value(end, field) < first:
                raise InvalidInput(
                    f"The {name} range {item!r} runs backwards; write it from low to high."
                )
            if step is not None and end is None:
                raise InvalidInput(
                    f"The {name} step {item!r} needs * or a range before it (*/n or a-b/n)."
                )
        if step is not None and not 1 <= int(step) <= highest - lowest:
            raise InvalidInput(
                f"The {name} step {item!r} must be between 1 and {highest - lowest}."
            )


def check_cron(expression: str) -> str:
    parts = expression.split()
    if len(parts) != 5:
        raise InvalidInput(
            f"{expression[:100]!r} is not a schedule: say DAILY or WEEKLY, or give a cron "
            "expression of 5 fields in quotes, minute hour day-of-month month day-of-week, "
            'e.g. "0 8 * * 1-5" (08:00 on weekdays).'
        )
    try:
        for part, field in zip(parts, _CRON_FIELDS, strict=True):
            _check_cron_field(part, field)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc.message} {CRON_RULE}") from None
    cron = " ".join(parts)
    try:
        minutes = croniter(cron).expanded[0]
        # A valid expression can still never fire (the 31st of February).
        croniter(cron, datetime(2026, 1, 1)).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise InvalidInput(f"{cron!r} is not a valid cron expression ({exc}).") from exc
    # One minute value means at most one slot an hour; several mean several an hour.
    if len(minutes) != 1 or minutes == ["*"]:
        raise InvalidInput(
            f"The cron expression {cron!r} fires more than once an hour; a digest can be sent "
            'at most hourly (give one minute value, e.g. "0 8 * * 1-5").'
        )
    return cron


# ----- subscriptions ---------------------------------------------------------------------


def schedule_of(sub: DigestSubscription) -> Schedule:
    return Schedule(sub.cron, sub.timezone, sub.description)


def subscription_view(
    sub: DigestSubscription, conversation: ConversationRef | None
) -> dict[str, Any]:
    return {
        "id": sub.id,
        "schedule": sub.description,
        "cron": sub.cron,
        "timezone": sub.timezone,
        "conversation_id": conversation.conversation_id if conversation else None,
        "conversation_active": conversation.active if conversation else None,
        "active": sub.active,
        "created_by": sub.created_by,
    }


async def subscribe(
    origin: Origin, conversation_id: str, schedule: Schedule, *, dry_run: bool = False
) -> Outcome:
    """Post the digest to this conversation on `schedule` (audited)."""
    conversation = await ConversationRef.get_or_none(conversation_id=conversation_id)
    if conversation is None:
        raise InvalidInput(
            "The bot does not know this conversation yet (it is stored when the bot is installed "
            "or addressed here); say something to the bot here and try again."
        )
    async with change(origin, dry_run=dry_run) as ch:
        same = (
            await DigestSubscription.filter(
                conversation_id=conversation.id,
                cron=schedule.cron,
                timezone=schedule.timezone,
                active=True,
            )
            .using_db(ch.conn)
            .first()
        )
        if same is not None:
            raise AlreadyExists(
                f"This conversation already gets the digest {schedule.description} "
                f"(digest {same.id}); `digest stop {same.id}` ends it."
            )
        sub = await DigestSubscription.create(
            using_db=ch.conn,
            conversation=conversation,
            cron=schedule.cron,
            timezone=schedule.timezone,
            description=schedule.description[:200],
            created_by=origin.actor_name or origin.actor_id,
        )
        after = {
            "schedule": schedule.description,
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "conversation": conversation_id[:120],
        }
        ch.record("digest.subscribe", f"digest:{sub.id}", None, after)
    nxt = schedule.next_after(datetime.now(UTC))
    return Outcome(
        "digest.subscribe",
        f"digest {sub.id}",
        None,
        {**after, "next": nxt.isoformat()},
        dry_run,
        f"This conversation will get the usage digest {schedule.description}; "
        f"the next one is due {nxt:%Y-%m-%d %H:%M} UTC.",
    )


async def stop(origin: Origin, digest_id: int, *, dry_run: bool = False) -> Outcome:
    async with change(origin, dry_run=dry_run) as ch:
        sub = await DigestSubscription.filter(id=digest_id, active=True).using_db(ch.conn).first()
        if sub is None:
            active = (
                await DigestSubscription.filter(active=True)
                .using_db(ch.conn)
                .values_list("id", flat=True)
            )
            raise NotFound("digest", str(digest_id), [str(i) for i in active])
        await DigestSubscription.filter(id=sub.id).using_db(ch.conn).update(active=False)
        before = {"schedule": sub.description, "active": True}
        after = {"schedule": sub.description, "active": False}
        ch.record("digest.stop", f"digest:{sub.id}", before, after)
    return Outcome(
        "digest.stop",
        f"digest {digest_id}",
        before,
        after,
        dry_run,
        f"Digest {digest_id} ({sub.description}) is stopped.",
    )


async def list_subscriptions() -> list[tuple[DigestSubscription, ConversationRef]]:
    subs = (
        await DigestSubscription.filter(active=True).select_related("conversation").order_by("id")
    )
    return [(s, s.conversation) for s in subs]


async def last_sent(digest_ids: list[int]) -> dict[int, datetime]:
    """When each digest was last posted (slot time), in one query."""
    if not digest_ids:
        return {}
    rows = await DigestDelivery.filter(digest_id__in=digest_ids, status=SENT).values(
        "digest_id", "slot"
    )
    latest: dict[int, datetime] = {}
    for r in rows:
        if r["digest_id"] not in latest or r["slot"] > latest[r["digest_id"]]:
            latest[r["digest_id"]] = r["slot"]
    return latest


async def last_sent_to(conversation_id: str) -> datetime | None:
    """The slot of the last digest posted to a conversation, if any."""
    row = (
        await DigestDelivery.filter(
            digest__conversation__conversation_id=conversation_id, status=SENT
        )
        .order_by("-slot")
        .first()
    )
    return row.slot if row else None


# ----- deliveries: one claim per digest slot --------------------------------------------
#
# Each digest slot is sent **once**: before posting, an instance claims the slot by inserting
# its `digest_delivery` row (unique on digest + slot); whoever fails that insert does not post.
# So even two leaders at once (a paused process whose lease ran out) cannot post a slot twice.
# A claim left pending by an instance that died mid-send is taken over once it is older than
# `STALE_CLAIM` (longer than a send may take: the sender gives up within minutes); that is the
# one case where a digest may be posted twice — it was posted but the crash came before the row
# said so.
#
# A slot missed while no instance was running is posted once when one starts, if it is still
# recent: within half the schedule's period and at most `MAX_CATCH_UP`; older slots are skipped
# (never a burst of stale digests). A slot earlier than the subscription itself is never sent.
# Conversations where the bot was removed are skipped.

MAX_CATCH_UP = timedelta(hours=12)
STALE_CLAIM = timedelta(minutes=30)


@dataclass(frozen=True)
class Claim:
    """A digest slot this instance holds the claim to: post it, then `record_delivery`."""

    subscription: DigestSubscription
    slot: datetime
    since: datetime  # the digest reports changes since this moment (its last posted slot)

    @property
    def digest_id(self) -> int:
        return self.subscription.id


@dataclass
class DueSlots:
    claims: list[Claim]
    # The earliest slot after now of any active digest (when the next claim may be due).
    next_slot: datetime | None


def _due_slot(
    sub: DigestSubscription, now: datetime, cache: dict[Any, Any]
) -> tuple[datetime | None, datetime]:
    """The slot of `sub` due at `now` (None if none is), and its next slot after `now`."""
    key = (sub.cron, sub.timezone)
    if key not in cache:
        schedule = schedule_of(sub)
        slot = schedule.latest_at_or_before(now)
        window = MAX_CATCH_UP
        if slot is not None:
            before = schedule.latest_at_or_before(slot - timedelta(microseconds=1))
            if before is not None:
                window = min(window, (slot - before) / 2)
        cache[key] = (slot, window, schedule.next_after(now))
    slot, window, nxt = cache[key]
    if slot is None or slot < now - window or slot < sub.created_at:
        return None, nxt
    return slot, nxt


async def claim_due(holder: str, now: datetime) -> DueSlots:
    """Claim every due slot of an active digest that nobody has claimed (one unique row each);
    return the claims `holder` now holds, with what each digest reports changes since."""
    subs = await DigestSubscription.filter(active=True, conversation__active=True).select_related(
        "conversation"
    )
    cache: dict[Any, Any] = {}
    due: list[tuple[DigestSubscription, datetime]] = []
    next_slot: datetime | None = None
    for sub in subs:
        slot, nxt = _due_slot(sub, now, cache)
        next_slot = nxt if next_slot is None or nxt < next_slot else next_slot
        if slot is not None:
            due.append((sub, slot))
    if not due:
        return DueSlots([], next_slot)
    mine = await _claim(holder, due, now)
    since = await _since(mine)
    return DueSlots([Claim(sub, slot, since[sub.id]) for sub, slot in mine], next_slot)


async def _claim(
    holder: str, due: list[tuple[DigestSubscription, datetime]], now: datetime
) -> list[tuple[DigestSubscription, datetime]]:
    ids = [s.id for s, _ in due]
    first = min(slot for _, slot in due)
    rows = await DigestDelivery.filter(digest_id__in=ids, slot__gte=first).values(
        "id", "digest_id", "slot", "status", "claimed_at"
    )
    existing = {(r["digest_id"], r["slot"]): r for r in rows}
    fresh = [
        DigestDelivery(digest_id=s.id, slot=slot, status=PENDING, claimed_by=holder, claimed_at=now)
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
            ).update(claimed_by=holder, claimed_at=now)
    mine = set(
        await DigestDelivery.filter(
            digest_id__in=ids, slot__gte=first, status=PENDING, claimed_by=holder
        ).values_list("digest_id", "slot")
    )
    return [(s, slot) for s, slot in due if (s.id, slot) in mine]


async def _since(claimed: list[tuple[DigestSubscription, datetime]]) -> dict[int, datetime]:
    """Changes are reported since the digest's last posted slot, or one period back."""
    last = await last_sent([s.id for s, _ in claimed])
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


async def record_delivery(
    holder: str,
    claim: Claim,
    status: str,
    *,
    attempts: int = 0,
    error: str | None = None,
    activity_id: str | None = None,
    at: datetime | None = None,
) -> None:
    """What became of a claimed slot: SENT, REMOVED (the bot is gone) or FAILED (why)."""
    if status not in (SENT, REMOVED, FAILED):
        raise ValueError(f"not a final delivery status: {status!r}")
    await DigestDelivery.filter(
        digest_id=claim.digest_id, slot=claim.slot, claimed_by=holder
    ).update(
        status=status,
        attempts=attempts,
        sent_at=(at or datetime.now(UTC)) if status == SENT else None,
        error=error[:500] if error else None,
        activity_id=activity_id[:255] if activity_id else None,
    )


async def release_claims(holder: str, claims: list[Claim], why: str) -> None:
    """Nothing was sent: record the failure so the rows do not look in flight."""
    for claim in claims:
        await record_delivery(holder, claim, FAILED, error=why)


# ----- snapshots -------------------------------------------------------------------------


async def take_snapshot(day: date) -> int:
    """Record capacity / allocated / in use of every product for `day` (once; rows written)."""
    if await UsageSnapshot.filter(day=day).exists():
        return 0
    report = await usage_report()
    ids = dict(await Product.all().values_list("name", "id"))
    rows = [
        UsageSnapshot(
            day=day,
            product_id=ids[p.name],
            capacity=p.capacity,
            allocated=p.allocated,
            in_use=p.in_use,
        )
        for p in report
        if p.name in ids
    ]
    if rows:
        # Another instance may have taken the same day's snapshot meanwhile: keep theirs.
        await UsageSnapshot.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


# ----- the report ------------------------------------------------------------------------


def trend(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x; None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx


@dataclass(frozen=True)
class Forecast:
    product: str
    per_day: float  # trend of allocated, units per day
    headroom: int  # capacity − allocated now
    days: float  # until allocated reaches capacity at that trend
    runs_out_on: date
    points: int  # snapshot days used


def forecast(
    product: str, series: list[tuple[date, int]], capacity: int, allocated: int, today: date
) -> Forecast | None:
    """Days until `allocated` reaches `capacity` from a daily series of allocated figures."""
    if capacity >= OPEN_LICENSE_CAPACITY:
        return None
    days = sorted({d: v for d, v in series}.items())
    if len(days) < FORECAST_MIN_POINTS:
        return None
    slope = trend([(float((d - days[0][0]).days), float(v)) for d, v in days])
    headroom = max(capacity - allocated, 0)
    if slope is None or slope <= 0:
        return None
    left = headroom / slope
    return Forecast(product, slope, headroom, left, today + timedelta(days=int(left)), len(days))


@dataclass(frozen=True)
class ProductLine:
    name: str
    kind: str
    unit: str
    capacity: int
    allocated: int
    in_use: int
    open_capacity: bool

    @property
    def utilisation(self) -> float:
        """Allocated ÷ capacity (0..1)."""
        if self.open_capacity or not self.capacity:
            return 0.0
        return self.allocated / self.capacity

    @property
    def use_share(self) -> float:
        """In use ÷ allocated (0..1)."""
        return self.in_use / self.allocated if self.allocated else 0.0


@dataclass(frozen=True)
class SubscriptionAlert:
    code: str
    product: str
    allocated: int
    in_use: int

    @property
    def share(self) -> float:
        return self.in_use / self.allocated if self.allocated else 0.0


@dataclass(frozen=True)
class ChangeLine:
    at: datetime
    actor: str
    source: str
    action: str
    target: str
    #: The event's before and after, for its sentence ("70 → 75", request A-5).
    before: Any = None
    after: Any = None


@dataclass(frozen=True)
class PendingApproval:
    id: str
    summary: str
    requester: str
    expires_at: datetime
    short_id: str = ""  # what people type: A-17


@dataclass
class DigestReport:
    generated_at: datetime
    threshold_percent: int
    products: list[ProductLine]
    pool_alerts: list[ProductLine]
    subscription_alerts: list[SubscriptionAlert]
    subscription_alerts_total: int
    forecasts: list[Forecast]
    approvals: list[PendingApproval]
    approvals_total: int
    changes_since: datetime | None = None
    changes: list[ChangeLine] = field(default_factory=list)
    changes_total: int = 0
    changes_by_action: dict[str, int] = field(default_factory=dict)
    #: Pool → its daily allocated figures over the forecast window, oldest first (the trend).
    trends: dict[str, list[tuple[date, int]]] = field(default_factory=dict)
    # Provisioning jobs still to reach Teams (pending or sent) and failed ones (SPEC §9).
    provisioning_pending: int = 0
    provisioning_failed: int = 0
    # Differences still open from each subscription's newest recent reconcile (issue 18):
    # subscription → kind → count.
    drift: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The documented `--json` shape of a digest."""
        return {
            "generated_at": self.generated_at.isoformat(),
            "threshold_percent": self.threshold_percent,
            "products": [
                {
                    "name": p.name,
                    "kind": p.kind,
                    "unit": p.unit,
                    "capacity": None if p.open_capacity else p.capacity,
                    "allocated": p.allocated,
                    "in_use": p.in_use,
                    "utilisation_percent": None
                    if p.open_capacity
                    else round(100 * p.utilisation, 1),
                }
                for p in self.products
            ],
            "pools_over_threshold": [p.name for p in self.pool_alerts],
            "subscriptions_over_threshold": {
                "total": self.subscription_alerts_total,
                "top": [
                    {
                        "code": a.code,
                        "product": a.product,
                        "allocated": a.allocated,
                        "in_use": a.in_use,
                        "use_percent": round(100 * a.share, 1),
                    }
                    for a in self.subscription_alerts
                ],
            },
            "forecasts": [
                {
                    "product": f.product,
                    "per_day": round(f.per_day, 3),
                    "headroom": f.headroom,
                    "days": round(f.days, 1),
                    "runs_out_on": f.runs_out_on.isoformat(),
                    "snapshot_days": f.points,
                }
                for f in self.forecasts
            ],
            "changes": {
                "since": self.changes_since.isoformat() if self.changes_since else None,
                "total": self.changes_total,
                "by_action": self.changes_by_action,
                "latest": [
                    {
                        "at": c.at.isoformat(),
                        "actor": c.actor,
                        "source": c.source,
                        "action": c.action,
                        "target": c.target,
                    }
                    for c in self.changes
                ],
            },
            "provisioning_jobs": {
                "pending": self.provisioning_pending,
                "failed": self.provisioning_failed,
            },
            "reconcile": self.drift,
            "pending_approvals": {
                "total": self.approvals_total,
                "first": [
                    {
                        "id": a.id,
                        "short_id": a.short_id or a.id,
                        "summary": a.summary,
                        "requester": a.requester,
                        "expires_at": a.expires_at.isoformat(),
                    }
                    for a in self.approvals
                ],
            },
        }


def _lines(report: list[ProductUsage]) -> list[ProductLine]:
    return [
        ProductLine(
            name=p.name,
            kind=p.kind,
            unit=p.unit,
            capacity=p.capacity,
            allocated=p.allocated,
            in_use=p.in_use,
            open_capacity=p.capacity >= OPEN_LICENSE_CAPACITY,
        )
        for p in report
        if p.status == ProductStatus.ACTIVE.value
    ]


async def build_report(
    now: datetime, threshold_percent: int, *, since: datetime | None = None
) -> DigestReport:
    """The digest's content as of `now`; changes since `since` (none if None). Fixed query count."""
    threshold = threshold_percent / 100
    usage = await usage_report()
    products = sorted(_lines(usage), key=lambda p: (-p.utilisation, -p.use_share, p.name))

    pool_alerts = [
        p for p in products if not p.open_capacity and p.capacity and p.utilisation >= threshold
    ]
    sub_alerts: list[SubscriptionAlert] = []
    active = {p.name for p in products}
    for p in usage:
        if p.name not in active:
            continue
        for s in p.subscriptions:
            if s.allocated > 0 and s.in_use / s.allocated >= threshold:
                sub_alerts.append(SubscriptionAlert(s.code, p.name, s.allocated, s.in_use))
    sub_alerts.sort(key=lambda a: (-a.share, a.allocated - a.in_use, a.code, a.product))

    today = now.astimezone(UTC).date()
    series: dict[int, list[tuple[date, int]]] = defaultdict(list)
    rows = await UsageSnapshot.filter(day__gte=today - timedelta(days=FORECAST_WINDOW_DAYS)).values(
        "product_id", "product__name", "day", "allocated"
    )
    names: dict[int, str] = {}
    for r in rows:
        series[r["product_id"]].append((r["day"], int(r["allocated"])))
        names[r["product_id"]] = r["product__name"]
    by_name = {p.name: p for p in products}
    forecasts = []
    for pid, points in series.items():
        line = by_name.get(names[pid])
        if line is None or line.open_capacity:
            continue
        f = forecast(line.name, points, line.capacity, line.allocated, today)
        if f is not None:
            forecasts.append(f)
    forecasts.sort(key=lambda f: (f.days, f.product))

    pending = ApprovalRequest.filter(status=ApprovalStatus.PENDING, expires_at__gt=now)
    approvals_total = await pending.count()
    approvals = [
        PendingApproval(
            a.id,
            a.summary,
            a.requester_name or a.requester_id,
            a.expires_at,
            short_id=f"A-{a.number}" if a.number else a.id,
        )
        for a in await pending.order_by("expires_at").limit(LIST_LIMIT)
    ]

    report = DigestReport(
        generated_at=now,
        threshold_percent=threshold_percent,
        products=products,
        pool_alerts=pool_alerts,
        subscription_alerts=sub_alerts[:LIST_LIMIT],
        subscription_alerts_total=len(sub_alerts),
        forecasts=forecasts,
        approvals=approvals,
        approvals_total=approvals_total,
        trends={
            names[pid]: sorted(points)
            for pid, points in series.items()
            if names[pid] in by_name and not by_name[names[pid]].open_capacity
        },
    )
    jobs = await provisioning_counts()
    report.provisioning_pending = jobs["pending"] + jobs["sent"]
    report.provisioning_failed = jobs["failed"]
    report.drift = await open_differences(RECENT)
    if since is not None:
        await add_changes(report, since)
    return report


async def add_changes(report: DigestReport, since: datetime) -> None:
    """Changes from the audit trail after `since` (up to the report's time), in two queries."""
    window = AuditEvent.filter(at__gt=since, at__lte=report.generated_at)
    counts = await window.annotate(n=Count("id")).group_by("action").values("action", "n")
    report.changes_since = since
    report.changes_by_action = dict(
        sorted(((r["action"], int(r["n"])) for r in counts), key=lambda kv: (-kv[1], kv[0]))
    )
    report.changes_total = sum(report.changes_by_action.values())
    latest = await window.order_by("-id").limit(LIST_LIMIT) if report.changes_total else []
    report.changes = [
        ChangeLine(
            e.at, e.actor_name or e.actor_id, e.source, e.action, e.target, e.before, e.after
        )
        for e in latest
    ]
