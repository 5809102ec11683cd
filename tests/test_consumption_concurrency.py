"""SPEC §2 invariants 2, 4, 5 and 6 under real concurrency on PostgreSQL (SPEC §8).

Many admins race for the last Teams seat, the last number, one particular number, the last
license unit: each attempt is an asyncio task with its own pooled connection (the pool is sized
for all of them). To be sure they truly race, a blocker transaction first holds the lock every
attempt needs; the test waits until PostgreSQL shows every attempt waiting on a lock at the same
moment, then lets them all go. Exactly the available amount must succeed, the rest must be
refused with the reason, and the ledger must still satisfy every invariant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import pytest_asyncio
from tortoise.backends.base.client import BaseDBAsyncClient

from bot.domain import db, directory, ledger, licensing, numbers
from bot.domain.change import verify_chain
from bot.domain.errors import Conflict, DomainError
from bot.domain.models import (
    Account,
    AccountKind,
    AuditEvent,
    LicenseAssignment,
    NumberState,
    NumberType,
    PhoneNumber,
    Product,
    ProductKind,
    Subscription,
)
from tests.support.ledger_state import check_invariants, origin

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("unqueued_changes")]

OPS = origin()
POOL_SIZE = 40


@pytest_asyncio.fixture
async def pooled(pg_database: str) -> AsyncIterator[str]:
    """The test database reopened with a pool large enough for every racer at once."""
    await db.close_database()
    url = f"{pg_database}?minsize=1&maxsize={POOL_SIZE}"
    await db.open_database(url, migrate=False)
    yield url


async def lock_waiters() -> int:
    rows = await db.connection().execute_query_dict(
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return int(rows[0]["n"])


@dataclass
class Race:
    results: list[Any]  # each attempt's result, or the DomainError it raised
    in_flight: int  # attempts seen waiting on a lock at the same moment

    def proved_concurrent(self) -> None:
        assert self.in_flight == len(self.results), (
            f"only {self.in_flight} of {len(self.results)} attempts were in flight at once"
        )


async def race(
    hold: Callable[[BaseDBAsyncClient], Awaitable[Any]],
    attempts: list[Callable[[], Awaitable[Any]]],
) -> Race:
    """Run `attempts` at once while a blocker holds `hold`'s lock; release when all wait on it."""
    held, release = asyncio.Event(), asyncio.Event()

    async def blocker() -> None:
        async with db.transaction() as conn:
            await hold(conn)
            held.set()
            await release.wait()

    async def attempt(call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await call()
        except DomainError as exc:
            return exc

    blocking = asyncio.create_task(blocker())
    await asyncio.wait_for(held.wait(), 10)
    tasks = [asyncio.create_task(attempt(call)) for call in attempts]
    deadline = time.monotonic() + 15
    waiting = 0
    while waiting < len(attempts) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        waiting = await lock_waiters()
    release.set()
    await blocking
    return Race(list(await asyncio.gather(*tasks)), waiting)


async def customer_with(subscriptions: list[str]) -> None:
    await ledger.add_customer(OPS, "Contoso Ltd")
    for code in subscriptions:
        await ledger.add_subscription(OPS, code, "Contoso Ltd")


async def users(subscription: str, count: int, prefix: str = "user") -> list[str]:
    sub = await Subscription.get(code=subscription)
    upns = [f"{prefix}{i:02d}@{subscription.lower()}.example" for i in range(count)]
    await Account.bulk_create([Account(upn=u, subscription_id=sub.id) for u in upns])
    return upns


async def allocation_lock(conn: BaseDBAsyncClient, product: str, subscription: str) -> None:
    p = await Product.filter(name=product).using_db(conn).get()
    sub = await Subscription.filter(code=subscription).using_db(conn).get()
    await ledger.lock_allocation(conn, sub.id, p.id)


def split(results: list[Any]) -> tuple[list[Any], list[DomainError]]:
    ok = [r for r in results if not isinstance(r, DomainError)]
    refused = [r for r in results if isinstance(r, DomainError)]
    return ok, refused


async def test_racing_for_the_last_teams_seats(pooled: str) -> None:
    await customer_with(["ACME-01"])
    await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 1000, country="GB")
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 1000)
    await ledger.allocate(OPS, 100, "NUMBERS-GB-GEO", "ACME-01")
    await ledger.allocate(OPS, 5, "TEAMS-SEATS", "ACME-01")
    await numbers.add_numbers(OPS, "+442071234000-+442071234099")
    racers = await users("ACME-01", 30)

    raced = await race(
        lambda conn: allocation_lock(conn, "NUMBERS-GB-GEO", "ACME-01"),
        [partial(numbers.assign_next, OPS, "GB", None, u) for u in racers],
    )

    ok, refused = split(raced.results)
    assert len(ok) == 5 and len(refused) == 25
    assert all(isinstance(r, Conflict) and "TEAMS-SEATS" in r.message for r in refused)
    held = await PhoneNumber.filter(state=NumberState.ASSIGNED).values_list("e164", "holder_id")
    assert len(held) == 5 and len({h for _, h in held}) == 5
    assert await AuditEvent.filter(action="number.assign").count() == 5
    await check_invariants()
    assert (await verify_chain())[0]
    raced.proved_concurrent()


async def test_racing_for_the_last_numbers_across_subscriptions(pooled: str) -> None:
    codes = [f"ACME-{i:02d}" for i in range(10)]
    await customer_with(codes)
    await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 1000, country="GB")
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 1000)
    racers = []
    for code in codes:
        await ledger.allocate(OPS, 5, "NUMBERS-GB-GEO", code)
        await ledger.allocate(OPS, 5, "TEAMS-SEATS", code)
        racers += await users(code, 2)
    await numbers.add_numbers(OPS, "+442071234000-+442071234002")

    raced = await race(
        lambda conn: numbers.lock_pool(conn, "GB", NumberType.GEOGRAPHIC),
        [partial(numbers.assign_next, OPS, "GB", None, u) for u in racers],
    )

    ok, refused = split(raced.results)
    assert len(ok) == 3 and len(refused) == 17
    assert all("No GB geographic number is available" in r.message for r in refused)
    holders = await PhoneNumber.filter(state=NumberState.ASSIGNED).values_list(
        "holder_id", flat=True
    )
    assert len(set(holders)) == 3
    await check_invariants()
    raced.proved_concurrent()


async def test_racing_for_one_particular_number(pooled: str) -> None:
    codes = [f"ACME-{i:02d}" for i in range(10)]
    await customer_with(codes)
    await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 1000, country="GB")
    racers = []
    for code in codes:
        await ledger.allocate(OPS, 5, "NUMBERS-GB-GEO", code)
        sub = await Subscription.get(code=code)
        upn = f"reception@{code.lower()}.example"
        await directory.add_account(OPS, upn, sub.code, AccountKind.AUTO_ATTENDANT)
        racers.append(upn)
    await numbers.add_numbers(OPS, "+442071234000-+442071234009")
    target = await PhoneNumber.get(e164="+442071234000")

    async def hold_number(conn: BaseDBAsyncClient) -> None:
        await PhoneNumber.filter(id=target.id).select_for_update().using_db(conn).get()

    raced = await race(
        hold_number, [partial(numbers.assign_number, OPS, "+442071234000", u) for u in racers]
    )

    ok, refused = split(raced.results)
    assert len(ok) == 1 and len(refused) == 9
    assert all("already assigned to" in r.message for r in refused)
    assert await PhoneNumber.filter(state=NumberState.ASSIGNED).count() == 1
    await check_invariants()
    raced.proved_concurrent()


async def test_racing_for_the_last_license_units(pooled: str) -> None:
    await customer_with(["ACME-01"])
    await ledger.add_product(OPS, "M365-E5", ProductKind.LICENSE, 1000)
    await ledger.allocate(OPS, 4, "M365-E5", "ACME-01")
    racers = await users("ACME-01", 25)

    raced = await race(
        lambda conn: allocation_lock(conn, "M365-E5", "ACME-01"),
        [partial(licensing.assign_license, OPS, "M365-E5", [u]) for u in racers],
    )

    assigned = [r for r in raced.results if r.succeeded]
    refused = [r for r in raced.results if r.failed]
    assert len(assigned) == 4 and len(refused) == 21
    assert all("0 of its 4 M365-E5 left" in r.failed[0][1] for r in refused)
    assert await LicenseAssignment.all().count() == 4
    await check_invariants()
    raced.proved_concurrent()


async def test_racing_reservations_take_exactly_what_the_inventory_holds(pooled: str) -> None:
    codes = [f"ACME-{i:02d}" for i in range(10)]
    await customer_with(codes)
    await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 1000, country="GB")
    for code in codes:
        await ledger.allocate(OPS, 10, "NUMBERS-GB-GEO", code)
    await numbers.add_numbers(OPS, "+442071234000-+442071234019")

    raced = await race(
        lambda conn: numbers.lock_pool(conn, "GB", NumberType.GEOGRAPHIC),
        [partial(numbers.reserve, OPS, 3, "GB", None, c) for c in codes],
    )

    ok, refused = split(raced.results)
    assert len(ok) == 6 and len(refused) == 4
    assert all("Only 2 GB geographic numbers are available" in r.message for r in refused)
    reserved = await PhoneNumber.filter(state=NumberState.RESERVED).values_list(
        "e164", "subscription_id"
    )
    assert len(reserved) == 18 and len({e for e, _ in reserved}) == 18
    await check_invariants()
    raced.proved_concurrent()


async def test_overlapping_pack_assignments_never_split_a_pack(pooled: str) -> None:
    await customer_with(["ACME-01"])
    await ledger.add_product(OPS, "M365-E5", ProductKind.LICENSE, 1000)
    await ledger.add_product(OPS, "TEAMS-PHONE", ProductKind.LICENSE, 1000)
    await ledger.allocate(OPS, 20, "M365-E5", "ACME-01")
    await ledger.allocate(OPS, 20, "TEAMS-PHONE", "ACME-01")
    await licensing.create_pack(OPS, "VOICE", ["M365-E5", "TEAMS-PHONE"])
    racers = await users("ACME-01", 30)

    # Four admins at once, each over the same accounts in a different order.
    orders = [racers, racers[::-1], racers[10:] + racers[:10], racers[::2] + racers[1::2]]
    outcomes = await asyncio.gather(
        *(licensing.assign_pack(OPS, "VOICE", order) for order in orders)
    )

    rows = await LicenseAssignment.all().values_list("account__upn", "product__name")
    held: dict[str, set[str]] = {}
    for upn, name in rows:
        held.setdefault(upn, set()).add(name)
    assert len(held) == 20
    assert all(names == {"M365-E5", "TEAMS-PHONE"} for names in held.values())
    # Each account got the pack exactly once; the other orders found it already held.
    succeeded = [u for o in outcomes for u in o.succeeded if o.added.get(u)]
    assert sorted(succeeded) == sorted(held)
    for outcome in outcomes:
        for upn in outcome.succeeded:
            assert upn in held
            if not outcome.added.get(upn):
                assert outcome.notes[upn] == licensing.ALREADY_HELD
        for upn, _why in outcome.failed:
            assert upn not in held
    await check_invariants()
    assert (await verify_chain())[0]


async def test_a_reservation_passes_over_a_number_another_admin_holds(pooled: str) -> None:
    """Rows another transaction has locked are skipped, not waited for."""
    await customer_with(["ACME-01"])
    await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 1000, country="GB")
    await ledger.allocate(OPS, 10, "NUMBERS-GB-GEO", "ACME-01")
    await numbers.add_numbers(OPS, "+442071234000-+442071234009")
    first = await PhoneNumber.get(e164="+442071234000")
    held, release = asyncio.Event(), asyncio.Event()

    async def admin_assigning_the_first_number() -> None:
        async with db.transaction() as conn:
            await PhoneNumber.filter(id=first.id).select_for_update().using_db(conn).get()
            held.set()
            await release.wait()

    other = asyncio.create_task(admin_assigning_the_first_number())
    await held.wait()
    try:
        out = await asyncio.wait_for(numbers.reserve(OPS, 3, "GB", None, "ACME-01"), 10)
    finally:
        release.set()
        await other
    assert out.after["reserved"] == ["+442071234001", "+442071234002", "+442071234003"]
