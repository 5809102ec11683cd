"""The products ledger: products, customers, subscriptions and allocations.

Locking order, the same everywhere so concurrent changes cannot deadlock: a product row
first, then allocation rows in ascending product id. Consumers of units (numbers, seats,
channels, licenses) lock only allocation rows, never products.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.models import Model

from bot.domain import db
from bot.domain.change import AUDIT_HEAD, Origin, change
from bot.domain.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from bot.domain.models import (
    Allocation,
    Category,
    Customer,
    NumberType,
    Product,
    ProductKind,
    ProductStatus,
    Subscription,
    SubscriptionMode,
)
from bot.domain.naming import check_country, check_free_text, check_name, check_quantity
from bot.domain.usage import in_use

# One active pool per consumer: numbers of a country and type, Teams seats, SIP channels.
SINGLE_POOL_KINDS = (ProductKind.TEAMS_SEATS, ProductKind.SIP_CHANNELS)
DEFAULT_UNITS = {
    ProductKind.NUMBERS: "number",
    ProductKind.TEAMS_SEATS: "seat",
    ProductKind.SIP_CHANNELS: "channel",
    ProductKind.CUSTOM: "unit",
    ProductKind.LICENSE: "license",
}
# A license added without a capacity is limited only by what the provider holds: effectively open.
OPEN_LICENSE_CAPACITY = 1_000_000_000


@dataclass(frozen=True)
class Outcome:
    """What a change did (or, for a dry run, would do)."""

    action: str
    target: str
    before: Any
    after: Any
    dry_run: bool
    message: str


def product_view(p: Product) -> dict[str, Any]:
    return {
        "name": p.name,
        "category": p.category.value,
        "kind": p.kind.value,
        "unit": p.unit,
        "capacity": p.capacity,
        "country": p.country,
        "type": p.number_type.value if p.number_type else None,
        "sku": p.sku,
        "status": p.status.value,
    }


# ----- look-ups --------------------------------------------------------------------------

# Each look-up by name is one statement of its own SQL, case-insensitive: through the ORM,
# building the query cost more CPU than running it, and `allocate` runs one under the product's
# lock (figures in docs/benchmarks.md).
M = TypeVar("M", bound=Model)


def _by_name(model: type[Model], column: str) -> str:
    columns = ", ".join(model._meta.fields_db_projection.values())
    return f"SELECT {columns} FROM {model._meta.db_table} WHERE UPPER({column}) = UPPER(?)"


_PRODUCT_BY_NAME = _by_name(Product, "name")
_SUBSCRIPTION_BY_CODE = _by_name(Subscription, "code")
_CUSTOMER_BY_NAME = _by_name(Customer, "name")


async def _names(model: type[Model], field: str, conn: BaseDBAsyncClient | None) -> list[str]:
    """Every value of a name column: the candidates for "did you mean"."""
    return [str(v) for v in await model.all().using_db(conn).values_list(field, flat=True)]


async def _lookup(
    model: type[M], statement: str, value: str, conn: BaseDBAsyncClient | None, lock: bool
) -> M | None:
    query = statement + (db.dialect().row_lock if lock else "")
    rows = await (conn or db.connection()).execute_query_dict(db.sql(query), [value])
    return model._init_from_db(**rows[0]) if rows else None


async def find_product(
    name: str, conn: BaseDBAsyncClient | None = None, *, lock: bool = False
) -> Product:
    """The product called `name`; with `lock`, its row locked to the end of the transaction
    (SQLite has no row locks: its transactions hold the database's write lock from the start)."""
    product = await _lookup(Product, _PRODUCT_BY_NAME, name, conn, lock)
    if product is None:
        raise NotFound("product", name, await _names(Product, "name", conn))
    return product


async def find_subscription(code: str, conn: BaseDBAsyncClient | None = None) -> Subscription:
    sub = await _lookup(Subscription, _SUBSCRIPTION_BY_CODE, code, conn, False)
    if sub is None:
        raise NotFound("subscription", code, await _names(Subscription, "code", conn))
    return sub


async def find_customer(name: str, conn: BaseDBAsyncClient | None = None) -> Customer:
    customer = await _lookup(Customer, _CUSTOMER_BY_NAME, name, conn, False)
    if customer is None:
        raise NotFound("customer", name, await _names(Customer, "name", conn))
    return customer


# ----- allocation totals -----------------------------------------------------------------

_ALLOCATION_TOTALS = (
    "SELECT COALESCE(SUM(quantity), 0) AS total, "
    "COALESCE(SUM(CASE WHEN subscription_id = ? THEN quantity ELSE 0 END), 0) AS own "
    "FROM allocation WHERE product_id = ?"
)
_GROW_ALLOCATION = (
    "UPDATE allocation SET quantity = quantity + ? WHERE subscription_id = ? AND product_id = ?"
)
# Where one statement may write (db.Dialect.writing_ctes: PostgreSQL, where several bot
# processes queue for a product's row lock): once the lock is held, one statement reads the
# totals, grows the subscription's row if the capacity allows, and locks and reads the audit
# chain's head that the change appends to next — 3 round trips under the lock (this, the
# append, COMMIT) instead of 5. It starts after the lock was granted, so it sees every
# allocation of the product committed before. Parameters: the totals', the growth's, the
# quantity and the capacity.
_TOTALS_GROWTH_AND_HEAD = f"""
WITH totals AS ({_ALLOCATION_TOTALS}),
grown AS ({_GROW_ALLOCATION} AND (SELECT total FROM totals) + ? <= ? RETURNING 1),
head AS ({AUDIT_HEAD} FOR UPDATE)
SELECT totals.total, totals.own, (SELECT COUNT(*) FROM grown), head.last_id, head.last_hash
FROM totals, head
"""


async def allocation_totals(
    conn: BaseDBAsyncClient, product_id: int, subscription_id: int | None = None
) -> tuple[int, int]:
    """(all allocated of the product, what `subscription_id` holds of it), summed by the
    database: one row back however many subscriptions hold the product."""
    _, rows = await conn.execute_query(db.sql(_ALLOCATION_TOTALS), [subscription_id, product_id])
    total, own = rows[0] if rows else (0, 0)
    return int(total or 0), int(own or 0)


async def lock_allocation(
    conn: BaseDBAsyncClient, subscription_id: int, product_id: int
) -> Allocation | None:
    return (
        await Allocation.filter(subscription_id=subscription_id, product_id=product_id)
        .select_for_update()
        .using_db(conn)
        .first()
    )


# ----- products --------------------------------------------------------------------------


async def list_products(
    category: Category | None = None, kind: ProductKind | None = None, country: str | None = None
) -> list[Product]:
    query = Product.all()
    if category is not None:
        query = query.filter(category=category)
    if kind is not None:
        query = query.filter(kind=kind)
    if country is not None:
        query = query.filter(country=check_country(country))
    return await query.order_by("category", "kind", "name")


async def add_product(
    origin: Origin,
    name: str,
    kind: ProductKind,
    capacity: int | None,
    *,
    country: str | None = None,
    number_type: NumberType | None = None,
    unit: str | None = None,
    sku: str | None = None,
    dry_run: bool = False,
) -> Outcome:
    check_name(name, "product name")
    category = Category.LICENSE if kind is ProductKind.LICENSE else Category.TECHNICAL
    if capacity is None:
        if kind is not ProductKind.LICENSE:
            raise InvalidInput("A technical product needs --capacity N.")
        capacity = OPEN_LICENSE_CAPACITY
    check_quantity(capacity, "capacity", allow_zero=True)
    if kind is ProductKind.NUMBERS:
        if not country:
            raise InvalidInput("A numbers product needs --country CC (ISO 3166-1 alpha-2).")
        country = check_country(country)
        number_type = number_type or NumberType.GEOGRAPHIC
    elif country or number_type:
        raise InvalidInput("Only numbers products have a country and a number type.")
    if unit is not None:
        unit = check_free_text(unit, "unit", 40)
    if sku is not None:
        sku = check_free_text(sku, "SKU", 100)

    async with change(origin, dry_run=dry_run) as ch:
        if await Product.filter(name__iexact=name).using_db(ch.conn).exists():
            raise AlreadyExists(f"A product named {name!r} already exists.")
        if kind is ProductKind.NUMBERS:
            clash = (
                await Product.filter(
                    kind=kind, country=country, number_type=number_type, status=ProductStatus.ACTIVE
                )
                .using_db(ch.conn)
                .first()
            )
            if clash:
                raise AlreadyExists(
                    f"{clash.name} already holds the {country} {number_type} numbers; "
                    "raise its capacity instead."
                )
        if kind in SINGLE_POOL_KINDS:
            clash = (
                await Product.filter(kind=kind, status=ProductStatus.ACTIVE)
                .using_db(ch.conn)
                .first()
            )
            if clash:
                raise AlreadyExists(
                    f"{clash.name} is already the {kind} pool; raise its capacity instead."
                )
        product = await Product.create(
            using_db=ch.conn,
            name=name,
            category=category,
            kind=kind,
            unit=unit or DEFAULT_UNITS[kind],
            capacity=capacity,
            country=country,
            number_type=number_type,
            sku=sku,
        )
        after = product_view(product)
        ch.record("product.add", f"product:{name}", None, after)
    return Outcome("product.add", name, None, after, dry_run, f"Product {name} added.")


async def set_capacity(
    origin: Origin, name: str, capacity: int, *, dry_run: bool = False
) -> Outcome:
    check_quantity(capacity, "capacity", allow_zero=True)
    async with change(origin, dry_run=dry_run) as ch:
        product = await find_product(name, ch.conn, lock=True)
        allocated, _ = await allocation_totals(ch.conn, product.id)
        if capacity < allocated:
            raise Conflict(
                f"Capacity of {product.name} cannot go below what is allocated: "
                f"{allocated} allocated, {capacity} asked."
            )
        before = {"capacity": product.capacity}
        await Product.filter(id=product.id).using_db(ch.conn).update(capacity=capacity)
        after = {"capacity": capacity}
        ch.record("product.capacity", f"product:{product.name}", before, after)
    return Outcome(
        "product.capacity",
        product.name,
        before,
        after,
        dry_run,
        f"Capacity of {product.name}: {before['capacity']} → {capacity}.",
    )


async def retire_product(origin: Origin, name: str, *, dry_run: bool = False) -> Outcome:
    async with change(origin, dry_run=dry_run) as ch:
        product = await find_product(name, ch.conn, lock=True)
        if product.status is ProductStatus.RETIRED:
            raise Conflict(f"{product.name} is already retired.")
        before = {"status": product.status.value}
        await Product.filter(id=product.id).using_db(ch.conn).update(status=ProductStatus.RETIRED)
        after = {"status": ProductStatus.RETIRED.value}
        ch.record("product.retire", f"product:{product.name}", before, after)
    return Outcome(
        "product.retire",
        product.name,
        before,
        after,
        dry_run,
        f"{product.name} retired: no new allocations; existing ones stay until released.",
    )


async def delete_product(origin: Origin, name: str, *, dry_run: bool = False) -> Outcome:
    """Only a product nothing refers to can go; anything in use must be retired instead."""
    async with change(origin, dry_run=dry_run) as ch:
        product = await find_product(name, ch.conn, lock=True)
        if (
            await Allocation.filter(product_id=product.id, quantity__gt=0)
            .using_db(ch.conn)
            .exists()
        ):
            raise Conflict(f"{product.name} is allocated to subscriptions; retire it instead.")
        before = product_view(product)
        await Allocation.filter(product_id=product.id).using_db(ch.conn).delete()
        await product.delete(using_db=ch.conn)
        ch.record("product.delete", f"product:{product.name}", before, None)
    return Outcome(
        "product.delete", product.name, before, None, dry_run, f"{product.name} deleted."
    )


# ----- customers and subscriptions -------------------------------------------------------


async def add_customer(
    origin: Origin, name: str, tenant_id: str | None = None, *, dry_run: bool = False
) -> Outcome:
    name = check_free_text(name, "customer name")
    if tenant_id is not None:
        tenant_id = check_guid(tenant_id, "tenant id")
    async with change(origin, dry_run=dry_run) as ch:
        if await Customer.filter(name__iexact=name).using_db(ch.conn).exists():
            raise AlreadyExists(f"A customer named {name!r} already exists.")
        await Customer.create(using_db=ch.conn, name=name, tenant_id=tenant_id)
        after = {"name": name, "tenant": tenant_id}
        ch.record("customer.add", f"customer:{name}", None, after)
    return Outcome("customer.add", name, None, after, dry_run, f"Customer {name} added.")


async def add_subscription(
    origin: Origin,
    code: str,
    customer_name: str,
    mode: SubscriptionMode = SubscriptionMode.DIRECT_ROUTING,
    *,
    dry_run: bool = False,
) -> Outcome:
    check_name(code, "subscription code")
    async with change(origin, dry_run=dry_run) as ch:
        customer = await find_customer(customer_name, ch.conn)
        if await Subscription.filter(code__iexact=code).using_db(ch.conn).exists():
            raise AlreadyExists(f"A subscription {code!r} already exists.")
        await Subscription.create(using_db=ch.conn, code=code, customer=customer, mode=mode)
        after = {"code": code, "customer": customer.name, "mode": mode.value, "status": "active"}
        ch.record("subscription.add", f"subscription:{code}", None, after)
    return Outcome("subscription.add", code, None, after, dry_run, f"Subscription {code} added.")


# ----- allocations -----------------------------------------------------------------------


async def allocate(
    origin: Origin,
    quantity: int,
    product_name: str,
    subscription_code: str,
    *,
    dry_run: bool = False,
) -> Outcome:
    check_quantity(quantity)
    # Read before the transaction: a subscription's code and id never change, and one that is
    # removed meanwhile fails the allocation's foreign key (a clash, nothing changed).
    sub = await _lookup(Subscription, _SUBSCRIPTION_BY_CODE, subscription_code, None, False)
    async with change(origin, dry_run=dry_run) as ch:
        # Few statements while the product's row is locked: every allocation of the product
        # waits for it, in every process. Its allocation rows change only under that lock.
        product = await find_product(product_name, ch.conn, lock=True)
        if sub is None:
            raise NotFound(
                "subscription", subscription_code, await _names(Subscription, "code", ch.conn)
            )
        if product.status is ProductStatus.RETIRED:
            raise Conflict(f"{product.name} is retired: nothing more can be allocated from it.")
        grown: int | None = None
        if db.dialect().writing_ctes:
            growth = [quantity, sub.id, product.id]
            _, rows = await ch.conn.execute_query(
                db.sql(_TOTALS_GROWTH_AND_HEAD),
                [sub.id, product.id, *growth, quantity, product.capacity],
            )
            total, old, grown, head_id, head_hash = rows[0]
            total, old, grown = int(total), int(old), int(grown)
            ch.head = (int(head_id), str(head_hash))
        else:
            total, old = await allocation_totals(ch.conn, product.id, sub.id)
        free = product.capacity - total
        if quantity > free:
            raise Conflict(
                f"Only {free} of {product.name} left to allocate "
                f"(capacity {product.capacity}, allocated {total}); {quantity} asked."
            )
        if grown is None:
            grown, _ = await ch.conn.execute_query(
                db.sql(_GROW_ALLOCATION), [quantity, sub.id, product.id]
            )
        if not grown:
            await Allocation.create(
                using_db=ch.conn, subscription_id=sub.id, product_id=product.id, quantity=quantity
            )
        before = {"allocated": old, "product_allocated": total}
        after = {"allocated": old + quantity, "product_allocated": total + quantity}
        ch.record("allocation.allocate", f"allocation:{sub.code}/{product.name}", before, after)
    return Outcome(
        "allocation.allocate",
        f"{product.name} → {sub.code}",
        before,
        after,
        dry_run,
        f"Allocated {quantity} {product.unit}(s) of {product.name} to {sub.code}: "
        f"{old} → {old + quantity}.",
    )


async def release(
    origin: Origin,
    quantity: int,
    product_name: str,
    subscription_code: str,
    *,
    dry_run: bool = False,
) -> Outcome:
    check_quantity(quantity)
    async with change(origin, dry_run=dry_run) as ch:
        product = await find_product(product_name, ch.conn, lock=True)
        sub = await find_subscription(subscription_code, ch.conn)
        allocation = await lock_allocation(ch.conn, sub.id, product.id)
        old = allocation.quantity if allocation else 0
        if allocation is None or quantity > old:
            raise Conflict(
                f"{sub.code} holds only {old} of {product.name}; cannot release {quantity}."
            )
        used = await in_use(ch.conn, sub.id, product)
        if old - quantity < used:
            raise Conflict(
                f"{sub.code} uses {used} of {product.name}: the allocation cannot go below that "
                f"({old} allocated, releasing {quantity} would leave {old - quantity})."
            )
        total, _ = await allocation_totals(ch.conn, product.id)
        await Allocation.filter(id=allocation.id).using_db(ch.conn).update(quantity=old - quantity)
        before = {"allocated": old, "product_allocated": total, "in_use": used}
        after = {"allocated": old - quantity, "product_allocated": total - quantity, "in_use": used}
        ch.record("allocation.release", f"allocation:{sub.code}/{product.name}", before, after)
    return Outcome(
        "allocation.release",
        f"{product.name} ← {sub.code}",
        before,
        after,
        dry_run,
        f"Released {quantity} of {product.name} from {sub.code}: {old} → {old - quantity}.",
    )


def check_guid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError as exc:
        raise InvalidInput(f"The {what} {value!r} is not a GUID.") from exc
