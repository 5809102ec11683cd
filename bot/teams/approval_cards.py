"""Approval cards kept up to date: where a request's card was posted is remembered, and a
decision (a button or `approve ID` typed as text) updates that card in place for everyone who
sees it.

The edge calls `after_reply(turn_context, reply, activity_id)` after posting any reply.
"""

from __future__ import annotations

import logging
from typing import Any

from botbuilder.core import TurnContext
from botbuilder.schema import Activity, ActivityTypes, Attachment, ConversationAccount

from bot.commands.approvals import approval_reply
from bot.commands.reply import Approval, Reply
from bot.domain import approvals, conversations
from bot.domain.errors import DomainError
from bot.teams import provisioning as job_cards
from bot.teams.render import CONTENT_TYPE, render

log = logging.getLogger("bot.teams.approval_cards")


def clicked_card(turn_context: TurnContext) -> str | None:
    """The message holding the card that was clicked."""
    return turn_context.activity.reply_to_id or None


def card_activity(card: dict[str, Any], activity_id: str | None = None) -> Activity:
    return Activity(
        type=ActivityTypes.message,
        id=activity_id,
        attachments=[Attachment(content_type=CONTENT_TYPE, content=card)],
    )


async def update_request_card(
    turn_context: TurnContext, request_id: str, *, skip: str | None = None
) -> bool:
    """Update the request's posted card in place, for everyone who sees it.

    The card is in this conversation, or in another one reached through the same Bot Connector
    (the request made in a chat, decided in the approvals channel). Copies elsewhere (the
    approvals channel's) catch up through their refresh action.
    """
    try:
        request = await approvals.find(request_id)
    except DomainError:
        return False
    if not request.card_activity_id or request.card_activity_id == skip:
        return False
    here = turn_context.activity.conversation.id if turn_context.activity.conversation else None
    card = render(approval_reply(request), actionable=False)
    update = card_activity(card, request.card_activity_id)
    try:
        if not request.conversation_id or request.conversation_id == here:
            await turn_context.update_activity(update)
            return True
        ref = await conversations.find(request.conversation_id)
        if ref is None or not ref.active or ref.service_url != turn_context.activity.service_url:
            return False  # another connector: only this turn's (checked, trusted) one is used
        update.conversation = ConversationAccount(id=request.conversation_id)
        update.service_url = ref.service_url
        await turn_context.adapter.update_activity(turn_context, update)
    except Exception:
        log.warning("could not update the card of approval request %s", request_id, exc_info=True)
        return False
    return True


async def after_reply(turn_context: TurnContext, reply: Reply, activity_id: str | None) -> None:
    """Call after posting `reply` as message `activity_id` in this turn's conversation."""
    await job_cards.remember(turn_context, reply, activity_id)
    if not isinstance(reply, Approval) or not reply.request_id:
        return
    here = turn_context.activity.conversation.id if turn_context.activity.conversation else None
    if reply.status == "pending":
        request = await approvals.find(reply.request_id)
        if activity_id and not request.card_activity_id:
            await approvals.set_card(request.id, here, activity_id)
        return
    # A decision typed as text (`approve ID`): bring the request's own card up to date too.
    await update_request_card(turn_context, reply.request_id, skip=activity_id)
