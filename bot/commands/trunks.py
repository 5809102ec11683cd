"""Commands over SIP trunks: their channels use the subscription's SIP channel allocation."""

from __future__ import annotations

from bot.commands.answers import changed, paged
from bot.commands.args import Args, Quantity, Text
from bot.commands.registry import Context, command
from bot.commands.reply import FormField, Reply
from bot.domain import trunks


class TrunksArgs(Args):
    subscription: Text | None = None
    page: Quantity = 1


@command(
    "trunks",
    "trunks [SUBSCRIPTION] [--page N]",
    "List SIP trunks and their channels",
    TrunksArgs,
)
async def trunks_list(ctx: Context, args: TrunksArgs) -> Reply:
    found = await trunks.list_trunks(args.subscription)
    rows = [[t.name, t.subscription.code, f"{t.channels:,}"] for t in found]
    data = [
        {"name": t.name, "subscription": t.subscription.code, "channels": t.channels} for t in found
    ]
    return paged(
        "SIP trunks" + (f" of {args.subscription}" if args.subscription else ""),
        ["Trunk", "Subscription", "Channels"],
        rows,
        data,
        args.page,
        ctx.settings.page_size,
        f"trunks {args.subscription}" if args.subscription else "trunks",
        note="" if rows else "No trunks yet. Add one with `trunk add`.",
    )


class TrunkAddArgs(Args):
    name: Text
    subscription: Text
    channels: Quantity


@command(
    "trunk add",
    "trunk add NAME --subscription CODE --channels N",
    "Add a SIP trunk to a subscription (its channels use the SIP channel allocation)",
    TrunkAddArgs,
    mutating=True,
    form=(
        FormField("name", "Trunk name (e.g. SBC-LON-01)"),
        FormField("subscription", "Subscription", kind="choice"),
        FormField("channels", "Channels", kind="number"),
    ),
)
async def trunk_add(ctx: Context, args: TrunkAddArgs) -> Reply:
    return changed(
        await trunks.add_trunk(
            ctx.actor.origin(), args.name, args.subscription, args.channels, dry_run=args.dry_run
        )
    )


class TrunkSetArgs(Args):
    name: Text
    channels: Quantity


@command(
    "trunk set",
    "trunk set NAME --channels N",
    "Change the number of channels of a SIP trunk",
    TrunkSetArgs,
    mutating=True,
    form=(
        FormField("name", "Trunk name"),
        FormField("channels", "Channels", kind="number"),
    ),
)
async def trunk_set(ctx: Context, args: TrunkSetArgs) -> Reply:
    return changed(
        await trunks.set_channels(
            ctx.actor.origin(), args.name, args.channels, dry_run=args.dry_run
        )
    )
