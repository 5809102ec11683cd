"""How number changes that go on into Teams are answered: the rules the settings give the
ledger, the answer card of a change with a job, and the card of a job when it ends."""

from __future__ import annotations

from typing import Any

from bot.commands.ledger import changed
from bot.commands.reply import Changed, Error
from bot.config import Settings
from bot.domain import provisioning as jobs
from bot.domain.ledger import Outcome
from bot.domain.models import JobState

_STATES = {
    JobState.PENDING: "waiting to be sent",
    JobState.SENT: "sent, Teams is setting it up",
    JobState.DONE: "done",
    JobState.FAILED: "failed",
}


def rules(settings: Settings) -> jobs.Rules:
    """What the settings say about provisioning, for the ledger's number changes."""
    reason = settings.provisioning_off_reason
    return jobs.Rules(
        enabled=not reason,
        off_reason=reason,
        location_countries=frozenset(settings.emergency_location_countries),
    )


def provisioned(outcome: Outcome) -> Changed:
    """The answer to a number change: with a job, it says the number is in the ledger and
    being set up in Teams (the card is updated when the job ends)."""
    after = dict(outcome.after) if isinstance(outcome.after, dict) else outcome.after
    job_id = after.pop("provisioning_job", None) if isinstance(after, dict) else None
    reply = changed(
        Outcome(
            outcome.action, outcome.target, outcome.before, after, outcome.dry_run, outcome.message
        )
    )
    if job_id is None:
        return reply
    if outcome.dry_run:
        reply.text = "Done for real, this would be written into the customer's Teams too."
        if isinstance(reply.after, dict):
            reply.after["teams"] = (
                "would be set up" if outcome.action == "number.assign" else ("would be taken out")
            )
        return reply
    what = "set up in" if outcome.action == "number.assign" else "taken out of"
    note = f"Recorded in the ledger; being {what} Teams now (job {job_id})."
    reply.text = note
    if isinstance(reply.after, dict):
        reply.after["teams"] = f"pending (job {job_id})"
    reply.data["provisioning"] = {"job": job_id, "state": JobState.PENDING.value}
    return reply


# The fields of a number change in the order its first card showed them (the audit keeps
# them sorted by name).
_ORDER = ("state", "subscription", "holder", "numbers_in_use", "seats_in_use")


def _in_card_order(fields: dict[str, Any]) -> dict[str, Any]:
    rank = {name: i for i, name in enumerate(_ORDER)}
    return dict(sorted(fields.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def job_reply(job: Any, change: tuple[Any, Any] | None = None) -> Changed | Error:
    """A job as it stands, in the words of the card that started it (used when it ends);
    `change`: the before → after of the ledger change that wrote it, shown again."""
    if job.e164 is None:
        return license_job_reply(job)
    assign = job.action.value == "assign"
    target = f"{job.e164} → {job.upn}" if assign else job.e164
    if job.state is JobState.DONE:
        title = (
            f"{job.e164} is assigned to {job.upn} in the ledger and in Teams."
            if assign
            else f"{job.e164} is released in the ledger and in Teams."
        )
        teams = "active" if assign else "released"
    elif job.state is JobState.FAILED:
        title = (
            f"{job.e164} is assigned to {job.upn} in the ledger, but not in Teams."
            if assign
            else f"{job.e164} is released in the ledger, but Teams still has it."
        )
        teams = "failed"
    else:
        title = f"{target}: being set up in Teams (job {job.id})."
        teams = _STATES[job.state]
    if job.state is JobState.FAILED:
        return Error(
            title=title,
            text=f"{job.reason} Retry (`provisioning retry {job.id}`) once it is fixed.",
            code="provisioning-failed",
            data={"provisioning": jobs.job_view(job)},
        )
    text = (
        f"Recorded in the ledger and done in Teams (job {job.id})."
        if job.state is JobState.DONE
        else f"Recorded in the ledger; job {job.id}: {_STATES[job.state]}."
    )
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    if change is not None and isinstance(change[0], dict) and isinstance(change[1], dict):
        before = {k: v for k, v in change[0].items() if k != "provisioning_job"}
        after = {k: v for k, v in change[1].items() if k != "provisioning_job"}
    before, after = _in_card_order(before), _in_card_order(after)
    before["teams"] = None
    after["teams"] = teams
    return Changed(
        title=title,
        text=text,
        target=target,
        before=before,
        after=after,
        data={"provisioning": jobs.job_view(job)},
    )


def license_job_reply(job: Any) -> Changed:
    """A Microsoft 365 license job as it stands."""
    what = ", ".join(e["product"] for e in job.licenses or []) or "licenses"
    adding = job.action.value == "license-add"
    if job.state is JobState.DONE:
        title = (
            f"{job.upn} holds {what} in the ledger and in Microsoft 365."
            if adding
            else f"{what} taken from {job.upn} in the ledger and in Microsoft 365."
        )
        teams = "assigned" if adding else "removed"
    elif job.state is JobState.FAILED:
        title = (
            f"{what} for {job.upn}: not set up in Microsoft 365."
            if adding
            else f"{what} taken from {job.upn} in the ledger, but Microsoft 365 still has it."
        )
        teams = "failed"
    else:
        title = f"{what} for {job.upn}: being set up in Microsoft 365 (job {job.id})."
        teams = _STATES[job.state]
    text = (
        f"{job.reason} Retry with `provisioning retry {job.id}` once it is fixed."
        if job.state is JobState.FAILED
        else f"Job {job.id}: {_STATES[job.state]}."
    )
    return Changed(
        title=title,
        text=text,
        target=job.upn,
        before={"microsoft_365": "pending"},
        after={"microsoft_365": teams},
        ok=job.state is not JobState.FAILED,
        data={"provisioning": jobs.job_view(job)},
    )
