"""Directory sync: bring a subscription's accounts in line with the users of an Entra group.

The caller reads the group's transitive members from the directory and hands them here as
plain `DirectoryMember`s; this module never talks to Graph. One run is one audited change:
every account added or updated gets its own audit event, plus one event for the run, all in
the same transaction — a run either happens entirely or not at all (and `--dry-run` shows
exactly what it would do).

What a run does with each member:

- a user not known yet → added to the subscription as `kind` (Teams user by default; resource
  accounts are synced from a group that holds only them, with `--kind auto-attendant` or
  `--kind call-queue`, because the directory does not say which users are resource accounts);
- a known account of the subscription (matched by Entra object id, else by UPN) → its UPN,
  display name and object id are brought up to date, or it is left unchanged;
- skipped, with the reason: members that are not users, users without a usable UPN, accounts
  that belong to another subscription or are of another kind (changing the kind would change
  which seats are in use), and a UPN already held by a different directory object.

Accounts of the subscription that are no longer in the group are counted, never removed: they
may hold numbers and licenses, which need a deliberate release.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.functions import Lower

from bot.domain.change import Change, Origin, change
from bot.domain.directory import check_upn
from bot.domain.errors import InvalidInput
from bot.domain.ledger import find_subscription
from bot.domain.models import Account, AccountKind, Subscription

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_LABEL = 255
MAX_DISPLAY_NAME = 256  # Entra's displayName limit (the column holds it)
CHUNK = 500
_VIEW_KEYS = {
    "upn": "upn",
    "display_name": "name",
    "object_id": "object_id",
}  # ids per IN (...) look-up


@dataclass(frozen=True)
class DirectoryMember:
    """A directory object as listed among a group's transitive members."""

    object_id: str
    type: str  # "user", "group", "device", "servicePrincipal", "orgContact", …
    upn: str | None = None
    display_name: str | None = None

    @property
    def label(self) -> str:
        return self.upn or self.display_name or self.object_id


@dataclass
class SyncReport:
    subscription: str
    group_id: str
    kind: AccountKind
    dry_run: bool
    added: list[str] = field(default_factory=list)
    updated: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member, why)
    nested_groups: int = 0  # groups below the group: their users are listed themselves
    not_in_group: int = 0  # accounts of this kind in the subscription, not in the group

    def counts(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "skipped": len(self.skipped),
            "nested_groups": self.nested_groups,
            "not_in_group": self.not_in_group,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "subscription": self.subscription,
            "group": self.group_id,
            "kind": self.kind.value,
            "dry_run": self.dry_run,
            **self.counts(),
            "added_accounts": self.added,
            "updated_accounts": [
                {"upn": upn, "before": before, "after": after}
                for upn, before, after in self.updated
            ],
            "unchanged_accounts": self.unchanged,
            "skipped_members": [{"member": m, "reason": why} for m, why in self.skipped],
        }


def account_view(account: Account, subscription_code: str) -> dict[str, Any]:
    """The account as `user add` records it in the audit, plus its Entra object id."""
    return {
        "upn": account.upn,
        "name": account.display_name,
        "kind": AccountKind(account.kind).value,
        "subscription": subscription_code,
        "object_id": account.object_id,
    }


def check_group_id(group_id: str) -> str:
    value = group_id.strip()
    if not _GUID.fullmatch(value):
        raise InvalidInput(
            f"{group_id[:60]!r} is not an Entra group object id (a GUID such as "
            "0f6a1c2e-1b7d-4c1e-9a55-2d1f3b9e8c70)."
        )
    return value.lower()


async def sync_accounts(
    origin: Origin,
    subscription_code: str,
    group_id: str,
    members: Sequence[DirectoryMember],
    kind: AccountKind = AccountKind.USER,
    *,
    dry_run: bool = False,
) -> SyncReport:
    """Add or update the subscription's accounts of `kind` from the group's members."""
    group_id = check_group_id(group_id)
    kind = AccountKind(kind)
    report = SyncReport(subscription_code, group_id, kind, dry_run)
    candidates = _candidates(members, report)
    # A run racing another change to the same accounts fails whole on the unique indexes
    # (upn in any case, object id): `change` answers Conflict and nothing is kept.
    async with change(origin, dry_run=dry_run) as ch:
        sub = await find_subscription(subscription_code, ch.conn)
        report.subscription = sub.code
        await _apply(ch, sub, kind, candidates, report)
        if report.added or report.updated:
            ch.record(
                "directory.sync",
                f"subscription:{sub.code}",
                None,
                {"group": group_id, "kind": kind.value, **report.counts()},
            )
    return report


def _candidates(members: Iterable[DirectoryMember], report: SyncReport) -> list[DirectoryMember]:
    """Users with a usable object id and UPN, once each; everything else is noted in `report`."""
    seen_ids: set[str] = set()
    seen_upns: set[str] = set()
    users: list[DirectoryMember] = []
    for m in members:
        kind = (m.type or "").removeprefix("#microsoft.graph.")
        if kind == "group":
            report.nested_groups += 1
            continue
        label = _clean(m.label, MAX_LABEL) or "(no name)"
        if kind != "user":
            report.skipped.append(
                (label, f"is a {kind or 'directory object of unknown type'}, not a user")
            )
            continue
        if not _GUID.fullmatch(m.object_id or ""):
            report.skipped.append((label, "has no valid Entra object id"))
            continue
        oid = m.object_id.lower()
        if oid in seen_ids:
            continue
        seen_ids.add(oid)
        if not (m.upn or "").strip():
            report.skipped.append((label, "has no user principal name"))
            continue
        try:
            upn = check_upn(m.upn or "")  # the same rule as `user add`
        except InvalidInput as exc:
            report.skipped.append((label, exc.message))
            continue
        if upn.lower() in seen_upns:  # UPNs are case-insensitive
            report.skipped.append((upn, "another member of the group has the same UPN"))
            continue
        seen_upns.add(upn.lower())
        name = _clean(m.display_name or "", MAX_DISPLAY_NAME) or upn
        users.append(DirectoryMember(oid, "user", upn, name))
    return users


async def _apply(
    ch: Change,
    sub: Subscription,
    kind: AccountKind,
    users: list[DirectoryMember],
    report: SyncReport,
) -> None:
    conn = ch.conn
    by_oid = await _accounts_by(conn, "object_id", [u.object_id for u in users])
    by_upn = await _accounts_by(conn, "upn", [u.upn or "" for u in users])
    codes: dict[int, str] = {sub.id: sub.code}
    for user in users:
        assert user.upn is not None and user.display_name is not None
        found_oid = by_oid.get(user.object_id)
        found_upn = by_upn.get(user.upn.lower())
        if found_oid is not None and found_upn is not None and found_oid.id != found_upn.id:
            report.skipped.append(
                (user.upn, f"the UPN is already used by another account ({found_upn.upn})")
            )
            continue
        account = found_oid or found_upn
        if account is None:
            created = await Account.create(
                using_db=conn,
                upn=user.upn,
                object_id=user.object_id,
                display_name=user.display_name,
                kind=kind,
                subscription_id=sub.id,
            )
            ch.record("account.add", f"account:{user.upn}", None, account_view(created, sub.code))
            report.added.append(user.upn)
            continue
        if account.subscription_id != sub.id:
            other = codes.get(account.subscription_id) or await _code(conn, account.subscription_id)
            codes[account.subscription_id] = other
            report.skipped.append((user.upn, f"belongs to subscription {other}"))
            continue
        if AccountKind(account.kind) is not kind:
            report.skipped.append(
                (
                    user.upn,
                    f"is a {AccountKind(account.kind).value} account here, not {kind.value}; "
                    "its kind is not changed by a sync",
                )
            )
            continue
        if account.object_id and account.object_id.lower() != user.object_id:
            report.skipped.append(
                (
                    user.upn,
                    f"the UPN belongs to another directory object here ({account.object_id}); "
                    "was the user deleted and created again?",
                )
            )
            continue
        before = account_view(account, sub.code)
        changes: dict[str, Any] = {}
        if account.upn != user.upn:
            changes["upn"] = user.upn
        if account.display_name != user.display_name:
            changes["display_name"] = user.display_name
        if account.object_id != user.object_id:
            changes["object_id"] = user.object_id
        if not changes:
            report.unchanged.append(user.upn)
            continue
        await Account.filter(id=account.id).using_db(conn).update(**changes)
        changed = {_VIEW_KEYS[k]: v for k, v in changes.items()}
        ch.record("account.update", f"account:{user.upn}", before, {**before, **changed})
        report.updated.append((user.upn, {k: before[k] for k in changed}, changed))
    in_group = {u.object_id for u in users}
    held = (
        await Account.filter(subscription_id=sub.id, kind=kind)
        .using_db(conn)
        .values_list("object_id", flat=True)
    )
    report.not_in_group = len([o for o in held if not o or str(o).lower() not in in_group])


async def _accounts_by(
    conn: BaseDBAsyncClient, column: str, values: list[str]
) -> dict[str, Account]:
    """Accounts whose `column` matches one of `values`, case-insensitively, keyed lower-case."""
    found: dict[str, Account] = {}
    wanted = sorted({v.lower() for v in values if v})
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        rows = await Account.annotate(key=Lower(column)).filter(key__in=chunk).using_db(conn)
        for row in rows:
            found[str(getattr(row, column)).lower()] = row
    return found


async def _code(conn: BaseDBAsyncClient, subscription_id: int) -> str:
    sub = await Subscription.filter(id=subscription_id).using_db(conn).first()
    return sub.code if sub else f"#{subscription_id}"


def _clean(text: str, limit: int) -> str:
    """Directory text as a display value: no control characters, bounded length."""
    text = "".join(
        " " if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"} else ch for ch in text
    )
    text = " ".join(text.split())
    return text[:limit]
