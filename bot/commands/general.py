"""Commands open to everyone (help, whoami) and the audit commands."""

from __future__ import annotations

import re

from bot.commands import words
from bot.commands.args import Args, Quantity, Text
from bot.commands.registry import REGISTRY, Access, CommandSpec, Context, command
from bot.commands.reply import Error, Message, Record, Reply, Table
from bot.commands.words import event_sentence
from bot.domain import audit


class HelpArgs(Args):
    topic: list[str] | None = None


def _described(spec: CommandSpec) -> dict[str, object]:
    """A command as `help --json` lists it."""
    return {
        "command": spec.name,
        "usage": spec.usages,
        "summary": spec.summary,
        "admin_only": spec.access is not Access.PUBLIC,
        "mutating": spec.mutating,
    }


@command(
    "help",
    "help [COMMAND...]",
    "Show the commands, or how one command is used",
    HelpArgs,
    access=Access.PUBLIC,
    fields={"COMMAND": "topic"},
)
async def help_(ctx: Context, args: HelpArgs) -> Reply:
    if args.topic:
        wanted = " ".join(args.topic).lower()
        matches = [
            s for name, s in REGISTRY.items() if name == wanted or name.startswith(wanted + " ")
        ]
        if not matches:
            from bot.domain.errors import did_you_mean

            guesses = did_you_mean(wanted, list(REGISTRY))
            hint = (
                (" Did you mean " + " or ".join(f"`{g}`" for g in guesses) + "?") if guesses else ""
            )
            return Error(
                title="Unknown command",
                text=f"There is no command {wanted!r}.{hint}",
                code="unknown-command",
                suggestions=guesses,
            )
        rows = [[u, s.summary] for s in matches for u in s.usages]
        data = [_described(s) for s in matches]
        records = []
        for s in matches:
            records.append(Record(title=f"**{s.summary}**", detail="", group=s.name))
            records += [Record(title=f"`{u}`", detail="") for u in s.usages]
            records += [Record(title=o, detail=why) for o, why in _options(s)]
            example = EXAMPLES.get(s.name)
            if example:
                records.append(Record(title="Example", detail=f"`{example}`"))
        return Table(
            title=f"Help: {wanted}",
            columns=["Usage", "What it does"],
            rows=rows,
            data=data,
            records=records,
            note=_doors_note(ctx),
        )
    specs = sorted(REGISTRY.values(), key=lambda s: s.name)
    rows = [[s.usage, s.summary] for s in specs]
    data = [_described(s) for s in specs]
    return Table(
        title="Fusion Products bot — commands",
        columns=["Command", "What it does"],
        rows=rows,
        data=data,
        records=[
            Record(title=f"**{area}**", detail=" · ".join(f"`{n}`" for n in names))
            for area, names in _areas(specs)
        ],
        note="`help COMMAND` shows how one is used, with an example. " + _doors_note(ctx),
    )


#: The areas of `help`, in the order an administrator meets them.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Catalog", ("products", "product", "customers", "customer", "subscriptions", "subscription")),
    ("Allocations", ("allocate", "release", "usage")),
    ("Numbers", ("numbers", "number")),
    ("Users and licenses", ("users", "user", "resource-account", "license", "packs", "pack")),
    ("Trunks", ("trunks", "trunk")),
    ("Approvals", ("approvals", "approve", "reject")),
    ("Audit", ("audit",)),
    ("Digests", ("digests", "digest")),
    ("You", ("help", "whoami")),
)

EXAMPLES = {
    "allocate": "allocate 25 TEAMS-SEATS to CONTOSO-01 --dry-run",
    "release": "release 5 TEAMS-SEATS from CONTOSO-01",
    "usage": "usage CONTOSO-01",
    "products": "products technical --country GB",
    "product add": "product add GB-GEO-NUMBERS --kind numbers --country GB --capacity 1000",
    "product capacity": "product capacity TEAMS-SEATS 600",
    "product retire": "product retire OLD-TRUNKS",
    "customer add": 'customer add "Contoso Ltd"',
    "subscription add": 'subscription add CONTOSO-01 --customer "Contoso Ltd"',
    "numbers": "numbers CONTOSO-01 --state available",
    "numbers add": "numbers add +442071234000-+442071234099",
    "number reserve": "number reserve 5 GB for CONTOSO-01",
    "number assign": "number assign +442071234000 to ada@contoso.example",
    "number assign next": "number assign next GB to ada@contoso.example",
    "number release": "number release +442071234000",
    "user add": 'user add ada@contoso.example --subscription CONTOSO-01 --name "Ada Lovelace"',
    "license assign": "license assign M365-E5 to ada@contoso.example,bob@contoso.example",
    "pack create": "pack create GOLD M365-E5 TEAMS-PHONE",
    "pack assign": "pack assign GOLD to ada@contoso.example",
    "approve": "approve 2mug64eez9 within the Q3 budget",
    "reject": "reject 2mug64eez9 asked for 30, not 300",
    "audit": "audit --target TEAMS-SEATS --since 7d",
    "digest here": "digest here daily at 08:00 Europe/London",
    "trunk add": "trunk add SBC-LON --subscription CONTOSO-01 --channels 30",
}

_OPTION = re.compile(r"(--[a-z-]+)(?: ([A-Z][A-Z0-9|:_-]*))?")


#: What each option means, wherever it appears.
OPTION_HELP = {
    "--kind": "What the product is (numbers, teams-seats, sip-channels, custom, license)",
    "--country": "Two-letter country code (ISO 3166-1), e.g. GB",
    "--type": "Number type: geographic, national, mobile or toll-free",
    "--capacity": "How many units the pool holds",
    "--sku": "The external reference or Microsoft 365 SKU",
    "--unit": "What one unit is called",
    "--license": "The product is a license assigned to users",
    "--customer": "The customer's name, as `customers` lists it",
    "--mode": "direct-routing or operator-connect",
    "--tenant": "The customer's Entra tenant id",
    "--subscription": "The subscription code, e.g. CONTOSO-01",
    "--name": "The display name (quote it if it has spaces)",
    "--channels": "How many SIP channels",
    "--state": "Only numbers in this state (available, reserved, assigned, quarantined)",
    "--actor": "Only events by this person (name or id)",
    "--target": "Only events about this name (product, subscription, number…)",
    "--since": "Only events this recent: 7d, 12h, 30m or a date",
    "--limit": "At most this many events (default 20)",
    "--page": "Which page of a long list",
    "--all": "Decided and expired requests too, not only pending ones",
    "--dry-run": "Show before → after and change nothing",
}


def _options(spec: CommandSpec) -> list[tuple[str, str]]:
    """Each option of the command's usage lines with what it means."""
    found: dict[str, str] = {}
    for usage in spec.usages:
        for option, value in _OPTION.findall(usage):
            found.setdefault(option, f"`{option} {value}`" if value else f"`{option}`")
    if spec.mutating:
        found.setdefault("--dry-run", "`--dry-run`")
    return [(shown, OPTION_HELP.get(option, "")) for option, shown in found.items()]


def _areas(specs: list[CommandSpec]) -> list[tuple[str, list[str]]]:
    grouped: dict[str, list[str]] = {area: [] for area, _ in AREAS}
    grouped["More"] = []
    for spec in specs:
        first = spec.name.split()[0]
        area = next((a for a, words in AREAS if first in words), "More")
        grouped[area].append(spec.name)
    return [(area, names) for area, names in grouped.items() if names]


def _doors_note(ctx: Context) -> str:
    if ctx.actor.source == "cli":
        return "Names with spaces go in quotes. Every change takes --dry-run; add --json for JSON."
    return (
        "Names with spaces go in quotes. Every change takes --dry-run. "
        "Type a change command alone to get a form."
    )


@command(
    "whoami",
    "whoami",
    "Who the bot thinks you are, and what you may do",
    Args,
    access=Access.PUBLIC,
)
async def whoami(ctx: Context, args: Args) -> Reply:
    tenant = ctx.policy.tenant_allowed(ctx.actor)
    admin = await ctx.policy.is_admin(ctx.actor) if tenant.allowed else tenant
    approver = await ctx.policy.is_approver(ctx.actor) if tenant.allowed else tenant
    facts = [
        ("Name", ctx.actor.name or "(unknown)"),
        ("Entra object id", ctx.actor.object_id or "(unknown)"),
        ("Tenant", ctx.actor.tenant_id or "(unknown)"),
        ("Group administrator", "yes" if admin.allowed else "no"),
        ("Approver", "yes" if approver.allowed else "no"),
    ]
    if not admin.allowed and admin.reason:
        facts.append(("Why not", admin.reason))
    return Message(
        title="Who you are",
        facts=facts,
        data={
            "name": ctx.actor.name,
            "object_id": ctx.actor.object_id,
            "tenant_id": ctx.actor.tenant_id,
            "admin": admin.allowed,
            "approver": approver.allowed,
            "reason": admin.reason,
        },
    )


class AuditArgs(Args):
    actor: Text | None = None
    target: Text | None = None
    since: Text | None = None
    limit: Quantity = 20


@command(
    "audit",
    "audit [--actor X] [--target X] [--since 7d] [--limit N]",
    "Recent changes: who, when, what, before → after",
    AuditArgs,
    fields={"--since": "since"},
)
async def audit_list(ctx: Context, args: AuditArgs) -> Reply:
    since = audit.parse_since(args.since) if args.since else None
    events = await audit.search(args.actor, args.target, since, args.limit)
    rows = [
        [
            e.at.strftime("%Y-%m-%d %H:%M"),
            e.actor_name or e.actor_id,
            e.source,
            e.action,
            e.target,
            _short(e.before),
            _short(e.after),
        ]
        for e in events
    ]
    records = [
        Record(
            title=event_sentence(e.actor_name or e.actor_id, e.action, e.target, e.before, e.after),
            detail=f"{words.when(e.at, ctx.actor.timezone)} · via {e.source}",
        )
        for e in events
    ]
    return Table(
        title="Audit",
        columns=["When (UTC)", "Who", "Via", "Action", "Target", "Before", "After"],
        rows=rows,
        records=records,
        data=[audit.event_json(e) for e in events],
        note="" if rows else "No matching events.",
    )


@command("audit verify", "audit verify", "Check the audit hash chain end to end", Args)
async def audit_verify(ctx: Context, args: Args) -> Reply:
    ok, count, problem = await audit.verify_chain()
    if not ok:
        return Error(
            title="Audit chain broken",
            text=f"{problem}. {count} events checked before it.",
            code="audit-broken",
            data={"intact": False, "checked": count, "problem": problem},
        )
    return Message(
        title="Audit chain intact",
        text=f"All {count} events are linked and match their hashes.",
        data={"intact": True, "checked": count, "problem": None},
    )


@command("audit export", "audit export", "Every audit event, in order (JSON)", Args)
async def audit_export(ctx: Context, args: Args) -> Reply:
    events = [e async for e in audit.export()]
    return Message(
        title="Audit export",
        text=f"{len(events)} events. "
        "Use the CLI (`python -m bot audit export --json`) for the full file.",
        data=events,
    )


def _short(value: object) -> str:
    if value is None:
        return ""
    text = words.value(value)
    return text if len(text) <= 60 else text[:57] + "…"
