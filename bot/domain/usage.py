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
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from bot.domain import db
from bot.domain.models import AccountKind, NumberState, Product, ProductKind

HELD_STATES = (NumberState.RESERVED, NumberState.ASSIGNED)


# In use, one statement per kind of product, as SQL: the same statement counts for one
# subscription (inside a change, under the allocation's lock) and for the whole report (every
# subscription, in one UNION ALL). Through the ORM, building the queries cost more CPU than
# running them (docs/benchmarks.md). Each gives (kind, subscription, country, number type,
# product, units); the typed NULLs let PostgreSQL join the branches in any order. `{where}`
# takes the conditions of `_conditions`.
_IN_USE: dict[ProductKind, str] = {
    ProductKind.NUMBERS: """
SELECT 'numbers', subscription_id, country, number_type, 0, COUNT(*)
FROM phone_number WHERE state IN (?, ?) AND subscription_id IS NOT NULL{where}
GROUP BY subscription_id, country, number_type""",
    ProductKind.TEAMS_SEATS: """
SELECT 'teams-seats', h.subscription_id,
       CAST(NULL AS VARCHAR(20)), CAST(NULL AS VARCHAR(20)), 0, COUNT(*)
FROM phone_number n JOIN account h ON h.id = n.holder_id
WHERE n.state = ? AND h.kind = ?{where}
GROUP BY h.subscription_id""",
    ProductKind.SIP_CHANNELS: """
SELECT 'sip-channels', subscription_id,
       CAST(NULL AS VARCHAR(20)), CAST(NULL AS VARCHAR(20)), 0, SUM(channels)
FROM sip_trunk WHERE 1 = 1{where}
GROUP BY subscription_id""",
    ProductKind.LICENSE: """
SELECT 'license', a.subscription_id,
       CAST(NULL AS VARCHAR(20)), CAST(NULL AS VARCHAR(20)), l.product_id, COUNT(*)
FROM license_assignment l JOIN account a ON a.id = l.account_id WHERE 1 = 1{where}
GROUP BY l.product_id, a.subscription_id""",
}
_KIND_VALUES: dict[ProductKind, list[Any]] = {
    ProductKind.NUMBERS: [s.value for s in HELD_STATES],
    ProductKind.TEAMS_SEATS: [NumberState.ASSIGNED.value, AccountKind.USER.value],
    ProductKind.SIP_CHANNELS: [],
    ProductKind.LICENSE: [],
}
# The column holding the subscription, per kind.
_SUBSCRIPTION_COLUMN = {
    ProductKind.NUMBERS: "subscription_id",
    ProductKind.TEAMS_SEATS: "h.subscription_id",
    ProductKind.SIP_CHANNELS: "subscription_id",
    ProductKind.LICENSE: "a.subscription_id",
}


def _in_use_statement(
    kind: ProductKind,
    *,
    subscription_id: int | None = None,
    product: Product | None = None,
    license_id: int | None = None,
) -> tuple[str, list[Any]]:
    """One kind's in-use statement and its parameters: every subscription, or just one (and,
    for numbers, one product's country and type); for licenses, one product's if asked."""
    where, values = "", list(_KIND_VALUES[kind])
    if subscription_id is not None:
        where += f" AND {_SUBSCRIPTION_COLUMN[kind]} = ?"
        values.append(subscription_id)
    if kind is ProductKind.NUMBERS and product is not None:
        where += " AND country = ? AND number_type = ?"
        values += [product.country, product.number_type.value if product.number_type else None]
    if kind is ProductKind.LICENSE and license_id is not None:
        where += " AND l.product_id = ?"
        values.append(license_id)
    return _IN_USE[kind].format(where=where), values


async def in_use(conn: BaseDBAsyncClient | None, subscription_id: int, product: Product) -> int:
    """Units of `product` that `subscription_id` uses now (inside the caller's transaction)."""
    if product.kind not in _IN_USE:
        return 0
    statement, values = _in_use_statement(
        product.kind,
        subscription_id=subscription_id,
        product=product,
        license_id=product.id if product.kind is ProductKind.LICENSE else None,
    )
    _, rows = await (conn or db.connection()).execute_query(db.sql(statement), values)
    return sum(int(row[5] or 0) for row in rows)


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


# The report reads everything it shows in two statements of its own SQL: through the ORM it
# was five queries and several times the CPU (docs/benchmarks.md).
_PRODUCT_ROWS = """
SELECT p.id, p.name, p.category, p.kind, p.unit, p.status, p.capacity, p.country,
       p.number_type, a.subscription_id, a.quantity, s.code
FROM product p
LEFT JOIN allocation a ON a.product_id = p.id
LEFT JOIN subscription s ON s.id = a.subscription_id
{where}
ORDER BY p.category, p.kind, p.name
"""


async def usage_report(
    product_name: str | None = None, subscription_code: str | None = None
) -> list[ProductUsage]:
    """Capacity, allocated and in use per product and subscription, in two statements whatever
    the size: products with their allocations, then in use for the kinds in the report."""
    conn = db.connection()
    where, params = "", []
    if product_name is not None:
        where, params = "WHERE UPPER(p.name) = UPPER(?)", [product_name]
    rows = await conn.execute_query_dict(db.sql(_PRODUCT_ROWS.format(where=where)), params)
    if not rows:
        return []

    products: dict[int, dict[str, Any]] = {}
    held_by: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        products.setdefault(r["id"], r)  # the order of the products is the query's
        if r["subscription_id"] is not None:
            held_by[r["id"]].append(r)

    # In use is counted only for the kinds of product in the report.
    kinds = [k for k in _IN_USE if any(p["kind"] == k.value for p in products.values())]
    used_by: dict[tuple[str, int, str, str, int], int] = {}
    if kinds:
        branches: list[str] = []
        values: list[Any] = []
        # One product asked for: only its license assignments are counted.
        one = next(iter(products)) if product_name is not None else None
        for kind in kinds:
            branch, params = _in_use_statement(
                kind, license_id=one if kind is ProductKind.LICENSE else None
            )
            branches.append(branch)
            values += params
        _, counted = await conn.execute_query(db.sql(" UNION ALL ".join(branches)), values)
        for k, sub, country, number_type, product_id, n in counted:
            used_by[(k, sub, country or "", number_type or "", product_id)] = int(n or 0)

    def used(p: dict[str, Any], sub_id: int) -> int:
        kind = p["kind"]
        if kind == ProductKind.NUMBERS:
            return used_by.get((kind, sub_id, p["country"] or "", p["number_type"] or "", 0), 0)
        if kind == ProductKind.LICENSE:
            return used_by.get((kind, sub_id, "", "", p["id"]), 0)
        return used_by.get((kind, sub_id, "", "", 0), 0)

    wanted = subscription_code.upper() if subscription_code is not None else None
    report: list[ProductUsage] = []
    for p in products.values():
        held = sorted(held_by.get(p["id"], []), key=lambda a: a["code"])
        shown = [a for a in held if wanted is None or a["code"].upper() == wanted]
        if wanted is not None and not shown:
            continue  # asked about one subscription: only the products it holds
        row = ProductUsage(
            name=p["name"],
            category=p["category"],
            kind=p["kind"],
            unit=p["unit"],
            status=p["status"],
            capacity=int(p["capacity"]),
        )
        use = {a["subscription_id"]: used(p, a["subscription_id"]) for a in held}
        row.subscriptions = [
            SubscriptionUsage(a["code"], int(a["quantity"]), use[a["subscription_id"]])
            for a in shown
        ]
        # Pool totals describe the whole product even when one subscription is asked for.
        row.allocated = sum(int(a["quantity"]) for a in held)
        row.in_use = sum(use.values())
        report.append(row)
    return report
