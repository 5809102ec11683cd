"""Events said as sentences: what the audit and the digest show people, instead of event codes.

"Alex Wilber allocated 5 TEAMS-SEATS to CONTOSO-01: 70 → 75". The codes (`allocation.allocate`,
`allocation:CONTOSO-01/TEAMS-SEATS`) stay in the stored event and in `--json`.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: action → what the actor did, with {name} (the target without its kind) filled in.
_DID = {
    "account.add": "added {name}",
    "account.update": "updated {name}",
    "allocation.allocate": "allocated to {name}",
    "allocation.release": "released from {name}",
    "approval.approve": "approved request {name}",
    "approval.reject": "rejected request {name}",
    "approval.expire": "let request {name} expire",
    "approval.fail": "approved request {name}, which could not be carried out",
    "approval.request": "asked for approval ({name})",
    "customer.add": "added customer {name}",
    "customer.link": "linked customer {name} to its Microsoft 365 tenant",
    "digest.stop": "stopped digest {name}",
    "digest.subscribe": "subscribed a conversation to digest {name}",
    "directory.sync": "synchronised users of {name}",
    "license.assign": "assigned license {name}",
    "license.unassign": "unassigned license {name}",
    "number.add": "added numbers {name}",
    "number.assign": "assigned {name}",
    "number.location": "set the emergency location of {name}",
    "number.release": "released {name}",
    "number.reserve": "reserved {name}",
    "number.unquarantine": "returned {name} from quarantine",
    "pack.assign": "assigned pack {name}",
    "pack.create": "created pack {name}",
    "pack.takeback": "took back pack {name}",
    "product.add": "added product {name}",
    "product.capacity": "changed the capacity of {name}",
    "product.delete": "deleted product {name}",
    "product.retire": "retired product {name}",
    "provisioning.done": "completed provisioning job {name}",
    "provisioning.failed": "recorded that provisioning job {name} failed",
    "provisioning.pending": "put provisioning job {name} back in the queue",
    "provisioning.sent": "sent provisioning job {name} to Microsoft 365",
    "provisioning.job": "queued provisioning job {name}",
    "provisioning.retry": "retried provisioning job {name}",
    "reconcile.fix": "fixed difference {name}",
    "reconcile.prune": "deleted reconcile runs older than their retention",
    "reconcile.run": "compared {name} with its Microsoft 365 tenant",
    "subscription.add": "added subscription {name}",
    "trunk.add": "added trunk {name}",
    "trunk.channels": "changed the channels of trunk {name}",
}


def value(v: Any) -> str:
    """A value in a sentence: figures with thousands separators, words for the rest."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(value(x) for x in v) or "none"
    return str(v)


def _changes(before: Any, after: Any, name: str = "") -> str:
    """ "70 → 75" for one changed figure, "capacity 500 → 600, status active" for several
    (a field that only repeats the target's `name` is not said again)."""
    old = before if isinstance(before, dict) else {}
    new = after if isinstance(after, dict) else {}
    if not old and not new:
        return ""
    parts = []
    for key in dict.fromkeys([*old, *new]):
        was, now = old.get(key), new.get(key)
        if (
            key in ("action", "payload", "requester", "short_id")
            or isinstance(was, (dict, list))
            or isinstance(now, (dict, list))
        ):
            continue  # nested details (a request's payload) are for --json
        if key in old and key in new and was != now:
            parts.append((key, f"{value(was)} → {value(now)}"))
        elif key in new and now is not None and key not in ("id", "status") and now != name:
            parts.append((key, value(now)))
    if len(parts) == 1 and parts[0][1].count("→") == 1:
        return parts[0][1]
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in parts[:4])


def event_sentence(
    actor: str, action: str, target: str, before: Any, after: Any, *, details: bool = True
) -> str:
    """One sentence for an audit event. `details=False` leaves out the fields that changed
    (what a digest, read by many, needs), keeping the figures of an allocation."""
    kind, _, name = target.partition(":")
    name = name or kind
    if action.startswith("approval.") and isinstance(after, dict) and after.get("short_id"):
        name = str(after["short_id"])  # A-17, not the opaque id in the target
    if action in ("allocation.allocate", "allocation.release") and "/" in name:
        code, _, product = name.partition("/")
        verb, word = ("allocated", "to") if action.endswith("allocate") else ("released", "from")
        old = (before or {}).get("allocated") if isinstance(before, dict) else None
        new = (after or {}).get("allocated") if isinstance(after, dict) else None
        if isinstance(old, int) and isinstance(new, int) and product:
            verb, word = (
                ("allocated", "to") if action.endswith("allocate") else ("released", "from")
            )
            return f"{actor} {verb} {abs(new - old):,} {product} {word} {code}: {old:,} → {new:,}"
        return f"{actor} {verb} {product} {word} {code}"
    if action == "approval.request" and isinstance(after, dict) and after.get("summary"):
        summary = str(after["summary"])
        return f"{actor} asked for approval to {summary[:1].lower()}{summary[1:]} (request {name})"
    if action.startswith("approval.") and isinstance(after, dict):
        reason = after.get("reason")
        did = _DID.get(action, action).format(name=name)
        return f"{actor} {did}" + (f": “{reason}”" if reason else "")
    if action == "reconcile.prune" and isinstance(after, dict):
        runs, differences = value(after.get("runs")), value(after.get("differences"))
        return (
            f"{actor} deleted {runs} reconcile runs older than their retention, with their "
            f"{differences} differences"
        )
    template = _DID.get(action)
    did = (
        template.format(name=name)
        if template is not None
        else f"{action.replace('.', ' ').replace('_', ' ')} {name}"
    )
    change = _changes(before, after, name) if details else ""
    return f"{actor} {did}" + (f": {change}" if change else "")


def target_name(target: str) -> str:
    """An event's target as people name it: "allocation:ACME-01/TEAMS-SEATS" is
    "TEAMS-SEATS → ACME-01", "product:TEAMS-SEATS" is "TEAMS-SEATS"; other text is kept."""
    kind, sep, name = target.partition(":")
    if not sep or not kind.isalpha() or kind.lower() != kind:
        return target
    if kind == "allocation" and "/" in name:
        code, _, product = name.partition("/")
        return f"{product} → {code}"
    return name


_NOUNS = {
    "allocation.allocate": ("allocation", "allocations"),
    "allocation.release": ("release", "releases"),
    "approval.request": ("approval request", "approval requests"),
    "approval.approve": ("approval", "approvals"),
    "approval.reject": ("rejection", "rejections"),
    "approval.expire": ("expired request", "expired requests"),
    "approval.fail": ("approval not carried out", "approvals not carried out"),
    "number.add": ("number range added", "number ranges added"),
    "number.assign": ("number assigned", "numbers assigned"),
    "number.release": ("number released", "numbers released"),
    "number.reserve": ("reservation", "reservations"),
    "account.add": ("account added", "accounts added"),
    "product.add": ("product added", "products added"),
    "product.capacity": ("capacity change", "capacity changes"),
    "license.assign": ("license assigned", "licenses assigned"),
    "license.unassign": ("license unassigned", "licenses unassigned"),
    "pack.assign": ("pack assigned", "packs assigned"),
    "account.update": ("account updated", "accounts updated"),
    "customer.add": ("customer added", "customers added"),
    "customer.link": ("customer linked", "customers linked"),
    "digest.stop": ("digest stopped", "digests stopped"),
    "digest.subscribe": ("digest subscription", "digest subscriptions"),
    "directory.sync": ("directory sync", "directory syncs"),
    "number.location": ("emergency location set", "emergency locations set"),
    "number.unquarantine": ("number back from quarantine", "numbers back from quarantine"),
    "pack.create": ("pack created", "packs created"),
    "pack.takeback": ("pack taken back", "packs taken back"),
    "product.delete": ("product deleted", "products deleted"),
    "product.retire": ("product retired", "products retired"),
    "provisioning.done": ("provisioning job done", "provisioning jobs done"),
    "provisioning.failed": ("provisioning job failed", "provisioning jobs failed"),
    "provisioning.pending": ("provisioning job requeued", "provisioning jobs requeued"),
    "provisioning.sent": ("provisioning job sent", "provisioning jobs sent"),
    "provisioning.job": ("provisioning job", "provisioning jobs"),
    "provisioning.retry": ("provisioning retry", "provisioning retries"),
    "reconcile.fix": ("difference fixed", "differences fixed"),
    "reconcile.prune": ("reconcile clean-up", "reconcile clean-ups"),
    "reconcile.run": ("reconcile", "reconciles"),
    "subscription.add": ("subscription added", "subscriptions added"),
    "trunk.add": ("trunk added", "trunks added"),
    "trunk.channels": ("trunk change", "trunk changes"),
}


def action_noun(action: str, count: int) -> str:
    """What `count` events of `action` are called: "3 allocations", "1 number assigned"."""
    one, many = _NOUNS.get(action, (action.replace(".", " "), action.replace(".", " ")))
    return one if count == 1 else many


@functools.cache
def known_zone(name: str) -> ZoneInfo | None:
    """The IANA time zone `name`, or None when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def when(at: datetime, zone: str | None = None, now: datetime | None = None) -> str:
    """A moment as people read it: "2 Dec 08:00 UTC" (with the year when it is not this
    year's), in the reader's time zone when known, else UTC."""
    tz = (known_zone(zone) if zone else None) or UTC
    local = at.astimezone(tz)
    current = (now or datetime.now(UTC)).astimezone(tz)
    name = "UTC" if tz is UTC else (local.tzname() or str(zone))
    day = f"{local.day} {local:%b}" + (f" {local.year}" if local.year != current.year else "")
    return f"{day} {local:%H:%M} {name}"


def relative(at: datetime, now: datetime | None = None) -> str:
    """ "in 3 days", "2 hours ago", "in 5 minutes", "now"."""
    delta = (at - (now or datetime.now(UTC))).total_seconds()
    span = abs(delta)
    for unit, seconds in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if span >= seconds:
            n = round(span / seconds)
            amount = f"{n} {unit}{'s' if n != 1 else ''}"
            return f"in {amount}" if delta > 0 else f"{amount} ago"
    return "now"


_WOULD = {
    "Added": "Would add",
    "Allocated": "Would allocate",
    "Assigned": "Would assign",
    "Changed": "Would change",
    "Created": "Would create",
    "Released": "Would release",
    "Reserved": "Would reserve",
    "Retired": "Would retire",
    "Set": "Would set",
    "Stopped": "Would stop",
    "Subscribed": "Would subscribe",
}


def would(outcome: str) -> str:
    """A change's outcome said as what a dry run would do: "Allocated 5 …" → "Would allocate
    5 …" (other wordings get "If carried out: ")."""
    first, _, rest = outcome.partition(" ")
    if first in _WOULD:
        return f"{_WOULD[first]} {rest}"
    return f"If carried out: {outcome}" if outcome else outcome
