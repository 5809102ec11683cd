"""Card actions: Action.Execute invokes (`adaptiveCard/action`) and Action.Submit messages.

Both carry the same data (see `bot.teams.render`): a verb and field values. That data comes
from the client and is never trusted: it only names a command (looked up in the registry) and
values (validated by the command's Args model through `run_fields`, the one authorization
gate); who is acting comes only from the authenticated activity (`actor`). Approval requests
are looked up server-side by their opaque id and re-checked.

The edge calls `handle_card_action(turn_context, actor, ctx)` for an `adaptiveCard/action`
invoke (return its result as the invoke response) or a message whose `value` is a dict
(returns None; the answer has been sent, by updating the card in place where possible).
Approval cards are kept up to date by `bot.teams.approval_cards`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from botbuilder.core import TurnContext
from botbuilder.schema import Activity, ActivityTypes, AdaptiveCardInvokeResponse

from bot.auth.actor import Actor
from bot.commands.approvals import approval_reply
from bot.commands.dispatch import failed, refusal, run_fields, run_text
from bot.commands.forms import build_form
from bot.commands.grammar import UsageError, tokenize
from bot.commands.registry import REGISTRY, Access, Context, find
from bot.commands.reply import Approval, Changed, Error, Form, Message, Reply
from bot.domain import approvals
from bot.domain.db import is_outage
from bot.domain.errors import DomainError
from bot.teams import provisioning as job_cards
from bot.teams.approval_cards import after_reply, card_activity, clicked_card
from bot.teams.render import (
    CONTENT_TYPE,
    CONTROL_KEYS,
    VERB_APPROVAL_REFRESH,
    VERB_APPROVE,
    VERB_FORM_SUBMIT,
    VERB_PAGE,
    VERB_REJECT,
    render,
)

log = logging.getLogger("bot.teams.card_actions")

INVOKE_NAME = "adaptiveCard/action"
_FORM_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_MAX_VALUE = 4000
_DECISIONS = (VERB_APPROVE, VERB_REJECT)


def _action(activity: Activity) -> tuple[str, dict[str, Any], bool] | None:
    """(verb, data, is_invoke) from an Execute invoke or a Submit message; None if neither."""
    if activity.type == ActivityTypes.invoke and activity.name == INVOKE_NAME:
        value: dict[str, Any] = activity.value if isinstance(activity.value, dict) else {}
        action = value.get("action")
        action = action if isinstance(action, dict) else {}
        data = action.get("data")
        verb = action.get("verb")
        return (
            verb if isinstance(verb, str) else "",
            dict(data) if isinstance(data, dict) else {},
            True,
        )
    if activity.type == ActivityTypes.message and isinstance(activity.value, dict):
        verb = activity.value.get("verb")
        return (verb if isinstance(verb, str) else "", dict(activity.value), False)
    return None


async def handle_card_action(
    turn_context: TurnContext, actor: Actor, ctx: Context
) -> AdaptiveCardInvokeResponse | None:
    found = _action(turn_context.activity)
    if found is None:
        return None
    verb, data, invoke = found
    ctx = replace(ctx, actor=replace(actor, source="card"))
    try:
        reply, actionable = await run_action(verb, data, ctx)
    except Exception as exc:  # never a stack trace on a card; nothing half-done (one transaction)
        reply, actionable = failed(exc, "action", f"card action {verb!r}", actor), False
    card = render(reply, actionable=actionable)
    if invoke:
        # The response card takes the place of the clicked one.
        shown_in = clicked_card(turn_context)
        response = AdaptiveCardInvokeResponse(status_code=200, type=CONTENT_TYPE, value=card)
    else:
        shown_in = await _answer_submit(turn_context, card)
        response = None
    if isinstance(reply, Approval) and (reply.status == "pending" or verb in _DECISIONS):
        # Remember where a request's card now is, or bring its posted card up to date.
        await after_reply(turn_context, reply, shown_in)
    await job_cards.remember(turn_context, reply, shown_in)
    return response


async def run_action(verb: str, data: dict[str, Any], ctx: Context) -> tuple[Reply, bool]:
    """What a button asks for → (reply, whether approval buttons may be shown)."""
    if verb == VERB_PAGE:
        return await _page(data, ctx), True
    if verb == VERB_FORM_SUBMIT:
        return await _submit_form(data, ctx), True
    if verb in (VERB_APPROVE, VERB_REJECT):
        return await _decide(verb, data, ctx)
    if verb == VERB_APPROVAL_REFRESH:
        return await _refresh(data, ctx)
    if verb == job_cards.VERB_RETRY:
        retried = await run_fields("provisioning retry", {"id": data.get("job_id")}, ctx)
        if isinstance(retried, Form):  # a button gets no form back: the card data was wrong
            retried = Error(
                title="Refused", text="This card does not name a provisioning job.", code="invalid"
            )
        return retried, False
    return Error(
        title="Unknown action",
        text="This card asks for an action the bot does not have.",
        code="unknown-action",
    ), False


# ----- paging ------------------------------------------------------------------------------


async def _page(data: dict[str, Any], ctx: Context) -> Reply:
    text = data.get("command")
    refused = Error(
        title="Unknown action",
        text="This button does not name a list to show.",
        code="unknown-action",
    )
    if not isinstance(text, str) or not text.strip() or len(text) > _MAX_VALUE:
        return refused
    try:
        spec = find(tokenize(text))
    except UsageError:
        return refused
    # A page button only ever shows a list: it never runs a change, whatever its data says.
    if spec is None or spec.mutating:
        return refused
    return await run_text(text, ctx)


# ----- forms -------------------------------------------------------------------------------


async def _submit_form(data: dict[str, Any], ctx: Context) -> Reply:
    name = data.get("command")
    spec = REGISTRY.get(name) if isinstance(name, str) else None
    form_id = data.get("form_id")
    if spec is None or not spec.mutating or not spec.form:
        return Error(
            title="Unknown action",
            text="This form asks for a command the bot does not have.",
            code="unknown-action",
        )
    if not isinstance(form_id, str) or not _FORM_ID.fullmatch(form_id):
        return Error(
            title="Form not recognised",
            text=f"This form has no valid id; type the command `{spec.name}` to get a fresh form.",
            code="invalid",
        )
    # Teams sends an empty string for an input left empty: that is "not given".
    fields = {k: v for k, v in data.items() if k not in CONTROL_KEYS and v != "" and v is not None}
    submitter = replace(ctx.actor, idempotency_key=f"form:{form_id}")
    form_ctx = replace(ctx, actor=submitter)
    reply = await run_fields(spec.name, fields, form_ctx)
    values = {k: v for k, v in fields.items() if k != "dry_run"}
    if isinstance(reply, Form):
        return await build_form(spec, ctx, values, reply.errors, form_id)
    if isinstance(reply, Error) and reply.code != "forbidden":
        # Refused by the ledger (not found, conflict, try again...): the same form again, with
        # the reason on top and the values kept, so it can be corrected and sent again.
        try:
            form = await build_form(
                spec, ctx, values, {"": f"{reply.title}: {reply.text}"}, form_id
            )
        except Exception as exc:
            if not is_outage(exc):
                raise
            return reply  # the form's choices come from the database too: just "try again"
        form.title = f"{spec.summary}: not done"
        form.ok = False
        return form
    return await same_answer(reply, "This form was already sent; nothing was changed again.")


def is_duplicate(reply: Reply) -> bool:
    return (
        isinstance(reply, Message)
        and isinstance(reply.data, dict)
        and bool(reply.data.get("duplicate"))
    )


async def same_answer(
    reply: Reply, note: str = "This was already done; nothing was changed again."
) -> Reply:
    """For a request carried out before (a redelivered activity, a form sent again): what the
    first one did — its before → after, or its approval request as it now stands — instead of
    a bare "already done". Any other reply is returned as it is."""
    if not is_duplicate(reply):
        return reply
    events = reply.data.get("outcome")
    events = events if isinstance(events, list) else []
    for event in events:
        if isinstance(event, dict) and event.get("action") == "approval.request":
            after = event.get("after") or {}
            try:
                request = await approvals.current(str(after.get("id", "")))
            except DomainError:
                break
            return approval_reply(request, note)
    first = events[0] if events and isinstance(events[0], dict) else None
    if first is None:
        return reply
    return Changed(
        title="Already done",
        text=note,
        target=str(first.get("target", "")),
        before=first.get("before") if isinstance(first.get("before"), dict) else None,
        after=first.get("after") if isinstance(first.get("after"), dict) else None,
        data={"duplicate": True, "outcome": events},
    )


# ----- approvals ---------------------------------------------------------------------------


async def _may_view(ctx: Context) -> tuple[bool, bool]:
    """(may see approval requests, may decide them), from the one authorization gate — never
    from card data. Administrators see them; approvers decide them."""
    approver = await refusal(Access.APPROVER, ctx) is None
    admin = approver or await refusal(Access.ADMIN, ctx) is None
    return admin, approver


def _request_id(data: dict[str, Any]) -> str | None:
    rid = data.get("request_id")
    return rid if isinstance(rid, str) and 0 < len(rid) <= 40 else None


async def _decide(verb: str, data: dict[str, Any], ctx: Context) -> tuple[Reply, bool]:
    rid = _request_id(data)
    if rid is None:
        return Error(
            title="Unknown request",
            text="This card does not name an approval request.",
            code="invalid",
        ), False
    fields: dict[str, Any] = {"id": rid}
    reason = data.get("reason")
    if reason not in (None, ""):
        fields["reason"] = reason
    name = "approve" if verb == VERB_APPROVE else "reject"
    reply = await run_fields(name, fields, ctx)
    if isinstance(reply, Approval):
        return reply, True
    if isinstance(reply, Form):
        # Values of the wrong type: a button does not get a form back, it gets refused.
        problems = "; ".join(f"{k or 'the card'}: {v}" for k, v in reply.errors.items())
        reply = Error(
            title="Refused",
            text=f"The card sent a value of the wrong kind ({problems}).",
            code="invalid",
        )
    if isinstance(reply, Error):
        # Show the request as it stands with why nothing happened — to those who may see it.
        may_view, may_decide = await _may_view(ctx)
        if may_view:
            try:
                request = await approvals.current(rid)
            except DomainError:
                return reply, False
            refused = approval_reply(request, f"{reply.title}: {reply.text}")
            refused.ok = False
            return refused, may_decide and _not_requester(ctx, request)
    return reply, False


def _not_requester(ctx: Context, request: Any) -> bool:
    return not approvals.is_requester(request, ctx.actor.origin().actor_id)


async def _refresh(data: dict[str, Any], ctx: Context) -> tuple[Reply, bool]:
    rid = _request_id(data)
    may_view, may_decide = await _may_view(ctx)
    if not may_view:
        return Message(
            title="Approval request",
            text="Only administrators and approvers can see approval requests.",
        ), False
    if rid is None:
        return Error(
            title="Unknown request",
            text="This card does not name an approval request.",
            code="invalid",
        ), False
    try:
        request = await approvals.current(rid)
    except DomainError as exc:
        return Error(title="Unknown request", text=exc.message, code="not-found"), False
    return approval_reply(request), may_decide and _not_requester(ctx, request)


# ----- answering a Submit --------------------------------------------------------------------


async def _answer_submit(turn_context: TurnContext, card: dict[str, Any]) -> str | None:
    """Action.Submit has no response card: replace the clicked card, else post the answer.

    Returns the id of the message now showing the answer."""
    clicked = clicked_card(turn_context)
    if clicked:
        try:
            await turn_context.update_activity(card_activity(card, clicked))
            return clicked
        except Exception:
            log.warning(
                "could not update the clicked card; posting the answer instead", exc_info=True
            )
    sent = await turn_context.send_activity(card_activity(card))
    return sent.id if sent is not None else None
