"""The answer card of a change provisioned into the customer's tenant, kept up to date (SPEC §9).

The card posted for `number assign` / `number release` / `license unassign` says the change is
in the ledger and being set up in Teams; its message id is remembered on the job (`remember`),
and when the job ends the worker calls `JobCards.__call__`, which updates that card in place
through the proactive sender: done, or failed with Graph's reason and a Retry button.

A bulk license answer (`license assign L to A,B,…`, `pack assign`) has one job per account
and one card: where it is and what the ledger did are stored with its jobs (a `BulkCard`), and
whichever instance's worker ends the last of them draws the card again with Microsoft 365's
answer per account. (Each ending worker commits the job's end and then reads its siblings, so
the one that ends last sees them all ended; two ending at once may both draw it, the same.
After drawing it, a worker reads the jobs again and draws once more if they moved meanwhile —
a retried job ended by another instance, whose drawing may have arrived first.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from botbuilder.core import TurnContext
from botbuilder.schema import Activity, ActivityTypes, Attachment

from bot.commands.licensing import bulk_card_reply, bulk_of
from bot.commands.provisioned import job_reply
from bot.commands.reply import Reply
from bot.domain import conversations, license_jobs
from bot.domain import provisioning as jobs
from bot.domain.models import JobState, ProvisioningJob
from bot.teams.proactive import ProactiveSender, SendOutcome, Target, card_activity
from bot.teams.render import CONTENT_TYPE, execute, render

log = logging.getLogger("bot.teams.provisioning")

VERB_RETRY = "provisioning.retry"  # data: job_id
ENDED = (JobState.DONE, JobState.FAILED)
#: How many times at most one worker draws a bulk card whose jobs moved while it drew.
REDRAWS = 3


def _ends(siblings: list[ProvisioningJob]) -> list[tuple[int, str, str | None]]:
    """What a bulk card shows of its jobs: each one's state and reason."""
    return [(j.id, j.state.value, j.reason) for j in siblings]


async def job_card(job: ProvisioningJob) -> dict[str, Any]:
    """The card of a job as it stands (with the ledger change it came from); a failed one
    carries a Retry button."""
    card = dict(render(job_reply(job, await jobs.ledger_change(job))))
    if job.state is JobState.FAILED:
        card["actions"] = [
            *card.get("actions", []),
            execute("Retry", VERB_RETRY, {"job_id": job.id}, style="positive"),
        ]
    return card


def job_id_of(reply: Reply) -> int | None:
    data = reply.data if isinstance(reply.data, dict) else {}
    found = data.get("provisioning")
    job = found.get("job") if isinstance(found, dict) else None
    return job if isinstance(job, int) and not isinstance(job, bool) else None


async def remember(turn_context: TurnContext, reply: Reply, activity_id: str | None) -> None:
    """After posting `reply` as message `activity_id`: if it started a job, remember where
    its card is; a job that already ended meanwhile gets its card updated now."""
    if not activity_id:
        return
    conversation = turn_context.activity.conversation
    bulk = bulk_of(reply)
    if bulk is not None and conversation is not None and conversation.id:
        card, siblings = await license_jobs.set_bulk_card(
            bulk[0], conversation.id, activity_id, bulk[1]
        )
        if siblings and all(j.state in ENDED for j in siblings):
            redrawn = render(bulk_card_reply(card.outcome, siblings))
            await _redraw(turn_context, activity_id, redrawn)
        return
    job_id = job_id_of(reply)
    if job_id is None:
        return
    job = await jobs.set_card(job_id, conversation.id if conversation else None, activity_id)
    if job.state in ENDED:
        await _redraw(turn_context, activity_id, await job_card(job))


async def _redraw(turn_context: TurnContext, activity_id: str, card: Mapping[str, Any]) -> None:
    """The card just posted as `activity_id`, drawn again in this turn: its jobs had ended."""
    await turn_context.update_activity(
        Activity(
            type=ActivityTypes.message,
            id=activity_id,
            attachments=[Attachment(content_type=CONTENT_TYPE, content=card)],
        )
    )


class JobCards:
    """The worker's `on_finished`: updates the job's answer card in place."""

    def __init__(self, sender: ProactiveSender) -> None:
        self._sender = sender

    async def __call__(self, job: ProvisioningJob) -> None:
        # The worker's copy may predate `remember`: where the card is is read again.
        row = await ProvisioningJob.filter(id=job.id).first()
        if row is None:
            return
        if row.bulk_card_id is not None:
            await self._bulk(row.bulk_card_id, job.id)
            return
        if not row.card_activity_id or not row.conversation_id:
            return
        await self._update(
            row.conversation_id,
            row.card_activity_id,
            card_activity(await job_card(job), job_reply(job).title),
            f"provisioning job {job.id}",
        )

    async def _bulk(self, card_id: int, job_id: int) -> None:
        card, siblings = await license_jobs.bulk_card(card_id)
        for _ in range(REDRAWS):
            if any(j.state not in ENDED for j in siblings):
                return  # the last of them to end draws the card
            reply = bulk_card_reply(card.outcome, siblings)
            await self._update(
                card.conversation_id,
                card.activity_id,
                card_activity(render(reply), reply.title),
                f"the bulk card of provisioning job {job_id}",
            )
            # Another instance may have ended a retried job meanwhile and drawn the card, and
            # its drawing may have arrived before this one: read again, draw again if it moved.
            drawn = _ends(siblings)
            card, siblings = await license_jobs.bulk_card(card_id)
            if _ends(siblings) == drawn:
                return

    async def _update(
        self, conversation_id: str, activity_id: str, activity: dict[str, Any], what: str
    ) -> None:
        ref = await conversations.find(conversation_id)
        if ref is None or not ref.active:
            return
        result = await self._sender.update(Target.of(ref), activity_id, activity)
        if result.outcome is not SendOutcome.SENT:
            log.warning("%s was not updated: %s", what, result.error or result.outcome)
