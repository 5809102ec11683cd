"""What is in use, derived from the records that consume units — never a stored counter.

- numbers (country C, type T): numbers of C/T reserved or assigned in the subscription;
- Teams seats: Teams users of the subscription holding an assigned number;
- SIP channels: sum of the channels of the subscription's trunks;
- a license: its assignments to accounts of the subscription;
- custom: nothing consumes a custom resource through the bot, so none is in use.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.functions import Count, Sum

from bot.domain.models import (
    AccountKind,
    Allocation,
    LicenseAssignment,
    NumberState,
    PhoneNumber,
    Product,
    ProductKind,
    SipTrunk,
)

HELD_STATES = (NumberState.RESERVED, NumberState.ASSIGNED)


async def in_use(conn: BaseDBAsyncClient | None, subscription_id: int, product: Product) -> int:
    """Units of `product` that `subscription_id` uses now (inside the caller's transaction)."""
    if product.kind is ProductKind.NUMBERS:
        return (
            await PhoneNumber.filter(
                subscription_id=subscription_id,
                country=product.country,
                number_type=product.number_type,
                state__in=HELD_STATES,
            )
            .using_db(conn)
            .count()
        )
    if product.kind is ProductKind.TEAMS_SEATS:
        return (
            await PhoneNumber.filter(
                state=NumberState.ASSIGNED,
                holder__kind=AccountKind.USER,
                holder__subscription_id=subscription_id,
            )
            .using_db(conn)
            .count()
        )
    if product.kind is ProductKind.SIP_CHANNELS:
        rows = (
            await SipTrunk.filter(subscription_id=subscription_id)
            .using_db(conn)
            .values_list("channels", flat=True)
        )
        return sum(int(cast(int, c)) for c in rows)
    if product.kind is ProductKind.LICENSE:
        return (
            await LicenseAssignment.filter(
                product_id=product.id, account__subscription_id=subscription_id
            )
            .using_db(conn)
            .count()
        )
    return 0


@dataclass
class SubscriptionUsage:
    code: str
    allocated: int
    in_use: int

    @property
    def free(self) -> int:
        return self.allocated - self.in_use


@dataclass
class ProductUsage:
    name: str
    category: str
    kind: str
    unit: str
    status: str
    capacity: int
    allocated: int = 0
    in_use: int = 0
    subscriptions: list[SubscriptionUsage] = field(default_factory=list)

    @property
    def unallocated(self) -> int:
        return self.capacity - self.allocated

    @property
    def utilisation(self) -> float:
        """Share of capacity that is allocated (0..1)."""
        return self.allocated / self.capacity if self.capacity else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category,
            "kind": self.kind,
            "unit": self.unit,
            "status": self.status,
            "capacity": self.capacity,
            "allocated": self.allocated,
            "in_use": self.in_use,
            "free": self.allocated - self.in_use,
            "unallocated": self.unallocated,
            "subscriptions": [
                {"code": s.code, "allocated": s.allocated, "in_use": s.in_use, "free": s.free}
                for s in self.subscriptions
            ],
        }


async def usage_report(
    product_name: str | None = None, subscription_code: str | None = None
) -> list[ProductUsage]:
    """Capacity, allocated and in use per product and subscription, in a fixed number of
    queries whatever the size (two, and one per kind of product in the report)."""
    products_q = Product.all()
    if product_name is not None:
        products_q = products_q.filter(name__iexact=product_name)
    products = await products_q.order_by("category", "kind", "name")
    if not products:
        return []
    product_ids = [p.id for p in products]

    # Every allocation of these products, even when one subscription is asked for: the pool's
    # in-use figure sums all of them.
    allocations = await Allocation.filter(product_id__in=product_ids).values(
        "product_id", "subscription_id", "quantity", "subscription__code"
    )

    total_by: dict[int, int] = defaultdict(int)
    for a in allocations:
        total_by[a["product_id"]] += a["quantity"]
    # In use is counted only for the kinds of product in the report: one query per kind.
    kinds = {p.kind for p in products}
    numbers: list[dict[str, Any]] = []
    if ProductKind.NUMBERS in kinds:
        numbers = await (
            PhoneNumber.filter(state__in=HELD_STATES, subscription_id__isnull=False)
            .annotate(n=Count("id"))
            .group_by("subscription_id", "country", "number_type")
            .values("subscription_id", "country", "number_type", "n")
        )
    seats: list[dict[str, Any]] = []
    if ProductKind.TEAMS_SEATS in kinds:
        seats = await (
            PhoneNumber.filter(state=NumberState.ASSIGNED, holder__kind=AccountKind.USER)
            .annotate(n=Count("id"))
            .group_by("holder__subscription_id")
            .values("holder__subscription_id", "n")
        )
    channels: list[dict[str, Any]] = []
    if ProductKind.SIP_CHANNELS in kinds:
        channels = await (
            SipTrunk.all()
            .annotate(n=Sum("channels"))
            .group_by("subscription_id")
            .values("subscription_id", "n")
        )
    licenses: list[dict[str, Any]] = []
    if ProductKind.LICENSE in kinds:
        licenses = await (
            LicenseAssignment.filter(product_id__in=product_ids)
            .annotate(n=Count("id"))
            .group_by("product_id", "account__subscription_id")
            .values("product_id", "account__subscription_id", "n")
        )

    numbers_by: dict[tuple[int, str, str], int] = {
        (r["subscription_id"], r["country"], str(r["number_type"])): int(r["n"]) for r in numbers
    }
    seats_by = {r["holder__subscription_id"]: int(r["n"]) for r in seats}
    channels_by = {r["subscription_id"]: int(r["n"] or 0) for r in channels}
    licenses_by = {(r["product_id"], r["account__subscription_id"]): int(r["n"]) for r in licenses}

    def used(product: Product, sub_id: int) -> int:
        if product.kind is ProductKind.NUMBERS:
            nt = product.number_type.value if product.number_type else ""
            return numbers_by.get((sub_id, product.country or "", nt), 0)
        if product.kind is ProductKind.TEAMS_SEATS:
            return seats_by.get(sub_id, 0)
        if product.kind is ProductKind.SIP_CHANNELS:
            return channels_by.get(sub_id, 0)
        if product.kind is ProductKind.LICENSE:
            return licenses_by.get((product.id, sub_id), 0)
        return 0

    by_product: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for a in allocations:
        by_product[a["product_id"]].append(a)

    wanted = subscription_code.upper() if subscription_code is not None else None
    report: list[ProductUsage] = []
    for product in products:
        held = sorted(by_product.get(product.id, []), key=lambda a: a["subscription__code"])
        shown = [a for a in held if wanted is None or a["subscription__code"].upper() == wanted]
        if wanted is not None and not shown:
            continue  # asked about one subscription: only the products it holds
        row = ProductUsage(
            name=product.name,
            category=product.category.value,
            kind=product.kind.value,
            unit=product.unit,
            status=product.status.value,
            capacity=product.capacity,
        )
        use = {a["subscription_id"]: used(product, a["subscription_id"]) for a in held}
        row.subscriptions = [
            SubscriptionUsage(a["subscription__code"], a["quantity"], use[a["subscription_id"]])
            for a in shown
        ]
        # Pool totals describe the whole product even when one subscription is asked for.
        row.allocated = total_by.get(product.id, 0)
        row.in_use = sum(use.values())
        report.append(row)
    return report
