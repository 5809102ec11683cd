"""What the ledger holds, read back through the models, so tests can say "nothing changed".

`snapshot()` is the whole state a refused or dry-run change must leave alone: every ledger row
and every audit event (with its hash) and the chain head. `check_invariants()` asserts SPEC §2
invariants 1 and 2 over the whole database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from bot.auth.actor import Actor
from bot.auth.policy import DevPolicy, OperatorPolicy, Policy
from bot.commands.registry import Context
from bot.config import Settings
from bot.domain.change import Origin
from bot.domain.errors import DomainError
from bot.domain.models import (
    Account,
    Allocation,
    AuditEvent,
    AuditHead,
    Customer,
    LicenseAssignment,
    PhoneNumber,
    Product,
    RequestKey,
    SipTrunk,
    Subscription,
)
from bot.domain.usage import in_use


async def snapshot() -> dict[str, Any]:
    return {
        "customers": await Customer.all().order_by("id").values("id", "name", "tenant_id"),
        "subscriptions": await Subscription.all()
        .order_by("id")
        .values("id", "code", "customer_id", "mode", "status"),
        "products": await Product.all()
        .order_by("id")
        .values(
            "id",
            "name",
            "category",
            "kind",
            "unit",
            "capacity",
            "country",
            "number_type",
            "sku",
            "status",
        ),
        "allocations": await Allocation.all()
        .order_by("id")
        .values("id", "subscription_id", "product_id", "quantity"),
        "accounts": await Account.all().count(),
        "numbers": await PhoneNumber.all().count(),
        "trunks": await SipTrunk.all().count(),
        "licenses": await LicenseAssignment.all().count(),
        "request_keys": await RequestKey.all().count(),
        "audit": await AuditEvent.all().order_by("id").values_list("id", "hash"),
        "audit_head": await AuditHead.all().values("id", "last_id", "last_hash"),
    }


async def audit_count() -> int:
    return await AuditEvent.all().count()


async def check_invariants() -> None:
    """Invariant 1 (allocated ≤ capacity) and 2 (in use ≤ allocated), everywhere."""
    for product in await Product.all():
        allocations = await Allocation.filter(product_id=product.id)
        total = sum(a.quantity for a in allocations)
        assert total <= product.capacity, f"{product.name}: {total} allocated > {product.capacity}"
        for a in allocations:
            used = await in_use(None, a.subscription_id, product)
            assert used <= a.quantity, (
                f"{product.name}/{a.subscription_id}: {used} in use > {a.quantity}"
            )


def origin(
    actor: str = "oid-ops",
    name: str = "Olivia Ops",
    source: str = "chat",
    correlation_id: str | None = "activity-1",
) -> Origin:
    return Origin(actor_id=actor, actor_name=name, source=source, correlation_id=correlation_id)


def context(
    *,
    object_id: str = "oid-ops",
    name: str = "Olivia Ops",
    correlation_id: str = "activity-1",
    policy: Policy | None = None,
    settings: Settings | None = None,
) -> Context:
    """A caller at the command gate: an operator by default, or whoever `policy` says."""
    actor = Actor(
        object_id=object_id,
        name=name,
        tenant_id="tenant-1",
        upn=f"{object_id}@contoso.example",
        source="chat",
        correlation_id=correlation_id,
    )
    return Context(actor=actor, settings=settings or Settings(), policy=policy or OperatorPolicy())


def dev_context(admins: tuple[str, ...], **kwargs: Any) -> Context:
    return context(policy=DevPolicy(admins), **kwargs)


E = TypeVar("E", bound=DomainError)
State = Callable[[], Awaitable[Any]]


async def refused(
    call: Callable[[], Awaitable[Any]], error: type[E], *words: str, state: State = snapshot
) -> E:
    """`call` is refused with `error` (its message containing `words`) and `state()` — by
    default the whole ledger and its audit — is exactly as before."""
    before = await state()
    with pytest.raises(error) as info:
        await call()
    for word in words:
        assert word in info.value.message, info.value.message
    assert await state() == before
    return info.value


async def one_user_with_a_number(actor: Origin, spare: int = 1) -> int:
    """Contoso with ACME-01 (10 GB numbers and seats), numbers +442071230000 and `spare` after
    it, user0@contoso.com holding +442071230000; the user's account id."""
    from bot.domain import directory, ledger, numbers
    from bot.domain.models import PhoneNumber, ProductKind

    await ledger.add_customer(actor, "Contoso Ltd")
    await ledger.add_subscription(actor, "ACME-01", "Contoso Ltd")
    await ledger.add_product(actor, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 10, country="GB")
    await ledger.add_product(actor, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 10)
    await ledger.allocate(actor, 10, "NUMBERS-GB-GEO", "ACME-01")
    await ledger.allocate(actor, 10, "TEAMS-SEATS", "ACME-01")
    await numbers.add_numbers(actor, f"+442071230000-+44207123{spare:04d}")
    await directory.add_account(actor, "user0@contoso.com", "ACME-01")
    await numbers.assign_number(actor, "+442071230000", "user0@contoso.com")
    holder = (await PhoneNumber.get(e164="+442071230000")).holder_id
    assert holder is not None
    return holder
