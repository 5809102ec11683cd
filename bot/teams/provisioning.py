"""The answer card of a number change provisioned into Teams, kept up to date (SPEC §9).

The card posted for `number assign` / `number release` says the number is in the ledger and
being set up in Teams; its message id is remembered on the job (`remember`), and when the job
ends the worker calls `JobCards.__call__`, which updates that card in place through the
proactive sender: done, or failed with Graph's reason and a Retry button.
"""

from __future__ import annotations

import logging
from typing import Any

from botbuilder.core import TurnContext
from botbuilder.schema import Activity, ActivityTypes, Attachment

from bot.commands.provisioned import job_reply
from bot.commands.reply import Reply
from bot.domain import conversations
from bot.domain import provisioning as jobs
from bot.domain.models import JobState, ProvisioningJob
from bot.teams.proactive import ProactiveSender, SendOutcome, Target, card_activity
from bot.teams.render import CONTENT_TYPE, execute, render

log = logging.getLogger("bot.teams.provisioning")

VERB_RETRY = "provisioning.retry"  # data: job_id


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
    job_id = job_id_of(reply)
    if job_id is None or not activity_id:
        return
    conversation = turn_context.activity.conversation
    job = await jobs.set_card(job_id, conversation.id if conversation else None, activity_id)
    if job.state in (JobState.DONE, JobState.FAILED):
        await turn_context.update_activity(
            Activity(
                type=ActivityTypes.message,
                id=activity_id,
                attachments=[Attachment(content_type=CONTENT_TYPE, content=await job_card(job))],
            )
        )


class JobCards:
    """The worker's `on_finished`: updates the job's answer card in place."""

    def __init__(self, sender: ProactiveSender) -> None:
        self._sender = sender

    async def __call__(self, job: ProvisioningJob) -> None:
        if not job.card_activity_id or not job.conversation_id:
            return
        ref = await conversations.find(job.conversation_id)
        if ref is None or not ref.active:
            return
        result = await self._sender.update(
            Target.of(ref),
            job.card_activity_id,
            card_activity(await job_card(job), job_reply(job).title),
        )
        if result.outcome is not SendOutcome.SENT:
            log.warning(
                "the card of provisioning job %s was not updated: %s",
                job.id,
                result.error or result.outcome,
            )
