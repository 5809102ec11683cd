"""The phone-number inventory through its domain services and the CLI, on SQLite and PostgreSQL.

Every refusal is checked the same way: the request fails with a clear reason and the whole
state (ledger rows, every number's state and holder, audit trail, chain head) is as before.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.domain import directory, ledger, numbers
from bot.domain.change import verify_chain
from bot.domain.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from bot.domain.models import (
    AccountKind,
    AuditEvent,
    NumberState,
    NumberType,
    PhoneNumber,
    Product,
    ProductKind,
)
from bot.domain.usage import in_use, usage_report
from tests.support import ledger_state
from tests.support.ledger_state import check_invariants, origin, snapshot

pytestmark = pytest.mark.usefixtures("database")

OPS = origin()
ROOT = Path(__file__).resolve().parent.parent
RANGE_100 = "+442071234000-+442071234099"


async def state() -> dict[str, Any]:
    """Everything a refused change must leave alone, down to each number's state and holder."""
    return {
        **await snapshot(),
        "number_rows": await PhoneNumber.all()
        .order_by("id")
        .values_list("e164", "state", "subscription_id", "holder_id", "quarantined_until"),
    }


refused = functools.partial(ledger_state.refused, state=state)


async def seed(numbers_gb: int = 5, seats: int = 3) -> None:
    """Contoso with ACME-01 (GB numbers and seats allocated) and ACME-02 (nothing yet)."""
    await ledger.add_customer(OPS, "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-02", "Contoso Ltd")
    await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 1000, country="GB")
    await ledger.add_product(
        OPS,
        "NUMBERS-GB-MOB",
        ProductKind.NUMBERS,
        1000,
        country="GB",
        number_type=NumberType.MOBILE,
    )
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 1000)
    if numbers_gb:
        await ledger.allocate(OPS, numbers_gb, "NUMBERS-GB-GEO", "ACME-01")
    if seats:
        await ledger.allocate(OPS, seats, "TEAMS-SEATS", "ACME-01")
    await numbers.add_numbers(OPS, RANGE_100)
    for upn in ("alice@contoso.com", "bob@contoso.com", "carol@contoso.com", "dave@contoso.com"):
        await directory.add_account(OPS, upn, "ACME-01")
    await directory.add_account(OPS, "reception@contoso.com", "ACME-01", AccountKind.AUTO_ATTENDANT)
    await directory.add_account(OPS, "eve@contoso.com", "ACME-02")


async def used(product: str, subscription: str = "ACME-01") -> int:
    p = await Product.get(name=product)
    sub = await ledger.find_subscription(subscription)
    return await in_use(None, sub.id, p)


async def number(e164: str) -> PhoneNumber:
    return await PhoneNumber.get(e164=e164).prefetch_related("holder", "subscription")


# ----- validating numbers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "country", "kind"),
    [
        ("+442071234000", "GB", NumberType.GEOGRAPHIC),
        ("+447400123456", "GB", NumberType.MOBILE),
        ("+448001234567", "GB", NumberType.TOLL_FREE),
        ("+443001234567", "GB", NumberType.NATIONAL),  # UAN (03): non-geographic, nationwide
        ("+12025550123", "US", NumberType.GEOGRAPHIC),  # NANP: FIXED_LINE_OR_MOBILE
        (
            "+12045551234",
            "CA",
            NumberType.GEOGRAPHIC,
        ),  # +1 shared: the region comes from the number
        ("+447911123456", "GG", NumberType.MOBILE),  # +44 shared with Guernsey
        ("+390612345678", "IT", NumberType.GEOGRAPHIC),  # Italian leading zero kept
    ],
)
async def test_country_and_type_come_from_the_number(
    text: str, country: str, kind: NumberType
) -> None:
    info = numbers.parse_number(text)
    assert (info.e164, info.country, info.number_type) == (text, country, kind)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("02071234000", "not an E.164 number"),
        ("442071234000", "not an E.164 number"),
        ("+44 20 7123 4000", "not an E.164 number"),
        ("+44-20-7123-4000", "not an E.164 number"),
        ("+44abc", "not an E.164 number"),
        ("+4402071234000", "did you mean +442071234000"),
        ("+15550100000", "not a valid number in the numbering plan of +1"),
        ("+99912345678", "known country code"),
        ("+449012345678", "premium-rate"),
        ("+80012345678", "belongs to no country"),
        ("+4420712340001234567", "not an E.164 number"),
        ("+٤٤٢٠٧١٢٣٤٠٠٠", "not an E.164 number"),  # Arabic-Indic digits
    ],
)
async def test_bad_numbers_are_refused_clearly_and_nothing_is_added(text: str, words: str) -> None:
    await refused(lambda: numbers.add_numbers(OPS, text), InvalidInput, words)
    assert await PhoneNumber.all().count() == 0


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("+442071234099-+442071234000", "reversed"),
        ("+442071234000-+442071244000", "10,001 numbers; at most 10,000"),
        ("+3906123456-+390612345678", "same number of digits"),
        ("+442071234000-", "has no end"),
        ("+442071234000-+33123456789", "same number of digits"),
        ("+447911099995-+447911100004", "spans several countries (GB, GG)"),
        ("+15550100000-+15550100009", "not a valid number"),
        ("+12025550100-+12025550199-+12025550200", "not an E.164 number"),
    ],
)
async def test_bad_ranges_are_refused_clearly_and_nothing_is_added(text: str, words: str) -> None:
    await refused(lambda: numbers.add_numbers(OPS, text), InvalidInput, words)
    assert await PhoneNumber.all().count() == 0


# ----- adding numbers --------------------------------------------------------------------


async def test_add_one_number_and_a_range() -> None:
    one = await numbers.add_numbers(OPS, "+12025550123")
    assert one.after == {
        "first": "+12025550123",
        "last": "+12025550123",
        "count": 1,
        "country": "US",
        "types": {"geographic": 1},
        "state": "available",
    }
    many = await numbers.add_numbers(OPS, RANGE_100)
    assert many.after["count"] == 100 and many.target == RANGE_100
    assert await PhoneNumber.filter(country="GB", state=NumberState.AVAILABLE).count() == 100
    # One audit event per command, not per number.
    assert await AuditEvent.filter(action="number.add").count() == 2


async def test_a_range_of_10000_numbers_goes_in_as_one_change() -> None:
    out = await numbers.add_numbers(OPS, "+442071234000-+442071243999")
    assert out.after["count"] == 10_000
    assert await PhoneNumber.all().count() == 10_000
    assert await PhoneNumber.filter(e164="+442071243999", country="GB").exists()
    assert await AuditEvent.all().count() == 1
    assert (await verify_chain())[0]


async def test_duplicates_are_refused_naming_them_and_nothing_is_added() -> None:
    await numbers.add_numbers(OPS, "+442071234050-+442071234052")
    error = await refused(lambda: numbers.add_numbers(OPS, RANGE_100), AlreadyExists)
    assert "3 of these numbers are already in the inventory" in error.message
    assert "+442071234050" in error.message and "nothing was added" in error.message
    await refused(lambda: numbers.add_numbers(OPS, "+442071234051"), AlreadyExists, "+442071234051")


async def test_dry_run_add_shows_the_change_and_adds_nothing() -> None:
    before = await state()
    out = await numbers.add_numbers(OPS, RANGE_100, dry_run=True)
    assert out.dry_run and out.after["count"] == 100
    assert await state() == before


# ----- reserving -------------------------------------------------------------------------


async def test_reserve_takes_numbers_and_entitlements() -> None:
    await seed(numbers_gb=5)
    out = await numbers.reserve(OPS, 3, "gb", None, "acme-01")
    assert out.after["reserved"] == ["+442071234000", "+442071234001", "+442071234002"]
    assert await used("NUMBERS-GB-GEO") == 3
    n = await number("+442071234001")
    assert n.state is NumberState.RESERVED and n.holder is None
    assert n.subscription is not None and n.subscription.code == "ACME-01"
    await check_invariants()


async def test_the_last_entitlement_of_a_country_is_not_exceeded() -> None:
    await seed(numbers_gb=5)
    await numbers.reserve(OPS, 4, "GB", None, "ACME-01")
    await refused(
        lambda: numbers.reserve(OPS, 2, "GB", None, "ACME-01"),
        Conflict,
        "ACME-01 has 1 of its 5 NUMBERS-GB-GEO left (4 in use); 2 needed",
    )
    await numbers.reserve(OPS, 1, "GB", None, "ACME-01")
    await refused(lambda: numbers.reserve(OPS, 1, "GB", None, "ACME-01"), Conflict, "0 of its 5")
    await refused(
        lambda: numbers.reserve(OPS, 1, "GB", None, "ACME-02"), Conflict, "ACME-02 has no"
    )
    await check_invariants()


async def test_reserve_refuses_wrong_countries_and_types() -> None:
    await seed()
    await refused(lambda: numbers.reserve(OPS, 1, "XX", None, "ACME-01"), InvalidInput, "'XX'")
    await refused(lambda: numbers.reserve(OPS, 1, "GBR", None, "ACME-01"), InvalidInput, "alpha-2")
    # No FR product at all, and GB mobile exists but is not allocated to ACME-01.
    await refused(lambda: numbers.reserve(OPS, 1, "FR", None, "ACME-01"), Conflict, "FR geographic")
    await refused(
        lambda: numbers.reserve(OPS, 1, "GB", NumberType.MOBILE, "ACME-01"),
        Conflict,
        "no NUMBERS-GB-MOB allocated",
    )
    await refused(lambda: numbers.reserve(OPS, 1, "GB", "landline", "ACME-01"), InvalidInput)
    await refused(lambda: numbers.reserve(OPS, 1, "GB", None, "ACME-1"), NotFound, "ACME-01")


async def test_reserve_refuses_more_than_the_inventory_holds() -> None:
    await seed(numbers_gb=0)
    await ledger.allocate(OPS, 500, "NUMBERS-GB-GEO", "ACME-01")
    await refused(
        lambda: numbers.reserve(OPS, 101, "GB", None, "ACME-01"),
        Conflict,
        "Only 100 GB geographic numbers are available",
    )


# ----- assigning -------------------------------------------------------------------------


async def test_assign_to_a_user_uses_an_entitlement_and_a_seat() -> None:
    await seed()
    out = await numbers.assign_number(OPS, "+442071234010", "Alice@Contoso.com")
    assert out.before == {
        "state": "available",
        "subscription": None,
        "holder": None,
        "numbers_in_use": 0,
        "seats_in_use": 0,
    }
    assert out.after["holder"] == "alice@contoso.com" and out.after["seats_in_use"] == 1
    assert await used("NUMBERS-GB-GEO") == 1 and await used("TEAMS-SEATS") == 1
    n = await number("+442071234010")
    assert n.state is NumberState.ASSIGNED
    assert n.holder is not None and n.holder.upn == "alice@contoso.com"
    event = await AuditEvent.filter(action="number.assign").get()
    assert event.target == "number:+442071234010" and event.after["holder"] == "alice@contoso.com"


async def test_assign_to_a_resource_account_uses_no_seat() -> None:
    await seed()
    await numbers.assign_next(OPS, "GB", None, "reception@contoso.com")
    assert await used("NUMBERS-GB-GEO") == 1
    assert await used("TEAMS-SEATS") == 0


async def test_a_reserved_number_is_not_counted_twice() -> None:
    await seed(numbers_gb=2)
    await numbers.reserve(OPS, 2, "GB", None, "ACME-01")
    out = await numbers.assign_next(OPS, "GB", None, "alice@contoso.com")
    assert out.target.startswith("+442071234000")  # the reservation, not a new number
    assert out.before["numbers_in_use"] == out.after["numbers_in_use"] == 2
    await numbers.assign_number(OPS, "+442071234001", "bob@contoso.com")
    assert await used("NUMBERS-GB-GEO") == 2 and await used("TEAMS-SEATS") == 2
    # Both entitlements are taken: an available number cannot be assigned any more.
    await refused(
        lambda: numbers.assign_next(OPS, "GB", None, "carol@contoso.com"),
        Conflict,
        "0 of its 2 NUMBERS-GB-GEO",
    )
    await check_invariants()


async def test_the_last_teams_seat_is_not_exceeded() -> None:
    await seed(numbers_gb=10, seats=2)
    await numbers.assign_next(OPS, "GB", None, "alice@contoso.com")
    await numbers.assign_next(OPS, "GB", None, "bob@contoso.com")
    await refused(
        lambda: numbers.assign_next(OPS, "GB", None, "carol@contoso.com"),
        Conflict,
        "ACME-01 has 0 of its 2 TEAMS-SEATS left (2 in use); 1 needed",
    )
    await refused(
        lambda: numbers.assign_number(OPS, "+442071234050", "carol@contoso.com"),
        Conflict,
        "TEAMS-SEATS",
    )
    # A resource account needs no seat.
    await numbers.assign_next(OPS, "GB", None, "reception@contoso.com")
    await check_invariants()


async def test_a_number_is_held_by_one_account_at_most() -> None:
    await seed(numbers_gb=10)
    await numbers.assign_number(OPS, "+442071234007", "alice@contoso.com")
    await refused(
        lambda: numbers.assign_number(OPS, "+442071234007", "bob@contoso.com"),
        Conflict,
        "already assigned to alice@contoso.com",
    )
    # And an account holds one number.
    await refused(
        lambda: numbers.assign_number(OPS, "+442071234008", "alice@contoso.com"),
        Conflict,
        "alice@contoso.com already holds +442071234007",
    )


async def test_a_number_reserved_for_another_subscription_is_refused() -> None:
    await seed()
    await ledger.allocate(OPS, 5, "NUMBERS-GB-GEO", "ACME-02")
    await ledger.allocate(OPS, 5, "TEAMS-SEATS", "ACME-02")
    await numbers.reserve(OPS, 1, "GB", None, "ACME-01")
    await refused(
        lambda: numbers.assign_number(OPS, "+442071234000", "eve@contoso.com"),
        Conflict,
        "reserved for ACME-01, not for ACME-02",
    )
    # "next" passes over another subscription's reservation.
    out = await numbers.assign_next(OPS, "GB", None, "eve@contoso.com")
    assert out.target.startswith("+442071234001")


async def test_assign_refuses_unknown_accounts_and_numbers_with_suggestions() -> None:
    await seed()
    error = await refused(
        lambda: numbers.assign_number(OPS, "+442071234010", "alice@contoso.co"), NotFound
    )
    assert "alice@contoso.com" in error.suggestions
    error = await refused(
        lambda: numbers.assign_number(OPS, "+442071234100", "alice@contoso.com"), NotFound
    )
    assert "+442071234099" in error.message
    await refused(
        lambda: numbers.assign_number(OPS, "2071234010", "alice@contoso.com"), InvalidInput, "E.164"
    )
    await refused(
        lambda: numbers.assign_next(OPS, "GB", NumberType.MOBILE, "alice@contoso.com"),
        Conflict,
        "no NUMBERS-GB-MOB allocated",
    )


async def test_assign_next_when_the_inventory_is_empty() -> None:
    await seed(numbers_gb=200)
    await ledger.allocate(OPS, 100, "NUMBERS-GB-GEO", "ACME-02")
    await numbers.reserve(OPS, 100, "GB", None, "ACME-02")
    await refused(
        lambda: numbers.assign_next(OPS, "GB", None, "alice@contoso.com"),
        Conflict,
        "No GB geographic number is available",
    )


async def test_dry_run_assign_changes_nothing() -> None:
    await seed()
    before = await state()
    out = await numbers.assign_next(OPS, "GB", None, "alice@contoso.com", dry_run=True)
    assert out.dry_run and out.after["holder"] == "alice@contoso.com"
    assert await state() == before


# ----- releasing and quarantine ----------------------------------------------------------


async def test_release_quarantines_and_frees_the_seat_and_entitlement() -> None:
    await seed()
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    await numbers.assign_number(OPS, "+442071234000", "alice@contoso.com", now=now)
    out = await numbers.release_number(OPS, "+442071234000", 30, now=now)
    assert out.before["holder"] == "alice@contoso.com"
    assert out.after["state"] == "quarantined"
    assert out.after["quarantined_until"].startswith("2026-03-31T12:00")
    n = await number("+442071234000")
    assert n.state is NumberState.QUARANTINED and n.holder is None and n.subscription is None
    assert await used("TEAMS-SEATS") == 0 and await used("NUMBERS-GB-GEO") == 0
    # Still in quarantine a day before it ends; free the moment it has run its time.
    day_before = now + timedelta(days=29)
    await refused(
        lambda: numbers.assign_number(OPS, "+442071234000", "bob@contoso.com", now=day_before),
        Conflict,
        "in quarantine until 2026-03-31",
    )
    later = now + timedelta(days=30)
    await numbers.assign_number(OPS, "+442071234000", "bob@contoso.com", now=later)
    holder = (await number("+442071234000")).holder
    assert holder is not None and holder.upn == "bob@contoso.com"


async def test_assign_next_passes_over_numbers_in_quarantine() -> None:
    await seed()
    now = datetime.now(UTC)
    await numbers.assign_number(OPS, "+442071234000", "alice@contoso.com")
    await numbers.release_number(OPS, "+442071234000", 30)
    out = await numbers.assign_next(OPS, "GB", None, "bob@contoso.com", now=now)
    assert out.target.startswith("+442071234001")
    # After the quarantine the number is picked again (lazily, before housekeeping ran).
    await numbers.release_number(OPS, "+442071234001", 0)
    out = await numbers.assign_next(
        OPS, "GB", None, "carol@contoso.com", now=now + timedelta(days=31)
    )
    assert out.target.startswith("+442071234000")


async def test_housekeeping_makes_ended_quarantines_available() -> None:
    await seed()
    now = datetime(2026, 3, 1, tzinfo=UTC)
    for upn, e164 in (("alice@contoso.com", "+442071234000"), ("bob@contoso.com", "+442071234001")):
        await numbers.assign_number(OPS, e164, upn, now=now)
        await numbers.release_number(OPS, e164, 30, now=now)
    assert await numbers.release_quarantined(now + timedelta(days=29)) == 0
    assert await numbers.release_quarantined(now + timedelta(days=30)) == 2
    assert await PhoneNumber.filter(state=NumberState.QUARANTINED).count() == 0
    event = await AuditEvent.filter(action="number.unquarantine").get()
    assert event.source == "schedule" and event.after["numbers"] == [
        "+442071234000",
        "+442071234001",
    ]
    assert await numbers.release_quarantined(now + timedelta(days=60)) == 0


async def test_release_of_a_reservation_or_with_no_quarantine_is_available_at_once() -> None:
    await seed()
    await numbers.reserve(OPS, 1, "GB", None, "ACME-01")
    out = await numbers.release_number(OPS, "+442071234000", 30)
    assert out.after["state"] == "available" and out.after["quarantined_until"] is None
    await numbers.assign_number(OPS, "+442071234001", "alice@contoso.com")
    out = await numbers.release_number(OPS, "+442071234001", 0)
    assert out.after["state"] == "available"


async def test_release_refuses_numbers_not_in_use() -> None:
    await seed()
    await refused(lambda: numbers.release_number(OPS, "+442071234000", 30), Conflict, "available")
    await refused(lambda: numbers.release_number(OPS, "+442071239999", 30), NotFound)


async def test_the_allocation_cannot_be_released_below_what_is_in_use() -> None:
    await seed(numbers_gb=5, seats=3)
    await numbers.reserve(OPS, 2, "GB", None, "ACME-01")
    await numbers.assign_next(OPS, "GB", None, "alice@contoso.com")
    await numbers.assign_next(OPS, "GB", None, "bob@contoso.com")
    await numbers.assign_next(OPS, "GB", None, "carol@contoso.com")
    await refused(
        lambda: ledger.release(OPS, 3, "NUMBERS-GB-GEO", "ACME-01"),
        Conflict,
        "uses 3 of NUMBERS-GB-GEO",
    )
    await refused(lambda: ledger.release(OPS, 1, "TEAMS-SEATS", "ACME-01"), Conflict, "uses 3")
    await ledger.release(OPS, 2, "NUMBERS-GB-GEO", "ACME-01")
    # Capacity cannot go below what is allocated.
    await refused(lambda: ledger.set_capacity(OPS, "TEAMS-SEATS", 2), Conflict, "3 allocated")
    await check_invariants()


# ----- listing and usage -----------------------------------------------------------------


async def test_list_numbers_filters_and_pages_in_the_database() -> None:
    await seed()
    await numbers.reserve(OPS, 2, "GB", None, "ACME-01")
    await numbers.assign_next(OPS, "GB", None, "alice@contoso.com")
    page = await numbers.list_numbers(page=2, size=30)
    assert (page.total, page.page, page.pages, len(page.items)) == (100, 2, 4, 30)
    assert page.items[0].e164 == "+442071234030"
    assert (await numbers.list_numbers("ACME-01")).total == 2
    assert (await numbers.list_numbers(state=NumberState.AVAILABLE)).total == 98
    assigned = await numbers.list_numbers(state=NumberState.ASSIGNED)
    assert [numbers.number_view(n)["holder"] for n in assigned.items] == ["alice@contoso.com"]
    assert (await numbers.list_numbers(country="gb", number_type=NumberType.MOBILE)).total == 0
    with pytest.raises(NotFound):
        await numbers.list_numbers("ACME-99")


async def test_usage_shows_numbers_and_seats_in_use() -> None:
    await seed(numbers_gb=5, seats=3)
    await numbers.reserve(OPS, 2, "GB", None, "ACME-01")
    await numbers.assign_next(OPS, "GB", None, "alice@contoso.com")
    await numbers.assign_next(OPS, "GB", None, "reception@contoso.com")
    await numbers.assign_next(OPS, "GB", None, "bob@contoso.com")
    report = {u.name: u.as_json() for u in await usage_report()}
    assert report["NUMBERS-GB-GEO"]["subscriptions"] == [
        {"code": "ACME-01", "allocated": 5, "in_use": 3, "free": 2}
    ]
    assert report["TEAMS-SEATS"]["in_use"] == 2  # the auto attendant uses no seat
    assert report["NUMBERS-GB-MOB"]["in_use"] == 0
    await check_invariants()


# ----- the CLI ---------------------------------------------------------------------------


async def cli(url: str, *words: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot WORDS...` in its own process, against the test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "Microsoft"))}
    env["DATABASE_URL"] = url
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", *words],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_adds_a_range_and_lists_numbers_as_json(database: str) -> None:
    added = await cli(database, "--json", "numbers", "add", "+442071234000-+442071234049")
    assert added.returncode == 0, added.stderr
    body = json.loads(added.stdout)
    assert body["action"] == "number.add" and body["after"]["count"] == 50
    listed = await cli(database, "--json", "numbers", "--state", "available", "--page", "2")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert (page["total"], page["page"], page["pages"]) == (50, 2, 2)
    assert page["numbers"][0] == {
        "number": "+442071234025",
        "country": "GB",
        "type": "geographic",
        "state": "available",
        "subscription": None,
        "holder": None,
        "quarantined_until": None,
    }
    bad = await cli(database, "--json", "numbers", "add", "+442071234049-+442071234000")
    assert bad.returncode != 0 and bad.stdout == ""
    error = json.loads(bad.stderr)
    assert error["error"] == "usage" and "reversed" in error["message"]
    assert "numbers add E164[-E164]" in error["usage"]
