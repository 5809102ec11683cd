"""Customer licenses on Teams users and resource accounts, and service packs (license bundles).

An account holds a given license at most once (unique index on license × account). A license
assigned to an account uses one unit of that license allocated to the account's subscription.

Assigning to several accounts is a bulk operation: each account is all-or-nothing (it ends up
holding the whole pack, or nothing new), and the answer says per account what happened and why.
Each account is its own transaction, so what the progress reports as done is committed, locks
are held briefly, and a crash part-way leaves every account either whole or untouched. A dry
run runs every account in one transaction, each in a savepoint, then rolls it all back: the
preview accounts for the units the earlier accounts in the list would take.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tortoise.exceptions import IntegrityError

from bot.domain import db, license_jobs
from bot.domain.change import Change, Origin, change
from bot.domain.directory import find_account
from bot.domain.entitlements import lock_entitlements, require_active
from bot.domain.errors import (
    AlreadyExists,
    Conflict,
    DomainError,
    Duplicate,
    InvalidInput,
    NotFound,
    Unavailable,
)
from bot.domain.ledger import Outcome, find_product
from bot.domain.models import (
    JobAction,
    LicenseAssignment,
    Product,
    ProductKind,
    ServicePack,
    ServicePackLicense,
)
from bot.domain.naming import check_name
from bot.domain.provisioning import Rules

log = logging.getLogger("bot.domain.licensing")

MAX_BULK = 1_000
MAX_PACK_LICENSES = 50

# on_progress(done, total, succeeded, failed): called after each account of a bulk operation
# with the accounts done so far; may return an awaitable (it is awaited).
ProgressCallback = Callable[
    [int, int, Sequence[str], Sequence[tuple[str, str]]], Awaitable[None] | None
]


class AlreadyHeld(Conflict):
    """The account already holds what was asked: nothing to do, and nothing went wrong."""


#: The note on an account that already held everything asked for.
ALREADY_HELD = "already held it; nothing changed"


@dataclass
class BulkOutcome:
    """What a bulk assignment did per account (or, for a dry run, would do)."""

    action: str
    target: str
    licenses: list[str]
    total: int
    dry_run: bool
    succeeded: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Account → licenses newly assigned to it (those of the pack it did not hold yet).
    added: dict[str, list[str]] = field(default_factory=dict)
    # Account → a remark on a success (e.g. it already held everything).
    notes: dict[str, str] = field(default_factory=dict)
    # Account → the provisioning job that writes its new licenses into Microsoft 365.
    jobs: dict[str, int] = field(default_factory=dict)

    @property
    def message(self) -> str:
        what = f"{self.target}" if self.action == "pack.assign" else self.licenses[0]
        held = sum(1 for u in self.succeeded if self.notes.get(u) == ALREADY_HELD)
        text = f"{what} assigned to {len(self.succeeded) - held} of {self.total} account(s)"
        if held:
            text += f"; {held} already held it"
        if self.failed:
            text += f"; {len(self.failed)} not assigned (nothing changed for them)"
        return text + "."

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target,
            "licenses": self.licenses,
            "total": self.total,
            "dry_run": self.dry_run,
            "succeeded": [
                {
                    "upn": u,
                    "added": self.added.get(u, []),
                    "note": self.notes.get(u),
                    "provisioning_job": self.jobs.get(u),
                }
                for u in self.succeeded
            ],
            "failed": [{"upn": u, "reason": why} for u, why in self.failed],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BulkOutcome:
        """The outcome `as_json` gave (kept with a bulk answer's card, to draw it again)."""
        succeeded = [r for r in data.get("succeeded", []) if isinstance(r, dict)]
        return cls(
            action=str(data.get("action", "")),
            target=str(data.get("target", "")),
            licenses=[str(n) for n in data.get("licenses", [])],
            total=int(data.get("total", 0)),
            dry_run=bool(data.get("dry_run", False)),
            succeeded=[str(r["upn"]) for r in succeeded],
            failed=[
                (str(r["upn"]), str(r.get("reason", "")))
                for r in data.get("failed", [])
                if isinstance(r, dict)
            ],
            added={str(r["upn"]): list(r.get("added") or []) for r in succeeded},
            notes={str(r["upn"]): str(r["note"]) for r in succeeded if r.get("note")},
            jobs={
                str(r["upn"]): int(r["provisioning_job"])
                for r in succeeded
                if isinstance(r.get("provisioning_job"), int)
            },
        )


# ----- look-ups --------------------------------------------------------------------------


async def find_license(name: str, conn: Any = None) -> Product:
    product = await find_product(name, conn)
    if product.kind is not ProductKind.LICENSE:
        raise InvalidInput(
            f"{product.name} is a technical product ({product.kind.value}), not a license."
        )
    return product


async def find_pack(name: str, conn: Any = None) -> ServicePack:
    pack = await ServicePack.filter(name__iexact=name).using_db(conn).first()
    if pack is None:
        names = await ServicePack.all().using_db(conn).values_list("name", flat=True)
        raise NotFound("service pack", name, [str(n) for n in names])
    return pack


async def pack_licenses(pack: ServicePack, conn: Any = None) -> list[Product]:
    ids = (
        await ServicePackLicense.filter(pack_id=pack.id)
        .using_db(conn)
        .values_list("product_id", flat=True)
    )
    return list(await Product.filter(id__in=list(ids)).using_db(conn).order_by("name"))


async def list_packs() -> list[tuple[str, list[str]]]:
    packs = await ServicePack.all().order_by("name")
    rows = (
        await ServicePackLicense.all()
        .order_by("product__name")
        .values_list("pack_id", "product__name")
    )
    names: dict[int, list[str]] = {}
    for pack_id, license_name in rows:
        names.setdefault(pack_id, []).append(license_name)
    return [(p.name, names.get(p.id, [])) for p in packs]


def check_upns(upns: Sequence[str]) -> list[str]:
    """The accounts of a bulk command: at least one, at most MAX_BULK, each once (any case)."""
    seen: dict[str, str] = {}
    for upn in upns:
        text = upn.strip()
        if text and text.lower() not in seen:
            seen[text.lower()] = text
    if not seen:
        raise InvalidInput("Name at least one user or resource account (UPN).")
    if len(seen) > MAX_BULK:
        raise InvalidInput(f"{len(seen):,} accounts named; at most {MAX_BULK:,} at a time.")
    return list(seen.values())


# ----- service packs ---------------------------------------------------------------------


async def create_pack(
    origin: Origin, name: str, license_names: Sequence[str], *, dry_run: bool = False
) -> Outcome:
    check_name(name, "service pack name")
    wanted = [n.strip() for n in license_names if n.strip()]
    if not wanted:
        raise InvalidInput("A service pack needs at least one license.")
    if len(wanted) > MAX_PACK_LICENSES:
        raise InvalidInput(f"A service pack holds at most {MAX_PACK_LICENSES} licenses.")
    lowered = [n.lower() for n in wanted]
    twice = sorted({n for n in wanted if lowered.count(n.lower()) > 1})
    if twice:
        raise InvalidInput(f"{', '.join(twice)} is listed more than once.")
    async with change(origin, dry_run=dry_run) as ch:
        products = [await find_license(n, ch.conn) for n in wanted]
        if await ServicePack.filter(name__iexact=name).using_db(ch.conn).exists():
            raise AlreadyExists(f"A service pack named {name!r} already exists.")
        try:
            pack = await ServicePack.create(using_db=ch.conn, name=name)
        except IntegrityError as exc:
            raise AlreadyExists(
                f"A service pack named {name!r} was created at the same moment."
            ) from exc
        await ServicePackLicense.bulk_create(
            [ServicePackLicense(pack_id=pack.id, product_id=p.id) for p in products],
            using_db=ch.conn,
        )
        after = {"name": name, "licenses": [p.name for p in products]}
        ch.record("pack.create", f"pack:{name}", None, after)
    return Outcome(
        "pack.create",
        name,
        None,
        after,
        dry_run,
        f"Service pack {name} created: {', '.join(after['licenses'])}.",
    )


# ----- assigning -------------------------------------------------------------------------


async def assign_license(
    origin: Origin,
    license_name: str,
    upns: Sequence[str],
    *,
    dry_run: bool = False,
    on_progress: ProgressCallback | None = None,
    rules: Rules | None = None,
) -> BulkOutcome:
    """Assign one license to each account named (each on its own). With `rules` on, a
    license naming a Microsoft 365 SKU writes each account's provisioning job with it."""
    accounts = check_upns(upns)
    product = await find_license(license_name)
    result = BulkOutcome("license.assign", product.name, [product.name], len(accounts), dry_run)
    await _bulk(origin, accounts, [product], result, None, on_progress, rules)
    return result


async def assign_pack(
    origin: Origin,
    pack_name: str,
    upns: Sequence[str],
    *,
    dry_run: bool = False,
    on_progress: ProgressCallback | None = None,
    rules: Rules | None = None,
) -> BulkOutcome:
    """Assign a service pack to each account named: each gets the whole pack or nothing."""
    accounts = check_upns(upns)
    pack = await find_pack(pack_name)
    products = await pack_licenses(pack)
    if not products:
        raise Conflict(f"Service pack {pack.name} holds no licenses.")
    result = BulkOutcome(
        "pack.assign", pack.name, [p.name for p in products], len(accounts), dry_run
    )
    await _bulk(origin, accounts, products, result, pack.name, on_progress, rules)
    return result


async def unassign_license(
    origin: Origin,
    license_name: str,
    upn: str,
    *,
    dry_run: bool = False,
    rules: Rules | None = None,
) -> Outcome:
    async with change(origin, dry_run=dry_run) as ch:
        product = await find_license(license_name, ch.conn)
        account = await find_account(upn, ch.conn)
        before = await _held(ch, account.id)
        deleted = (
            await LicenseAssignment.filter(product_id=product.id, account_id=account.id)
            .using_db(ch.conn)
            .delete()
        )
        if not deleted:
            raise Conflict(f"{account.upn} does not hold {product.name}.")
        after = [n for n in before if n != product.name]
        recorded: dict[str, Any] = {"licenses": after}
        job = await license_jobs.enqueue(ch, rules, JobAction.LICENSE_REMOVE, account, [product])
        if job is not None:
            recorded["provisioning_job"] = job.id
        ch.record("license.unassign", f"account:{account.upn}", {"licenses": before}, recorded)
    return Outcome(
        "license.unassign",
        f"{product.name} ← {account.upn}",
        {"licenses": before},
        recorded,
        dry_run,
        f"{product.name} taken from {account.upn}.",
    )


async def _held(ch: Change, account_id: int) -> list[str]:
    names = (
        await LicenseAssignment.filter(account_id=account_id)
        .using_db(ch.conn)
        .values_list("product__name", flat=True)
    )
    return sorted(str(n) for n in names)


async def _grant(
    ch: Change,
    upn: str,
    products: list[Product],
    pack: str | None,
    rules: Rules | None = None,
    jobs: dict[str, int] | None = None,
) -> list[str]:
    """Give one account every license of `products` it lacks, or raise and give none.

    An account that already holds some of a pack gets the rest; one that holds them all
    raises AlreadyHeld (nothing to do), which a bulk answer counts as done with a note.
    """
    account = await find_account(upn, ch.conn)
    sub = account.subscription
    entitlements = await lock_entitlements(ch.conn, sub, products)
    # Read under the allocation locks, which every assignment of these licenses here takes.
    held = dict(
        await LicenseAssignment.filter(account_id=account.id)
        .using_db(ch.conn)
        .values_list("product_id", "product__name")
    )
    missing = [p for p in products if p.id not in held]
    if not missing:
        what = f"every license of {pack}" if pack is not None else products[0].name
        raise AlreadyHeld(f"{account.upn} already holds {what}; nothing to add.")
    require_active(sub)
    shortages = []
    for product in missing:
        try:
            entitlements[product.id].require(1)
        except Conflict as exc:
            shortages.append(exc.message)
    if shortages:
        raise Conflict(" ".join(shortages))
    before = sorted(str(name) for name in held.values())
    try:
        await LicenseAssignment.bulk_create(
            [LicenseAssignment(product_id=p.id, account_id=account.id) for p in missing],
            using_db=ch.conn,
        )
    except IntegrityError as exc:
        raise Conflict(
            f"{account.upn} was given one of these licenses at the same moment."
        ) from exc
    added = [p.name for p in missing]
    after: dict[str, Any] = {"licenses": sorted(before + added)}
    if pack is not None:
        after["pack"] = pack
    job = await license_jobs.enqueue(ch, rules, JobAction.LICENSE_ADD, account, missing, pack)
    if job is not None:
        after["provisioning_job"] = job.id
        if jobs is not None:
            jobs[upn] = job.id
    action = "pack.assign" if pack is not None else "license.assign"
    ch.record(action, f"account:{account.upn}", {"licenses": before}, after)
    return added


def _item_origin(origin: Origin, upn: str) -> Origin:
    """One idempotency key per account: a redelivered bulk request redoes none of them."""
    if origin.idempotency_key is None:
        return origin
    digest = hashlib.sha256(upn.lower().encode()).hexdigest()[:16]
    return replace(origin, idempotency_key=f"{origin.idempotency_key[:200]}#{digest}")


async def _bulk(
    origin: Origin,
    upns: list[str],
    products: list[Product],
    result: BulkOutcome,
    pack: str | None,
    on_progress: ProgressCallback | None,
    rules: Rules | None = None,
) -> None:
    async def attempt(upn: str, run: Callable[[], Awaitable[list[str]]]) -> bool:
        """One account; False if the database went away (the rest are then not tried)."""
        try:
            added = await run()
        except Duplicate:
            result.succeeded.append(upn)
            result.added[upn] = []
            result.notes[upn] = "already done by an earlier delivery of this request"
        except AlreadyHeld:
            # Already done is not a failure (CLI exit 0, no red card).
            result.succeeded.append(upn)
            result.added[upn] = []
            result.notes[upn] = ALREADY_HELD
        except Unavailable as exc:
            result.failed.append((upn, exc.message))
            return False
        except DomainError as exc:
            result.failed.append((upn, exc.message))
        except Exception:
            log.exception("assigning %s to %s failed", result.target, upn)
            result.failed.append((upn, "could not be completed (internal error); nothing changed"))
        else:
            result.succeeded.append(upn)
            result.added[upn] = added
        await _report(on_progress, len(result.succeeded) + len(result.failed), result)
        return True

    if result.dry_run:
        async with change(origin, dry_run=True):
            for upn in upns:

                async def preview(upn: str = upn) -> list[str]:
                    # Inside the dry run's transaction, db.transaction() is a savepoint.
                    async with db.transaction() as savepoint:
                        return await _grant(
                            Change(origin, savepoint, True), upn, products, pack, rules
                        )

                if not await attempt(upn, preview):
                    break
    else:
        for upn in upns:

            async def carry_out(upn: str = upn) -> list[str]:
                async with change(_item_origin(origin, upn)) as ch:
                    return await _grant(ch, upn, products, pack, rules, result.jobs)

            if not await attempt(upn, carry_out):
                break
    done = set(result.succeeded) | {u for u, _ in result.failed}
    skipped = [u for u in upns if u not in done]
    if skipped:
        why = "not attempted: the database stopped answering; try these again"
        result.failed.extend((u, why) for u in skipped)


async def _report(on_progress: ProgressCallback | None, done: int, result: BulkOutcome) -> None:
    if on_progress is None:
        return
    try:
        maybe = on_progress(done, result.total, result.succeeded, result.failed)
        if inspect.isawaitable(maybe):
            await maybe
    except Exception:
        # Progress is a courtesy to the reader; it never stops the work.
        log.exception("progress report failed")
