"""The nightly reconcile (issue 18): the scheduler's leader compares every linked subscription
once a day at FUSION_RECONCILE_AT, off when provisioning is off; what it finds is in the digest
(text, card, --json) and in the Prometheus lines for /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bot import metrics
from bot.commands.digests import digest_reply
from bot.config import ConfigError, Settings
from bot.domain.digests import build_report
from bot.domain.models import AuditEvent, DriftKind, ReconcileRun
from bot.scheduler import Scheduler
from bot.teams.render import render
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support import licensing_env as env
from tests.support.graph_env import trust_fakes

pytestmark = pytest.mark.usefixtures("database")

NIGHT = datetime(2026, 12, 2, 2, 30, tzinfo=UTC)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeIdentityProvider, FakeGraph]]:
    trust_fakes(monkeypatch)
    with env.fakes() as pair:
        yield pair


def texts(node: object) -> list[str]:
    if isinstance(node, dict):
        # As a reader sees it: without the joiners that keep numbers and codes unbroken.
        own = (
            [node["text"].replace("\u2060", "").replace("\xa0", " ")]
            if node.get("type") == "TextBlock"
            else []
        )
        return own + [t for v in node.values() for t in texts(v)]
    if isinstance(node, list):
        return [t for v in node for t in texts(v)]
    return []


async def test_the_nightly_reconcile_runs_once_a_day_and_feeds_the_digest_and_metrics(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=6)
    settings = replace(env.settings_for(idp, graph), reconcile_at="02:00")
    async with env.tenant_graph(settings) as client:
        await env.drifted(graph, client)
    now = [NIGHT]
    leader = Scheduler(settings, None, clock=lambda: now[0], holder="a")
    follower = Scheduler(settings, None, clock=lambda: now[0], holder="b")
    assert (await leader.tick()).reconciled == 1
    assert (await follower.tick()).leader is False
    assert (await leader.tick()).reconciled == 0  # once a night
    [run] = await ReconcileRun.all()
    assert run.trigger == "schedule" and run.differences == 6
    event = await AuditEvent.filter(action="reconcile.run").get()
    assert event.source == "schedule"

    report = await build_report(NIGHT, 90)
    assert report.drift == {
        "ACME-01": {
            "license-missing-in-teams": 1,
            "license-only-in-teams": 1,
            "number-failed-in-teams": 1,
            "number-missing-in-teams": 1,
            "number-only-in-teams": 1,
            "number-other-holder": 1,
        }
    }
    assert report.as_json()["reconcile"] == report.drift
    reply = digest_reply(report)
    assert "Teams and the ledger: 4 numbers and 2 licenses differ in ACME-01" in reply.text
    card_words = "\n".join(texts(dict(render(reply))))
    assert "4 numbers and 2 licenses differ in ACME-01. See and fix each with" in card_words
    # /metrics shows the same, every kind for the subscription (zero included).
    page = metrics.exposition(None, None, report.drift, [k.value for k in DriftKind]).decode()
    for kind in DriftKind:
        assert (
            f'fusion_reconcile_differences{{kind="{kind.value}",subscription="ACME-01"}} 1.0'
            in page
        ), kind

    # Not before the next night's time; then again.
    now[0] = NIGHT + timedelta(hours=23)  # 01:30 the next day
    assert (await leader.tick()).reconciled == 0
    now[0] = NIGHT + timedelta(days=1)
    assert (await leader.tick()).reconciled == 1


async def test_no_nightly_reconcile_when_provisioning_is_off_or_it_is_switched_off(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=2)
    for settings in (
        replace(env.settings_for(idp, graph), provisioning=False),
        replace(env.settings_for(idp, graph), reconcile_at="off"),
    ):
        assert (await Scheduler(settings, None, clock=lambda: NIGHT).tick()).reconciled == 0
    assert await ReconcileRun.all().count() == 0
    assert graph.count() == 0


def test_the_reconcile_time_setting() -> None:
    assert Settings.from_env({"FUSION_RECONCILE_AT": "3:05"}).reconcile_at == "03:05"
    assert Settings.from_env({"FUSION_RECONCILE_AT": "OFF"}).reconcile_at == "off"
    for bad in ("25:00", "noon", "٠٣:٠٠"):
        with pytest.raises(ConfigError, match="FUSION_RECONCILE_AT"):
            Settings.from_env({"FUSION_RECONCILE_AT": bad})


async def test_graph_down_at_night_loses_nothing_and_the_run_comes_when_it_is_back(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=2)
    settings = replace(env.settings_for(idp, graph), reconcile_at="02:00")
    scheduler = Scheduler(settings, None, clock=lambda: NIGHT)
    graph.down("refuse")
    try:
        report = await scheduler.tick()
    finally:
        graph.up()
    assert report.leader and report.reconciled == 0
    assert await ReconcileRun.all().count() == 0  # nothing half-written
    assert (await scheduler.tick()).reconciled == 1  # the next tick, Graph back
    assert (await scheduler.tick()).reconciled == 0


async def test_old_reconcile_runs_are_cleaned_up_keeping_the_retention_and_each_newest(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    """FUSION_RECONCILE_KEEP_DAYS: the scheduler's leader deletes runs (and their differences)
    older than it, never the newest of a subscription and never one a card of the retention
    period points at; a button on a card of a deleted run says why it finds nothing."""
    from bot.commands.dispatch import run_text
    from bot.commands.reply import Error
    from bot.domain import reconcile
    from bot.domain.change import verify_chain
    from bot.domain.models import Drift
    from bot.domain.reconcile import Finding

    idp, graph = fakes
    await env.seed(graph, users=6)
    settings = replace(env.settings_for(idp, graph), reconcile_at="off", reconcile_keep_days=30)
    now = datetime.now(UTC)
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        # Earlier runs: 40 and 31 days ago (past the retention), 29 days ago (within it);
        # OTHER-02's only run, 90 days ago, is its newest.
        finding = Finding(DriftKind.NUMBER_MISSING_IN_TEAMS, e164="+442071239999")
        old: dict[str, ReconcileRun] = {}
        for name, code, days in (
            ("40", "ACME-01", 40),
            ("31", "ACME-01", 31),
            ("29", "ACME-01", 29),
            ("other", "OTHER-02", 90),
        ):
            run = await reconcile.record(
                env.OPS,
                code,
                env.CUSTOMER_TENANT,
                "schedule",
                [finding, finding],
                started_at=now - timedelta(days=days),
                graph_calls=3,
            )
            old[name] = run
        await env.drifted(graph, client)
        reply = await run_text("reconcile ACME-01", ctx)  # a card showing today's run
        [shown] = reply.data["runs"]
        gone_drift = (await Drift.filter(run_id=old["40"].id).values_list("id", flat=True))[0]
        events = await AuditEvent.all().count()

        leader = Scheduler(settings, None, clock=lambda: now, holder="a")
        assert (await leader.tick()).reconcile_runs_pruned == 2
        kept = set(await ReconcileRun.all().values_list("id", flat=True))
        assert kept == {shown["run"], old["29"].id, old["other"].id}
        assert await Drift.filter(run_id__in=[old["40"].id, old["31"].id]).count() == 0
        assert await Drift.filter(run_id=old["29"].id).count() == 2
        assert await Drift.filter(run_id=shown["run"]).count() == 6
        [pruned] = await AuditEvent.filter(action="reconcile.prune")
        assert pruned.source == "schedule"
        assert pruned.after["runs"] == 2 and pruned.after["differences"] == 4
        assert await AuditEvent.all().count() == events + 1
        assert (await verify_chain())[0]
        # Nothing more to do at the next tick.
        assert (await leader.tick()).reconcile_runs_pruned == 0

        # A button of a card within the retention still works; one of a deleted run says why.
        [some] = [d["id"] for d in shown["differences"] if d["kind"] == "number-only-in-teams"]
        fixed = await run_text(f"reconcile fix {some} --to ledger", ctx)
        assert fixed.ok, fixed
        for words in (
            f"reconcile fix {gone_drift} --to ledger",
            f"reconcile fix-all {old['40'].id} --kind number-missing-in-teams --to ledger",
        ):
            answer = await run_text(words, ctx)
            assert isinstance(answer, Error), answer
            assert "is not kept" in answer.text and "FUSION_RECONCILE_KEEP_DAYS" in answer.text

    # A day later the run of 29 days is past the retention too; the newest ones stay.
    later = Scheduler(settings, None, clock=lambda: now + timedelta(days=2), holder="a")
    assert (await later.tick()).reconcile_runs_pruned == 1
    kept = set(await ReconcileRun.all().values_list("id", flat=True))
    assert kept == {shown["run"], old["other"].id}


def test_the_reconcile_retention_setting() -> None:
    assert Settings.from_env({}).reconcile_keep_days == 30
    assert Settings.from_env({"FUSION_RECONCILE_KEEP_DAYS": "7"}).reconcile_keep_days == 7
    for bad in ("0", "-3", "a week"):
        with pytest.raises(ConfigError, match="FUSION_RECONCILE_KEEP_DAYS"):
            Settings.from_env({"FUSION_RECONCILE_KEEP_DAYS": bad})
