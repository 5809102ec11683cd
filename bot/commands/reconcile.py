"""`reconcile`: does the customer's tenant really have what the ledger says? (SPEC §9, issue 18)

`reconcile [SUBSCRIPTION]` reads the tenant (every page of its number assignments, its users'
licenses, its SKUs), lists each difference with what each side says, and keeps them so that
`reconcile fix ID --to teams|ledger` (a card's buttons) and `reconcile fix-all RUN --kind K
--to teams|ledger` (with a dry run first) can fix them either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bot.commands.args import Args, Quantity, Text
from bot.commands.ledger import changed
from bot.commands.m365 import tenant_graph
from bot.commands.provisioned import rules
from bot.commands.registry import Context, command
from bot.commands.reply import Error, FormField, Message, Reply
from bot.domain import reconcile
from bot.domain.errors import DomainError
from bot.domain.models import Drift, DriftKind, DriftState, ReconcileRun
from bot.provisioning import reconcile as reader
from bot.provisioning.teams_numbers import Refused, Retryable

SHOWN = 12  # differences a card lists one by one; the rest are counted (all are in --json)
Side = Literal["teams", "ledger"]
_KINDS = [(k.value, k.value) for k in DriftKind]
_SIDES = [("Teams (match the ledger)", "teams"), ("the ledger (match Teams)", "ledger")]


@dataclass
class DriftReport(Message):
    """Differences between tenants and the ledger (one section per subscription), or what a
    fix-all did or would do. The Teams renderer shows it with its buttons
    (bot.teams.drift_card); other front doors read `text` and `data`."""

    sections: list[dict[str, Any]] = field(default_factory=list)
    # A fix-all preview: the command that carries out exactly what it showed.
    go_ahead: str | None = None
    # The reader's time zone (IANA name) for the moments the card shows; None: UTC.
    zone: str | None = None


def drift_view(d: Drift) -> dict[str, Any]:
    return {
        "id": d.id,
        "kind": d.kind.value,
        "what": reconcile.KIND_WORDS[d.kind],
        "description": reconcile.describe(d),
        "number": d.e164,
        "license": d.license,
        "sku": d.sku,
        "ledger": {"account": d.ledger_upn, "state": d.ledger_state},
        "teams": {"account": d.teams_upn, "object_id": d.teams_object_id, "state": d.teams_state},
        "state": d.state.value,
        "fixed_to": d.fixed_to,
        "fixed_by": d.fixed_by,
        "fixed_at": d.fixed_at.isoformat() if d.fixed_at else None,
    }


def run_view(run: ReconcileRun, drifts: list[Drift]) -> dict[str, Any]:
    open_ = [d for d in drifts if d.state is DriftState.OPEN]
    return {
        "run": run.id,
        "subscription": run.subscription_code,
        "tenant": run.tenant_id,
        "trigger": run.trigger,
        "taken_at": run.started_at.isoformat(),
        "graph_calls": run.graph_calls,
        "counts": reconcile.counts(drifts),
        "open": len(open_),
        "differences": [drift_view(d) for d in drifts],
    }


def _summary(view: dict[str, Any]) -> str:
    counts = view["counts"]
    if not counts:
        return f"{view['subscription']}: Teams and the ledger agree."
    parts = [f"{n} {reconcile.KIND_WORDS[DriftKind(k)]}" for k, n in counts.items()]
    return f"{view['subscription']}: {', '.join(parts)}."


class ReconcileArgs(Args):
    subscription: Text | None = None


@command(
    "reconcile",
    "reconcile [SUBSCRIPTION]",
    "Compare what customers' Teams and Microsoft 365 tenants hold with the ledger, and list "
    "every difference (each fixable either way)",
    ReconcileArgs,
)
async def reconcile_command(ctx: Context, args: ReconcileArgs) -> Reply:
    reason = ctx.settings.provisioning_off_reason
    if reason:
        return Error(title="Reconcile is not available", text=reason, code="unavailable")
    if args.subscription:
        codes = [(await reconcile.tenant_of(args.subscription))[0].code]
    else:
        codes = [s.code for s in await reconcile.linked_subscriptions()]
        if not codes:
            return Message(
                title="Nothing to reconcile",
                text="No customer is linked to a Microsoft tenant with provisioning on "
                "(`customer link NAME --tenant TENANT-ID`).",
                data={"runs": []},
            )
    views = []
    read: dict[str, Any] = {}  # each tenant read once, however many of its subscriptions
    try:
        async with tenant_graph(ctx) as graph:
            for code in codes:
                run = await reader.run(ctx.actor.origin(), graph, code, "command", read)
                views.append(run_view(run, await reconcile.drifts_of(run.id)))
    except Retryable as exc:
        return Error(
            title="Microsoft Graph did not answer",
            text=f"The tenant could not be read: {exc.message} Nothing was compared or "
            "changed; try again in a few minutes.",
            code="unavailable",
        )
    except Refused as exc:
        return Error(
            title="Microsoft Graph refused",
            text=f"The tenant could not be read: {exc.message} Nothing was changed.",
            code="refused",
        )
    total = sum(len(v["differences"]) for v in views)
    title = (
        "Teams and the ledger agree"
        if not total
        else f"{total} difference{'s' if total != 1 else ''} between Teams and the ledger"
    )
    return DriftReport(
        title=title,
        text=" ".join(_summary(v) for v in views),
        sections=views,
        data={"runs": views},
        zone=ctx.actor.timezone,
    )


class FixArgs(Args):
    id: Quantity
    to: Side


@command(
    "reconcile fix",
    "reconcile fix ID --to teams|ledger",
    "Fix one difference a reconcile found: make Teams match the ledger (--to teams) or the "
    "ledger match Teams (--to ledger)",
    FixArgs,
    mutating=True,
    form=(
        FormField("id", "Difference", kind="number"),
        FormField("to", "Fix", kind="choice", choices=_SIDES),
    ),
)
async def reconcile_fix(ctx: Context, args: FixArgs) -> Reply:
    outcome = await reconcile.fix(
        ctx.actor.origin(),
        args.id,
        args.to,
        rules(ctx.settings),
        quarantine_days=ctx.settings.quarantine_days,
        dry_run=args.dry_run,
    )
    return changed(outcome)


class FixAllArgs(Args):
    run: Quantity
    kind: DriftKind
    to: Side


@command(
    "reconcile fix-all",
    "reconcile fix-all RUN --kind K --to teams|ledger",
    "Fix every open difference of one kind found by a reconcile run, either way",
    FixAllArgs,
    mutating=True,
    form=(
        FormField("run", "Reconcile run", kind="number"),
        FormField("kind", "Kind of difference", kind="choice", choices=_KINDS),
        FormField("to", "Fix", kind="choice", choices=_SIDES),
    ),
)
async def reconcile_fix_all(ctx: Context, args: FixAllArgs) -> Reply:
    result = await reconcile.fix_all(
        ctx.actor.origin(),
        args.run,
        args.kind,
        args.to,
        rules(ctx.settings),
        quarantine_days=ctx.settings.quarantine_days,
        dry_run=args.dry_run,
    )
    words = reconcile.KIND_WORDS[args.kind]
    side = "Teams" if args.to == "teams" else "the ledger"
    done = "would be fixed" if args.dry_run else "fixed"
    title = (
        ("Dry run — nothing changed: " if args.dry_run else "")
        + f"{len(result.fixed)} of {len(result.fixed) + len(result.refused)} “{words}” {done} "
        f"in {side}"
    )
    go_ahead = None
    if args.dry_run and result.fixed:
        go_ahead = f"reconcile fix-all {args.run} --kind {args.kind.value} --to {args.to}"
    return DriftReport(
        title=title,
        text=" ".join(m for _, m in result.fixed[:SHOWN]),
        facts=[(f"#{i} not fixed", why) for i, why in result.refused[:SHOWN]],
        go_ahead=go_ahead,
        ok=not result.refused,
        data={
            "run": args.run,
            "kind": args.kind.value,
            "to": args.to,
            "dry_run": args.dry_run,
            "fixed": [{"id": i, "done": m} for i, m in result.fixed],
            "refused": [{"id": i, "reason": m} for i, m in result.refused],
        },
    )


async def nightly(origin: Any, graph: Any) -> dict[str, dict[str, int]]:
    """Reconcile every linked subscription (the scheduler's nightly run). Subscription →
    counts of what was found; a subscription whose tenant could not be read is skipped (its
    previous run stands) and logged by the caller."""
    found: dict[str, dict[str, int]] = {}
    for sub in await reconcile.linked_subscriptions():
        try:
            run = await reader.run(origin, graph, sub.code, "schedule")
        except (Retryable, Refused, DomainError):
            continue
        found[sub.code] = reconcile.counts(await reconcile.drifts_of(run.id))
    return found
