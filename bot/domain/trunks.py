"""SIP trunks of a subscription: their channels use the subscription's SIP channel allocation."""

from __future__ import annotations

from typing import Any

from tortoise.exceptions import IntegrityError

from bot.domain.change import Origin, change
from bot.domain.entitlements import lock_entitlements, pool_product, require_active
from bot.domain.errors import AlreadyExists, InvalidInput, NotFound
from bot.domain.ledger import Outcome, find_subscription
from bot.domain.models import ProductKind, SipTrunk, Subscription
from bot.domain.naming import check_name, check_quantity

# A trunk larger than this is a typing mistake, not a trunk.
MAX_CHANNELS = 100_000


def _check_channels(channels: int) -> int:
    check_quantity(channels, "number of channels")
    if channels > MAX_CHANNELS:
        raise InvalidInput(f"A trunk has at most {MAX_CHANNELS:,} channels; {channels:,} asked.")
    return channels


async def add_trunk(
    origin: Origin, name: str, subscription_code: str, channels: int, *, dry_run: bool = False
) -> Outcome:
    check_name(name, "trunk name")
    _check_channels(channels)
    async with change(origin, dry_run=dry_run) as ch:
        sub = await find_subscription(subscription_code, ch.conn)
        require_active(sub)
        if await SipTrunk.filter(name__iexact=name).using_db(ch.conn).exists():
            raise AlreadyExists(f"A trunk named {name!r} already exists.")
        product = await pool_product(ch.conn, sub, ProductKind.SIP_CHANNELS)
        entitlement = (await lock_entitlements(ch.conn, sub, [product]))[product.id]
        entitlement.require(channels)
        try:
            await SipTrunk.create(
                using_db=ch.conn, name=name, subscription_id=sub.id, channels=channels
            )
        except IntegrityError as exc:
            raise AlreadyExists(f"A trunk named {name!r} was added at the same moment.") from exc
        before = {"channels_in_use": entitlement.used}
        after = {
            "trunk": name,
            "subscription": sub.code,
            "channels": channels,
            "channels_in_use": entitlement.used + channels,
            "allocated": entitlement.allocated,
        }
        ch.record("trunk.add", f"trunk:{name}", before, after)
    return Outcome(
        "trunk.add",
        name,
        before,
        after,
        dry_run,
        f"Trunk {name} added to {sub.code} with {channels} channels; {product.name} in use: "
        f"{entitlement.used} → {entitlement.used + channels} of {entitlement.allocated}.",
    )


async def set_channels(
    origin: Origin, name: str, channels: int, *, dry_run: bool = False
) -> Outcome:
    _check_channels(channels)
    async with change(origin, dry_run=dry_run) as ch:
        found = await SipTrunk.filter(name__iexact=name).using_db(ch.conn).first()
        if found is None:
            names = await SipTrunk.all().using_db(ch.conn).values_list("name", flat=True)
            raise NotFound("trunk", name, [str(n) for n in names])
        sub = await Subscription.filter(id=found.subscription_id).using_db(ch.conn).get()
        product = await pool_product(ch.conn, sub, ProductKind.SIP_CHANNELS)
        entitlement = (await lock_entitlements(ch.conn, sub, [product]))[product.id]
        # Re-read under the allocation lock: every channel change of this subscription takes it.
        trunk = await SipTrunk.filter(id=found.id).using_db(ch.conn).get()
        growth = channels - trunk.channels
        if growth > 0:
            require_active(sub)
            entitlement.require(growth)
        await SipTrunk.filter(id=trunk.id).using_db(ch.conn).update(channels=channels)
        before: dict[str, Any] = {"channels": trunk.channels, "channels_in_use": entitlement.used}
        after: dict[str, Any] = {
            "channels": channels,
            "channels_in_use": entitlement.used + growth,
        }
        ch.record("trunk.channels", f"trunk:{trunk.name}", before, after)
    return Outcome(
        "trunk.channels",
        trunk.name,
        before,
        after,
        dry_run,
        f"Trunk {trunk.name} ({sub.code}): {before['channels']} → {channels} channels; "
        f"{product.name} in use: {entitlement.used} → {entitlement.used + growth} "
        f"of {entitlement.allocated}.",
    )


async def list_trunks(subscription_code: str | None = None) -> list[SipTrunk]:
    query = SipTrunk.all()
    if subscription_code is not None:
        sub = await find_subscription(subscription_code)
        query = query.filter(subscription_id=sub.id)
    return list(await query.order_by("name").prefetch_related("subscription"))
