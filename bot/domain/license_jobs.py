"""Microsoft 365 licenses in the provisioning outbox (SPEC §9, issue 18).

A license product whose `sku` names a Microsoft 365 SKU (a part number such as MCOEV, or a SKU
id) is provisioned like a number: `license assign|unassign` and `pack assign` write one job per
account in the ledger change's transaction (`enqueue`), and the workers send it as one
`assignLicense` call (bot/provisioning/license_jobs.py). Licenses without a SKU stay ledger-only.

A pack stays all-or-nothing per account in Microsoft 365 too: the job of an account's share of
a pack carries every license the pack gave it (those without a SKU too), and when Microsoft 365
refuses any of them, `take_back` removes them all from the account in the ledger, in the same
transaction that records the job as failed, and audits why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.domain import provisioning as jobs
from bot.domain.change import Change, Origin, change
from bot.domain.directory import find_account
from bot.domain.errors import Conflict, DomainError
from bot.domain.ledger import Outcome
from bot.domain.models import (
    Account,
    BulkCard,
    Customer,
    JobAction,
    JobState,
    LicenseAssignment,
    Product,
    ProvisioningJob,
    Subscription,
)

LICENSE_ACTIONS = frozenset({JobAction.LICENSE_ADD, JobAction.LICENSE_REMOVE})


def entries(job: ProvisioningJob) -> list[dict[str, Any]]:
    """The licenses a job carries: [{"product": NAME, "sku": REF or None}]."""
    found = job.licenses if isinstance(job.licenses, list) else []
    return [e for e in found if isinstance(e, dict) and isinstance(e.get("product"), str)]


def sku_refs(job: ProvisioningJob) -> list[str]:
    return [str(e["sku"]) for e in entries(job) if e.get("sku")]


def names(job: ProvisioningJob) -> str:
    return ", ".join(e["product"] for e in entries(job)) or "no license"


async def tenant_of(conn: Any, subscription_id: int, rules: jobs.Rules | None) -> str | None:
    """The tenant a subscription's changes are provisioned into, or None (ledger only)."""
    if rules is None or not rules.enabled:
        return None
    sub = await Subscription.filter(id=subscription_id).using_db(conn).get()
    customer = await Customer.filter(id=sub.customer_id).using_db(conn).get()
    if not customer.tenant_id or not customer.provisioning:
        return None
    return str(customer.tenant_id)


async def enqueue(
    ch: Change,
    rules: jobs.Rules | None,
    action: JobAction,
    account: Account,
    products: Sequence[Product],
    pack: str | None = None,
) -> ProvisioningJob | None:
    """Write the job that adds (or removes) `products` for `account` in Microsoft 365, inside
    the ledger change `ch`; None when none of them names a SKU or provisioning does not apply."""
    if not any(p.sku for p in products):
        return None
    tenant = await tenant_of(ch.conn, account.subscription_id, rules)
    if tenant is None:
        return None
    sub = await Subscription.filter(id=account.subscription_id).using_db(ch.conn).get()
    carried = [{"product": p.name, "sku": p.sku or None} for p in products]
    job = await ProvisioningJob.create(
        using_db=ch.conn,
        action=action,
        state=JobState.PENDING,
        tenant_id=tenant,
        subscription_code=sub.code,
        e164=None,
        account_id=account.id,
        upn=account.upn,
        object_id=account.object_id,
        number_type="",
        licenses=carried,
        pack=pack,
        due_at=datetime.now(UTC),
    )
    ch.record(
        "provisioning.job",
        f"job:{job.id}",
        None,
        {
            "state": JobState.PENDING.value,
            "action": action.value,
            "account": account.upn,
            "tenant": tenant,
            "licenses": carried,
            "pack": pack,
        },
    )
    return job


# ----- the card of a bulk answer ----------------------------------------------------------


async def set_bulk_card(
    job_ids: Sequence[int], conversation_id: str, activity_id: str, outcome: dict[str, Any]
) -> tuple[BulkCard, list[ProvisioningJob]]:
    """Remember where the answer card of a bulk license command is and what the ledger did
    (`outcome`: BulkOutcome.as_json()), on its jobs, so whichever worker ends the last of them
    can draw the card again. The same jobs shown again (a redelivered activity) move their one
    card to the new place. Returns the card and its jobs as they stand after the write."""
    wanted = sorted(set(job_ids))
    async with change(jobs.ORIGIN) as ch:
        rows = await ProvisioningJob.filter(id__in=wanted).using_db(ch.conn).order_by("id")
        known = next((r.bulk_card_id for r in rows if r.bulk_card_id is not None), None)
        card = await BulkCard.filter(id=known).using_db(ch.conn).first() if known else None
        if card is None:
            card = await BulkCard.create(
                using_db=ch.conn,
                conversation_id=conversation_id[:512],
                activity_id=activity_id[:255],
                outcome=outcome,
            )
        else:
            await (
                BulkCard.filter(id=card.id)
                .using_db(ch.conn)
                .update(conversation_id=conversation_id[:512], activity_id=activity_id[:255])
            )
        await (
            ProvisioningJob.filter(id__in=[r.id for r in rows])
            .using_db(ch.conn)
            .update(
                bulk_card_id=card.id,
                conversation_id=conversation_id[:512],
                card_activity_id=activity_id[:255],
            )
        )
    # Read after the commit: a job ended meanwhile is seen ended here, or its worker saw the
    # card (one of the two draws the card when the last job ends).
    return await bulk_card(card.id)


async def bulk_card(card_id: int) -> tuple[BulkCard, list[ProvisioningJob]]:
    card = await BulkCard.get(id=card_id)
    return card, list(await ProvisioningJob.filter(bulk_card_id=card_id).order_by("id"))


# ----- free units before assigning ----------------------------------------------------------


@dataclass(frozen=True)
class Demand:
    """Units of one SKU that a request would take in one tenant."""

    tenant: str
    customer: str
    product: str
    sku: str
    needed: int
    waiting: int  # units of open license-add jobs of that tenant not yet in Microsoft 365


async def demand(
    upns: Sequence[str], products: Sequence[Product], rules: jobs.Rules | None
) -> list[Demand]:
    """What assigning `products` to `upns` would take from each tenant's SKUs: for each
    provisioned tenant and product with a SKU, the accounts that do not hold it yet."""
    with_sku = [p for p in products if p.sku]
    if not with_sku or rules is None or not rules.enabled:
        return []
    needed: dict[tuple[str, int], int] = {}
    customers: dict[str, str] = {}
    for upn in upns:
        try:
            account = await find_account(upn)
        except DomainError:
            continue  # the bulk answer says so for this account
        tenant = await tenant_of(None, account.subscription_id, rules)
        if tenant is None:
            continue
        if tenant not in customers:
            sub = await Subscription.filter(id=account.subscription_id).get()
            customers[tenant] = (await Customer.get(id=sub.customer_id)).name
        held = set(
            await LicenseAssignment.filter(account_id=account.id).values_list(
                "product_id", flat=True
            )
        )
        for product in with_sku:
            if product.id not in held:
                needed[(tenant, product.id)] = needed.get((tenant, product.id), 0) + 1
    if not needed:
        return []
    open_jobs = await ProvisioningJob.filter(
        action=JobAction.LICENSE_ADD,
        state__in=jobs.OPEN,
        tenant_id__in=sorted({t for t, _ in needed}),
    )
    found = []
    for (tenant, product_id), count in sorted(needed.items()):
        product = next(p for p in with_sku if p.id == product_id)
        ref = str(product.sku).lower()
        waiting = sum(
            1
            for job in open_jobs
            if job.tenant_id == tenant and ref in {r.lower() for r in sku_refs(job)}
        )
        found.append(
            Demand(tenant, customers[tenant], product.name, str(product.sku), count, waiting)
        )
    return found


# ----- when Microsoft 365 refuses a pack -----------------------------------------------------


async def take_back(job: ProvisioningJob, worker: str, reason: str) -> bool:
    """The job failed: its pack's licenses leave the account in the ledger too (in the
    transaction that records the failure). False if the job is no longer this worker's."""
    async with change(jobs.ORIGIN) as ch:
        moved = await jobs._owned(  # noqa: SLF001  # the outbox's conditional write
            ch,
            job,
            worker,
            {
                "state": JobState.FAILED,
                "finished_at": datetime.now(UTC),
                "reason": reason[:1000],
                "claimed_by": None,
                "claimed_until": None,
            },
        )
        if not moved:
            return False
        ch.record(
            "provisioning.failed",
            f"job:{job.id}",
            {"state": job.state.value},
            {"state": JobState.FAILED.value, "account": job.upn, "reason": reason[:1000]},
        )
        wanted = [e["product"] for e in entries(job)]
        held = dict(
            await LicenseAssignment.filter(account_id=job.account_id)
            .using_db(ch.conn)
            .values_list("product__name", "id")
        )
        taken = sorted(n for n in wanted if n in held)
        if taken:
            await (
                LicenseAssignment.filter(id__in=[held[n] for n in taken]).using_db(ch.conn).delete()
            )
            ch.record(
                "pack.takeback",
                f"account:{job.upn}",
                {"licenses": sorted(held)},
                {
                    "licenses": sorted(n for n in held if n not in taken),
                    "pack": job.pack,
                    "taken_back": taken,
                    "reason": reason[:1000],
                },
            )
    job.state = JobState.FAILED
    job.reason = reason[:1000]
    return True


# ----- retrying a failed license job -----------------------------------------------------------


async def retry(origin: Origin, job: ProvisioningJob, *, dry_run: bool = False) -> Outcome:
    """A failed license job back to pending, if the ledger still says what it would write."""
    async with change(origin, dry_run=dry_run) as ch:
        row = await ProvisioningJob.filter(id=job.id).select_for_update().using_db(ch.conn).get()
        if row.state is not JobState.FAILED:
            raise Conflict(f"Job {row.id} is {row.state.value}: only a failed job can be retried.")
        held = set(
            await LicenseAssignment.filter(account_id=row.account_id)
            .using_db(ch.conn)
            .values_list("product__name", flat=True)
        )
        wanted = {e["product"] for e in entries(row) if e.get("sku")}
        if row.action is JobAction.LICENSE_ADD and not wanted <= held:
            what = f"service pack {row.pack}" if row.pack else names(row)
            raise Conflict(
                f"{row.upn} no longer holds {what} in the ledger, so job {row.id} is not retried; "
                "assign it again instead."
            )
        if row.action is JobAction.LICENSE_REMOVE and wanted & held:
            raise Conflict(
                f"{row.upn} holds {names(row)} in the ledger again, so job {row.id} (taking it "
                "away in Microsoft 365) is not retried."
            )
        later = (
            await ProvisioningJob.filter(account_id=row.account_id, id__gt=row.id)
            .using_db(ch.conn)
            .exists()
        )
        if later:
            raise Conflict(
                f"Later jobs exist for {row.upn}; retrying job {row.id} now would write an old "
                "change over them."
            )
        before, after = await jobs.requeue(ch, row)
    return Outcome(
        "provisioning.retry",
        f"job {row.id}",
        before,
        after,
        dry_run,
        f"Job {row.id} ({row.action.value} {names(row)} for {row.upn}) will be sent to "
        "Microsoft 365 again.",
    )
