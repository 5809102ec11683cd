"""Approval requests: a change above the threshold waits for an approver (SPEC §3, §5).

The threshold is a rule of the ledger: every door (chat, card, CLI, a handler called directly)
asks `allocate` / `set_capacity` here, which carry the change out at once or hold it as a
request; `bot.domain.ledger`'s own functions are what carrying it out means.

A request stores what to do (an action and its payload, checked again when it is carried
out), who asked, and a before → after preview. It is decided exactly once: the decision is a
conditional UPDATE (`... WHERE status = 'pending' AND expires_at > now`) in the same
transaction as the change it approves, so of any number of simultaneous approvals one wins
and the others change nothing. The change itself runs through the ledger services (source
"approval"), so every invariant of the ledger is checked again at decision time. Every step —
requested, approved, rejected, failed, expired — is an audit event.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.exceptions import IntegrityError

from bot.domain import ledger
from bot.domain.change import Origin, change, request_outcome
from bot.domain.errors import (
    AT,
    Conflict,
    DomainError,
    Duplicate,
    Forbidden,
    InvalidInput,
    NotFound,
)
from bot.domain.ledger import Outcome
from bot.domain.models import ApprovalRequest, ApprovalStatus

ALLOCATE = "allocation.allocate"
CAPACITY = "product.capacity"
SYSTEM = Origin(actor_id="system", actor_name="Fusion bot", source="system")

# Request ids: opaque, random, easy to type (no 0/o, 1/l/i).
_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_ID_LENGTH = 10


#: How people write a request's number: A-17, a17, A 17.
_SHORT_ID = re.compile(r"(?i)a[-\s]?(\d{1,9})")


def short_id(request: ApprovalRequest) -> str:
    """The id people type and read aloud: A-17 (the opaque id for a request made before
    requests were numbered)."""
    return f"A-{request.number}" if request.number else request.id


class SameRequestPending(DomainError):
    """An identical change already waits for approval: it is not requested twice."""

    code = "exists"

    def __init__(self, request: ApprovalRequest) -> None:
        super().__init__(f"The same change already waits for approval as {short_id(request)}.")
        self.request = request


def new_request_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def _now() -> datetime:
    return datetime.now(UTC)


# ----- what an approved request carries out ----------------------------------------------


def _whole(payload: dict[str, Any], key: str) -> int:
    value = payload.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"The stored request is damaged: {key} is not a whole number.")
    return value


def _name(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"The stored request is damaged: {key} is missing.")
    return value


async def _allocate(origin: Origin, payload: dict[str, Any], dry_run: bool) -> Outcome:
    return await ledger.allocate(
        origin,
        _whole(payload, "quantity"),
        _name(payload, "product"),
        _name(payload, "subscription"),
        dry_run=dry_run,
    )


async def _capacity(origin: Origin, payload: dict[str, Any], dry_run: bool) -> Outcome:
    return await ledger.set_capacity(
        origin, _name(payload, "product"), _whole(payload, "capacity"), dry_run=dry_run
    )


CARRY_OUT: dict[str, Callable[[Origin, dict[str, Any], bool], Awaitable[Outcome]]] = {
    ALLOCATE: _allocate,
    CAPACITY: _capacity,
}


# ----- requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decided:
    """What deciding did: the request as it now stands and, if approved, the change made."""

    request: ApprovalRequest
    outcome: Outcome | None
    dry_run: bool = False


def view(request: ApprovalRequest) -> dict[str, Any]:
    """The stable JSON shape of a request (CLI --json, audit)."""

    def stamp(at: datetime | None) -> str | None:
        return at.astimezone(UTC).isoformat() if at else None

    return {
        "id": request.id,
        "short_id": short_id(request),
        "action": request.action,
        "payload": request.payload,
        "summary": request.summary,
        "requester": {"id": request.requester_id, "name": request.requester_name},
        "status": request.status.value,
        "before": request.before,
        "after": request.after,
        "created_at": stamp(request.created_at),
        "expires_at": stamp(request.expires_at),
        "decided_by": (
            {"id": request.decided_by_id, "name": request.decided_by_name}
            if request.decided_by_id
            else None
        ),
        "decided_at": stamp(request.decided_at),
        "reason": request.reason,
    }


@dataclass(frozen=True)
class ApprovalRule:
    """Allocations and capacity changes of more than `threshold` units wait for an approver,
    for `ttl_hours` at most (FUSION_APPROVAL_THRESHOLD, FUSION_APPROVAL_TTL_HOURS)."""

    threshold: int
    ttl_hours: int


@dataclass(frozen=True)
class Held:
    """A change above the threshold: the request that now waits for an approver, or for a dry
    run (which asks nothing of anyone) what approving it would do."""

    threshold: int
    request: ApprovalRequest | None = None
    preview: Outcome | None = None
    #: The same change already waited for approval: `request` is that one, nothing was asked.
    already_pending: str | None = None


async def allocate(
    origin: Origin,
    rule: ApprovalRule,
    quantity: int,
    product_name: str,
    subscription_code: str,
    *,
    dry_run: bool = False,
    conversation_id: str | None = None,
) -> Outcome | Held:
    """An allocation asked for through any door: carried out now, or held for approval when it
    is above the threshold."""
    if quantity <= rule.threshold:
        return await ledger.allocate(
            origin, quantity, product_name, subscription_code, dry_run=dry_run
        )
    product = await ledger.find_product(product_name)
    subscription = await ledger.find_subscription(subscription_code)
    payload = {"quantity": quantity, "product": product.name, "subscription": subscription.code}
    return await _hold(origin, rule, ALLOCATE, payload, dry_run, conversation_id)


async def set_capacity(
    origin: Origin,
    rule: ApprovalRule,
    name: str,
    capacity: int,
    *,
    dry_run: bool = False,
    conversation_id: str | None = None,
) -> Outcome | Held:
    """A capacity change asked for through any door: made now, or held for approval when it
    moves the capacity by more than the threshold."""
    product = await ledger.find_product(name)
    if abs(capacity - product.capacity) <= rule.threshold:
        return await ledger.set_capacity(origin, name, capacity, dry_run=dry_run)
    payload = {"product": product.name, "capacity": capacity}
    return await _hold(origin, rule, CAPACITY, payload, dry_run, conversation_id)


async def _hold(
    origin: Origin,
    rule: ApprovalRule,
    action: str,
    payload: dict[str, Any],
    dry_run: bool,
    conversation_id: str | None,
) -> Held:
    if dry_run:
        return Held(rule.threshold, preview=await CARRY_OUT[action](origin, payload, True))
    try:
        request = await request_change(
            origin, action, payload, ttl_hours=rule.ttl_hours, conversation_id=conversation_id
        )
    except SameRequestPending as same:
        return Held(rule.threshold, request=same.request, already_pending=same.message)
    return Held(rule.threshold, request=request)


async def request_change(
    origin: Origin,
    action: str,
    payload: dict[str, Any],
    *,
    ttl_hours: int,
    conversation_id: str | None = None,
) -> ApprovalRequest:
    """Hold a change for approval, whatever its size. Refused at once if it could not be
    carried out now."""
    carry_out = CARRY_OUT.get(action)
    if carry_out is None:
        raise InvalidInput(f"{action} changes do not go through approvals.")
    key = origin.idempotency_key
    if key is not None:
        # The same request delivered again: answer with what the first one did, before the
        # preview below could refuse it against a ledger that has moved on since.
        seen, outcome = await request_outcome(key[:255])
        if seen:
            raise Duplicate(key, outcome)
    # The same checks as the real change, rolled back: a request that could never succeed is
    # refused now rather than sent to an approver. The preview is what approving would do.
    preview = await carry_out(origin, payload, True)
    now = _now()
    for same in await ApprovalRequest.filter(
        status=ApprovalStatus.PENDING, action=action, expires_at__gt=now
    ):
        if same.payload == payload:
            raise SameRequestPending(same)
    for attempt in range(NUMBER_ATTEMPTS):
        try:
            return await _create_request(
                origin, action, payload, preview, now, ttl_hours, conversation_id
            )
        except IntegrityError:
            # Another request took the same number at the same moment: take the next one.
            if attempt == NUMBER_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


#: Tries at a request number when requests are made at the same moment.
NUMBER_ATTEMPTS = 5


async def _create_request(
    origin: Origin,
    action: str,
    payload: dict[str, Any],
    preview: Outcome,
    now: datetime,
    ttl_hours: int,
    conversation_id: str | None,
) -> ApprovalRequest:
    async with change(origin) as ch:
        last = await ApprovalRequest.all().using_db(ch.conn).order_by("-number").first()
        request = await ApprovalRequest.create(
            using_db=ch.conn,
            id=new_request_id(),
            number=(last.number or 0) + 1 if last else 1,
            action=action,
            payload=payload,
            summary=_summary(action, payload, preview)[:500],
            before=preview.before,
            after=preview.after,
            requester_id=origin.actor_id,
            requester_name=origin.actor_name,
            status=ApprovalStatus.PENDING,
            expires_at=now + timedelta(hours=ttl_hours),
            conversation_id=conversation_id[:512] if conversation_id else None,
        )
        ch.record(
            "approval.request",
            f"approval:{request.id}",
            None,
            {
                "id": request.id,
                "short_id": short_id(request),
                "action": action,
                "payload": payload,
                "summary": request.summary,
                "before": preview.before,
                "after": preview.after,
                "expires_at": request.expires_at.isoformat(),
            },
        )
    return request


def _summary(action: str, payload: dict[str, Any], preview: Outcome) -> str:
    if action == ALLOCATE:
        product, _, subscription = preview.target.partition(" → ")
        return f"Allocate {payload['quantity']:,} of {product} to {subscription}"
    before = (preview.before or {}).get("capacity")
    after = (preview.after or {}).get("capacity")
    return f"Capacity of {preview.target}: {before:,} → {after:,}"


async def find(request_id: str) -> ApprovalRequest:
    """A request by id; never lists other ids (they are capabilities, not names)."""
    key = request_id.strip().lower() if isinstance(request_id, str) else ""
    numbered = _SHORT_ID.fullmatch(key)
    if numbered:
        request = await ApprovalRequest.get_or_none(number=int(numbered.group(1)))
    else:
        request = await ApprovalRequest.get_or_none(id=key) if 0 < len(key) <= 16 else None
    if request is None:
        raise NotFound("approval request", request_id[:40] if isinstance(request_id, str) else "?")
    return request


async def current(request_id: str, now: datetime | None = None) -> ApprovalRequest:
    """A request as it stands, expired first if its time is up."""
    request = await find(request_id)
    if request.status is ApprovalStatus.PENDING and request.expires_at <= (now or _now()):
        await expire_due(now)
        request = await find(request_id)
    return request


async def pending(now: datetime | None = None) -> list[ApprovalRequest]:
    await expire_due(now)
    # Newest first, as `recent` (approvals --all) lists them.
    return await ApprovalRequest.filter(status=ApprovalStatus.PENDING).order_by("-created_at")


async def recent(limit: int = 50, now: datetime | None = None) -> list[ApprovalRequest]:
    await expire_due(now)
    return await ApprovalRequest.all().order_by("-created_at").limit(limit)


async def expire_due(now: datetime | None = None) -> int:
    """Mark pending requests whose time is up as expired, one audit event each."""
    now = now or _now()
    due = await ApprovalRequest.filter(
        status=ApprovalStatus.PENDING, expires_at__lte=now
    ).values_list("id", "number")
    count = 0
    for request_id, number in due:
        async with change(SYSTEM) as ch:
            updated = (
                await ApprovalRequest.filter(
                    id=request_id, status=ApprovalStatus.PENDING, expires_at__lte=now
                )
                .using_db(ch.conn)
                .update(status=ApprovalStatus.EXPIRED, decided_at=now)
            )
            if updated:
                ch.record(
                    "approval.expire",
                    f"approval:{request_id}",
                    {"status": "pending"},
                    {"status": "expired", "short_id": f"A-{number}" if number else request_id},
                )
                count += 1
    return count


async def set_card(request_id: str, conversation_id: str | None, activity_id: str) -> None:
    """Remember where the request's card was posted, so a decision can update it in place."""
    fields: dict[str, Any] = {"card_activity_id": activity_id[:255]}
    if conversation_id:
        fields["conversation_id"] = conversation_id[:512]
    await ApprovalRequest.filter(id=request_id).update(**fields)


# ----- deciding ----------------------------------------------------------------------------


def _already(request: ApprovalRequest) -> Conflict:
    status = request.status
    if status is ApprovalStatus.EXPIRED:
        return Conflict(
            f"Approval request {short_id(request)} expired; nothing was changed. "
            "Ask for the change again if it is still needed."
        )
    who = request.decided_by_name or request.decided_by_id or "someone"
    verb = {
        ApprovalStatus.APPROVED: "approved",
        ApprovalStatus.REJECTED: "rejected",
        ApprovalStatus.FAILED: "approved (but could not be carried out)",
    }.get(status, status.value)
    when = f", {AT}" if request.decided_at else ""
    return Conflict(
        f"Approval request {short_id(request)} was already {verb} by {who}{when}; "
        "nothing was changed again.",
        at=request.decided_at,
    )


class _Lost(Exception):
    """Someone else decided the request between our read and our conditional update."""


def is_requester(request: ApprovalRequest, actor_id: str) -> bool:
    """Whether `actor_id` asked for `request`. Entra object ids are GUIDs and CLI operators'
    UPNs are case-insensitive, so case does not tell two people apart."""
    return actor_id.strip().lower() == (request.requester_id or "").strip().lower()


async def decide(
    origin: Origin,
    request_id: str,
    *,
    approve: bool,
    reason: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> Decided:
    """Approve (and carry out) or reject a pending request, exactly once.

    The caller has already checked through the policy that `origin` is an approver.
    """
    now = now or _now()
    request = await current(request_id, now)
    if request.status is not ApprovalStatus.PENDING:
        raise _already(request)
    if is_requester(request, origin.actor_id):
        raise Forbidden(
            "You asked for this change, so you cannot decide it: another approver must."
        )
    reason = reason.strip()[:500] if reason and reason.strip() else None
    decided = {
        "decided_by_id": origin.actor_id,
        "decided_by_name": origin.actor_name,
        "decided_at": now,
        "reason": reason,
    }
    still_pending = {"id": request.id, "status": ApprovalStatus.PENDING, "expires_at__gt": now}
    outcome: Outcome | None = None
    try:
        async with change(origin, dry_run=dry_run) as ch:
            status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
            won = (
                await ApprovalRequest.filter(**still_pending)
                .using_db(ch.conn)
                .update(status=status, **decided)
            )
            if not won:
                raise _Lost()
            if approve:
                # Nested in this transaction (a savepoint): the change and the decision commit
                # together or not at all. Capacity and every invariant are checked again now.
                as_approval = Origin(
                    actor_id=origin.actor_id,
                    actor_name=origin.actor_name,
                    source="approval",
                    correlation_id=origin.correlation_id,
                )
                outcome = await CARRY_OUT[request.action](as_approval, request.payload, dry_run)
            ch.record(
                "approval.approve" if approve else "approval.reject",
                f"approval:{request.id}",
                {"status": "pending"},
                {
                    "status": status.value,
                    "short_id": short_id(request),
                    "reason": reason,
                    "requester": request.requester_name,
                    "summary": request.summary,
                    "result": outcome.message if outcome else None,
                },
            )
    except _Lost:
        raise _already(await find(request.id)) from None
    except DomainError as exc:
        if not approve or isinstance(exc, Forbidden) or dry_run:
            raise
        # The approved change cannot be carried out any more (capacity taken meanwhile, product
        # retired...): the request ends as failed, with the reason, instead of hanging on.
        return await _fail(origin, request, decided, exc.message, now)
    fresh = await find(request.id) if not dry_run else request
    return Decided(fresh, outcome, dry_run)


async def _fail(
    origin: Origin, request: ApprovalRequest, decided: dict[str, Any], why: str, now: datetime
) -> Decided:
    async with change(origin) as ch:
        won = (
            await ApprovalRequest.filter(
                id=request.id, status=ApprovalStatus.PENDING, expires_at__gt=now
            )
            .using_db(ch.conn)
            .update(status=ApprovalStatus.FAILED, **{**decided, "reason": why[:500]})
        )
        if won:
            ch.record(
                "approval.fail",
                f"approval:{request.id}",
                {"status": "pending"},
                {
                    "status": "failed",
                    "short_id": short_id(request),
                    "reason": why[:500],
                    "summary": request.summary,
                },
            )
    if not won:
        raise _already(await find(request.id))
    return Decided(await find(request.id), None)
