"""Reconcile: what the customer's tenant holds compared with the ledger, and the fixes either way
(SPEC §9, issue 18).

`compare` takes what a tenant answered (`TenantState`: its number assignments, its users with
their SKUs, its subscribed SKUs) and one subscription of the ledger, and finds every difference:

- a number assigned in Teams to an account of the subscription that the ledger has free,
  quarantined, reserved or elsewhere (`number-only-in-teams`);
- a number the ledger has assigned that Teams does not (`number-missing-in-teams`), reports as
  failed (`number-failed-in-teams`), or has assigned to someone else (`number-other-holder`);
- a license (a product naming a SKU) held in one and not the other (`license-only-in-teams`,
  `license-missing-in-teams`).

What a provisioning job is still writing (pending or sent) is not a difference yet, and neither
is a number Teams is still activating. The comparison is a few set look-ups per number and per
account: linear in the data (the ledger is read in a handful of statements, never one per row).

`record` keeps the run and its differences (a card's buttons name a difference by its id);
`fix` carries one out in one transaction:

- to Teams: the provisioning jobs that make Teams say what the ledger says;
- to the ledger: the ledger services themselves (assign, release, license assign/unassign),
  so every rule of §2 holds — capacity, entitlements, seats, quarantine — and a fix that would
  break one is refused with the service's reason.

A difference is fixed once: the fix marks it in its own transaction (a conditional update), so a
second click, a racing twin, or the other button after the first says so and changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.functions import Max

from bot.domain import licensing, numbers
from bot.domain import provisioning as jobs
from bot.domain.change import Origin, change
from bot.domain.directory import find_account
from bot.domain.errors import AT, Conflict, DomainError, InvalidInput, NotFound
from bot.domain.ledger import Outcome, find_subscription
from bot.domain.license_jobs import LICENSE_ACTIONS
from bot.domain.license_jobs import enqueue as enqueue_licenses
from bot.domain.models import (
    Account,
    Customer,
    Drift,
    DriftKind,
    DriftState,
    JobAction,
    JobState,
    LicenseAssignment,
    NumberState,
    PhoneNumber,
    Product,
    ProductKind,
    ProvisioningJob,
    ReconcileRun,
    Subscription,
)

DIRECTIONS = ("teams", "ledger")
ACTIVATING = frozenset({"assignmentPending", "updatePending"})
FAILED_STATES = frozenset({"assignmentFailed", "updateFailed"})
_CHUNK = 500
RECENT = timedelta(days=2)  # runs the digest and /metrics still speak of

KIND_WORDS = {
    DriftKind.NUMBER_ONLY_IN_TEAMS: "number assigned in Teams only",
    DriftKind.NUMBER_MISSING_IN_TEAMS: "number missing in Teams",
    DriftKind.NUMBER_FAILED_IN_TEAMS: "number failed in Teams",
    DriftKind.NUMBER_OTHER_HOLDER: "number held by someone else in Teams",
    DriftKind.LICENSE_ONLY_IN_TEAMS: "license in Microsoft 365 only",
    DriftKind.LICENSE_MISSING_IN_TEAMS: "license missing in Microsoft 365",
}


# ----- what the tenant said ----------------------------------------------------------------


@dataclass(frozen=True)
class TeamsNumber:
    e164: str
    target_id: str | None
    activation_state: str | None


@dataclass(frozen=True)
class TenantState:
    """A tenant's answers, as read by bot.provisioning.reconcile (validated there)."""

    numbers: Sequence[TeamsNumber]
    users: dict[str, tuple[str, frozenset[str]]]  # object id → (UPN, SKU ids)
    skus: dict[str, str]  # SKU id → part number
    graph_calls: int = 0


@dataclass(frozen=True)
class Finding:
    kind: DriftKind
    e164: str | None = None
    license: str | None = None
    sku: str | None = None
    ledger_upn: str | None = None
    teams_object_id: str | None = None
    teams_upn: str | None = None
    ledger_state: str | None = None
    teams_state: str | None = None


# ----- comparing ---------------------------------------------------------------------------


def sku_id_of(ref: str | None, skus: dict[str, str]) -> str | None:
    """A product's SKU reference (part number or id) as the tenant's SKU id."""
    if not ref:
        return None
    wanted = ref.strip().lower()
    for sku_id, part in skus.items():
        if wanted in (sku_id.lower(), part.lower()):
            return sku_id.lower()
    return None


async def _ledger_numbers(codes: Iterable[str]) -> dict[str, PhoneNumber]:
    found: dict[str, PhoneNumber] = {}
    wanted = sorted(set(codes))
    for start in range(0, len(wanted), _CHUNK):
        rows = await PhoneNumber.filter(e164__in=wanted[start : start + _CHUNK])
        found.update((r.e164, r) for r in rows)
    return found


async def compare(subscription_code: str, tenant: TenantState) -> list[Finding]:
    sub = await find_subscription(subscription_code)
    now = datetime.now(UTC)
    accounts = {a.id: a for a in await Account.filter(subscription_id=sub.id)}
    by_upn = {u.lower(): oid for oid, (u, _) in tenant.users.items()}
    # Each account's object id in the tenant: the directory sync's, else by UPN.
    object_ids = {
        a.id: (a.object_id or by_upn.get(a.upn.lower()) or "").lower() or None
        for a in accounts.values()
    }
    account_of = {oid: aid for aid, oid in object_ids.items() if oid}
    busy = await ProvisioningJob.filter(
        subscription_code=sub.code, state__in=jobs.OPEN
    ).values_list("e164", "account_id", "action")
    busy_numbers = {str(e) for e, _, _ in busy if e}
    busy_accounts = {a for _, a, act in busy if a is not None and act in LICENSE_ACTIONS}
    found: list[Finding] = []

    # Numbers.
    held = await PhoneNumber.filter(subscription_id=sub.id, state=NumberState.ASSIGNED)
    held_by = {n.e164: n for n in held if n.holder_id is not None}
    teams = {t.e164: t for t in tenant.numbers}
    for e164, row in held_by.items():
        if e164 in busy_numbers:
            continue
        holder = accounts.get(row.holder_id or 0)
        upn = holder.upn if holder else None
        t = teams.get(e164)
        if t is None or t.target_id is None:
            state = "not in Teams" if t is None else "unassigned"
            found.append(
                Finding(
                    DriftKind.NUMBER_MISSING_IN_TEAMS,
                    e164,
                    ledger_upn=upn,
                    ledger_state="assigned",
                    teams_state=state,
                )
            )
        elif t.activation_state in FAILED_STATES:
            found.append(
                Finding(
                    DriftKind.NUMBER_FAILED_IN_TEAMS,
                    e164,
                    ledger_upn=upn,
                    teams_object_id=t.target_id,
                    teams_upn=_upn(tenant, t.target_id),
                    ledger_state="assigned",
                    teams_state=t.activation_state,
                )
            )
        elif t.activation_state in ACTIVATING:
            continue
        elif t.target_id.lower() != (object_ids.get(row.holder_id or 0) or ""):
            found.append(
                Finding(
                    DriftKind.NUMBER_OTHER_HOLDER,
                    e164,
                    ledger_upn=upn,
                    teams_object_id=t.target_id,
                    teams_upn=_upn(tenant, t.target_id),
                    ledger_state="assigned",
                    teams_state="assigned",
                )
            )
    extra = [
        t
        for t in tenant.numbers
        if t.target_id
        and t.e164 not in held_by
        and t.e164 not in busy_numbers
        and t.target_id.lower() in account_of
        and t.activation_state not in FAILED_STATES
    ]
    rows = await _ledger_numbers(t.e164 for t in extra)
    for t in extra:
        found_row = rows.get(t.e164)
        if found_row is None:
            state = "not in the inventory"
        else:
            state = numbers.effective_state(found_row, now).value
            if state == NumberState.ASSIGNED.value:
                state = "assigned elsewhere"
        assert t.target_id is not None
        found.append(
            Finding(
                DriftKind.NUMBER_ONLY_IN_TEAMS,
                t.e164,
                teams_object_id=t.target_id,
                teams_upn=_upn(tenant, t.target_id),
                ledger_upn=None,
                ledger_state=state,
                teams_state="assigned",
            )
        )

    # Licenses (products that name a SKU).
    products = [p for p in await Product.filter(kind=ProductKind.LICENSE) if p.sku]
    sku_of = {p.id: sku_id_of(p.sku, tenant.skus) for p in products}
    ledger_pairs = set(
        await LicenseAssignment.filter(
            account_id__in=list(accounts), product_id__in=[p.id for p in products]
        ).values_list("account_id", "product_id")
    )
    for account in sorted(accounts.values(), key=lambda a: a.upn.lower()):
        if account.id in busy_accounts:
            continue
        oid = object_ids.get(account.id)
        teams_skus = tenant.users[oid][1] if oid in tenant.users else None
        for product in products:
            sku = sku_of[product.id]
            in_ledger = (account.id, product.id) in ledger_pairs
            in_teams = bool(teams_skus and sku and sku in teams_skus)
            if in_ledger and not in_teams:
                why = (
                    "user not in the tenant"
                    if teams_skus is None
                    else "no such SKU in the tenant"
                    if sku is None
                    else "not assigned"
                )
                found.append(
                    Finding(
                        DriftKind.LICENSE_MISSING_IN_TEAMS,
                        license=product.name,
                        sku=product.sku,
                        ledger_upn=account.upn,
                        teams_object_id=oid,
                        ledger_state="assigned",
                        teams_state=why,
                    )
                )
            elif in_teams and not in_ledger:
                found.append(
                    Finding(
                        DriftKind.LICENSE_ONLY_IN_TEAMS,
                        license=product.name,
                        sku=product.sku,
                        teams_upn=account.upn,
                        teams_object_id=oid,
                        ledger_upn=account.upn,
                        ledger_state="not assigned",
                        teams_state="assigned",
                    )
                )
    return found


def _upn(tenant: TenantState, object_id: str | None) -> str | None:
    if not object_id:
        return None
    found = tenant.users.get(object_id.lower()) or tenant.users.get(object_id)
    return found[0] if found else None


# ----- runs ----------------------------------------------------------------------------------


async def linked_subscriptions() -> list[Subscription]:
    """Subscriptions whose customer is linked to a tenant with provisioning on."""
    customers = await Customer.filter(tenant_id__isnull=False, provisioning=True)
    ids = [c.id for c in customers if c.tenant_id]
    return list(await Subscription.filter(customer_id__in=ids).order_by("code"))


async def tenant_of(subscription_code: str) -> tuple[Subscription, str]:
    found = await find_subscription(subscription_code)
    sub = await Subscription.get(id=found.id)  # the look-up's row has no customer reference
    customer = await Customer.get(id=sub.customer_id)
    if not customer.tenant_id:
        raise Conflict(
            f"{sub.code}'s customer {customer.name} is not linked to a Microsoft tenant: "
            f'`customer link "{customer.name}" --tenant TENANT-ID` first.'
        )
    if not customer.provisioning:
        raise Conflict(f"Provisioning is switched off for {customer.name}; nothing to compare.")
    return sub, str(customer.tenant_id)


async def record(
    origin: Origin,
    subscription_code: str,
    tenant_id: str,
    trigger: str,
    findings: Sequence[Finding],
    *,
    started_at: datetime,
    graph_calls: int,
) -> ReconcileRun:
    """Keep a run and its differences (one transaction, audited as reconcile.run)."""
    async with change(origin) as ch:
        run = await ReconcileRun.create(
            using_db=ch.conn,
            subscription_code=subscription_code,
            tenant_id=tenant_id,
            trigger=trigger,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            graph_calls=graph_calls,
            differences=len(findings),
        )
        await Drift.bulk_create(
            [
                Drift(run_id=run.id, subscription_code=subscription_code, **f.__dict__)
                for f in findings
            ],
            batch_size=500,
            using_db=ch.conn,
        )
        ch.record(
            "reconcile.run",
            f"subscription:{subscription_code}",
            None,
            {
                "run": run.id,
                "trigger": trigger,
                "differences": counts(findings),
                "graph_calls": graph_calls,
            },
        )
    return run


def counts(findings: Iterable[Finding | Drift]) -> dict[str, int]:
    found: dict[str, int] = {}
    for f in findings:
        found[f.kind.value] = found.get(f.kind.value, 0) + 1
    return dict(sorted(found.items()))


async def drifts_of(run_id: int, kind: DriftKind | None = None) -> list[Drift]:
    query = Drift.filter(run_id=run_id)
    if kind is not None:
        query = query.filter(kind=kind)
    return list(await query.order_by("id"))


def gone(what: str, ident: int) -> NotFound:
    """A run or difference that is not (or no longer) kept: say why, and what to do."""
    error = NotFound(what.lower(), str(ident))
    error.message = (
        f"{what} {ident} is not kept: it never existed, or its reconcile run was older than "
        "the retention (FUSION_RECONCILE_KEEP_DAYS) and was cleaned up. Run `reconcile` again "
        "for the differences of today."
    )
    error.args = (error.message,)
    return error


async def find_run(run_id: int) -> ReconcileRun:
    run = await ReconcileRun.filter(id=run_id).first()
    if run is None:
        raise gone("Reconcile run", run_id)
    return run


async def latest_runs(max_age: timedelta | None = None) -> list[ReconcileRun]:
    """The newest run of each subscription (younger than `max_age` if given)."""
    runs = await ReconcileRun.all().order_by("-id").limit(2000)
    seen: dict[str, ReconcileRun] = {}
    floor = datetime.now(UTC) - max_age if max_age is not None else None
    for run in runs:
        if run.subscription_code in seen:
            continue
        if floor is not None and run.started_at < floor:
            continue
        seen[run.subscription_code] = run
    return sorted(seen.values(), key=lambda r: r.subscription_code)


async def open_differences(max_age: timedelta | None = None) -> dict[str, dict[str, int]]:
    """Subscription → kind → differences still open, from each one's newest run."""
    found: dict[str, dict[str, int]] = {}
    for run in await latest_runs(max_age):
        rows = await Drift.filter(run_id=run.id, state=DriftState.OPEN).values_list(
            "kind", flat=True
        )
        per: dict[str, int] = {}
        for kind in rows:
            per[str(kind)] = per.get(str(kind), 0) + 1
        found[run.subscription_code] = dict(sorted(per.items()))
    return found


# ----- keeping ---------------------------------------------------------------------------------

PRUNE_BATCH = 200  # runs deleted in one transaction (their differences with them)


async def prune_runs(origin: Origin, keep: timedelta, now: datetime | None = None) -> int:
    """Delete the runs that started more than `keep` ago, with their differences, except the
    newest run of each subscription (the digest, /metrics and `reconcile` speak of it).

    A card's buttons name a run and its differences: every run younger than `keep` stays, so
    a card of the retention period always finds what it shows. Audited as reconcile.prune, in
    batches of PRUNE_BATCH runs (one transaction each); how many runs were deleted."""
    cutoff = (now or datetime.now(UTC)) - keep
    newest = set(
        await ReconcileRun.annotate(newest=Max("id"))
        .group_by("subscription_code")
        .values_list("newest", flat=True)
    )
    deleted = 0
    while True:
        ids = [
            i
            for i in await ReconcileRun.filter(started_at__lt=cutoff)
            .order_by("id")
            .limit(PRUNE_BATCH + len(newest))
            .values_list("id", flat=True)
            if i not in newest
        ][:PRUNE_BATCH]
        if not ids:
            return deleted
        async with change(origin) as ch:
            differences = await Drift.filter(run_id__in=ids).using_db(ch.conn).delete()
            runs = await ReconcileRun.filter(id__in=ids).using_db(ch.conn).delete()
            ch.record(
                "reconcile.prune",
                "reconcile runs",
                None,
                {
                    "runs": runs,
                    "differences": differences,
                    "first": ids[0],
                    "last": ids[-1],
                    "started_before": cutoff.isoformat(timespec="seconds"),
                },
            )
        deleted += runs


# ----- fixing ----------------------------------------------------------------------------------


@dataclass
class FixResult:
    """What fixing several differences did, per difference."""

    kind: DriftKind
    to: str
    dry_run: bool
    fixed: list[tuple[int, str]] = field(default_factory=list)  # (drift id, what was done)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (drift id, why not)


def describe(d: Drift) -> str:
    """A difference in an administrator's words."""
    if d.e164 is not None:
        teams = d.teams_upn or d.teams_object_id
        if d.kind is DriftKind.NUMBER_ONLY_IN_TEAMS:
            return f"{d.e164}: assigned to {teams} in Teams, {d.ledger_state} in the ledger"
        if d.kind is DriftKind.NUMBER_OTHER_HOLDER:
            return f"{d.e164}: {d.ledger_upn} in the ledger, {teams} in Teams"
        if d.kind is DriftKind.NUMBER_FAILED_IN_TEAMS:
            return f"{d.e164}: assigned to {d.ledger_upn} in the ledger, failed in Teams"
        teams_side = "not in Teams" if d.teams_state == "not in Teams" else "unassigned in Teams"
        return f"{d.e164}: assigned to {d.ledger_upn} in the ledger, {teams_side}"
    upn = d.ledger_upn or d.teams_upn
    if d.kind is DriftKind.LICENSE_ONLY_IN_TEAMS:
        return f"{d.license} on {upn}: in Microsoft 365, not in the ledger"
    return f"{d.license} on {upn}: in the ledger, {d.teams_state} in Microsoft 365"


def check_direction(to: str) -> str:
    value = to.strip().lower()
    if value not in DIRECTIONS:
        raise InvalidInput("Say which side to fix: --to teams or --to ledger.")
    return value


async def fix(
    origin: Origin,
    drift_id: int,
    to: str,
    rules: jobs.Rules,
    *,
    quarantine_days: int = 30,
    dry_run: bool = False,
) -> Outcome:
    """Make Teams match the ledger (`to="teams"`) or the ledger match Teams (`"ledger"`)."""
    side = check_direction(to)
    if side == "teams" and not rules.enabled:
        raise Conflict(rules.off_reason or "Provisioning into Teams is off.")
    inner = replace(origin, idempotency_key=None)
    async with change(origin, dry_run=dry_run) as ch:
        drift = await Drift.filter(id=drift_id).using_db(ch.conn).first()
        if drift is None:
            raise gone("Difference", drift_id)
        marked = (
            await Drift.filter(id=drift.id, state=DriftState.OPEN)
            .using_db(ch.conn)
            .update(
                state=DriftState.FIXED,
                fixed_to=side,
                fixed_by=origin.actor_name[:255],
                fixed_at=datetime.now(UTC),
            )
        )
        if not marked:
            fresh = await Drift.filter(id=drift.id).using_db(ch.conn).first()
            if fresh is None:  # cleaned up (reconcile.prune) since it was read
                raise gone("Difference", drift_id)
            raise Conflict(
                f"Difference {drift.id} was already fixed ({fresh.fixed_to} side, by "
                f"{fresh.fixed_by}, {AT if fresh.fixed_at else 'earlier'}); "
                "nothing was changed again.",
                at=fresh.fixed_at,
            )
        what = describe(drift)
        if side == "teams":
            done = await _to_teams(ch, drift, rules)
            if dry_run:  # its jobs are rolled back with the rest: no ids to show
                done = re.sub(r" \(job \d+\)", "", done)
        else:
            done = await _to_ledger(inner, drift, quarantine_days)
        ch.record(
            "reconcile.fix",
            f"drift:{drift.id}",
            {"difference": what, "kind": drift.kind.value},
            {"fixed": side, "done": done},
        )
    return Outcome(
        "reconcile.fix",
        f"difference {drift.id}",
        {"difference": what},
        {"fixed": f"{side} side", "done": done},
        dry_run,
        f"Difference {drift.id} ({what}): {done}.",
    )


async def fix_all(
    origin: Origin,
    run_id: int,
    kind: DriftKind,
    to: str,
    rules: jobs.Rules,
    *,
    quarantine_days: int = 30,
    dry_run: bool = False,
) -> FixResult:
    """Every open difference of one kind in a run, each in its own transaction; a dry run
    says per difference what would be done or why not, and changes nothing."""
    side = check_direction(to)
    run = await find_run(run_id)
    result = FixResult(kind, side, dry_run)
    for drift in await drifts_of(run.id, kind):
        if drift.state is not DriftState.OPEN:
            continue
        key = origin.idempotency_key
        one = replace(origin, idempotency_key=f"{key[:200]}#{drift.id}" if key else None)
        try:
            outcome = await fix(
                one, drift.id, side, rules, quarantine_days=quarantine_days, dry_run=dry_run
            )
        except DomainError as exc:  # refused, already fixed, a redelivered click
            result.refused.append((drift.id, exc.message))
        else:
            result.fixed.append((drift.id, outcome.message))
    return result


async def _to_teams(ch: Any, drift: Drift, rules: jobs.Rules) -> str:
    """The jobs that make Teams say what the ledger says (in the fix's transaction)."""
    sub = await Subscription.filter(code=drift.subscription_code).using_db(ch.conn).get()
    if drift.e164 is not None:
        row = await PhoneNumber.filter(e164=drift.e164).using_db(ch.conn).first()
        ledger_holder = None
        if row is not None and row.state is NumberState.ASSIGNED and row.holder_id:
            ledger_holder = await Account.filter(id=row.holder_id).using_db(ch.conn).get()
        said = []
        if drift.kind in (DriftKind.NUMBER_ONLY_IN_TEAMS, DriftKind.NUMBER_OTHER_HOLDER):
            teams_account = (
                await Account.filter(upn__iexact=drift.teams_upn).using_db(ch.conn).first()
                if drift.teams_upn
                else None
            )
            job = await _unassign_job(ch, sub, drift, teams_account)
            said.append(
                f"taking {drift.e164} from {drift.teams_upn or drift.teams_object_id} "
                f"in Teams (job {job.id})"
            )
        if drift.kind is not DriftKind.NUMBER_ONLY_IN_TEAMS:
            if (
                row is None
                or ledger_holder is None
                or (ledger_holder.upn.lower() != (drift.ledger_upn or "").lower())
            ):
                raise Conflict(
                    f"The ledger changed since the reconcile: {drift.e164} is no longer "
                    f"assigned to {drift.ledger_upn}. Run `reconcile` again."
                )
            enabled = replace(rules, enabled=True)
            given = await jobs.enqueue(ch, enabled, JobAction.ASSIGN, sub, ledger_holder, row)
            if given is None:
                raise Conflict(f"{sub.code}'s customer is not provisioned into a tenant.")
            said.append(f"giving {drift.e164} to {ledger_holder.upn} in Teams (job {given.id})")
        return "; ".join(said)
    product = await Product.filter(name=drift.license).using_db(ch.conn).get()
    upn = drift.ledger_upn or drift.teams_upn or ""
    account = await find_account(upn, ch.conn)
    holds = (
        await LicenseAssignment.filter(account_id=account.id, product_id=product.id)
        .using_db(ch.conn)
        .exists()
    )
    adding = drift.kind is DriftKind.LICENSE_MISSING_IN_TEAMS
    if holds is not adding:
        raise Conflict(
            f"The ledger changed since the reconcile: {upn} "
            f"{'no longer holds' if adding else 'now holds'} {product.name}. "
            "Run `reconcile` again."
        )
    action = JobAction.LICENSE_ADD if adding else JobAction.LICENSE_REMOVE
    sent = await enqueue_licenses(ch, replace(rules, enabled=True), action, account, [product])
    if sent is None:
        raise Conflict(f"{sub.code}'s customer is not provisioned into a tenant.")
    verb = "adding" if adding else "removing"
    return f"{verb} {product.name} for {upn} in Microsoft 365 (job {sent.id})"


async def _unassign_job(
    ch: Any, sub: Subscription, drift: Drift, account: Account | None
) -> ProvisioningJob:
    customer = await Customer.filter(id=sub.customer_id).using_db(ch.conn).get()
    job = await ProvisioningJob.create(
        using_db=ch.conn,
        action=JobAction.UNASSIGN,
        state=JobState.PENDING,
        tenant_id=str(customer.tenant_id),
        subscription_code=sub.code,
        e164=drift.e164,
        account_id=account.id if account else None,
        upn=drift.teams_upn or drift.teams_object_id or "",
        object_id=drift.teams_object_id,
        number_type=jobs.GRAPH_NUMBER_TYPE[sub.mode],
        due_at=datetime.now(UTC),
    )
    ch.record(
        "provisioning.job",
        f"job:{job.id}",
        None,
        {
            "state": JobState.PENDING.value,
            "action": JobAction.UNASSIGN.value,
            "number": drift.e164,
            "account": job.upn,
            "tenant": job.tenant_id,
            "number_type": job.number_type,
            "reason": f"reconcile (difference {drift.id})",
        },
    )
    return job


async def _to_ledger(origin: Origin, drift: Drift, quarantine_days: int) -> str:
    """The ledger services, nested in the fix's transaction: every rule of §2 applies."""
    if drift.kind in (DriftKind.NUMBER_MISSING_IN_TEAMS, DriftKind.NUMBER_FAILED_IN_TEAMS):
        released = await numbers.release_number(origin, drift.e164 or "", quarantine_days)
        _was_held(drift, released)
        return f"released {drift.e164} from {drift.ledger_upn} in the ledger"
    if drift.kind is DriftKind.NUMBER_ONLY_IN_TEAMS:
        upn = _known(drift)
        await numbers.assign_number(origin, drift.e164 or "", upn)
        return f"assigned {drift.e164} to {upn} in the ledger"
    if drift.kind is DriftKind.NUMBER_OTHER_HOLDER:
        upn = _known(drift)
        # Moved, not released: it stays in use, so no quarantine in between.
        released = await numbers.release_number(origin, drift.e164 or "", 0)
        _was_held(drift, released)
        await numbers.assign_number(origin, drift.e164 or "", upn)
        return f"moved {drift.e164} from {drift.ledger_upn} to {upn} in the ledger"
    upn = drift.ledger_upn or drift.teams_upn or ""
    if drift.kind is DriftKind.LICENSE_MISSING_IN_TEAMS:
        await licensing.unassign_license(origin, drift.license or "", upn)
        return f"took {drift.license} from {upn} in the ledger"
    outcome = await licensing.assign_license(origin, drift.license or "", [upn])
    if outcome.failed:
        raise Conflict(outcome.failed[0][1])
    return f"assigned {drift.license} to {upn} in the ledger"


def _known(drift: Drift) -> str:
    if not drift.teams_upn:
        raise Conflict(
            f"Teams holds {drift.e164} for {drift.teams_object_id}, whom the tenant's directory "
            "does not name: the ledger cannot follow. Make Teams match the ledger instead."
        )
    return drift.teams_upn


def _was_held(drift: Drift, released: Outcome) -> None:
    """Checked after the release (which locked the number): if it was not the holder the
    reconcile saw, the fix's transaction rolls back with the release in it."""
    before = released.before if isinstance(released.before, dict) else {}
    holder = before.get("holder")
    if str(holder or "").lower() != (drift.ledger_upn or "").lower():
        raise Conflict(
            f"The ledger changed since the reconcile: {drift.e164} is no longer assigned to "
            f"{drift.ledger_upn}. Run `reconcile` again."
        )


def drift_lines(found: dict[str, dict[str, int]]) -> list[str]:
    """Per subscription with differences, a sentence: "3 numbers and 1 license differ in
    CONTOSO-01" (for the digest)."""
    lines = []
    for code, per_kind in sorted(found.items()):
        nums = sum(n for k, n in per_kind.items() if k.startswith("number-"))
        lics = sum(n for k, n in per_kind.items() if k.startswith("license-"))
        parts = []
        if nums:
            parts.append(f"{nums:,} number{'s' if nums != 1 else ''}")
        if lics:
            parts.append(f"{lics:,} license{'s' if lics != 1 else ''}")
        if parts:
            verb = "differs" if nums + lics == 1 else "differ"
            lines.append(f"{' and '.join(parts)} {verb} in {code}")
    return lines
