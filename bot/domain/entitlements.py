"""Drawing on an allocation: the steps every consumer (numbers, seats, channels, licenses) takes.

Inside its change, a consumer locks the allocation rows it draws on in ascending product id
(the ledger's locking order: consumers never lock product rows), counts what is in use inside
the same transaction, and refuses when the change would take the subscription beyond what is
allocated. The allocation row lock serialises every consumer of the same subscription × product,
so two admins can never both take the last unit; unique constraints back it up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tortoise.backends.base.client import BaseDBAsyncClient

from bot.domain.errors import Conflict
from bot.domain.models import (
    Allocation,
    NumberType,
    Product,
    ProductKind,
    ProductStatus,
    Subscription,
    SubscriptionStatus,
)
from bot.domain.usage import in_use

POOL_NAMES = {
    ProductKind.TEAMS_SEATS: "Teams seats",
    ProductKind.SIP_CHANNELS: "SIP trunk channels",
}


@dataclass
class Entitlement:
    """What a subscription may use of a product, and what it uses now (under lock)."""

    subscription: Subscription
    product: Product
    allocated: int
    used: int

    @property
    def free(self) -> int:
        return self.allocated - self.used

    def require(self, units: int) -> None:
        """Refuse unless `units` more fit in the allocation."""
        if units <= self.free:
            return
        sub, product = self.subscription.code, self.product.name
        if self.allocated == 0:
            raise Conflict(
                f"{sub} has no {product} allocated ({units} needed): "
                f"allocate some first with `allocate N {product} to {sub}`."
            )
        raise Conflict(
            f"{sub} has {self.free} of its {self.allocated} {product} left "
            f"({self.used} in use); {units} needed."
        )


def require_active(subscription: Subscription) -> None:
    if subscription.status is not SubscriptionStatus.ACTIVE:
        raise Conflict(
            f"{subscription.code} is {subscription.status.value}: nothing new can be used."
        )


async def pool_product(
    conn: BaseDBAsyncClient,
    subscription: Subscription,
    kind: ProductKind,
    *,
    country: str | None = None,
    number_type: NumberType | None = None,
) -> Product:
    """The product `subscription` draws `kind` from (numbers: of that country and type).

    The one active product of that kind, unless the subscription still holds an allocation
    of a retired one: what was allocated stays usable until it is released.
    """
    query = Product.filter(kind=kind)
    if kind is ProductKind.NUMBERS:
        query = query.filter(country=country, number_type=number_type)
    products = await query.using_db(conn).order_by("id")
    if not products:
        what = (
            f"{country} {number_type.value if number_type else ''} numbers"
            if kind is ProductKind.NUMBERS
            else POOL_NAMES.get(kind, kind.value)
        )
        raise Conflict(
            f"There is no product for {what}, so {subscription.code} cannot have any: "
            "add one with `product add` and allocate it first."
        )
    held = set(
        await Allocation.filter(
            subscription_id=subscription.id, product_id__in=[p.id for p in products], quantity__gt=0
        )
        .using_db(conn)
        .values_list("product_id", flat=True)
    )
    return min(
        products, key=lambda p: (p.id not in held, p.status is not ProductStatus.ACTIVE, p.id)
    )


async def lock_entitlements(
    conn: BaseDBAsyncClient, subscription: Subscription, products: Iterable[Product]
) -> dict[int, Entitlement]:
    """Lock the allocation rows (ascending product id) and count what is in use: by product id."""
    unique = {p.id: p for p in products}
    # One statement: PostgreSQL locks the rows in the order it returns them, ascending product id.
    allocations = await (
        Allocation.filter(subscription_id=subscription.id, product_id__in=list(unique))
        .order_by("product_id")
        .select_for_update()
        .using_db(conn)
    )
    allocated = {a.product_id: a.quantity for a in allocations}
    found: dict[int, Entitlement] = {}
    for product_id in sorted(unique):
        product = unique[product_id]
        used = await in_use(conn, subscription.id, product)
        found[product_id] = Entitlement(subscription, product, allocated.get(product_id, 0), used)
    return found
