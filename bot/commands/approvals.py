"""Approvals: changes above the threshold wait for an approver; `approvals`, `approve`, `reject`.

Whether a change waits is the domain's rule (`bot.domain.approvals.allocate` / `set_capacity`,
asked by the ledger commands with the threshold from the settings); `answer_change` says what
came of it. Deciding goes
through the one authorization gate (Access.APPROVER re-checks the approver through the policy
on every call) and then `bot.domain.approvals.decide`, which refuses the requester, expired and
already-decided requests, and carries the change out in the same transaction as the decision.
"""

from __future__ import annotations

import logging
from datetime import datetime

from bot.commands import words
from bot.commands.answers import changed, paged
from bot.commands.args import Args, Quantity, Text
from bot.commands.registry import Access, Context, command
from bot.commands.reply import Approval, Changed, FormField, Reply, Table
from bot.domain import approvals
from bot.domain.ledger import Outcome
from bot.domain.models import ApprovalRequest, ApprovalStatus

log = logging.getLogger("bot.approvals")


def when(at: datetime | None) -> str | None:
    """A request's time as people read it (2 Dec 08:00 UTC)."""
    return words.when(at) if at else None


def approval_reply(request: ApprovalRequest, text: str = "") -> Approval:
    """The reply (and card) for a request in whatever state it is."""
    status = request.status.value
    titles = {
        "pending": "Approval needed",
        "approved": "Approved",
        "rejected": "Rejected",
        "expired": "Expired",
        "failed": "Approved, but not carried out",
    }
    return Approval(
        title=f"{titles.get(status, status)}: {request.summary}",
        data=approvals.view(request),
        ok=request.status is not ApprovalStatus.FAILED,
        request_id=request.id,
        short_id=approvals.short_id(request),
        summary=request.summary,
        requester=request.requester_name or request.requester_id,
        status=status,
        before=request.before,
        after=request.after,
        decided_by=request.decided_by_name or request.decided_by_id,
        decided_at=when(request.decided_at),
        expires_at=(
            f"{when(request.expires_at)} ({words.relative(request.expires_at)})"
            if request.status is ApprovalStatus.PENDING
            else when(request.expires_at)
        ),
        reason=request.reason,
        text=text,
    )


def approval_rule(ctx: Context) -> approvals.ApprovalRule:
    """The approval threshold and time to live, from the settings every Context carries."""
    return approvals.ApprovalRule(ctx.settings.approval_threshold, ctx.settings.approval_ttl_hours)


async def answer_change(ctx: Context, result: Outcome | approvals.Held) -> Reply:
    """The reply to an allocation or capacity change: what it did, or the approval request it
    became (posted to the approvals channel too, where the front door has one)."""
    if not isinstance(result, approvals.Held):
        return changed(result)
    if result.request is None:
        assert result.preview is not None  # a dry run
        preview = changed(result.preview)
        preview.text = (
            f"{preview.text} This is more than {result.threshold:,} units, so the real change "
            "will wait for an approver."
        )
        return preview
    request = result.request
    if result.already_pending:
        return approval_reply(request, f"{result.already_pending} Nothing was requested again.")
    typed = approvals.short_id(request)
    reply = approval_reply(
        request,
        f"More than {result.threshold:,} units: this change waits for an approver. "
        f"Approvers can use the buttons or type `approve {typed}` / `reject {typed}`.",
    )
    post = ctx.services.approvals_channel
    if post is not None:
        try:
            await post(reply)
        except Exception:  # the request stands; the channel copy is a courtesy
            log.exception("could not post approval request %s to the approvals channel", request.id)
    return reply


# ----- commands ----------------------------------------------------------------------------


class ApprovalsArgs(Args):
    all: bool = False
    page: Quantity = 1


@command(
    "approvals",
    "approvals [--all] [--page N]",
    "Approval requests waiting for a decision (--all: recent ones in any state)",
    ApprovalsArgs,
    access=Access.APPROVER,
)
async def approvals_list(ctx: Context, args: ApprovalsArgs) -> Reply:
    found = await (approvals.recent(200) if args.all else approvals.pending())
    rows = [
        [
            approvals.short_id(r),
            r.summary,
            r.requester_name or r.requester_id,
            when(r.created_at) or "",
            r.status.value
            if r.status is not ApprovalStatus.PENDING
            else f"pending until {when(r.expires_at)}",
        ]
        for r in found
    ]
    size = ctx.settings.page_size
    title = "Approval requests" if args.all else "Pending approvals"
    empty = "No approval requests." if args.all else "Nothing waits for approval."
    table: Table = paged(
        title,
        ["Request", "Change", "Requested by", "Requested", "Status"],
        rows,
        [approvals.view(r) for r in found],
        args.page,
        size,
        "approvals --all" if args.all else "approvals",
        note="Decide with `approve ID` or `reject ID [REASON]`." if rows else empty,
    )
    return table


class DecideArgs(Args):
    id: Text
    reason: list[Text] | Text | None = None

    def reason_text(self) -> str | None:
        if isinstance(self.reason, list):
            return " ".join(self.reason) or None
        return self.reason


_DECIDE_FORM = (
    FormField("id", "Request", kind="choice"),
    FormField("reason", "Reason", required=False),
)


async def _decide(ctx: Context, args: DecideArgs, approve: bool) -> Reply:
    decided = await approvals.decide(
        ctx.actor.origin(),
        args.id,
        approve=approve,
        reason=args.reason_text(),
        dry_run=args.dry_run,
    )
    if decided.dry_run:
        if decided.outcome is not None:
            preview: Changed = changed(decided.outcome)
            preview.title = (
                f"Dry run — approving {decided.request.id} would: {decided.outcome.message}"
            )
            return preview
        before, after = {"status": "pending"}, {"status": "rejected"}
        return Changed(
            title=f"Dry run — {decided.request.id} would be rejected; nothing changed.",
            target=f"approval:{decided.request.id}",
            before=before,
            after=after,
            dry_run=True,
            data={
                "action": "approval.reject",
                "target": decided.request.id,
                "before": before,
                "after": after,
                "dry_run": True,
            },
        )
    text = decided.outcome.message if decided.outcome else ""
    reply = approval_reply(decided.request, text)
    if decided.outcome is not None:
        reply.data = {
            **reply.data,
            "result": {
                "action": decided.outcome.action,
                "target": decided.outcome.target,
                "before": decided.outcome.before,
                "after": decided.outcome.after,
            },
        }
    return reply


@command(
    "approve",
    "approve ID [REASON...]",
    "Approve a pending request: the change is carried out now",
    DecideArgs,
    access=Access.APPROVER,
    mutating=True,
    form=_DECIDE_FORM,
)
async def approve(ctx: Context, args: DecideArgs) -> Reply:
    return await _decide(ctx, args, approve=True)


@command(
    "reject",
    "reject ID [REASON...]",
    "Reject a pending request: nothing is changed",
    DecideArgs,
    access=Access.APPROVER,
    mutating=True,
    form=_DECIDE_FORM,
)
async def reject(ctx: Context, args: DecideArgs) -> Reply:
    return await _decide(ctx, args, approve=False)
