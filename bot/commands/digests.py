"""Usage digest commands: subscribe a conversation, list, stop, and show the digest now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.commands.answers import changed, next_page, paged
from bot.commands.args import Args, Quantity, Text
from bot.commands.registry import Context, command
from bot.commands.reply import Digest, FormField, Reply
from bot.domain import digests
from bot.domain.digests import DigestReport
from bot.domain.errors import InvalidInput
from bot.domain.paging import window
from bot.domain.reconcile import drift_lines

NOT_A_CONVERSATION = (
    "`digest here` subscribes the Teams conversation it is typed in: type it in the channel or "
    "chat that should get the digest."
)


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def digest_reply(
    report: DigestReport, *, page: int = 1, page_size: int = 25, command: str = "digest now"
) -> Digest:
    """The Digest reply for a report: page `page` of its products, the summary in plain words."""
    page, pages, _ = window(len(report.products), page, page_size)
    threshold = report.threshold_percent
    lines: list[str] = []
    if report.pool_alerts:
        lines.append(
            f"Pools at or over {threshold} %: "
            + ", ".join(f"{p.name} ({_pct(p.utilisation)})" for p in report.pool_alerts)
        )
    if report.subscription_alerts_total:
        lines.append(
            f"Subscriptions using {threshold} % or more of an allocation: "
            f"{report.subscription_alerts_total}"
        )
    for f in report.forecasts[: digests.LIST_LIMIT]:
        lines.append(
            f"{f.product} runs out in about {f.days:.0f} days ({f.runs_out_on:%Y-%m-%d}) "
            f"at {f.per_day:+.1f} a day"
        )
    if report.changes_since is not None:
        lines.append(
            f"Changes since {report.changes_since:%Y-%m-%d %H:%M} UTC: {report.changes_total}"
        )
    lines.append(f"Pending approvals: {report.approvals_total}")
    lines.extend(f"Teams and the ledger: {line}" for line in drift_lines(report.drift))
    if report.provisioning_pending or report.provisioning_failed:
        lines.append(
            f"Numbers in Teams: {report.provisioning_pending} being set up, "
            f"{report.provisioning_failed} failed"
        )
    start = (page - 1) * page_size
    for p in report.products[start : start + page_size]:
        capacity = "open" if p.open_capacity else f"{p.capacity:,}"
        util = "" if p.open_capacity else f" ({_pct(p.utilisation)})"
        lines.append(
            f"  {p.name}: {p.allocated:,} of {capacity} allocated{util}, {p.in_use:,} in use"
        )
    facts = [
        ("Products", str(len(report.products))),
        ("Pools over threshold", str(len(report.pool_alerts))),
        ("Subscriptions over threshold", str(report.subscription_alerts_total)),
        ("Pending approvals", str(report.approvals_total)),
    ]
    return Digest(
        title=f"Usage digest — {report.generated_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
        text="\n".join(lines),
        facts=facts,
        data={**report.as_json(), "page": page, "pages": pages},
        report=report,
        page=page,
        pages=pages,
        page_size=page_size,
        next_command=next_page(command, page, pages),
    )


class DigestHereArgs(Args):
    schedule: Text
    at: Text | None = None
    tz: Text | None = None


@command(
    "digest here",
    "digest here DAILY|WEEKLY|CRON [at HH:MM] [TZ]",
    "Post the usage digest to this conversation on a schedule",
    DigestHereArgs,
    mutating=True,
    fields={"DAILY|WEEKLY|CRON": "schedule", "HH:MM": "at", "TZ": "tz"},
    more_usage=(
        "digest here daily at 08:00 Europe/London",
        'digest here "0 8 * * 1-5" America/New_York   (cron: minute hour day month weekday)',
    ),
    form=(
        FormField(
            "schedule",
            "How often",
            kind="choice",
            choices=[("Daily", "daily"), ("Weekly (Mondays)", "weekly")],
        ),
        FormField("at", "At (HH:MM, 24-hour clock)", required=False, placeholder="08:00"),
        FormField("tz", "Time zone", required=False, placeholder="Europe/London"),
    ),
)
async def digest_here(ctx: Context, args: DigestHereArgs) -> Reply:
    if not ctx.actor.conversation_id:
        raise InvalidInput(NOT_A_CONVERSATION)
    schedule = digests.parse_schedule(args.schedule, args.at, args.tz)
    outcome = await digests.subscribe(
        ctx.actor.origin(), ctx.actor.conversation_id, schedule, dry_run=args.dry_run
    )
    return changed(outcome)


class DigestsArgs(Args):
    page: Quantity = 1


@command(
    "digests", "digests [--page N]", "The scheduled usage digests and where they go", DigestsArgs
)
async def digest_list(ctx: Context, args: DigestsArgs) -> Reply:
    subs = await digests.list_subscriptions()
    last = await digests.last_sent([s.id for s, _ in subs])
    now = datetime.now(UTC)
    rows, data = [], []
    for sub, conversation in subs:
        schedule = digests.schedule_of(sub)
        nxt = schedule.next_after(now)
        kind = str(
            (conversation.reference.get("conversation") or {}).get("conversationType") or "chat"
        )
        where = (
            "this conversation"
            if conversation.conversation_id == ctx.actor.conversation_id
            else kind
        )
        state = "active" if conversation.active else "bot removed — skipped"
        sent = last.get(sub.id)
        rows.append(
            [
                str(sub.id),
                sub.description,
                where,
                f"{nxt.astimezone(schedule.zone):%Y-%m-%d %H:%M}",
                f"{sent.astimezone(schedule.zone):%Y-%m-%d %H:%M}" if sent else "never",
                state,
            ]
        )
        data.append(
            {
                **digests.subscription_view(sub, conversation),
                "next": nxt.isoformat(),
                "last_sent": sent.isoformat() if sent else None,
            }
        )
    return paged(
        "Usage digests",
        ["ID", "Schedule", "Where", "Next (local)", "Last sent (local)", "State"],
        rows,
        data,
        args.page,
        ctx.settings.page_size,
        "digests",
        note=""
        if rows
        else "No digests yet. Type `digest here daily at 08:00 Europe/London` "
        "in a channel or chat to subscribe it.",
    )


class DigestStopArgs(Args):
    id: Quantity


@command(
    "digest stop",
    "digest stop ID",
    "Stop a scheduled digest",
    DigestStopArgs,
    mutating=True,
    form=(FormField("id", "Digest ID (see `digests`)", kind="number"),),
)
async def digest_stop(ctx: Context, args: DigestStopArgs) -> Reply:
    return changed(await digests.stop(ctx.actor.origin(), args.id, dry_run=args.dry_run))


class DigestNowArgs(Args):
    page: Quantity = 1


@command(
    "digest now",
    "digest now [--page N]",
    "Show the usage digest now: usage, alerts, forecast, changes, approvals",
    DigestNowArgs,
)
async def digest_now(ctx: Context, args: DigestNowArgs) -> Reply:
    now = datetime.now(UTC)
    # Changes since this conversation's last scheduled digest, else over the last day.
    last = (
        await digests.last_sent_to(ctx.actor.conversation_id) if ctx.actor.conversation_id else None
    )
    since = last or now - timedelta(days=1)
    report = await digests.build_report(now, ctx.settings.alert_threshold_percent, since=since)
    return digest_reply(report, page=args.page, page_size=ctx.settings.page_size)
