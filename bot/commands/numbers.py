"""Commands over the phone-number inventory: list, add, reserve, assign, release."""

from __future__ import annotations

from bot.commands.answers import changed, next_page
from bot.commands.args import Args, Quantity, Text
from bot.commands.provisioned import provisioned, rules
from bot.commands.registry import Context, command
from bot.commands.reply import FormField, Reply, Table
from bot.domain import numbers
from bot.domain.models import NumberState, NumberType

_TYPES = [(t.value, t.value) for t in NumberType]


class NumbersArgs(Args):
    subscription: Text | None = None
    state: NumberState | None = None
    country: Text | None = None
    type: NumberType | None = None
    page: Quantity = 1


@command(
    "numbers",
    "numbers [SUBSCRIPTION] [--state S] [--country CC] [--type T] [--page N]",
    "List the phone-number inventory (filter by subscription, state, country, type)",
    NumbersArgs,
    more_usage=("numbers [SUBSCRIPTION] [--state available|reserved|assigned|quarantined]",),
)
async def numbers_list(ctx: Context, args: NumbersArgs) -> Reply:
    found = await numbers.list_numbers(
        args.subscription,
        args.state,
        args.country,
        args.type,
        page=args.page,
        size=ctx.settings.page_size,
    )
    page, pages = found.page, found.pages
    views = [numbers.number_view(n) for n in found.items]
    rows = [
        [
            v["number"],
            v["country"],
            v["type"],
            v["state"]
            + (f" until {v['quarantined_until'][:10]}" if v["quarantined_until"] else ""),
            v["subscription"] or "",
            v["holder"] or "",
        ]
        for v in views
    ]
    words = ["numbers"]
    if args.subscription:
        words.append(args.subscription)
    for option, value in (
        ("--state", args.state),
        ("--country", args.country),
        ("--type", args.type),
    ):
        if value is not None:
            words += [option, str(value)]
    filters = ", ".join(w for w in words[1:] if not w.startswith("--"))
    return Table(
        title=f"Numbers ({found.total:,})" + (f": {filters}" if filters else ""),
        columns=["Number", "Country", "Type", "State", "Subscription", "Held by"],
        rows=rows,
        data={"total": found.total, "page": page, "pages": pages, "numbers": views},
        note="" if rows else "No numbers match. Add some with `numbers add +E164[-+E164]`.",
        page=page,
        pages=pages,
        next_command=next_page(words, page, pages),
    )


class NumbersAddArgs(Args):
    e164: Text
    location: Text | None = None


@command(
    "numbers add",
    "numbers add E164[-E164] [--location LOCATION]",
    "Add a number or a range of up to 10,000 numbers to the inventory",
    NumbersAddArgs,
    mutating=True,
    more_usage=("numbers add +442071234000-+442071234999",),
    form=(
        FormField("e164", "Number or range (+442071234000 or +442071234000-+442071234999)"),
        FormField("location", "Emergency location id (for Teams)", required=False),
    ),
)
async def numbers_add(ctx: Context, args: NumbersAddArgs) -> Reply:
    return changed(
        await numbers.add_numbers(
            ctx.actor.origin(), args.e164, dry_run=args.dry_run, location=args.location
        )
    )


class ReserveArgs(Args):
    quantity: Quantity
    country: Text
    type: NumberType | None = None
    subscription: Text


@command(
    "number reserve",
    "number reserve N CC [--type T] for SUBSCRIPTION",
    "Reserve available numbers of a country and type for a subscription",
    ReserveArgs,
    mutating=True,
    fields={"N": "quantity", "CC": "country"},
    form=(
        FormField("quantity", "How many", kind="number"),
        FormField("country", "Country", kind="choice"),
        FormField("type", "Number type", kind="choice", required=False, choices=_TYPES),
        FormField("subscription", "Subscription", kind="choice"),
    ),
)
async def number_reserve(ctx: Context, args: ReserveArgs) -> Reply:
    return changed(
        await numbers.reserve(
            ctx.actor.origin(),
            args.quantity,
            args.country,
            args.type,
            args.subscription,
            dry_run=args.dry_run,
        )
    )


class AssignArgs(Args):
    e164: Text
    upn: Text
    location: Text | None = None


@command(
    "number assign",
    "number assign E164 to UPN [--location LOCATION]",
    "Assign a number to a Teams user or resource account",
    AssignArgs,
    mutating=True,
    form=(
        FormField("e164", "Number (+E164)"),
        FormField("upn", "User or resource account (UPN)"),
        FormField("location", "Emergency location id (for Teams)", required=False),
    ),
)
async def number_assign(ctx: Context, args: AssignArgs) -> Reply:
    return provisioned(
        await numbers.assign_number(
            ctx.actor.origin(),
            args.e164,
            args.upn,
            dry_run=args.dry_run,
            rules=rules(ctx.settings),
            location=args.location,
        )
    )


class AssignNextArgs(Args):
    country: Text
    type: NumberType | None = None
    upn: Text
    location: Text | None = None


@command(
    "number assign next",
    "number assign next CC [--type T] to UPN [--location LOCATION]",
    "Assign the next number of a country (reserved for the subscription first, else available)",
    AssignNextArgs,
    mutating=True,
    fields={"CC": "country"},
    form=(
        FormField("country", "Country", kind="choice"),
        FormField("type", "Number type", kind="choice", required=False, choices=_TYPES),
        FormField("upn", "User or resource account (UPN)"),
        FormField("location", "Emergency location id (for Teams)", required=False),
    ),
)
async def number_assign_next(ctx: Context, args: AssignNextArgs) -> Reply:
    return provisioned(
        await numbers.assign_next(
            ctx.actor.origin(),
            args.country,
            args.type,
            args.upn,
            dry_run=args.dry_run,
            rules=rules(ctx.settings),
            location=args.location,
        )
    )


class ReleaseArgs(Args):
    e164: Text


@command(
    "number release",
    "number release E164",
    "Release a number: an assigned one goes to quarantine, a reserved one back to available",
    ReleaseArgs,
    mutating=True,
    form=(FormField("e164", "Number (+E164)"),),
)
async def number_release(ctx: Context, args: ReleaseArgs) -> Reply:
    return provisioned(
        await numbers.release_number(
            ctx.actor.origin(),
            args.e164,
            ctx.settings.quarantine_days,
            dry_run=args.dry_run,
            rules=rules(ctx.settings),
        )
    )
