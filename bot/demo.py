"""A demo catalog to try the bot with: `python -m bot.demo` (same DATABASE_URL as the bot).

Products of every kind, three customers with a subscription each, allocations, and a little
in use (SIP trunks, phone numbers assigned to users and an auto attendant, a service pack),
written through the domain services with source "cli" so each step is audited like an operator's.
Running it again changes nothing: what exists is kept, and an allocation is only topped up
to its demo figure (never beyond, and never lowered if someone allocated more since).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass

from bot.config import ConfigError, Settings
from bot.domain import db, directory, ledger, licensing, numbers, trunks
from bot.domain.change import Origin
from bot.domain.errors import AlreadyExists, Conflict, DomainError
from bot.domain.models import AccountKind, NumberType, ProductKind, SubscriptionMode
from bot.domain.naming import set_naming_rule
from bot.domain.usage import usage_report

OPERATOR = "demo-seed"


@dataclass(frozen=True)
class DemoProduct:
    name: str
    kind: ProductKind
    capacity: int
    country: str | None = None
    number_type: NumberType | None = None
    unit: str | None = None
    sku: str | None = None


NUMBERS, SEATS, CHANNELS = ProductKind.NUMBERS, ProductKind.TEAMS_SEATS, ProductKind.SIP_CHANNELS
CUSTOM, LICENSE = ProductKind.CUSTOM, ProductKind.LICENSE

PRODUCTS = (
    DemoProduct("GB-GEO-NUMBERS", NUMBERS, 500, "GB", NumberType.GEOGRAPHIC, sku="NUM-GB-GEO"),
    DemoProduct("DE-MOBILE-NUMBERS", NUMBERS, 200, "DE", NumberType.MOBILE, sku="NUM-DE-MOB"),
    DemoProduct("US-TOLL-FREE-NUMBERS", NUMBERS, 50, "US", NumberType.TOLL_FREE, sku="NUM-US-TF"),
    DemoProduct("TEAMS-SEATS", SEATS, 1000),
    DemoProduct("SIP-CHANNELS", CHANNELS, 300),
    DemoProduct("CALL-RECORDING-STORAGE", CUSTOM, 2000, unit="GB"),
    DemoProduct("TEAMS-PHONE-STANDARD", LICENSE, 1000, sku="MCOEV"),
    DemoProduct("TEAMS-PHONE-RESOURCE-ACCOUNT", LICENSE, 100, sku="PHONESYSTEM_VIRTUALUSER"),
    DemoProduct("TEAMS-DOMESTIC-CALLING-PLAN", LICENSE, 500, sku="MCOPSTN1"),
)

# (subscription code, customer, mode)
SUBSCRIPTIONS = (
    ("CONTOSO-01", "Contoso Ltd", SubscriptionMode.DIRECT_ROUTING),
    ("FABRIKAM-01", "Fabrikam Inc", SubscriptionMode.OPERATOR_CONNECT),
    ("NORTHWIND-01", "Northwind Traders", SubscriptionMode.DIRECT_ROUTING),
)

# (subscription code, product, units allocated)
ALLOCATIONS = (
    ("CONTOSO-01", "GB-GEO-NUMBERS", 80),
    ("CONTOSO-01", "TEAMS-SEATS", 60),
    ("CONTOSO-01", "SIP-CHANNELS", 30),
    ("CONTOSO-01", "TEAMS-PHONE-STANDARD", 60),
    ("CONTOSO-01", "TEAMS-PHONE-RESOURCE-ACCOUNT", 4),
    ("FABRIKAM-01", "DE-MOBILE-NUMBERS", 40),
    ("FABRIKAM-01", "TEAMS-SEATS", 45),
    ("FABRIKAM-01", "TEAMS-DOMESTIC-CALLING-PLAN", 45),
    ("FABRIKAM-01", "CALL-RECORDING-STORAGE", 250),
    ("NORTHWIND-01", "US-TOLL-FREE-NUMBERS", 5),
    ("NORTHWIND-01", "GB-GEO-NUMBERS", 20),
    ("NORTHWIND-01", "SIP-CHANNELS", 20),
)

# Something in use, so `usage` shows more than zeros. The numbers are from Ofcom's range kept
# for drama (020 7946 0000-0999), so they never ring anyone.
NUMBER_RANGE = "+442079460000-+442079460019"
TRUNKS = (("CONTOSO-SBC-1", "CONTOSO-01", 12), ("NORTHWIND-SBC-1", "NORTHWIND-01", 8))
USER, AUTO_ATTENDANT = AccountKind.USER, AccountKind.AUTO_ATTENDANT
# (UPN, subscription, kind, display name, number)
ACCOUNTS = (
    ("alex.wilber@contoso.example", "CONTOSO-01", USER, "Alex Wilber", "+442079460000"),
    ("megan.bowen@contoso.example", "CONTOSO-01", USER, "Megan Bowen", "+442079460001"),
    ("reception@contoso.example", "CONTOSO-01", AUTO_ATTENDANT, "Reception", "+442079460002"),
)
PACK = ("CONTOSO-TEAMS-PHONE", ("TEAMS-PHONE-STANDARD",))
RESOURCE_LICENSE = "TEAMS-PHONE-RESOURCE-ACCOUNT"


async def seed(origin: Origin) -> list[str]:
    """Bring the demo catalog into the open database; returns one line per step."""
    lines: list[str] = []
    for p in PRODUCTS:
        try:
            await ledger.add_product(
                origin,
                p.name,
                p.kind,
                p.capacity,
                country=p.country,
                number_type=p.number_type,
                unit=p.unit,
                sku=p.sku,
            )
            lines.append(f"added    product {p.name}")
        except AlreadyExists:
            lines.append(f"kept     product {p.name}")
    for code, customer, mode in SUBSCRIPTIONS:
        try:
            await ledger.add_customer(origin, customer)
            lines.append(f"added    customer {customer}")
        except AlreadyExists:
            lines.append(f"kept     customer {customer}")
        try:
            await ledger.add_subscription(origin, code, customer, mode)
            lines.append(f"added    subscription {code}")
        except AlreadyExists:
            lines.append(f"kept     subscription {code}")

    held = {(s.code, u.name): s.allocated for u in await usage_report() for s in u.subscriptions}
    for code, product, target in ALLOCATIONS:
        missing = target - held.get((code, product), 0)
        if missing <= 0:
            lines.append(f"kept     allocation {product} → {code}")
            continue
        await ledger.allocate(origin, missing, product, code)
        lines.append(f"added    allocation {product} → {code} (+{missing})")
    return lines + await _consume(origin)


async def _consume(origin: Origin) -> list[str]:
    lines: list[str] = []
    for name, code, channels in TRUNKS:
        try:
            await trunks.add_trunk(origin, name, code, channels)
            lines.append(f"added    trunk {name} ({channels} channels)")
        except AlreadyExists:
            lines.append(f"kept     trunk {name}")
    try:
        await numbers.add_numbers(origin, NUMBER_RANGE)
        lines.append(f"added    numbers {NUMBER_RANGE}")
    except AlreadyExists:
        lines.append(f"kept     numbers {NUMBER_RANGE}")
    for upn, code, kind, display_name, number in ACCOUNTS:
        try:
            await directory.add_account(origin, upn, code, kind, display_name)
            lines.append(f"added    {kind.value} {upn}")
        except AlreadyExists:
            lines.append(f"kept     {kind.value} {upn}")
        account = await directory.find_account(upn)
        if (await numbers.find_number(number)).holder_id == account.id:
            lines.append(f"kept     number {number} → {upn}")
            continue
        try:
            await numbers.assign_number(origin, number, upn)
            lines.append(f"added    number {number} → {upn}")
        except Conflict as exc:  # someone took it or gave the account another number since
            lines.append(f"skipped  number {number} → {upn}: {exc.message}")
    pack, licenses = PACK
    try:
        await licensing.create_pack(origin, pack, licenses)
        lines.append(f"added    service pack {pack}")
    except AlreadyExists:
        lines.append(f"kept     service pack {pack}")
    users = [upn for upn, _, kind, _, _ in ACCOUNTS if kind is USER]
    result = await licensing.assign_pack(origin, pack, users)
    lines.append(f"assigned service pack {pack}: {result.message}")
    accounts = [upn for upn, _, kind, _, _ in ACCOUNTS if kind is not USER]
    result = await licensing.assign_license(origin, RESOURCE_LICENSE, accounts)
    lines.append(f"assigned license {RESOURCE_LICENSE}: {result.message}")
    return lines


async def main() -> int:
    try:
        settings = Settings.from_env(env_file=".env")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    set_naming_rule(settings.naming_rule)
    origin = Origin(OPERATOR, "demo seed", "cli", correlation_id=f"cli-demo-{uuid.uuid4()}")
    await db.open_database(settings.database_url, migrate=settings.migrate_on_start)
    try:
        lines = await seed(origin)
    except DomainError as exc:
        print(f"demo seed refused: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await db.close_database()
    print("\n".join(lines))
    print("Demo catalog ready.")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
