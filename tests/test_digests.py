"""Usage digests: schedules (time zones, DST, cron), the report (alerts, forecast, changes,
approvals), the card, the commands and the stored conversation references.

Schedules are pure; everything else goes through the domain services and the command gate on
SQLite and PostgreSQL. The forecast is checked against figures worked out by hand.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from bot.auth.actor import Actor
from bot.auth.policy import DevPolicy
from bot.commands.dispatch import run_text
from bot.commands.registry import Context
from bot.commands.reply import Changed, Digest, Error, Table
from bot.config import Settings
from bot.domain import approvals, conversations, digests, ledger, trunks
from bot.domain.digests import forecast, parse_schedule, take_snapshot, trend
from bot.domain.errors import InvalidInput
from bot.domain.models import (
    AuditEvent,
    ConversationRef,
    DigestSubscription,
    ProductKind,
    UsageSnapshot,
)
from bot.teams.render import render
from tests.cardcheck import check_cards
from tests.cardcheck.schema import (
    MAX_CARD_BYTES,
    card_problems,
    card_size,
    universal_action_problems,
)
from tests.support.ledger_state import origin

OPS = origin()
SERVICE_URL = "https://smba.trafficmanager.net/emea/"
CHANNEL = "19:digests@thread.tacv2"
TENANT = "11111111-2222-4333-8444-555555555555"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ----- schedules (no database) -----------------------------------------------------------


def test_daily_in_a_time_zone_follows_local_time_across_both_dst_changes() -> None:
    s = parse_schedule("DAILY", "08:00", "europe/london")
    assert (s.cron, s.timezone) == ("0 8 * * *", "Europe/London")
    march = s.slots_between(utc(2026, 3, 27), utc(2026, 3, 31))
    assert [x.isoformat() for x in march] == [
        "2026-03-27T08:00:00+00:00",  # GMT
        "2026-03-28T08:00:00+00:00",
        "2026-03-29T07:00:00+00:00",  # BST from 29 March: still 08:00 on the wall
        "2026-03-30T07:00:00+00:00",
    ]
    october = s.slots_between(utc(2026, 10, 24), utc(2026, 10, 27))
    assert [x.hour for x in october] == [7, 8, 8]  # back to GMT on 25 October
    assert all(x.astimezone(s.zone).hour == 8 for x in march + october)


def test_a_time_skipped_or_repeated_by_the_clocks_is_sent_once_a_day() -> None:
    skipped = parse_schedule("daily", "01:30", "Europe/London")
    # 29 March 2026: 01:00 → 02:00 local; 01:30 does not exist and fires at the change.
    spring = skipped.slots_between(utc(2026, 3, 27), utc(2026, 3, 31))
    assert [x.isoformat() for x in spring] == [
        "2026-03-27T01:30:00+00:00",
        "2026-03-28T01:30:00+00:00",
        "2026-03-29T01:00:00+00:00",
        "2026-03-30T00:30:00+00:00",
    ]
    # 25 October 2026: 02:00 → 01:00 local; 01:30 happens twice and fires at the first.
    autumn = skipped.slots_between(utc(2026, 10, 23), utc(2026, 10, 27))
    assert [x.isoformat() for x in autumn] == [
        "2026-10-23T00:30:00+00:00",
        "2026-10-24T00:30:00+00:00",
        "2026-10-25T00:30:00+00:00",
        "2026-10-26T01:30:00+00:00",
    ]


def test_weekly_is_mondays_and_cron_takes_a_time_zone() -> None:
    weekly = parse_schedule("Weekly", "9:15", "America/New_York")
    assert weekly.cron == "15 9 * * 1"
    slots = weekly.slots_between(utc(2026, 3, 1), utc(2026, 3, 20))
    assert [x.isoformat() for x in slots] == [
        "2026-03-02T14:15:00+00:00",  # EST
        "2026-03-09T13:15:00+00:00",  # EDT from 8 March
        "2026-03-16T13:15:00+00:00",
    ]
    cron = parse_schedule("0 7 * * MON-FRI", None, "Asia/Tokyo")
    assert cron.description == "cron 0 7 * * MON-FRI Asia/Tokyo"
    assert cron.next_after(utc(2026, 11, 27, 23, 0)) == utc(2026, 11, 29, 22, 0)  # Mon 07:00 JST
    assert cron.latest_at_or_before(utc(2026, 11, 29, 21, 59)) == utc(2026, 11, 26, 22, 0)
    assert parse_schedule("daily").description == "daily at 08:00 UTC"


@pytest.mark.parametrize(
    ("kind", "at", "zone", "words"),
    [
        ("*/30 * * * *", None, None, "more than once an hour"),
        ("0,30 8 * * *", None, None, "more than once an hour"),
        ("* 8 * * *", None, None, "more than once an hour"),
        ("0 8 * *", None, None, "5 fields"),
        ("0 8 * * * *", None, None, "5 fields"),
        ("0 25 * * *", None, None, "not a valid cron"),
        ("0 0 31 2 *", None, None, "not a valid cron"),
        ("monthly", None, None, "DAILY or WEEKLY"),
        ("daily", "25:00", None, "not a time of day"),
        ("daily", "8", None, "not a time of day"),
        ("daily", None, "Mars/Base", "not a time zone"),
        ("daily", None, "Europe/Londn", "Did you mean Europe/London"),
        ("0 8 * * *", "09:00", None, "goes with DAILY or WEEKLY"),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(
    kind: str, at: str | None, zone: str | None, words: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_schedule(kind, at, zone)
    assert words in info.value.message


def test_trend_and_forecast_on_a_known_series() -> None:
    day0 = date(2026, 11, 1)
    series = [(day0 + timedelta(days=i), v) for i, v in enumerate([100, 130, 150, 190, 210])]
    # x̄ = 2, ȳ = 156, Σ(x−x̄)(y−ȳ) = 280, Σ(x−x̄)² = 10 → 28 a day.
    assert trend([(float(i), float(v)) for i, (_, v) in enumerate(series)]) == pytest.approx(28.0)
    f = forecast("SEATS", series, capacity=500, allocated=210, today=date(2026, 11, 5))
    assert f is not None
    assert (f.per_day, f.headroom, f.points) == (pytest.approx(28.0), 290, 5)
    assert f.days == pytest.approx(290 / 28)  # 10.36 days
    assert f.runs_out_on == date(2026, 11, 15)
    # Gaps in the series count by date, not by position.
    gappy = [(day0, 100), (day0 + timedelta(days=2), 120), (day0 + timedelta(days=6), 160)]
    g = forecast("SEATS", gappy, capacity=200, allocated=160, today=day0 + timedelta(days=6))
    assert g is not None and g.per_day == pytest.approx(10.0) and g.days == pytest.approx(4.0)
    # Flat, falling, too short or open: no date.
    flat = [(day0 + timedelta(days=i), 50) for i in range(5)]
    falling = [(day0 + timedelta(days=i), 50 - i) for i in range(5)]
    assert forecast("X", flat, 100, 50, day0) is None
    assert forecast("X", falling, 100, 46, day0) is None
    assert forecast("X", series[:2], 500, 130, day0) is None
    assert forecast("X", series, ledger.OPEN_LICENSE_CAPACITY, 210, day0) is None


# ----- the report (database) -------------------------------------------------------------


async def seed_ledger() -> None:
    await ledger.add_customer(OPS, "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-02", "Contoso Ltd")
    await ledger.add_product(OPS, "SIP-CHANNELS", ProductKind.SIP_CHANNELS, 100)
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 500)
    await ledger.add_product(OPS, "CALLING-PLAN", ProductKind.LICENSE, None)


@pytest.mark.usefixtures("database")
async def test_report_alerts_on_pools_and_subscriptions_at_the_threshold() -> None:
    await seed_ledger()
    await ledger.allocate(OPS, 10, "SIP-CHANNELS", "ACME-01")
    await ledger.allocate(OPS, 80, "SIP-CHANNELS", "ACME-02")  # pool: 90 of 100 allocated
    await trunks.add_trunk(OPS, "TRUNK-A", "ACME-01", 9)  # ACME-01 uses 9 of its 10
    await trunks.add_trunk(OPS, "TRUNK-B", "ACME-02", 40)  # ACME-02 uses 40 of its 80
    await ledger.allocate(OPS, 100, "TEAMS-SEATS", "ACME-01")  # 20 %
    report = await digests.build_report(datetime.now(UTC), 90)

    assert [p.name for p in report.products][:2] == ["SIP-CHANNELS", "TEAMS-SEATS"]
    sip = report.products[0]
    assert (sip.capacity, sip.allocated, sip.in_use) == (100, 90, 49)
    assert sip.utilisation == pytest.approx(0.9)
    assert [p.name for p in report.pool_alerts] == ["SIP-CHANNELS"]
    assert [(a.code, a.product, a.in_use, a.allocated) for a in report.subscription_alerts] == [
        ("ACME-01", "SIP-CHANNELS", 9, 10)
    ]
    assert report.subscription_alerts_total == 1
    license_line = next(p for p in report.products if p.name == "CALLING-PLAN")
    assert license_line.open_capacity and license_line.utilisation == 0
    # A higher threshold: nothing to alert on.
    calm = await digests.build_report(datetime.now(UTC), 95)
    assert calm.pool_alerts == [] and calm.subscription_alerts_total == 0
    json = report.as_json()
    assert json["pools_over_threshold"] == ["SIP-CHANNELS"]
    assert json["products"][0]["utilisation_percent"] == 90.0


@pytest.mark.usefixtures("database")
async def test_forecast_from_daily_snapshots_taken_by_the_service() -> None:
    await seed_ledger()
    today = datetime.now(UTC).date()
    start = today - timedelta(days=4)
    allocated = 0
    for i, target in enumerate([100, 130, 150, 190, 210]):
        await ledger.allocate(OPS, target - allocated, "TEAMS-SEATS", "ACME-01")
        allocated = target
        assert await take_snapshot(start + timedelta(days=i)) == 3  # one row per product
        assert await take_snapshot(start + timedelta(days=i)) == 0  # once a day
    assert await UsageSnapshot.filter(day=today).count() == 3

    report = await digests.build_report(datetime.now(UTC), 90)
    (seats,) = report.forecasts  # SIP channels are flat at 0; the license is open
    assert seats.product == "TEAMS-SEATS"
    assert seats.per_day == pytest.approx(28.0)
    assert seats.headroom == 290
    assert seats.days == pytest.approx(290 / 28)
    assert seats.runs_out_on == today + timedelta(days=10)
    assert report.as_json()["forecasts"][0]["days"] == 10.4


@pytest.mark.usefixtures("database")
async def test_changes_since_and_pending_approvals() -> None:
    await seed_ledger()
    cut = datetime.now(UTC)
    await ledger.allocate(origin(name="Ada"), 5, "TEAMS-SEATS", "ACME-01")
    await ledger.allocate(origin(name="Ada"), 5, "TEAMS-SEATS", "ACME-02")
    await ledger.set_capacity(OPS, "TEAMS-SEATS", 600)
    request = await approvals.request_change(
        origin(name="Bob"),
        approvals.ALLOCATE,
        {"quantity": 300, "product": "TEAMS-SEATS", "subscription": "ACME-02"},
        ttl_hours=72,
    )
    report = await digests.build_report(datetime.now(UTC), 90, since=cut)
    assert report.changes_since == cut
    assert report.changes_by_action == {
        "allocation.allocate": 2,
        "approval.request": 1,
        "product.capacity": 1,
    }
    assert report.changes_total == 4
    assert [c.action for c in report.changes][-2:] == ["allocation.allocate", "allocation.allocate"]
    assert report.approvals_total == 1
    assert report.approvals[0].id == request.id
    assert report.approvals[0].requester == "Bob"
    # Changes before the cut are not counted.
    assert await AuditEvent.filter(at__lte=cut).count() >= 6


@pytest.mark.usefixtures("database")
async def test_report_queries_do_not_grow_with_the_data() -> None:
    """The report reads the ledger in a fixed number of statements (counted at the driver)."""
    from tests.support.querycount import count_queries

    await seed_ledger()
    await ledger.allocate(OPS, 5, "SIP-CHANNELS", "ACME-01")
    with count_queries() as small:
        await digests.build_report(datetime.now(UTC), 90, since=datetime.now(UTC) - timedelta(1))
    for i in range(3, 40):
        await ledger.add_subscription(OPS, f"ACME-{i:02d}", "Contoso Ltd")
        await ledger.allocate(OPS, 1, "SIP-CHANNELS", f"ACME-{i:02d}")
        await ledger.allocate(OPS, 1, "TEAMS-SEATS", f"ACME-{i:02d}")
    await take_snapshot(datetime.now(UTC).date())
    with count_queries() as big:
        await digests.build_report(datetime.now(UTC), 90, since=datetime.now(UTC) - timedelta(1))
    assert small.count == big.count <= 12, big.statements


# ----- the card --------------------------------------------------------------------------


@pytest.mark.usefixtures("database")
async def test_digest_card_is_valid_small_and_pages_when_large() -> None:
    await ledger.add_customer(OPS, "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    for i in range(60):
        await ledger.add_product(OPS, f"CUSTOM-POOL-{i:02d}", ProductKind.CUSTOM, 100)
        await ledger.allocate(OPS, 40 + i, f"CUSTOM-POOL-{i:02d}", "ACME-01")
    report = await digests.build_report(
        datetime.now(UTC), 90, since=datetime.now(UTC) - timedelta(1)
    )
    from bot.commands.digests import digest_reply

    first = digest_reply(report, page=1, page_size=25)
    assert (first.page, first.pages, first.next_command) == (1, 3, "digest now --page 2")
    card = render(first)
    assert card_problems(card) == []
    assert universal_action_problems(card) == []
    assert card_size(card) <= MAX_CARD_BYTES
    text = _texts(card)
    assert "Running out" in text and "over the 90\u00a0% alert" in text
    assert "CUSTOM-POOL-59" in text  # the fullest pools come first
    assert "CUSTOM-POOL-00" not in text
    # Bars are coloured by the alert threshold: the fullest pool (99 %) in red, nearly full.
    bars = [c for c in _walk(card) if c.get("type") == "TextRun" and "█" in c.get("text", "")]
    assert bars[0]["color"] == "Attention" and bars[0]["text"].count("█") == 16
    assert {b["color"] for b in bars} >= {"Attention", "Warning"}
    last = render(digest_reply(report, page=3, page_size=25))
    assert card_problems(last) == [] and "CUSTOM-POOL-00" in _texts(last)
    # A page size that cannot fit is cut to the limit, with a note.
    huge = render(digest_reply(report, page=1, page_size=60))
    assert card_problems(huge) == []
    shown = _texts(huge)
    assert card_size(huge) <= MAX_CARD_BYTES
    assert "did not fit in a card" in shown or "CUSTOM-POOL-00" in shown
    # The official renderer (when installed) reads them without complaint; screenshots go to
    # test-artifacts/cards/.
    check_cards({"digest-page-1": card, "digest-page-3": last}, conventions=True)


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _texts(card: dict[str, Any]) -> str:
    return "\n".join(str(n.get("text", "")) for n in _walk(card)).replace("\u2060", "")


# ----- conversation references -----------------------------------------------------------


def reference(conversation_id: str = CHANNEL, activity_id: str = "a-1") -> dict[str, Any]:
    return {
        "activityId": activity_id,
        "bot": {"id": "28:bot", "name": "Fusion"},
        "user": {"id": "29:user", "name": "Ada", "aadObjectId": "oid-ada"},
        "conversation": {"id": conversation_id, "conversationType": "channel", "tenantId": TENANT},
        "channelId": "msteams",
        "serviceUrl": SERVICE_URL,
    }


@pytest.mark.usefixtures("database")
async def test_remember_stores_refreshes_and_reactivates() -> None:
    row = await conversations.remember(reference(), TENANT, SERVICE_URL)
    assert (row.conversation_id, row.tenant_id, row.service_url, row.active) == (
        CHANNEL,
        TENANT,
        SERVICE_URL,
        True,
    )
    assert "activityId" not in row.reference
    stamp = row.updated_at
    again = await conversations.remember(reference(activity_id="a-2"), TENANT, SERVICE_URL)
    assert again.id == row.id and again.updated_at == stamp  # nothing changed: no write
    moved = "https://smba.trafficmanager.net/amer/"
    await conversations.remember(reference(), TENANT, moved)
    assert (await ConversationRef.get(id=row.id)).service_url == moved
    assert await conversations.mark_inactive(CHANNEL) is True
    assert await conversations.mark_inactive(CHANNEL) is False
    assert (await ConversationRef.get(id=row.id)).active is False
    await conversations.remember(reference(), TENANT, moved)  # addressed again: back
    assert (await ConversationRef.get(id=row.id)).active is True
    assert await ConversationRef.all().count() == 1
    with pytest.raises(InvalidInput):
        await conversations.remember({"conversation": {}}, TENANT, SERVICE_URL)


# ----- the commands ----------------------------------------------------------------------


def ctx(conversation_id: str | None = CHANNEL, who: str = "oid-ada") -> Context:
    actor = Actor(
        object_id=who,
        name="Ada Admin" if who == "oid-ada" else "Mallory",
        tenant_id=TENANT,
        correlation_id="activity-9",
        conversation_id=conversation_id,
    )
    return Context(actor=actor, settings=Settings(), policy=DevPolicy(("oid-ada",)))


@pytest.mark.usefixtures("database")
async def test_digest_commands_subscribe_list_stop_and_show() -> None:
    await conversations.remember(reference(), TENANT, SERVICE_URL)
    await seed_ledger()

    dry = await run_text("digest here daily at 07:45 Europe/Paris --dry-run", ctx())
    assert isinstance(dry, Changed) and dry.dry_run
    assert await DigestSubscription.all().count() == 0

    made = await run_text("digest here DAILY at 07:45 Europe/Paris", ctx())
    assert isinstance(made, Changed), made
    assert "daily at 07:45 Europe/Paris" in made.text
    sub = await DigestSubscription.get()
    assert (sub.cron, sub.timezone, sub.created_by) == ("45 7 * * *", "Europe/Paris", "Ada Admin")
    event = await AuditEvent.filter(action="digest.subscribe").get()
    assert event.actor_id == "oid-ada" and event.target == f"digest:{sub.id}"

    twice = await run_text("digest here daily at 07:45 Europe/Paris", ctx())
    assert isinstance(twice, Error) and f"digest {sub.id}" in twice.text
    cron = await run_text('digest here "0 9 * * 1-5" America/New_York', ctx())
    assert isinstance(cron, Changed)

    listed = await run_text("digests", ctx())
    assert isinstance(listed, Table)
    assert [r[1] for r in listed.rows] == [
        "daily at 07:45 Europe/Paris",
        "cron 0 9 * * 1-5 America/New_York",
    ]
    assert listed.rows[0][2] == "this conversation"
    assert listed.data[0]["last_sent"] is None

    stopped = await run_text(f"digest stop {sub.id}", ctx())
    assert isinstance(stopped, Changed) and stopped.after == {
        "schedule": sub.description,
        "active": False,
    }
    assert (await DigestSubscription.get(id=sub.id)).active is False
    missing = await run_text(f"digest stop {sub.id}", ctx())
    assert isinstance(missing, Error) and missing.code == "not-found"

    shown = await run_text("digest now", ctx())
    assert isinstance(shown, Digest)
    assert shown.data["products"][0]["name"] in {"SIP-CHANNELS", "TEAMS-SEATS", "CALLING-PLAN"}
    assert shown.data["changes"]["total"] >= 1  # at least the subscription itself
    assert card_problems(render(shown)) == []


@pytest.mark.usefixtures("database")
async def test_digest_commands_refuse_clearly() -> None:
    await conversations.remember(reference(), TENANT, SERVICE_URL)
    bad = await run_text('digest here "*/5 * * * *"', ctx())
    assert isinstance(bad, Error) and bad.code == "usage"
    assert "more than once an hour" in bad.text and bad.usage and "digest here" in bad.usage
    zone = await run_text("digest here weekly at 08:00 Europe/Londn", ctx())
    assert isinstance(zone, Error) and "Did you mean Europe/London" in zone.text
    cli = await run_text("digest here daily", ctx(conversation_id=None))
    assert isinstance(cli, Error) and "channel or chat" in cli.text
    unknown = await run_text("digest here daily", ctx(conversation_id="19:never-seen@thread.v2"))
    assert isinstance(unknown, Error) and "does not know this conversation" in unknown.text
    for command in ("digest here daily", "digests", "digest stop 1", "digest now"):
        refused = await run_text(command, ctx(who="oid-mallory"))
        assert isinstance(refused, Error) and refused.code == "forbidden", command
    assert await DigestSubscription.all().count() == 0
