"""Provisioning into the customer's Microsoft Teams tenant: the job outbox (SPEC §9).

A ledger change that gives an account a number or takes it back writes a `ProvisioningJob`
in the same transaction (`enqueue`), when provisioning applies: FUSION_PROVISIONING is on, the
cloud is the global one, and the subscription's customer is linked to a tenant with its own
switch on. Workers (bot/provisioning/worker.py) take due jobs and move them
pending → sent → done | failed; every move is audited here with source `provisioning`.

Order: a job is not taken while an earlier job of the same account or the same number is
still pending or sent, so "release +1 from A, give +1 to B" reaches Teams in that order.
Every write a worker makes is conditional on its claim (`claimed_by`), so a worker whose
claim ran out and was taken over cannot write over the new owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.expressions import Q
from tortoise.functions import Count

from bot.domain import db
from bot.domain.change import Change, Origin, change
from bot.domain.errors import Conflict, InvalidInput, NotFound
from bot.domain.ledger import Outcome, check_guid, find_customer, find_subscription
from bot.domain.models import (
    Account,
    AuditEvent,
    Customer,
    JobAction,
    JobState,
    PhoneNumber,
    ProvisioningJob,
    Subscription,
    SubscriptionMode,
)
from bot.domain.paging import Page, window

ORIGIN = Origin(actor_id="provisioning", actor_name="Provisioning", source="provisioning")
OPEN = (JobState.PENDING, JobState.SENT)
# Graph's numberType for a subscription's mode.
GRAPH_NUMBER_TYPE = {
    SubscriptionMode.DIRECT_ROUTING: "directRouting",
    SubscriptionMode.OPERATOR_CONNECT: "operatorConnect",
}
GLOBAL_ONLY = (
    "Provisioning into Teams is off: Microsoft Graph's Teams number management exists in the "
    "global cloud only, and this bot runs in FUSION_CLOUD={cloud}. The ledger works as before."
)
MAX_LOCATION = 64


@dataclass(frozen=True)
class Rules:
    """Whether changes are provisioned, and the emergency-location rule."""

    enabled: bool = False
    off_reason: str = "Provisioning into Teams is off (FUSION_PROVISIONING=off)."
    location_countries: frozenset[str] = field(default_factory=lambda: frozenset({"US", "CA"}))


OFF = Rules()


def check_location(value: str | None) -> str | None:
    """An emergency location id (Teams LIS location id, a GUID) or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if len(text) > MAX_LOCATION:
        raise InvalidInput(f"An emergency location id has at most {MAX_LOCATION} characters.")
    return check_guid(text, "emergency location id")


def _now(now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def job_view(job: ProvisioningJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "action": job.action.value,
        "state": job.state.value,
        "number": job.e164,
        "account": job.upn,
        "subscription": job.subscription_code,
        "tenant": job.tenant_id,
        "number_type": job.number_type,
        "location": job.location_id,
        "licenses": job.licenses,
        "pack": job.pack,
        "attempts": job.attempts,
        "reason": job.reason,
        "last_error": job.last_error,
        "created_at": job.created_at.astimezone(UTC).isoformat() if job.created_at else None,
        "finished_at": job.finished_at.astimezone(UTC).isoformat() if job.finished_at else None,
    }


# ----- writing jobs with the ledger change ----------------------------------------------------


async def enqueue(
    ch: Change,
    rules: Rules | None,
    action: JobAction,
    subscription: Subscription,
    account: Account,
    number: PhoneNumber,
    location_id: str | None = None,
) -> ProvisioningJob | None:
    """Write the job for a number given to or taken from `account`, inside the ledger change
    `ch`; None when provisioning does not apply to this subscription. For an assignment in a
    country of `rules.location_countries` without an emergency location, refuses (InvalidInput:
    the change rolls back)."""
    if rules is None or not rules.enabled:
        return None
    customer = await Customer.filter(id=subscription.customer_id).using_db(ch.conn).get()
    if not customer.tenant_id or not customer.provisioning:
        return None
    location = location_id or number.emergency_location_id
    if action is JobAction.ASSIGN and number.country in rules.location_countries and not location:
        countries = ", ".join(sorted(rules.location_countries))
        raise InvalidInput(
            f"{number.e164} is a {number.country} number, and numbers of {countries} are set up "
            "in Teams only with an emergency location (FUSION_EMERGENCY_LOCATION_COUNTRIES). "
            "Give one with `--location LOCATION-ID`, or set it on the number with "
            "`number location E164 LOCATION-ID`; nothing was changed."
        )
    job = await ProvisioningJob.create(
        using_db=ch.conn,
        action=action,
        state=JobState.PENDING,
        tenant_id=customer.tenant_id,
        subscription_code=subscription.code,
        e164=number.e164,
        account_id=account.id,
        upn=account.upn,
        object_id=account.object_id,
        number_type=GRAPH_NUMBER_TYPE[subscription.mode],
        location_id=location if action is JobAction.ASSIGN else None,
        due_at=_now(),
    )
    ch.record(
        "provisioning.job",
        f"job:{job.id}",
        None,
        {
            "state": JobState.PENDING.value,
            "action": action.value,
            "number": number.e164,
            "account": account.upn,
            "tenant": customer.tenant_id,
            "number_type": job.number_type,
            "location": job.location_id,
        },
    )
    return job


# ----- customers and their tenants ------------------------------------------------------------


async def link_customer(
    origin: Origin,
    name: str,
    tenant_id: str | None,
    provisioning: bool | None = None,
    *,
    dry_run: bool = False,
) -> Outcome:
    """Set or change a customer's Microsoft tenant, and/or its provisioning switch."""
    tenant = check_guid(tenant_id, "tenant id") if tenant_id is not None else None
    if tenant is None and provisioning is None:
        raise InvalidInput("Give the tenant (--tenant TENANT-ID) or --provisioning on|off.")
    async with change(origin, dry_run=dry_run) as ch:
        customer = await find_customer(name, ch.conn)
        row = await Customer.filter(id=customer.id).select_for_update().using_db(ch.conn).get()
        before = {"tenant": row.tenant_id, "provisioning": "on" if row.provisioning else "off"}
        updates: dict[str, Any] = {}
        if tenant is not None:
            updates["tenant_id"] = tenant
        if provisioning is not None:
            updates["provisioning"] = provisioning
        await Customer.filter(id=row.id).using_db(ch.conn).update(**updates)
        after = {
            "tenant": updates.get("tenant_id", row.tenant_id),
            "provisioning": "on" if updates.get("provisioning", row.provisioning) else "off",
        }
        ch.record("customer.link", f"customer:{row.name}", before, after)
    return Outcome(
        "customer.link",
        row.name,
        before,
        after,
        dry_run,
        f"{row.name} is linked to tenant {after['tenant']}; provisioning {after['provisioning']}.",
    )


# ----- reading and retrying ---------------------------------------------------------------------


async def find_job(job_id: int, conn: Any = None) -> ProvisioningJob:
    job = await ProvisioningJob.filter(id=job_id).using_db(conn).first()
    if job is None:
        raise NotFound("provisioning job", str(job_id))
    return job


async def list_jobs(
    subscription_code: str | None = None,
    state: JobState | None = None,
    *,
    page: int = 1,
    size: int = 25,
) -> Page[ProvisioningJob]:
    query = ProvisioningJob.all()
    if subscription_code is not None:
        sub = await find_subscription(subscription_code)
        query = query.filter(subscription_code=sub.code)
    if state is not None:
        query = query.filter(state=state)
    total = await query.count()
    page, pages, offset = window(total, page, size)
    rows = await query.order_by("-id").offset(offset).limit(size)
    return Page(total, page, pages, list(rows))


async def counts() -> dict[str, int]:
    """Jobs by state (every state present, zero included)."""
    found = {s.value: 0 for s in JobState}
    rows = (
        await ProvisioningJob.all()
        .annotate(n=Count("id"))
        .group_by("state")
        .values_list("state", "n")
    )
    for state, number in rows:
        found[str(state)] = int(number)
    return found


async def retry(origin: Origin, job_id: int, *, dry_run: bool = False) -> Outcome:
    """A failed job back to pending, if the ledger still says what the job would write."""
    async with change(origin, dry_run=dry_run) as ch:
        job = await find_job(job_id, ch.conn)
        job = await ProvisioningJob.filter(id=job.id).select_for_update().using_db(ch.conn).get()
        if job.state is not JobState.FAILED:
            raise Conflict(f"Job {job.id} is {job.state.value}: only a failed job can be retried.")
        number = await PhoneNumber.filter(e164=job.e164).using_db(ch.conn).first()
        holds = (
            number is not None
            and job.account_id is not None  # a reconcile fix: Teams held it for a stranger
            and number.holder_id == job.account_id
        )
        if job.action is JobAction.ASSIGN and not holds:
            raise Conflict(
                f"{job.e164} is no longer assigned to {job.upn} in the ledger, so job {job.id} "
                "is not retried (Teams would disagree with the ledger)."
            )
        if job.action is JobAction.UNASSIGN and holds:
            raise Conflict(
                f"{job.e164} is assigned to {job.upn} again in the ledger, so job {job.id} "
                "(taking it away in Teams) is not retried."
            )
        later = (
            await ProvisioningJob.filter(
                Q(account_id=job.account_id) | Q(e164=job.e164), id__gt=job.id
            )
            .using_db(ch.conn)
            .exists()
        )
        if later:
            raise Conflict(
                f"Later jobs exist for {job.e164} or {job.upn}; retrying job {job.id} now would "
                "write an old change over them. Release and assign again instead."
            )
        before, after = await requeue(ch, job)
    return Outcome(
        "provisioning.retry",
        f"job {job.id}",
        before,
        after,
        dry_run,
        f"Job {job.id} ({job.action.value} {job.e164} for {job.upn}) will be sent to Teams again.",
    )


async def requeue(ch: Change, job: ProvisioningJob) -> tuple[dict[str, Any], dict[str, Any]]:
    """A failed job back to pending, due now and unclaimed, audited as `provisioning.retry`
    (the caller has checked that the ledger still says what the job would write)."""
    before = {"state": job.state.value, "reason": job.reason}
    await (
        ProvisioningJob.filter(id=job.id)
        .using_db(ch.conn)
        .update(
            state=JobState.PENDING,
            reason=None,
            last_error=None,
            due_at=_now(),
            claimed_by=None,
            claimed_until=None,
            finished_at=None,
            operation_url=None,
        )
    )
    after = {"state": JobState.PENDING.value, "reason": None}
    ch.record("provisioning.retry", f"job:{job.id}", before, after)
    return before, after


async def set_card(job_id: int, conversation_id: str | None, activity_id: str) -> ProvisioningJob:
    """Remember where the answer card of a job is (to update it when the job ends)."""
    async with change(ORIGIN) as ch:
        await (
            ProvisioningJob.filter(id=job_id)
            .using_db(ch.conn)
            .update(conversation_id=conversation_id, card_activity_id=activity_id[:255])
        )
        return await find_job(job_id, ch.conn)


# ----- what workers do ----------------------------------------------------------------------------

_DUE = """
SELECT j.id FROM provisioning_job j
WHERE j.state IN ('pending', 'sent') AND j.due_at <= ?
  AND (j.claimed_until IS NULL OR j.claimed_until < ?)
  AND NOT EXISTS (
    SELECT 1 FROM provisioning_job p
    WHERE p.id < j.id AND p.state IN ('pending', 'sent')
      AND (p.account_id = j.account_id OR p.e164 = j.e164))
ORDER BY j.id
LIMIT ?
"""


async def claim(
    worker: str,
    limit: int,
    lease_seconds: float,
    now: datetime | None = None,
    *,
    skip_tenants: tuple[str, ...] = (),
) -> list[ProvisioningJob]:
    """Due jobs for `worker`, each first of its account and number, claimed for a while
    (none of `skip_tenants`: tenants this worker holds back after a 429 or an outage).

    PostgreSQL: rows another instance is claiming right now are skipped (FOR UPDATE SKIP
    LOCKED); SQLite: the write lock the change takes makes claims one at a time."""
    moment = _now(now)
    # Most rounds find nothing: a plain read says so without a write transaction.
    due = ProvisioningJob.filter(state__in=OPEN, due_at__lte=moment)
    if skip_tenants:
        due = due.exclude(tenant_id__in=skip_tenants)
    if not await due.exists():
        return []
    statement = _DUE
    params: list[Any] = [moment, moment]
    if skip_tenants:
        marks = ", ".join("?" for _ in skip_tenants)
        statement = statement.replace(
            "ORDER BY j.id", f"  AND j.tenant_id NOT IN ({marks})\nORDER BY j.id"
        )
        params += list(skip_tenants)
    statement += " FOR UPDATE OF j SKIP LOCKED" if db.dialect() == "postgres" else ""
    async with change(ORIGIN) as ch:
        rows = await ch.conn.execute_query_dict(db.sql(statement), [*params, limit])
        ids = [int(r["id"]) for r in rows]
        if not ids:
            return []
        await (
            ProvisioningJob.filter(id__in=ids)
            .using_db(ch.conn)
            .update(claimed_by=worker, claimed_until=moment + timedelta(seconds=lease_seconds))
        )
        jobs = await ProvisioningJob.filter(id__in=ids).using_db(ch.conn).order_by("id")
    return list(jobs)


async def _owned(ch: Change, job: ProvisioningJob, worker: str, updates: dict[str, Any]) -> bool:
    changed = (
        await ProvisioningJob.filter(id=job.id, claimed_by=worker, state=job.state)
        .using_db(ch.conn)
        .update(**updates)
    )
    return changed == 1


async def note_attempt(job: ProvisioningJob, worker: str, object_id: str | None) -> bool:
    """Committed before a request that changes Teams leaves: a job found pending with attempts
    after a crash may have reached Graph, so its next taker reads Graph's state first."""
    async with change(ORIGIN) as ch:
        ok = await _owned(ch, job, worker, {"attempts": job.attempts + 1, "object_id": object_id})
    if ok:
        job.attempts += 1
        job.object_id = object_id
    return ok


async def reschedule(
    job: ProvisioningJob,
    worker: str,
    delay: float,
    error: str | None = None,
    *,
    not_received: bool = False,
) -> bool:
    """Not now (throttled, Graph down, operation still running): due again after `delay`.
    `not_received`: Graph answered that it did not take the request (429), so the attempt
    noted before it does not count (the next one need not read Teams first)."""
    updates: dict[str, Any] = {
        "due_at": _now() + timedelta(seconds=max(delay, 0.0)),
        "claimed_by": None,
        "claimed_until": None,
    }
    if not_received and job.attempts > 0:
        updates["attempts"] = job.attempts - 1
    if error is not None:
        updates["last_error"] = error[:1000]
    async with change(ORIGIN) as ch:
        return await _owned(ch, job, worker, updates)


async def _move(
    job: ProvisioningJob,
    worker: str,
    state: JobState,
    updates: dict[str, Any],
    detail: dict[str, Any],
) -> bool:
    async with change(ORIGIN) as ch:
        ok = await _owned(ch, job, worker, {"state": state, **updates})
        if ok:
            ch.record(
                f"provisioning.{state.value}",
                f"job:{job.id}",
                {"state": job.state.value},
                {
                    "state": state.value,
                    "number": job.e164,
                    "account": job.upn,
                    "worker": worker,
                    **detail,
                },
            )
    if ok:
        job.state = state
        for name, value in updates.items():
            setattr(job, name, value)
    return ok


async def mark_sent(
    job: ProvisioningJob, worker: str, operation_url: str | None, poll_after: float
) -> bool:
    return await _move(
        job,
        worker,
        JobState.SENT,
        {
            "operation_url": operation_url,
            "due_at": _now() + timedelta(seconds=poll_after),
            "claimed_by": None,
            "claimed_until": None,
            "last_error": None,
        },
        {"operation": operation_url},
    )


async def mark_done(job: ProvisioningJob, worker: str, how: str) -> bool:
    return await _move(
        job,
        worker,
        JobState.DONE,
        {"finished_at": _now(), "claimed_by": None, "claimed_until": None, "last_error": None},
        {"how": how},
    )


async def mark_failed(job: ProvisioningJob, worker: str, reason: str) -> bool:
    return await _move(
        job,
        worker,
        JobState.FAILED,
        {
            "finished_at": _now(),
            "reason": reason[:1000],
            "claimed_by": None,
            "claimed_until": None,
        },
        {"reason": reason[:1000]},
    )


async def ledger_change(job: ProvisioningJob) -> tuple[Any, Any] | None:
    """The before → after of the ledger change that wrote `job`, from its audit event."""
    if job.e164 is None:
        return None  # a license job: its card says its own words
    action = "number.assign" if job.action is JobAction.ASSIGN else "number.release"
    events = (
        await AuditEvent.filter(action=action, target=f"number:{job.e164}")
        .order_by("-id")
        .limit(50)
    )
    for event in events:
        if isinstance(event.after, dict) and event.after.get("provisioning_job") == job.id:
            return event.before, event.after
    return None


async def account_object_id(account_id: int | None) -> str | None:
    """The Entra object id the directory sync recorded for an account, if any."""
    if account_id is None:
        return None
    account = await Account.filter(id=account_id).first()
    return account.object_id if account else None
