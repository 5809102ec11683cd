"""Commands over a subscription's Teams users and resource accounts."""

from __future__ import annotations

from typing import Literal

from bot.commands.answers import changed, next_page
from bot.commands.args import Args, Quantity, Text
from bot.commands.registry import Context, command
from bot.commands.reply import FormField, Reply, Table
from bot.domain import directory
from bot.domain.models import AccountKind


class UsersArgs(Args):
    subscription: Text | None = None
    kind: AccountKind | None = None
    page: Quantity = 1


@command(
    "users",
    "users [SUBSCRIPTION] [--kind user|auto-attendant|call-queue] [--page N]",
    "List Teams users and resource accounts, with the number and licenses each holds",
    UsersArgs,
)
async def users(ctx: Context, args: UsersArgs) -> Reply:
    found = await directory.list_accounts(
        args.subscription, args.kind, page=args.page, size=ctx.settings.page_size
    )
    rows = [
        [r.upn, r.name, r.kind, r.subscription, r.number or "", ", ".join(r.licenses)]
        for r in found.items
    ]
    words = ["users"]
    if args.subscription:
        words.append(args.subscription)
    if args.kind:
        words += ["--kind", args.kind.value]
    title = "Users and resource accounts" + (
        f" of {args.subscription}" if args.subscription else ""
    )
    return Table(
        title=f"{title} ({found.total:,})",
        columns=["UPN", "Name", "Kind", "Subscription", "Number", "Licenses"],
        rows=rows,
        data={
            "total": found.total,
            "page": found.page,
            "pages": found.pages,
            "accounts": [r.as_json() for r in found.items],
        },
        note="" if rows else "No accounts yet. Add one with `user add` or `resource-account add`.",
        page=found.page,
        pages=found.pages,
        next_command=next_page(words, found.page, found.pages),
    )


class UserAddArgs(Args):
    upn: Text
    subscription: Text
    name: Text | None = None


@command(
    "user add",
    "user add UPN --subscription CODE [--name NAME]",
    "Add a Teams user to a subscription",
    UserAddArgs,
    mutating=True,
    more_usage=('user add UPN --subscription CODE [--name "Display Name"]',),
    form=(
        FormField("upn", "UPN (e.g. alice@contoso.com)"),
        FormField("subscription", "Subscription", kind="choice"),
        FormField("name", "Display name", required=False),
    ),
)
async def user_add(ctx: Context, args: UserAddArgs) -> Reply:
    return changed(
        await directory.add_account(
            ctx.actor.origin(),
            args.upn,
            args.subscription,
            AccountKind.USER,
            args.name,
            dry_run=args.dry_run,
        )
    )


class ResourceAccountAddArgs(Args):
    upn: Text
    subscription: Text
    kind: Literal["auto-attendant", "call-queue"]
    name: Text | None = None


@command(
    "resource-account add",
    "resource-account add UPN --subscription CODE --kind auto-attendant|call-queue [--name NAME]",
    "Add a resource account (auto attendant or call queue) to a subscription",
    ResourceAccountAddArgs,
    mutating=True,
    form=(
        FormField("upn", "UPN (e.g. reception@contoso.com)"),
        FormField("subscription", "Subscription", kind="choice"),
        FormField(
            "kind",
            "Kind",
            kind="choice",
            choices=[("auto attendant", "auto-attendant"), ("call queue", "call-queue")],
        ),
        FormField("name", "Display name", required=False),
    ),
)
async def resource_account_add(ctx: Context, args: ResourceAccountAddArgs) -> Reply:
    return changed(
        await directory.add_account(
            ctx.actor.origin(),
            args.upn,
            args.subscription,
            AccountKind(args.kind),
            args.name,
            dry_run=args.dry_run,
        )
    )
