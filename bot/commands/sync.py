"""`users sync`: a subscription's Teams users (or resource accounts) from an Entra group.

The directory does not say which users are resource accounts, so the caller says what the
group holds: `--kind user` (the default), `auto-attendant` or `call-queue`. Resource accounts
are synced from a group that holds only them.
"""

from __future__ import annotations

from bot.auth.graph import GraphError, GraphNotFound, GraphUnavailable
from bot.commands.args import Args, Text
from bot.commands.registry import Context, command
from bot.commands.reply import Error, FormField, Message, Reply
from bot.domain.directory_sync import DirectoryMember, SyncReport, check_group_id, sync_accounts
from bot.domain.errors import DomainError, NotFound, Unavailable
from bot.domain.ledger import find_subscription
from bot.domain.models import AccountKind

SHOWN = 15  # names listed per section of the reply; the full lists are in --json and the audit


class SyncArgs(Args):
    subscription: Text
    group_id: Text
    kind: AccountKind = AccountKind.USER


@command(
    "users sync",
    "users sync SUBSCRIPTION from-group GROUP-ID [--kind user|auto-attendant|call-queue]",
    "Add or update a subscription's Teams users (or, with --kind, resource accounts) "
    "from the members of an Entra group",
    SyncArgs,
    mutating=True,
    form=(
        FormField("subscription", "Subscription", kind="choice"),
        FormField("group_id", "Entra group object id"),
        FormField(
            "kind",
            "Accounts are",
            kind="choice",
            required=False,
            choices=[(k.value, k.value) for k in AccountKind],
        ),
    ),
)
async def users_sync(ctx: Context, args: SyncArgs) -> Reply:
    graph = ctx.services.graph
    if graph is None:
        return Error(
            title="Directory not available",
            text="Directory sync reads Microsoft Graph, which is not configured here "
            "(it needs the bot's app credentials). Nothing was changed.",
            code="unavailable",
        )
    group_id = check_group_id(args.group_id)
    await find_subscription(args.subscription)  # a typo is answered before Graph is asked
    try:
        entries = await graph.transitive_members(group_id)
    except GraphNotFound:
        raise NotFound("Entra group", group_id) from None
    except GraphUnavailable as exc:
        raise Unavailable(f"{exc.message} Nothing was changed; try again in a minute.") from exc
    except GraphError as exc:
        raise DomainError(f"{exc.message} Nothing was changed.") from exc
    members = [
        DirectoryMember(e.id, e.type, e.user_principal_name, e.display_name) for e in entries
    ]
    report = await sync_accounts(
        ctx.actor.origin(), args.subscription, group_id, members, args.kind, dry_run=args.dry_run
    )
    return summary(report)


def summary(report: SyncReport) -> Message:
    what = (
        "Teams users"
        if report.kind is AccountKind.USER
        else f"{report.kind.value} resource accounts"
    )
    title = f"{what} of {report.subscription} synced from group {report.group_id}"
    if report.dry_run:
        title = "Dry run — nothing changed: " + title
    counts = report.counts()
    facts = [
        ("Added", str(counts["added"])),
        ("Updated", str(counts["updated"])),
        ("Unchanged", str(counts["unchanged"])),
        ("Skipped", str(counts["skipped"])),
    ]
    if report.nested_groups:
        facts.append(("Nested groups (their users included)", str(report.nested_groups)))
    if report.not_in_group:
        facts.append(
            (
                "In the subscription but not in the group (left as they are)",
                str(report.not_in_group),
            )
        )
    lines: list[str] = []
    lines += _section("Added", report.added)
    lines += _section(
        "Updated", [f"{upn}: {_diff(before, after)}" for upn, before, after in report.updated]
    )
    lines += _section("Skipped", [f"{member}: {why}" for member, why in report.skipped])
    return Message(title=title, text="\n".join(lines), facts=facts, data=report.as_json())


def _section(name: str, items: list[str]) -> list[str]:
    if not items:
        return []
    shown = [f"- {item}" for item in items[:SHOWN]]
    if len(items) > SHOWN:
        shown.append(f"- … and {len(items) - SHOWN} more")
    return [f"{name}:", *shown]


def _diff(before: dict[str, object], after: dict[str, object]) -> str:
    return ", ".join(f"{k} {before.get(k)!s} → {after[k]!s}" for k in after)
