"""Commands open to everyone (help, whoami) and the audit commands."""

from __future__ import annotations

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
        return Table(
            title=f"Help: {wanted}", columns=["Usage", "What it does"], rows=rows, data=data
        )
    specs = sorted(REGISTRY.values(), key=lambda s: s.name)
    rows = [[s.usage, s.summary] for s in specs]
    data = [_described(s) for s in specs]
    return Table(
        title="Fusion Products bot — commands",
        columns=["Command", "What it does"],
        rows=rows,
        data=data,
        note="Names with spaces go in quotes. Every change takes --dry-run. "
        "Type a change command alone to get a form. `help COMMAND` for details.",
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
            detail=f"{e.at:%-d %b %Y %H:%M} UTC · via {e.source}",
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
