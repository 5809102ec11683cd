"""Commands over customer licenses and service packs.

`license assign` and `pack assign` name one or more accounts and answer with a Progress reply:
per account what was assigned, and why the rest were not. While they run, a front door that
offers a `progress` service (`ctx.services.progress`, a callable taking a `Progress` reply
with `finished=False`, returning None or an awaitable) is given the progress so far, at most
once every PROGRESS_INTERVAL_SECONDS — Teams uses it to update the card as the work goes on.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import time
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BeforeValidator

from bot.commands.answers import changed
from bot.commands.args import Args, Text
from bot.commands.m365 import outcomes, shortfall
from bot.commands.provisioned import rules
from bot.commands.registry import Context, command
from bot.commands.reply import FormField, Progress, Reply, Table
from bot.domain import licensing
from bot.domain.licensing import MAX_BULK, BulkOutcome
from bot.domain.models import JobState, ProvisioningJob

log = logging.getLogger("bot.commands.licensing")

PROGRESS_INTERVAL_SECONDS = 1.0
_SEPARATORS = re.compile(r"[\s,;]+")


def _names(value: Any) -> list[str]:
    """`a,b c;d` or a list of such → [a, b, c, d] (card fields and typed lists alike)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError("must be text: names separated by commas")
    if sum(len(i) for i in items) > 200_000:
        raise ValueError("is too long")
    names = [n for i in items for n in _SEPARATORS.split(i) if n]
    if not names:
        raise ValueError("is empty")
    if len(names) > MAX_BULK:
        raise ValueError(f"names {len(names):,}; at most {MAX_BULK:,} at a time")
    if any(len(n) > 255 for n in names):
        raise ValueError("holds a name longer than 255 characters")
    return names


NameList = Annotated[list[str], BeforeValidator(_names)]


class ProgressRelay:
    """Hands a bulk operation's progress to the front door, a few times a second at most."""

    def __init__(self, sink: Any, title: str) -> None:
        self._sink = sink
        self._title = title
        self._last = time.monotonic()

    async def __call__(
        self, done: int, total: int, succeeded: Sequence[str], failed: Sequence[tuple[str, str]]
    ) -> None:
        now = time.monotonic()
        # The finished answer is the command's reply; only the way there is relayed.
        if done >= total or now - self._last < PROGRESS_INTERVAL_SECONDS:
            return
        self._last = now
        reply = Progress(
            title=self._title,
            done=done,
            total=total,
            succeeded=list(succeeded),
            failed=list(failed),
            finished=False,
            text=f"{done} of {total} done…",
        )
        result = self._sink(reply)
        if inspect.isawaitable(result):
            await result


def _relay(ctx: Context, title: str) -> ProgressRelay | None:
    sink = ctx.services.progress
    return ProgressRelay(sink, title) if sink is not None else None


def progress_reply(
    outcome: BulkOutcome, jobs: dict[int, ProvisioningJob] | None = None
) -> Progress:
    """The bulk answer; with `jobs` (the accounts' license jobs as they stand), Microsoft 365's
    answer per account too: a refusal moves the account to the failed ones, with Graph's words."""
    notes = dict(outcome.notes)
    failed = list(outcome.failed)
    succeeded = list(outcome.succeeded)
    data = outcome.as_json()
    m365: dict[str, dict[str, str | None]] = {}
    for upn, job_id in outcome.jobs.items():
        job = (jobs or {}).get(job_id)
        if job is None:
            continue
        m365[upn] = {"state": job.state.value, "reason": job.reason}
        if job.state is JobState.FAILED:
            succeeded.remove(upn)
            failed.append((upn, _why(job)))
        elif job.state is JobState.DONE:
            notes[upn] = "set up in Microsoft 365"
        else:
            notes[upn] = "being set up in Microsoft 365"
    if m365:
        data["microsoft_365"] = m365
    if outcome.jobs and not outcome.dry_run:
        # The card is drawn again when the last of these ends (bot.teams.provisioning).
        data["provisioning"] = {"jobs": sorted(outcome.jobs.values())}
    # The title counts what Microsoft 365 refused too, not only what the ledger did.
    message = dataclasses.replace(outcome, succeeded=succeeded).message
    refused = len(failed) - len(outcome.failed)
    if refused:
        message = f"{message[:-1]}; Microsoft 365 refused {refused}."
    title = ("Dry run — nothing changed: " if outcome.dry_run else "") + message
    return Progress(
        title=title,
        done=len(succeeded) + len(failed),
        total=outcome.total,
        succeeded=[f"{u} ({notes[u]})" if u in notes else u for u in succeeded],
        failed=failed,
        finished=True,
        ok=not failed,
        text=f"Licenses: {', '.join(outcome.licenses)}." + _in_m365(outcome, jobs),
        data=data,
    )


_FOR_WHOM = re.compile(r"^Microsoft 365 did not (?:add|remove) .*? for \S+: ")
_PACK_BACK = re.compile(r" The rest of service pack .* \(a pack is all or nothing\)\.$")
_GRAPH = re.compile(r"^Microsoft Graph refused the request \(HTTP (\d+) [A-Za-z_]+: (.*)\)\.$")


def _why(job: ProvisioningJob) -> str:
    """A failed job's reason on one line of a bulk answer (which names the account already):
    Graph's own words, and what the ledger did about it."""
    reason = _PACK_BACK.sub("", _FOR_WHOM.sub("", job.reason or "no reason given"))
    found = _GRAPH.match(reason)
    if found:
        reason = f"{found.group(2).rstrip('.')} (HTTP {found.group(1)})."
    if job.pack:
        return f"{reason} Service pack {job.pack} taken back in the ledger (all or nothing)."
    return f"{reason} Kept in the ledger (`reconcile` shows it)."


_NOT_LEDGER = ("microsoft_365", "provisioning")


def bulk_of(reply: Reply) -> tuple[list[int], dict[str, Any]] | None:
    """A bulk license answer with jobs → (its job ids, the ledger's outcome as_json), else
    None: what its card needs to be drawn again when the jobs end (`bulk_card_reply`)."""
    if not isinstance(reply, Progress) or not isinstance(reply.data, dict):
        return None
    found = reply.data.get("provisioning")
    ids = found.get("jobs") if isinstance(found, dict) else None
    if not isinstance(ids, list) or not ids:
        return None
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return None
    return list(ids), {k: v for k, v in reply.data.items() if k not in _NOT_LEDGER}


def bulk_card_reply(outcome: dict[str, Any], jobs: Sequence[ProvisioningJob]) -> Progress:
    """A bulk license answer drawn again from what the ledger did and its jobs as they stand."""
    return progress_reply(BulkOutcome.from_json(outcome), {j.id: j for j in jobs})


def _in_m365(outcome: BulkOutcome, jobs: dict[int, ProvisioningJob] | None) -> str:
    if not outcome.jobs or outcome.dry_run:
        return ""
    if jobs and all(j.state in (JobState.DONE, JobState.FAILED) for j in jobs.values()):
        return " Microsoft 365 answered for every account."
    count = len(outcome.jobs)
    return (
        f" Recorded in the ledger; being set up in Microsoft 365 for {count} account(s) now. "
        "`provisioning` shows how each one ends; in Teams this card is updated when all have."
    )


# ----- licenses --------------------------------------------------------------------------


class LicenseAssignArgs(Args):
    license: Text
    upn: NameList


@command(
    "license assign",
    "license assign LICENSE to UPN[,UPN...]",
    "Assign a license to Teams users or resource accounts",
    LicenseAssignArgs,
    mutating=True,
    form=(
        FormField("license", "License", kind="choice"),
        FormField("upn", "Users or resource accounts (UPNs, separated by commas)"),
    ),
)
async def license_assign(ctx: Context, args: LicenseAssignArgs) -> Reply:
    provisioning = rules(ctx.settings)
    product = await licensing.find_license(args.license)
    refusal = await shortfall(ctx, provisioning, args.upn, [product])
    if refusal is not None:
        return refusal
    outcome = await licensing.assign_license(
        ctx.actor.origin(),
        args.license,
        args.upn,
        dry_run=args.dry_run,
        on_progress=_relay(ctx, f"Assigning {args.license}"),
        rules=provisioning,
    )
    return progress_reply(outcome, await outcomes(ctx, outcome.jobs.values()))


class LicenseUnassignArgs(Args):
    license: Text
    upn: Text


@command(
    "license unassign",
    "license unassign LICENSE from UPN",
    "Take a license away from a Teams user or resource account",
    LicenseUnassignArgs,
    mutating=True,
    form=(
        FormField("license", "License", kind="choice"),
        FormField("upn", "User or resource account (UPN)"),
    ),
)
async def license_unassign(ctx: Context, args: LicenseUnassignArgs) -> Reply:
    outcome = await licensing.unassign_license(
        ctx.actor.origin(), args.license, args.upn, dry_run=args.dry_run, rules=rules(ctx.settings)
    )
    after = dict(outcome.after) if isinstance(outcome.after, dict) else {}
    job = after.pop("provisioning_job", None)
    reply = changed(outcome)
    reply.after = after
    if job is not None:
        reply.text = (
            f"{outcome.message} Recorded in the ledger; being taken out of Microsoft 365 now "
            f"(job {job})."
        )
        reply.data["provisioning"] = {"job": job, "state": "pending"}
    return reply


# ----- service packs ---------------------------------------------------------------------


@command("packs", "packs", "List service packs and their licenses", Args)
async def packs(ctx: Context, args: Args) -> Reply:
    found = await licensing.list_packs()
    return Table(
        title="Service packs",
        columns=["Pack", "Licenses"],
        rows=[[name, ", ".join(names)] for name, names in found],
        data=[{"name": name, "licenses": names} for name, names in found],
        note="" if found else "No service packs yet. Create one with `pack create`.",
    )


class PackCreateArgs(Args):
    name: Text
    license: NameList


@command(
    "pack create",
    "pack create NAME LICENSE [LICENSE...]",
    "Create a service pack: a bundle of licenses assigned in one step",
    PackCreateArgs,
    mutating=True,
    form=(
        FormField("name", "Pack name (e.g. VOICE-STANDARD)"),
        FormField("license", "Licenses (separated by commas)"),
    ),
)
async def pack_create(ctx: Context, args: PackCreateArgs) -> Reply:
    return changed(
        await licensing.create_pack(
            ctx.actor.origin(), args.name, args.license, dry_run=args.dry_run
        )
    )


class PackAssignArgs(Args):
    name: Text
    upn: NameList


@command(
    "pack assign",
    "pack assign NAME to UPN[,UPN...]",
    "Assign a service pack to Teams users or resource accounts: each gets all of it or none",
    PackAssignArgs,
    mutating=True,
    form=(
        FormField("name", "Service pack", kind="choice"),
        FormField("upn", "Users or resource accounts (UPNs, separated by commas)"),
    ),
)
async def pack_assign(ctx: Context, args: PackAssignArgs) -> Reply:
    provisioning = rules(ctx.settings)
    products = await licensing.pack_licenses(await licensing.find_pack(args.name))
    refusal = await shortfall(ctx, provisioning, args.upn, products)
    if refusal is not None:
        return refusal
    outcome = await licensing.assign_pack(
        ctx.actor.origin(),
        args.name,
        args.upn,
        dry_run=args.dry_run,
        on_progress=_relay(ctx, f"Assigning service pack {args.name}"),
        rules=provisioning,
    )
    return progress_reply(outcome, await outcomes(ctx, outcome.jobs.values()))
