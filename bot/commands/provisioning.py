"""Commands of provisioning into customers' Teams tenants: link a customer to its tenant, list
jobs, retry a failed one, set a number's emergency location (SPEC §9)."""

from __future__ import annotations

from typing import Literal

from bot.commands.args import Args, Quantity, Text
from bot.commands.ledger import changed
from bot.commands.numbers import next_page
from bot.commands.registry import Context, command
from bot.commands.reply import FormField, Reply, Table
from bot.domain import license_jobs, numbers
from bot.domain import provisioning as jobs
from bot.domain.models import JobState


class LinkArgs(Args):
    name: Text
    tenant: Text | None = None
    provisioning: Literal["on", "off"] | None = None


@command(
    "customer link",
    "customer link NAME [--tenant TENANT-ID] [--provisioning on|off]",
    "Link a customer to its Microsoft tenant (where its numbers are provisioned), or switch "
    "its provisioning on or off",
    LinkArgs,
    mutating=True,
    form=(
        FormField("name", "Customer", kind="choice"),
        FormField("tenant", "Entra tenant id", required=False),
        FormField(
            "provisioning",
            "Provisioning into Teams",
            kind="choice",
            required=False,
            choices=[("on", "on"), ("off", "off")],
        ),
    ),
)
async def customer_link(ctx: Context, args: LinkArgs) -> Reply:
    switch = None if args.provisioning is None else args.provisioning == "on"
    outcome = await jobs.link_customer(
        ctx.actor.origin(), args.name, args.tenant, switch, dry_run=args.dry_run
    )
    reply = changed(outcome)
    reason = ctx.settings.provisioning_off_reason
    if reason:
        reply.text = f"{outcome.message} {reason}"
    return reply


class JobsArgs(Args):
    subscription: Text | None = None
    state: JobState | None = None
    page: Quantity = 1


@command(
    "provisioning",
    "provisioning [SUBSCRIPTION] [--state pending|sent|done|failed] [--page N]",
    "List the jobs that write numbers into customers' Teams tenants",
    JobsArgs,
)
async def provisioning_list(ctx: Context, args: JobsArgs) -> Reply:
    found = await jobs.list_jobs(
        args.subscription, args.state, page=args.page, size=ctx.settings.page_size
    )
    views = [jobs.job_view(j) for j in found.items]
    rows = [
        [
            str(v["id"]),
            v["action"],
            v["number"] or ", ".join(e["product"] for e in v.get("licenses") or []),
            v["account"],
            v["state"] + (f": {v['reason']}" if v["reason"] else ""),
        ]
        for v in views
    ]
    words = ["provisioning"]
    if args.subscription:
        words.append(args.subscription)
    if args.state is not None:
        words += ["--state", args.state.value]
    reason = ctx.settings.provisioning_off_reason
    note = reason if reason else ("" if rows else "No provisioning jobs match.")
    return Table(
        title=f"Provisioning jobs ({found.total:,})",
        columns=["Job", "Action", "Number", "Account", "State"],
        rows=rows,
        data={"total": found.total, "page": found.page, "pages": found.pages, "jobs": views},
        note=note,
        page=found.page,
        pages=found.pages,
        next_command=next_page(words, found.page, found.pages),
    )


class RetryArgs(Args):
    id: Quantity


@command(
    "provisioning retry",
    "provisioning retry ID",
    "Send a failed provisioning job to Teams again",
    RetryArgs,
    mutating=True,
    form=(FormField("id", "Job", kind="number"),),
)
async def provisioning_retry(ctx: Context, args: RetryArgs) -> Reply:
    job = await jobs.find_job(args.id)
    if job.action in license_jobs.LICENSE_ACTIONS:
        return changed(await license_jobs.retry(ctx.actor.origin(), job, dry_run=args.dry_run))
    return changed(await jobs.retry(ctx.actor.origin(), args.id, dry_run=args.dry_run))


class LocationArgs(Args):
    e164: Text
    location: Text | None = None


@command(
    "number location",
    "number location E164 [LOCATION]",
    "Set the emergency location (Teams location id) a number carries into Teams; none clears it",
    LocationArgs,
    mutating=True,
    form=(
        FormField("e164", "Number (+E164)"),
        FormField("location", "Emergency location id", required=False),
    ),
)
async def number_location(ctx: Context, args: LocationArgs) -> Reply:
    return changed(
        await numbers.set_location(
            ctx.actor.origin(), args.e164, args.location, dry_run=args.dry_run
        )
    )
