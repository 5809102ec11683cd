"""The approvals channel (`settings.approvals_channel`, SPEC §5): a copy of each new approval
request is posted there."""

from __future__ import annotations

import logging

from bot.commands.reply import Approval
from bot.domain import approvals, conversations
from bot.teams.proactive import ProactiveSender, SendOutcome, Target
from bot.teams.render import render

log = logging.getLogger("bot.teams.approvals_channel")


class ApprovalsChannel:
    """Posts a copy of each new approval request to `settings.approvals_channel` (SPEC §5).

    The channel must be one the bot is in (its conversation reference is stored on any turn
    there). The copy carries the card's refresh action, so it shows the outcome once decided.
    """

    def __init__(self, conversation_id: str, sender: ProactiveSender) -> None:
        self.conversation_id = conversation_id
        self._sender = sender

    async def __call__(self, reply: Approval) -> None:
        request = await approvals.find(reply.request_id)
        if request.conversation_id == self.conversation_id:
            return  # asked in the approvals channel itself: the card is already there
        ref = await conversations.find(self.conversation_id)
        if ref is None or not ref.active:
            log.warning(
                "approvals channel %s is unknown to the bot (not installed there?); "
                "request %s not posted there",
                self.conversation_id,
                request.id,
            )
            return
        result = await self._sender.post_card(
            Target.of(ref), render(reply, actionable=True), summary=reply.title
        )
        if result.outcome is not SendOutcome.SENT:
            log.warning(
                "approval request %s not posted to the approvals channel: %s",
                request.id,
                result.error or result.outcome,
            )
