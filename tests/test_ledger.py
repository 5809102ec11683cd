"""The products ledger through its domain services, on SQLite and PostgreSQL.

Every refusal is checked the way NetBox checks its available-IP allocation: the request fails
with a clear reason and the database (ledger rows, audit trail, chain head) is exactly as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest

from bot.commands.dispatch import run_text
from bot.commands.reply import Error, Table
from bot.config import DEFAULT_NAMING_RULE, Settings
from bot.domain import ledger
from bot.domain.change import Origin, verify_chain
from bot.domain.errors import (
    AlreadyExists,
    Conflict,
    Duplicate,
    InvalidInput,
    NotFound,
)
from bot.domain.models import (
    Account,
    AccountKind,
    Allocation,
    AuditEvent,
    LicenseAssignment,
    NumberState,
    NumberType,
    PhoneNumber,
    Product,
    ProductKind,
    ProductStatus,
    SipTrunk,
    Subscription,
    SubscriptionMode,
)
from bot.domain.naming import MAX_QUANTITY, set_naming_rule
from bot.domain.usage import in_use, usage_report
from tests.support.ledger_state import check_invariants, context, origin, refused, snapshot

pytestmark = pytest.mark.usefixtures("database")

OPS = origin()


async def seed() -> None:
    """A customer with two subscriptions and one product of each kind."""
    await ledger.add_customer(OPS, "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-02", "Contoso Ltd", SubscriptionMode.OPERATOR_CONNECT)
    await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 10, country="GB")
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 10)
    await ledger.add_product(OPS, "SIP-CHANNELS", ProductKind.SIP_CHANNELS, 10)
    await ledger.add_product(OPS, "M365-E5", ProductKind.LICENSE, 10, sku="SPE_E5")


async def allocated(product: str, subscription: str) -> int:
    row = await Allocation.filter(product__name=product, subscription__code=subscription).first()
    return row.quantity if row else 0


# ----- products -------------------------------------------------------------------------


async def test_add_numbers_product_with_country_and_type() -> None:
    out = await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 100, country="gb")
    assert out.before is None and out.after is not None
    assert out.after["country"] == "GB" and out.after["type"] == "geographic"
    await ledger.add_product(
        OPS,
        "NUMBERS-GB-MOB",
        ProductKind.NUMBERS,
        50,
        country="GB",
        number_type=NumberType.MOBILE,
        sku="NUM-GB-M",
    )
    mobile = await Product.get(name="NUMBERS-GB-MOB")
    assert (mobile.category.value, mobile.kind, mobile.unit) == (
        "technical",
        ProductKind.NUMBERS,
        "number",
    )
    assert (mobile.country, mobile.number_type, mobile.capacity, mobile.sku) == (
        "GB",
        NumberType.MOBILE,
        50,
        "NUM-GB-M",
    )
    # One active pool per country and type.
    await refused(
        lambda: ledger.add_product(OPS, "MORE-GB-GEO", ProductKind.NUMBERS, 5, country="GB"),
        AlreadyExists,
        "NUMBERS-GB-GEO",
    )


@pytest.mark.parametrize(
    ("kind", "unit", "expected_unit"),
    [
        (ProductKind.TEAMS_SEATS, None, "seat"),
        (ProductKind.SIP_CHANNELS, None, "channel"),
        (ProductKind.CUSTOM, None, "unit"),
        (ProductKind.CUSTOM, "fax line", "fax line"),
    ],
)
async def test_add_technical_product_of_each_kind(
    kind: ProductKind, unit: str | None, expected_unit: str
) -> None:
    out = await ledger.add_product(OPS, "POOL-1", kind, 25, unit=unit)
    product = await Product.get(name="POOL-1")
    assert (product.kind, product.unit, product.capacity, product.status) == (
        kind,
        expected_unit,
        25,
        ProductStatus.ACTIVE,
    )
    assert product.country is None and product.number_type is None
    assert out.after == ledger.product_view(product)


async def test_license_needs_no_capacity_but_technical_products_do() -> None:
    await ledger.add_product(OPS, "M365-E5", ProductKind.LICENSE, None, sku="SPE_E5")
    product = await Product.get(name="M365-E5")
    assert product.category.value == "license" and product.capacity == ledger.OPEN_LICENSE_CAPACITY
    await ledger.add_product(OPS, "TEAMS-PHONE", ProductKind.LICENSE, 40)
    assert (await Product.get(name="TEAMS-PHONE")).capacity == 40
    await refused(
        lambda: ledger.add_product(OPS, "SEATS", ProductKind.TEAMS_SEATS, None),
        InvalidInput,
        "--capacity",
    )
    await refused(
        lambda: ledger.add_product(OPS, "NUMS", ProductKind.NUMBERS, 5), InvalidInput, "--country"
    )
    await refused(
        lambda: ledger.add_product(OPS, "LIC", ProductKind.LICENSE, 5, country="GB"),
        InvalidInput,
        "Only numbers",
    )


async def test_duplicate_products_are_refused() -> None:
    await seed()
    await refused(
        lambda: ledger.add_product(OPS, "teams-seats", ProductKind.CUSTOM, 1),
        InvalidInput,
        "naming convention",
    )
    await refused(
        lambda: ledger.add_product(OPS, "M365-E5", ProductKind.CUSTOM, 1), AlreadyExists, "M365-E5"
    )
    # Teams seats and SIP channels are single pools: raise the capacity instead.
    await refused(
        lambda: ledger.add_product(OPS, "SEATS-2", ProductKind.TEAMS_SEATS, 1),
        AlreadyExists,
        "TEAMS-SEATS",
    )
    await refused(
        lambda: ledger.add_product(OPS, "CHANNELS-2", ProductKind.SIP_CHANNELS, 1),
        AlreadyExists,
        "SIP-CHANNELS",
    )
    # Once the old pool is retired, a new one may take its place.
    await ledger.retire_product(OPS, "TEAMS-SEATS")
    await ledger.add_product(OPS, "TEAMS-SEATS-2026", ProductKind.TEAMS_SEATS, 5)


@pytest.mark.parametrize(
    "name", ["lower", "TWO WORDS", "TRAILING-", "-LEADING", "A--B", "ÜBER", "X" * 101, ""]
)
async def test_product_names_follow_the_naming_rule(name: str) -> None:
    await refused(lambda: ledger.add_product(OPS, name, ProductKind.CUSTOM, 1), InvalidInput)


async def test_a_configured_naming_rule_is_enforced_and_shown() -> None:
    set_naming_rule(r"[a-z]+(?:_[a-z]+)*")
    try:
        await ledger.add_product(OPS, "fax_lines", ProductKind.CUSTOM, 3)
        error = await refused(
            lambda: ledger.add_product(OPS, "FAX-LINES", ProductKind.CUSTOM, 3), InvalidInput
        )
        assert "[a-z]+(?:_[a-z]+)*" in error.message
    finally:
        set_naming_rule(DEFAULT_NAMING_RULE)


async def test_capacity_up_and_down_never_below_allocated() -> None:
    await seed()
    out = await ledger.set_capacity(OPS, "teams-seats", 15)
    assert (out.before, out.after) == ({"capacity": 10}, {"capacity": 15})
    await ledger.allocate(OPS, 6, "TEAMS-SEATS", "ACME-01")
    await ledger.allocate(OPS, 4, "TEAMS-SEATS", "ACME-02")
    await ledger.set_capacity(OPS, "TEAMS-SEATS", 10)  # exactly what is allocated: fine
    await refused(
        lambda: ledger.set_capacity(OPS, "TEAMS-SEATS", 9), Conflict, "10 allocated", "9 asked"
    )
    await ledger.release(OPS, 4, "TEAMS-SEATS", "ACME-02")
    await ledger.set_capacity(OPS, "TEAMS-SEATS", 6)
    assert (await Product.get(name="TEAMS-SEATS")).capacity == 6
    await refused(lambda: ledger.set_capacity(OPS, "TEAMS-SEATS", -1), InvalidInput)
    await refused(lambda: ledger.set_capacity(OPS, "TEAMS-SETS", 20), NotFound, "TEAMS-SEATS")
    await check_invariants()


async def test_capacity_zero_is_allowed_when_nothing_is_allocated() -> None:
    await seed()
    await ledger.set_capacity(OPS, "SIP-CHANNELS", 0)
    await refused(lambda: ledger.allocate(OPS, 1, "SIP-CHANNELS", "ACME-01"), Conflict, "Only 0")


async def test_retire_stops_new_allocations_and_keeps_existing_ones() -> None:
    await seed()
    await ledger.allocate(OPS, 3, "M365-E5", "ACME-01")
    out = await ledger.retire_product(OPS, "m365-e5")
    assert (out.before, out.after) == ({"status": "active"}, {"status": "retired"})
    assert (await Product.get(name="M365-E5")).status is ProductStatus.RETIRED
    assert await allocated("M365-E5", "ACME-01") == 3
    await refused(lambda: ledger.allocate(OPS, 1, "M365-E5", "ACME-01"), Conflict, "retired")
    await refused(lambda: ledger.allocate(OPS, 1, "M365-E5", "ACME-02"), Conflict, "retired")
    await refused(lambda: ledger.retire_product(OPS, "M365-E5"), Conflict, "already retired")
    # Existing allocations are released as usual.
    await ledger.release(OPS, 3, "M365-E5", "ACME-01")
    assert await allocated("M365-E5", "ACME-01") == 0


async def test_a_product_in_use_cannot_be_deleted() -> None:
    await seed()
    await ledger.allocate(OPS, 1, "SIP-CHANNELS", "ACME-01")
    await refused(lambda: ledger.delete_product(OPS, "SIP-CHANNELS"), Conflict, "retire it instead")
    await ledger.release(OPS, 1, "SIP-CHANNELS", "ACME-01")
    await ledger.delete_product(OPS, "SIP-CHANNELS")
    assert not await Product.filter(name="SIP-CHANNELS").exists()


async def test_list_products_by_category_kind_and_country() -> None:
    await seed()
    await ledger.add_product(
        OPS, "NUMBERS-US-TF", ProductKind.NUMBERS, 5, country="US", number_type=NumberType.TOLL_FREE
    )
    names = lambda products: [p.name for p in products]  # noqa: E731
    assert names(await ledger.list_products()) == [
        "M365-E5",
        "NUMBERS-GB-GEO",
        "NUMBERS-US-TF",
        "SIP-CHANNELS",
        "TEAMS-SEATS",
    ]
    from bot.domain.models import Category

    assert names(await ledger.list_products(Category.LICENSE)) == ["M365-E5"]
    assert names(await ledger.list_products(kind=ProductKind.NUMBERS)) == [
        "NUMBERS-GB-GEO",
        "NUMBERS-US-TF",
    ]
    assert names(await ledger.list_products(country="us")) == ["NUMBERS-US-TF"]
    with pytest.raises(InvalidInput):
        await ledger.list_products(country="USA")


# ----- customers and subscriptions --------------------------------------------------------


async def test_customers_and_subscriptions() -> None:
    out = await ledger.add_customer(OPS, "  Contoso Ltd ", "D3ADBEEF-0000-4000-8000-000000000001")
    assert out.after == {"name": "Contoso Ltd", "tenant": "d3adbeef-0000-4000-8000-000000000001"}
    await refused(lambda: ledger.add_customer(OPS, "CONTOSO LTD"), AlreadyExists)
    await refused(lambda: ledger.add_customer(OPS, "Fabrikam", "not-a-guid"), InvalidInput, "GUID")
    await refused(lambda: ledger.add_customer(OPS, "Evil\u202eCorp"), InvalidInput, "invisible")
    await refused(lambda: ledger.add_customer(OPS, "x" * 101), InvalidInput, "101 characters")

    out = await ledger.add_subscription(
        OPS, "ACME-01", "contoso ltd", SubscriptionMode.OPERATOR_CONNECT
    )
    assert out.after == {
        "code": "ACME-01",
        "customer": "Contoso Ltd",
        "mode": "operator-connect",
        "status": "active",
    }
    sub = await Subscription.get(code="ACME-01").prefetch_related("customer")
    assert sub.customer.name == "Contoso Ltd" and sub.mode is SubscriptionMode.OPERATOR_CONNECT
    await refused(
        lambda: ledger.add_subscription(OPS, "acme-01", "Contoso Ltd"), InvalidInput, "naming"
    )
    await refused(lambda: ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd"), AlreadyExists)
    error = await refused(lambda: ledger.add_subscription(OPS, "ACME-02", "Contoso"), NotFound)
    assert isinstance(error, NotFound) and error.suggestions == ["Contoso Ltd"]


# ----- allocations ------------------------------------------------------------------------


async def test_allocate_adds_up_per_subscription() -> None:
    await seed()
    out = await ledger.allocate(OPS, 4, "numbers-gb-geo", "acme-01")
    assert out.before == {"allocated": 0, "product_allocated": 0}
    assert out.after == {"allocated": 4, "product_allocated": 4}
    out = await ledger.allocate(OPS, 2, "NUMBERS-GB-GEO", "ACME-01")
    assert out.after == {"allocated": 6, "product_allocated": 6}
    out = await ledger.allocate(OPS, 4, "NUMBERS-GB-GEO", "ACME-02")
    assert out.before == {"allocated": 0, "product_allocated": 6}
    assert out.after == {"allocated": 4, "product_allocated": 10}
    assert (
        await allocated("NUMBERS-GB-GEO", "ACME-01"),
        await allocated("NUMBERS-GB-GEO", "ACME-02"),
    ) == (6, 4)
    assert await Allocation.all().count() == 2
    await check_invariants()


async def test_eleven_of_ten_is_refused_and_changes_nothing() -> None:
    await seed()
    await refused(
        lambda: ledger.allocate(OPS, 11, "TEAMS-SEATS", "ACME-01"),
        Conflict,
        "Only 10",
        "capacity 10",
        "11 asked",
    )
    await ledger.allocate(OPS, 7, "TEAMS-SEATS", "ACME-01")
    await refused(lambda: ledger.allocate(OPS, 4, "TEAMS-SEATS", "ACME-02"), Conflict, "Only 3")
    await ledger.allocate(OPS, 3, "TEAMS-SEATS", "ACME-02")
    await refused(lambda: ledger.allocate(OPS, 1, "TEAMS-SEATS", "ACME-01"), Conflict, "Only 0")
    assert (
        await allocated("TEAMS-SEATS", "ACME-01"),
        await allocated("TEAMS-SEATS", "ACME-02"),
    ) == (7, 3)
    await check_invariants()


async def test_allocate_names_what_it_cannot_find() -> None:
    await seed()
    error = await refused(
        lambda: ledger.allocate(OPS, 1, "TEAMS-SEAT", "ACME-01"), NotFound, "TEAMS-SEAT"
    )
    assert isinstance(error, NotFound) and error.suggestions == ["TEAMS-SEATS"]
    error = await refused(lambda: ledger.allocate(OPS, 1, "TEAMS-SEATS", "ACME-1"), NotFound)
    assert isinstance(error, NotFound) and "ACME-01" in error.suggestions
    for bad in (0, -3, MAX_QUANTITY + 1):
        await refused(partial(ledger.allocate, OPS, bad, "TEAMS-SEATS", "ACME-01"), InvalidInput)


async def test_release_gives_units_back_to_the_pool() -> None:
    await seed()
    await ledger.allocate(OPS, 10, "SIP-CHANNELS", "ACME-01")
    out = await ledger.release(OPS, 4, "sip-channels", "acme-01")
    assert out.before == {"allocated": 10, "product_allocated": 10, "in_use": 0}
    assert out.after == {"allocated": 6, "product_allocated": 6, "in_use": 0}
    await ledger.allocate(OPS, 4, "SIP-CHANNELS", "ACME-02")
    await refused(
        lambda: ledger.release(OPS, 7, "SIP-CHANNELS", "ACME-01"), Conflict, "holds only 6"
    )
    await refused(
        lambda: ledger.release(OPS, 1, "TEAMS-SEATS", "ACME-01"), Conflict, "holds only 0"
    )
    await ledger.release(OPS, 6, "SIP-CHANNELS", "ACME-01")
    assert await allocated("SIP-CHANNELS", "ACME-01") == 0


# In use is derived from the records that consume units; these tests create those records
# directly (the numbers and licensing services are tested with their own commands).


async def _account(upn: str, sub: str, kind: AccountKind = AccountKind.USER) -> Account:
    return await Account.create(upn=upn, kind=kind, subscription=await Subscription.get(code=sub))


async def _number(
    e164: str,
    sub: str | None,
    state: NumberState,
    holder: Account | None = None,
    country: str = "GB",
    number_type: NumberType = NumberType.GEOGRAPHIC,
) -> PhoneNumber:
    subscription = await Subscription.get(code=sub) if sub else None
    return await PhoneNumber.create(
        e164=e164,
        country=country,
        number_type=number_type,
        state=state,
        subscription=subscription,
        holder=holder,
    )


async def test_numbers_in_use_are_reserved_or_assigned_of_that_country_and_type() -> None:
    await seed()
    await ledger.allocate(OPS, 5, "NUMBERS-GB-GEO", "ACME-01")
    alice = await _account("alice@contoso.example", "ACME-01")
    await _number("+442071838001", "ACME-01", NumberState.RESERVED)
    await _number("+442071838002", "ACME-01", NumberState.ASSIGNED, alice)
    # Not counted: quarantined, available, other type, other country, other subscription.
    await _number("+442071838003", "ACME-01", NumberState.QUARANTINED)
    await _number("+442071838004", None, NumberState.AVAILABLE)
    await _number("+447700900005", "ACME-01", NumberState.RESERVED, number_type=NumberType.MOBILE)
    await _number("+12025550106", "ACME-01", NumberState.RESERVED, country="US")
    await _number("+442071838007", "ACME-02", NumberState.RESERVED)
    product = await Product.get(name="NUMBERS-GB-GEO")
    sub = await Subscription.get(code="ACME-01")
    assert await in_use(None, sub.id, product) == 2
    await ledger.release(OPS, 3, "NUMBERS-GB-GEO", "ACME-01")
    await refused(
        lambda: ledger.release(OPS, 1, "NUMBERS-GB-GEO", "ACME-01"),
        Conflict,
        "uses 2",
        "would leave 1",
    )
    assert await allocated("NUMBERS-GB-GEO", "ACME-01") == 2


async def test_seats_in_use_are_users_holding_an_assigned_number() -> None:
    await seed()
    await ledger.allocate(OPS, 4, "TEAMS-SEATS", "ACME-01")
    for i in range(3):
        user = await _account(f"user{i}@contoso.example", "ACME-01")
        await _number(f"+44207183810{i}", "ACME-01", NumberState.ASSIGNED, user)
    queue = await _account("queue@contoso.example", "ACME-01", AccountKind.CALL_QUEUE)
    await _number(
        "+442071838200", "ACME-01", NumberState.ASSIGNED, queue
    )  # no seat for a resource account
    await _account("no-number@contoso.example", "ACME-01")
    await refused(lambda: ledger.release(OPS, 2, "TEAMS-SEATS", "ACME-01"), Conflict, "uses 3")
    await ledger.release(OPS, 1, "TEAMS-SEATS", "ACME-01")
    await check_invariants()


async def test_channels_in_use_are_the_trunks_channels() -> None:
    await seed()
    await ledger.allocate(OPS, 10, "SIP-CHANNELS", "ACME-01")
    sub = await Subscription.get(code="ACME-01")
    await SipTrunk.create(name="TRUNK-A", subscription=sub, channels=4)
    await SipTrunk.create(name="TRUNK-B", subscription=sub, channels=3)
    await refused(lambda: ledger.release(OPS, 4, "SIP-CHANNELS", "ACME-01"), Conflict, "uses 7")
    await ledger.release(OPS, 3, "SIP-CHANNELS", "ACME-01")
    assert await allocated("SIP-CHANNELS", "ACME-01") == 7


async def test_licenses_in_use_are_assignments_to_the_subscriptions_accounts() -> None:
    await seed()
    await ledger.allocate(OPS, 3, "M365-E5", "ACME-01")
    await ledger.allocate(OPS, 3, "M365-E5", "ACME-02")
    license_ = await Product.get(name="M365-E5")
    for upn in ("a@contoso.example", "b@contoso.example"):
        await LicenseAssignment.create(product=license_, account=await _account(upn, "ACME-01"))
    aa = await _account("aa@contoso.example", "ACME-01", AccountKind.AUTO_ATTENDANT)
    await LicenseAssignment.create(product=license_, account=aa)
    await LicenseAssignment.create(
        product=license_, account=await _account("c@contoso.example", "ACME-02")
    )
    await refused(lambda: ledger.release(OPS, 1, "M365-E5", "ACME-01"), Conflict, "uses 3")
    await ledger.release(OPS, 2, "M365-E5", "ACME-02")
    await refused(lambda: ledger.release(OPS, 1, "M365-E5", "ACME-02"), Conflict, "uses 1")


async def test_usage_report_derives_in_use_per_product_and_subscription() -> None:
    await seed()
    await ledger.allocate(OPS, 5, "NUMBERS-GB-GEO", "ACME-01")
    await ledger.allocate(OPS, 2, "NUMBERS-GB-GEO", "ACME-02")
    await ledger.allocate(OPS, 4, "TEAMS-SEATS", "ACME-01")
    await ledger.allocate(OPS, 6, "SIP-CHANNELS", "ACME-02")
    await ledger.allocate(OPS, 2, "M365-E5", "ACME-01")
    user = await _account("user@contoso.example", "ACME-01")
    await _number("+442071838300", "ACME-01", NumberState.ASSIGNED, user)
    await _number("+442071838301", "ACME-01", NumberState.RESERVED)
    await _number("+442071838302", "ACME-02", NumberState.RESERVED)
    await SipTrunk.create(
        name="TRUNK-C", subscription=await Subscription.get(code="ACME-02"), channels=5
    )
    await LicenseAssignment.create(product=await Product.get(name="M365-E5"), account=user)

    report = {u.name: u.as_json() for u in await usage_report()}
    assert set(report) == {"M365-E5", "NUMBERS-GB-GEO", "SIP-CHANNELS", "TEAMS-SEATS"}
    numbers = report["NUMBERS-GB-GEO"]
    assert (numbers["capacity"], numbers["allocated"], numbers["in_use"]) == (10, 7, 3)
    assert numbers["subscriptions"] == [
        {"code": "ACME-01", "allocated": 5, "in_use": 2, "free": 3},
        {"code": "ACME-02", "allocated": 2, "in_use": 1, "free": 1},
    ]
    assert (report["TEAMS-SEATS"]["allocated"], report["TEAMS-SEATS"]["in_use"]) == (4, 1)
    assert (report["SIP-CHANNELS"]["allocated"], report["SIP-CHANNELS"]["in_use"]) == (6, 5)
    assert (report["M365-E5"]["allocated"], report["M365-E5"]["in_use"]) == (2, 1)
    assert report["M365-E5"]["category"] == "license"

    # The report agrees with the per-subscription derivation the services lock against.
    for name, row in report.items():
        product = await Product.get(name=name)
        for s in row["subscriptions"]:
            sub = await Subscription.get(code=s["code"])
            assert await in_use(None, sub.id, product) == s["in_use"]

    # One product, and one subscription: the pool figures stay whole-pool figures.
    only = await usage_report(product_name="numbers-gb-geo")
    assert [u.name for u in only] == ["NUMBERS-GB-GEO"]
    acme2 = {u.name: u for u in await usage_report(subscription_code="acme-02")}
    assert set(acme2) == {"NUMBERS-GB-GEO", "SIP-CHANNELS"}
    assert [(s.code, s.allocated, s.in_use) for s in acme2["NUMBERS-GB-GEO"].subscriptions] == [
        ("ACME-02", 2, 1)
    ]
    assert (acme2["NUMBERS-GB-GEO"].allocated, acme2["NUMBERS-GB-GEO"].in_use) == (7, 3)
    await check_invariants()


async def test_usage_report_counts_in_use_only_for_the_kinds_it_shows() -> None:
    """Two statements whatever the number of products, subscriptions and numbers: products
    with their allocations, then in use counted only for the kinds of product in the report."""
    from tests.support.querycount import count_queries

    tables = ("phone_number", "sip_trunk", "license_assignment")
    await seed()
    await ledger.allocate(OPS, 5, "NUMBERS-GB-GEO", "ACME-01")
    await ledger.allocate(OPS, 4, "TEAMS-SEATS", "ACME-01")
    await _number("+442071838301", "ACME-01", NumberState.RESERVED)
    with count_queries() as everything:
        report = await usage_report()
    kinds = {u.kind for u in report}
    assert len(kinds) == 4 and everything.count == 2
    assert all(t in everything.statements[1] for t in tables)
    with count_queries() as numbers_only:
        [numbers] = await usage_report(product_name="NUMBERS-GB-GEO")
    assert numbers_only.count == 2 and (numbers.allocated, numbers.in_use) == (5, 1)
    counted = numbers_only.statements[1]
    assert "'numbers'" in counted and "'teams-seats'" not in counted
    assert [t for t in tables if t in counted] == ["phone_number"]
    with count_queries() as seats_only:
        [seats] = await usage_report(product_name="TEAMS-SEATS")
    assert seats_only.count == 2 and (seats.allocated, seats.in_use) == (4, 0)
    assert (
        "'teams-seats'" in seats_only.statements[1] and "'numbers'" not in seats_only.statements[1]
    )
    with count_queries() as license_only:
        [license_] = await usage_report(product_name="M365-E5")
    assert license_only.count == 2 and license_.kind == "license"
    assert [t for t in tables if t in license_only.statements[1]] == ["license_assignment"]


# ----- dry runs ---------------------------------------------------------------------------


async def test_dry_run_shows_before_and_after_and_changes_nothing() -> None:
    await seed()
    await ledger.allocate(OPS, 4, "TEAMS-SEATS", "ACME-01")
    changes: list[Callable[[bool], Awaitable[ledger.Outcome]]] = [
        lambda dry: ledger.add_product(OPS, "FAX", ProductKind.CUSTOM, 3, dry_run=dry),
        lambda dry: ledger.set_capacity(OPS, "TEAMS-SEATS", 20, dry_run=dry),
        lambda dry: ledger.retire_product(OPS, "M365-E5", dry_run=dry),
        lambda dry: ledger.add_customer(OPS, "Fabrikam", dry_run=dry),
        lambda dry: ledger.add_subscription(OPS, "ACME-03", "Contoso Ltd", dry_run=dry),
        lambda dry: ledger.allocate(OPS, 3, "TEAMS-SEATS", "ACME-01", dry_run=dry),
        lambda dry: ledger.release(OPS, 2, "TEAMS-SEATS", "ACME-01", dry_run=dry),
        lambda dry: ledger.delete_product(OPS, "FAX", dry_run=dry),
    ]
    for run in changes:
        state = await snapshot()
        preview = await run(True)
        assert preview.dry_run
        assert await snapshot() == state, preview.action
        done = await run(False)
        assert not done.dry_run
        # What the dry run showed is what the change then did.
        assert (done.action, done.before, done.after, done.message) == (
            preview.action,
            preview.before,
            preview.after,
            preview.message,
        )
        assert await snapshot() != state
    assert await allocated("TEAMS-SEATS", "ACME-01") == 5
    # A dry run is refused exactly as the real change would be.
    await refused(
        lambda: ledger.allocate(OPS, 16, "TEAMS-SEATS", "ACME-01", dry_run=True),
        Conflict,
        "Only 15",
    )
    count = await AuditEvent.all().count()
    assert await verify_chain() == (True, count, "")


# ----- replays ----------------------------------------------------------------------------


async def test_a_replayed_request_has_one_effect() -> None:
    await seed()
    keyed = Origin("oid-ops", "Olivia Ops", "chat", "activity-42", idempotency_key="activity-42")
    # A dry run does not use up the key.
    await ledger.allocate(keyed, 2, "TEAMS-SEATS", "ACME-01", dry_run=True)
    await ledger.allocate(keyed, 2, "TEAMS-SEATS", "ACME-01")
    state = await snapshot()
    with pytest.raises(Duplicate) as info:
        await ledger.allocate(keyed, 2, "TEAMS-SEATS", "ACME-01")
    assert info.value.outcome == [
        {
            "action": "allocation.allocate",
            "target": "allocation:ACME-01/TEAMS-SEATS",
            "before": {"allocated": 0, "product_allocated": 0},
            "after": {"allocated": 2, "product_allocated": 2},
        }
    ]
    assert await snapshot() == state
    # A refused request does not use up its key either: corrected, it goes through.
    retry = Origin("oid-ops", "Olivia Ops", "chat", "activity-43", idempotency_key="activity-43")
    await refused(lambda: ledger.allocate(retry, 9, "TEAMS-SEATS", "ACME-01"), Conflict)
    await ledger.allocate(retry, 8, "TEAMS-SEATS", "ACME-01")
    assert await allocated("TEAMS-SEATS", "ACME-01") == 10


# ----- lists through the command gate -----------------------------------------------------


async def test_lists_page_and_filter() -> None:
    await seed()
    ctx = context(settings=Settings(page_size=2))
    for name in ("Fabrikam", "Northwind", "Tailspin", "Woodgrove"):
        await ledger.add_customer(OPS, name)
    await ledger.add_subscription(OPS, "NW-01", "Northwind")

    first = await run_text("customers", ctx)
    assert isinstance(first, Table)
    assert [r[0] for r in first.rows] == ["Contoso Ltd", "Fabrikam"]
    assert (first.page, first.pages, first.next_command) == (1, 3, "customers --page 2")
    assert [c["name"] for c in first.data] == [
        "Contoso Ltd",
        "Fabrikam",
        "Northwind",
        "Tailspin",
        "Woodgrove",
    ]
    assert first.next_command is not None
    last = await run_text("customers --page 3", ctx)
    assert isinstance(last, Table) and [r[0] for r in last.rows] == ["Woodgrove"]
    assert last.next_command is None
    beyond = await run_text("customers --page 9", ctx)
    assert isinstance(beyond, Table) and beyond.page == 3

    subs = await run_text('subscriptions --customer "contoso ltd"', context())
    assert isinstance(subs, Table) and [s["code"] for s in subs.data] == ["ACME-01", "ACME-02"]
    subs = await run_text("subscriptions --customer northwind", context())
    assert isinstance(subs, Table) and [s["code"] for s in subs.data] == ["NW-01"]
    missing = await run_text("subscriptions --customer Nortwind", context())
    assert isinstance(missing, Error) and missing.suggestions == ["Northwind"]

    products = await run_text("products --kind numbers --country gb", context())
    assert isinstance(products, Table) and [p["name"] for p in products.data] == ["NUMBERS-GB-GEO"]
    empty = await run_text("products --country US", context())
    assert isinstance(empty, Table) and empty.rows == [] and "product add" in empty.note
