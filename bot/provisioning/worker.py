"""The provisioning worker: every bot instance runs one; together they drain the outbox.

A round claims due jobs (bot.domain.provisioning.claim: first job of each account and number,
PostgreSQL `FOR UPDATE SKIP LOCKED`, a lease so a dead instance's jobs come back), then takes
one step of each at once (up to `concurrency`):

- pending → the assign/unassign request; 202 → sent, with the operation to poll;
- sent → poll the operation (backoff 1, 2, 4 … 30 s, each ±20 %); succeeded → done; failed →
  failed with Graph's `statusDetail`;
- throttled (429) → due again after its Retry-After, and the tenant is held that long, so the
  other jobs of that tenant wait too instead of spending calls on more 429s; Graph down, 5xx,
  timeouts → the tenant is held for a jittered backoff (1 s doubling to 15 s, per tenant), and
  when the hold ends its jobs go again (the first answer resets the backoff);
- refused (validation, permission, a tenant that has not consented, an unknown user) → failed
  with the reason, retryable by an admin (`provisioning retry ID`).

Exactly once: the attempt is counted in the database before an assign/unassign leaves. A job
found pending with attempts (the worker died after sending, or the answer was lost) first reads
the number's state in Teams (`numberAssignments`): already as the job wants it → done (or sent,
if still activating), without a second request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from bot.domain import provisioning as jobs
from bot.domain.license_jobs import LICENSE_ACTIONS
from bot.domain.models import JobAction, JobState, ProvisioningJob
from bot.provisioning import license_jobs
from bot.provisioning.teams_numbers import Refused, Retryable, TeamsNumbers

log = logging.getLogger("bot.provisioning.worker")

Finished = Callable[[ProvisioningJob], Awaitable[None]]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"[:100]


class Worker:
    def __init__(
        self,
        numbers: TeamsNumbers,
        *,
        name: str | None = None,
        concurrency: int = 8,
        lease_seconds: float = 120.0,
        idle_seconds: float = 1.0,
        first_poll: float = 1.0,
        poll_cap: float = 30.0,
        backoff_cap: float = 15.0,
        on_finished: Finished | None = None,
    ) -> None:
        self.numbers = numbers
        self.name = name or worker_name()
        self.concurrency = max(1, concurrency)
        self.lease_seconds = lease_seconds
        self.idle_seconds = idle_seconds
        self.first_poll = first_poll
        self.poll_cap = poll_cap
        self.backoff_cap = backoff_cap
        self.on_finished = on_finished
        self._held: dict[str, float] = {}  # tenant → monotonic time its 429 holds until
        self._polls: dict[int, int] = {}
        self._failing: dict[str, int] = {}  # tenant → failures in a row (its backoff)
        self._sending: set[int] = set()  # jobs whose assign/unassign is on its way
        self.steps = 0

    async def run(self) -> None:
        """Rounds until cancelled. A round that claimed as many jobs as it may goes on at once;
        one that found fewer due sleeps `idle_seconds` (±20 %) first, so that the rounds of
        several instances take turns at the jobs that come due instead of the busiest taking
        them all (the polls of one batch are jittered the same way, so they come due apart)."""
        while True:
            try:
                taken = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down: nothing was claimed; later
                log.warning("provisioning round failed: %r", exc)
                taken = 0
            if taken < self.claim_limit:
                await asyncio.sleep(self.idle_seconds * random.uniform(0.8, 1.2))

    @property
    def claim_limit(self) -> int:
        """How many jobs one round claims at most."""
        return self.concurrency * 4

    async def run_once(self) -> int:
        """One round: claim due jobs, take one step of each. Returns how many were taken."""
        now = time.monotonic()
        held = tuple(t for t, until in self._held.items() if until > now)
        claimed = await jobs.claim(
            self.name, self.claim_limit, self.lease_seconds, skip_tenants=held
        )
        if not claimed:
            return 0
        gate = asyncio.Semaphore(self.concurrency)

        async def one(job: ProvisioningJob) -> None:
            async with gate:
                await self.step(job)

        await asyncio.gather(*(one(j) for j in claimed))
        return len(claimed)

    # -- one step of one job -------------------------------------------------------------------

    async def step(self, job: ProvisioningJob) -> None:
        self.steps += 1
        held = self._held.get(job.tenant_id, 0.0) - time.monotonic()
        try:
            if held > 0:
                await jobs.reschedule(job, self.name, held)
                return
            if job.action in LICENSE_ACTIONS:
                await license_jobs.step(self, job)
            elif job.state is JobState.PENDING:
                await self._send(job)
            else:
                await self._follow(job)
            self._failing.pop(job.tenant_id, None)
        except Retryable as exc:
            if exc.throttled and exc.retry_after:
                until = time.monotonic() + exc.retry_after
                self._held[job.tenant_id] = max(self._held.get(job.tenant_id, 0.0), until)
            if exc.retry_after is not None:
                delay = exc.retry_after
            else:
                # Graph down or failing for this tenant: hold the tenant, not just this job, so
                # its other jobs wait too, and one of them probes when the hold ends.
                delay = self._backoff(job.tenant_id)
                until = time.monotonic() + delay
                self._held[job.tenant_id] = max(self._held.get(job.tenant_id, 0.0), until)
            # A 429 to the request that changes Teams says it was not taken.
            unsent = exc.throttled and job.id in self._sending
            await self._quietly(
                jobs.reschedule(job, self.name, delay, exc.message, not_received=unsent)
            )
        except Refused as exc:
            await self._end(job, jobs.mark_failed(job, self.name, exc.message))
        except Exception:  # the database or a bug: the claim runs out and the job comes back
            log.exception("provisioning job %s: step failed", job.id)
        finally:
            self._sending.discard(job.id)

    async def _send(self, job: ProvisioningJob) -> None:
        numbers, tenant = self.numbers, job.tenant_id
        assert job.e164 is not None  # a number job (license jobs go to license_jobs.step)
        object_id = job.object_id
        if job.action is JobAction.ASSIGN and not object_id:
            object_id = await jobs.account_object_id(job.account_id) or await numbers.user_id(
                tenant, job.upn
            )
        if job.attempts > 0 or job.action is JobAction.UNASSIGN:
            # It may have reached Graph before: look at Teams before asking again. (A number is
            # taken back only if Teams has it: the assignment may never have got there.)
            current = await numbers.assignment(tenant, job.e164)
            if job.action is JobAction.ASSIGN and current and current.target_id == object_id:
                if current.activation_state == "activated":
                    await self._end(job, jobs.mark_done(job, self.name, "found assigned in Teams"))
                    return
                if current.activation_state in ("assignmentPending", "updatePending"):
                    await jobs.mark_sent(job, self.name, None, _jittered(self.first_poll))
                    return
            if job.action is JobAction.UNASSIGN and (current is None or not current.target_id):
                await self._end(job, jobs.mark_done(job, self.name, "found unassigned in Teams"))
                return
        if not await jobs.note_attempt(job, self.name, object_id):
            return  # the claim was lost to another worker
        self._sending.add(job.id)  # until the step ends (see `step`)
        if job.action is JobAction.ASSIGN:
            assert object_id is not None
            url = await numbers.assign(
                tenant, job.e164, object_id, job.number_type, job.location_id
            )
        else:
            url = await numbers.unassign(tenant, job.e164, job.number_type)
        self._sending.discard(job.id)
        await jobs.mark_sent(job, self.name, url, _jittered(self.first_poll))

    async def _follow(self, job: ProvisioningJob) -> None:
        numbers, tenant = self.numbers, job.tenant_id
        assert job.e164 is not None
        if job.operation_url:
            operation = await numbers.operation(tenant, job.operation_url)
            if operation is not None:
                if operation.status in ("notStarted", "running"):
                    await jobs.reschedule(job, self.name, self._poll_delay(job))
                elif operation.status == "succeeded":
                    await self._end(job, jobs.mark_done(job, self.name, "operation succeeded"))
                else:
                    what = "assign" if job.action is JobAction.ASSIGN else "unassign"
                    detail = operation.detail or "Microsoft Graph gave no reason"
                    await self._end(
                        job,
                        jobs.mark_failed(
                            job, self.name, f"Teams did not {what} {job.e164}: {detail}"
                        ),
                    )
                return
        # No operation to follow (found activating, or Graph forgot it): read the number.
        current = await numbers.assignment(tenant, job.e164)
        if job.action is JobAction.UNASSIGN:
            if current is None or not current.target_id:
                await self._end(job, jobs.mark_done(job, self.name, "found unassigned in Teams"))
            else:
                await jobs.reschedule(job, self.name, self._poll_delay(job))
            return
        if current is None or current.target_id != job.object_id:
            await self._end(
                job,
                jobs.mark_failed(
                    job, self.name, f"Teams has no assignment of {job.e164} to {job.upn}."
                ),
            )
        elif current.activation_state == "activated":
            await self._end(job, jobs.mark_done(job, self.name, "found assigned in Teams"))
        elif current.activation_state in ("assignmentFailed", "updateFailed"):
            await self._end(
                job,
                jobs.mark_failed(job, self.name, f"Teams reports {current.activation_state}."),
            )
        else:
            await jobs.reschedule(job, self.name, self._poll_delay(job))

    # -- helpers -------------------------------------------------------------------------------

    async def _end(self, job: ProvisioningJob, move: Awaitable[bool]) -> None:
        if not await move:
            return
        self._polls.pop(job.id, None)
        log.info(
            "provisioning job ended",
            extra={"job": job.id, "state": job.state.value, "number": job.e164},
        )
        if self.on_finished is not None:
            try:
                await self.on_finished(job)
            except Exception:  # the card is a courtesy; the job's state is what counts
                log.warning("could not show the end of job %s", job.id, exc_info=True)

    async def _quietly(self, move: Awaitable[bool]) -> None:
        try:
            await move
        except Exception:
            log.warning("could not reschedule a provisioning job", exc_info=True)

    def _poll_delay(self, job: ProvisioningJob) -> float:
        n = self._polls.get(job.id, 0)
        self._polls[job.id] = n + 1
        return _jittered(min(self.first_poll * 2**n, self.poll_cap))

    def _backoff(self, tenant: str) -> float:
        n = self._failing.get(tenant, 0)
        self._failing[tenant] = n + 1
        return float(min(2**n, self.backoff_cap)) * random.uniform(0.5, 1.0)


def _jittered(seconds: float) -> float:
    """`seconds` ±20 %: jobs sent together are polled apart (and by whichever instance's round
    comes first), not as one batch that one instance claims whole."""
    return float(seconds) * random.uniform(0.8, 1.2)
