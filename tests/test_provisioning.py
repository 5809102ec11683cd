"""Numbers provisioned into the customer's Teams tenant (SPEC §9), on SQLite and PostgreSQL:
the job written with the ledger change, the worker against the Graph fake through real msal
and https, and what Teams (the fake) and the ledger say at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bot.domain import numbers
from bot.domain import provisioning as jobs
from bot.domain.change import verify_chain
from bot.domain.errors import Conflict, InvalidInput
from bot.domain.models import AuditEvent, JobState, NumberState, PhoneNumber, ProvisioningJob
from bot.provisioning.teams_numbers import TenantPace
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support import provisioning_env as env
from tests.support.graph_env import trust_fakes
from tests.support.provisioning_env import CUSTOMER_TENANT, OPS, RULES, e164, oid, upn

pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeIdentityProvider, FakeGraph]]:
    trust_fakes(monkeypatch)
    with env.fakes() as pair:
        yield pair


async def test_an_assignment_and_its_release_end_with_teams_and_the_ledger_agreeing(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=2)
    outcome = await numbers.assign_number(OPS, e164(1), upn(0), rules=RULES)
    job = await ProvisioningJob.get(id=outcome.after["provisioning_job"])
    assert (job.state, job.action.value, job.tenant_id) == (
        JobState.PENDING,
        "assign",
        CUSTOMER_TENANT,
    )
    assert job.number_type == "directRouting"
    # Written in the ledger change's transaction: its audit event is beside number.assign.
    actions = await AuditEvent.all().order_by("id").values_list("action", flat=True)
    assert actions[-2:] == ["provisioning.job", "number.assign"]
    assert graph.assigned(CUSTOMER_TENANT) == {}

    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        worker = env.worker(client)
        await env.drain(worker)
        assert graph.assigned(CUSTOMER_TENANT) == {e164(1): oid(upn(0))}
        job = await ProvisioningJob.get(id=job.id)
        assert job.state is JobState.DONE and job.attempts == 1
        assert job.object_id == oid(upn(0))  # looked up by UPN: the account had none

        released = await numbers.release_number(OPS, e164(1), 30, rules=RULES)
        unassign = await ProvisioningJob.get(id=released.after["provisioning_job"])
        assert unassign.action.value == "unassign"
        await env.drain(worker)
    assert graph.assigned(CUSTOMER_TENANT) == {}
    teams = graph.teams_number(CUSTOMER_TENANT, e164(1))
    assert teams is not None and teams.target_id is None
    assert graph.count("assignNumber") == 1 and graph.count("unassignNumber") == 1
    sources = await AuditEvent.filter(source="provisioning").values_list("action", flat=True)
    assert sorted(sources) == [
        "provisioning.done",
        "provisioning.done",
        "provisioning.sent",
        "provisioning.sent",
    ]
    assert (await verify_chain())[0]


async def test_ledger_only_when_provisioning_is_off_or_the_customer_is_not_linked(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    _, graph = fakes
    await env.seed(graph, users=3)
    await numbers.assign_number(OPS, e164(1), upn(0), rules=jobs.OFF)
    await numbers.assign_number(OPS, e164(2), upn(1))
    await jobs.link_customer(OPS, "Contoso Ltd", None, provisioning=False)
    outcome = await numbers.assign_number(OPS, e164(3), upn(2), rules=RULES)
    assert "provisioning_job" not in outcome.after
    assert await ProvisioningJob.all().count() == 0
    assert await PhoneNumber.filter(state=NumberState.ASSIGNED).count() == 3


async def test_a_dry_run_writes_no_job(fakes: tuple[FakeIdentityProvider, FakeGraph]) -> None:
    _, graph = fakes
    await env.seed(graph, users=1)
    outcome = await numbers.assign_number(OPS, e164(1), upn(0), rules=RULES, dry_run=True)
    assert outcome.dry_run and await ProvisioningJob.all().count() == 0


async def test_us_numbers_need_an_emergency_location_which_goes_to_teams(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=2)
    from bot.domain import ledger
    from bot.domain.models import ProductKind

    await ledger.add_product(OPS, "NUMBERS-US-GEO", ProductKind.NUMBERS, 10, country="US")
    await ledger.allocate(OPS, 5, "NUMBERS-US-GEO", "ACME-01")
    await numbers.add_numbers(OPS, "+12065550100-+12065550109")
    before = await AuditEvent.all().count()
    with pytest.raises(InvalidInput, match="emergency location"):
        await numbers.assign_number(OPS, "+12065550100", upn(0), rules=RULES)
    assert await AuditEvent.all().count() == before  # refused: nothing changed
    assert (await PhoneNumber.get(e164="+12065550100")).state is NumberState.AVAILABLE
    with pytest.raises(InvalidInput, match="GUID"):
        await numbers.assign_number(OPS, "+12065550100", upn(0), rules=RULES, location="x")

    await numbers.set_location(OPS, "+12065550101", env.LOCATION)
    await numbers.assign_number(OPS, "+12065550101", upn(0), rules=RULES)
    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        await env.drain(env.worker(client))
    teams = graph.teams_number(CUSTOMER_TENANT, "+12065550101")
    assert teams is not None and teams.location_id == env.LOCATION
    [sent] = [r for r in graph.requests if r.info.get("kind") == "assignNumber"]
    assert sent.json["locationId"] == env.LOCATION


async def test_a_failed_job_changes_nothing_in_teams_says_why_and_can_be_retried(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=2)
    graph.fail_number(e164(1), "The telephone number is not in the tenant's inventory.")
    outcome = await numbers.assign_number(OPS, e164(1), upn(0), rules=RULES)
    job_id = outcome.after["provisioning_job"]
    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        worker = env.worker(client)
        await env.drain(worker)
        job = await ProvisioningJob.get(id=job_id)
        assert job.state is JobState.FAILED
        assert job.reason is not None and "not in the tenant's inventory" in job.reason
        assert graph.teams_number(CUSTOMER_TENANT, e164(1)) is None  # nothing in Teams
        # The ledger still holds the assignment; the admin retries once it is fixed.
        await jobs.retry(OPS, job_id)
        with pytest.raises(Conflict, match="only a failed job"):
            await jobs.retry(OPS, job_id)
        await env.drain(worker)
    assert (await ProvisioningJob.get(id=job_id)).state is JobState.DONE
    assert graph.assigned(CUSTOMER_TENANT) == {e164(1): oid(upn(0))}
    failed = await AuditEvent.get(action="provisioning.failed")
    assert failed.source == "provisioning" and "inventory" in failed.after["reason"]
    assert (await verify_chain())[0]


async def test_a_retry_that_would_disagree_with_the_ledger_is_refused(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=1)
    graph.fail_number(e164(1), "scripted")
    outcome = await numbers.assign_number(OPS, e164(1), upn(0), rules=RULES)
    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        await env.drain(env.worker(client))
    await numbers.release_number(OPS, e164(1), 30)  # ledger only: no unassign job
    with pytest.raises(Conflict, match="no longer assigned"):
        await jobs.retry(OPS, outcome.after["provisioning_job"])


async def test_a_tenant_that_has_not_consented_gets_the_admin_consent_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trust_fakes(monkeypatch)
    with env.fakes(consented=False) as (idp, graph):
        await env.seed(graph, users=1)
        outcome = await numbers.assign_number(OPS, e164(1), upn(0), rules=RULES)
        async with env.teams_numbers(env.settings_for(idp, graph)) as client:
            await env.drain(env.worker(client))
        job = await ProvisioningJob.get(id=outcome.after["provisioning_job"])
        assert job.state is JobState.FAILED and job.reason is not None
        assert "has not consented" in job.reason
        assert f"{idp.base_url}/{CUSTOMER_TENANT}/adminconsent?client_id={env.APP_ID}" in job.reason
        assert graph.count("assignNumber") == 0


async def test_throttling_is_honoured_and_every_job_is_sent_once(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=12)
    graph.rate_limit(10, per_seconds=1.0)
    for i in range(12):
        await numbers.assign_number(OPS, e164(i), upn(i), rules=RULES)
    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        # One request at a time, so that none is in flight when a 429 comes back.
        await env.drain(env.worker(client, concurrency=1), timeout=60)
    assert await env.states() == {"done": 12}
    assert graph.assigned(CUSTOMER_TENANT) == {e164(i): oid(upn(i)) for i in range(12)}
    sent = [
        r.json["telephoneNumber"]
        for r in graph.requests
        if r.info.get("kind") == "assignNumber" and r.status == 202
    ]
    assert sorted(sent) == sorted(e164(i) for i in range(12))
    throttled = [r for r in graph.requests if r.status == 429]
    assert throttled, "the rate limit was never reached"
    # After a 429 nothing of that tenant is sent before its Retry-After has passed.
    for answer in throttled:
        early = [
            r
            for r in graph.requests
            if answer.at < r.at < answer.at + (answer.retry_after or 0) - 0.05
        ]
        assert early == [], f"{len(early)} calls inside a Retry-After window"


async def test_a_job_whose_answer_was_lost_is_not_sent_twice(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    """The worker died after Graph took the request: the job is pending with an attempt. The
    next worker reads Teams' state first and finds the number assigned."""
    idp, graph = fakes
    await env.seed(graph, users=1)
    outcome = await numbers.assign_number(OPS, e164(1), upn(0), rules=RULES)
    job_id = outcome.after["provisioning_job"]
    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        [job] = await jobs.claim("dead-worker", 10, lease_seconds=0.01)
        assert await jobs.note_attempt(job, "dead-worker", oid(upn(0)))
        await client.assign(CUSTOMER_TENANT, e164(1), oid(upn(0)), "directRouting", None)
        await asyncio.sleep(0.1)  # its lease runs out; it never recorded the answer
        await env.drain(env.worker(client))
    job = await ProvisioningJob.get(id=job_id)
    assert job.state is JobState.DONE and job.attempts == 1
    assert graph.count("assignNumber") == 1
    done = await AuditEvent.get(action="provisioning.done")
    assert done.after["how"] == "found assigned in Teams"


async def test_jobs_of_one_number_reach_teams_in_order(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=2)
    await numbers.assign_number(OPS, e164(1), upn(0), rules=RULES)
    await numbers.release_number(OPS, e164(1), 0, rules=RULES)
    await numbers.assign_number(OPS, e164(1), upn(1), rules=RULES)
    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        await env.drain(env.worker(client))
    assert await env.states() == {"done": 3}
    assert graph.assigned(CUSTOMER_TENANT) == {e164(1): oid(upn(1))}
    kinds = [
        r.info["kind"]
        for r in graph.requests
        if r.info.get("kind") in ("assignNumber", "unassignNumber")
    ]
    assert kinds == ["assignNumber", "unassignNumber", "assignNumber"]


async def test_releasing_a_number_teams_never_got_ends_done_without_unassigning(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=1)
    graph.fail_number(e164(1), "scripted")
    await numbers.assign_number(OPS, e164(1), upn(0), rules=RULES)
    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        worker = env.worker(client)
        await env.drain(worker)
        released = await numbers.release_number(OPS, e164(1), 30, rules=RULES)
        await env.drain(worker)
    job = await ProvisioningJob.get(id=released.after["provisioning_job"])
    assert job.state is JobState.DONE
    assert graph.count("unassignNumber") == 0
    done = await AuditEvent.filter(action="provisioning.done").order_by("-id").first()
    assert done is not None and done.after["how"] == "found unassigned in Teams"


async def test_two_workers_at_once_send_each_job_once(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    """Two workers (as two instances would) drain the same outbox at the same time; on
    PostgreSQL their claims skip each other's rows (FOR UPDATE SKIP LOCKED)."""
    idp, graph = fakes
    await env.seed(graph, users=30)
    for i in range(30):
        await numbers.assign_number(OPS, e164(i), upn(i), rules=RULES)
    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        one, two = env.worker(client, name="one"), env.worker(client, name="two")
        await asyncio.gather(env.drain(one), env.drain(two))
    assert await env.states() == {"done": 30}
    assert one.steps and two.steps, "both workers took jobs"
    accepted = [
        r.json["telephoneNumber"]
        for r in graph.requests
        if r.info.get("kind") == "assignNumber" and r.status == 202
    ]
    assert sorted(accepted) == sorted(e164(i) for i in range(30))
    assert graph.assigned(CUSTOMER_TENANT) == {e164(i): oid(upn(i)) for i in range(30)}
    assert (await verify_chain())[0]


async def test_paced_to_the_tenants_limit_the_worker_is_not_throttled(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=15)
    graph.rate_limit(10, per_seconds=1.0)
    for i in range(15):
        await numbers.assign_number(OPS, e164(i), upn(i), rules=RULES)
    pace = TenantPace(8)
    async with env.teams_numbers(env.settings_for(idp, graph), pace=pace) as client:
        await env.drain(env.worker(client), timeout=60)
    assert await env.states() == {"done": 15}
    # Graph counts arrivals: a connection set up slowly can bunch a few, so a stray 429 may
    # still come; unpaced, the same load runs into the limit again and again.
    throttled = [r.at for r in graph.requests if r.status == 429]
    assert len(throttled) <= 2, (len(throttled), len(graph.requests))
    assert pace.waited > 0, "the pace never had to wait: the test proves nothing"


async def test_the_number_type_follows_the_subscriptions_mode(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    from bot.domain import directory, ledger
    from bot.domain.models import SubscriptionMode

    idp, graph = fakes
    await env.seed(graph, users=1)
    await ledger.add_subscription(OPS, "ACME-OC", "Contoso Ltd", SubscriptionMode.OPERATOR_CONNECT)
    for product in ("NUMBERS-GB-GEO", "TEAMS-SEATS"):
        await ledger.release(OPS, 1, product, "ACME-01")
        await ledger.allocate(OPS, 1, product, "ACME-OC")
    await directory.add_account(OPS, "oc@contoso.com", "ACME-OC")
    graph.add_user(oid("oc@contoso.com"), "oc@contoso.com")
    await numbers.assign_number(OPS, e164(5), "oc@contoso.com", rules=RULES)
    await numbers.assign_number(OPS, e164(6), upn(0), rules=RULES)
    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        await env.drain(env.worker(client))
    sent = {
        r.json["telephoneNumber"]: r.json["numberType"]
        for r in graph.requests
        if r.info.get("kind") == "assignNumber"
    }
    assert sent == {e164(5): "operatorConnect", e164(6): "directRouting"}


async def test_an_operation_outside_graph_is_not_followed_the_number_is_read_instead(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=1)
    graph.location_override = "https://graph.attacker.invalid/v1.0/operations('x')"
    await numbers.assign_number(OPS, e164(1), upn(0), rules=RULES)
    async with env.teams_numbers(env.settings_for(idp, graph)) as client:
        await env.drain(env.worker(client))
    assert await env.states() == {"done": 1}
    assert graph.assigned(CUSTOMER_TENANT) == {e164(1): oid(upn(0))}
    assert graph.count("operations") == 0 and graph.count("numberAssignments") >= 1
