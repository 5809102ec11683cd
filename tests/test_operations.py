"""What an operator and a load balancer see (issue 15): `/readyz` with the signing keys, and
`/metrics` in Prometheus text — turns by outcome and their latency, Graph calls and throttles,
Bot Connector 429s, approvals pending — answered to loopback and configured networks only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from unittest import mock

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from bot.app import metrics_page
from bot.config import Settings
from tests.fakes import Failure, FakeBotConnector, FakeGraph, FakeIdentityProvider
from tests.support.teams_env import (
    APP_ID,
    OUTSIDER_OID,
    RunningBot,
    auth_settings,
    message,
    running_bot,
    seed_ledger,
    trust_fakes,
)


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


@pytest_asyncio.fixture
async def bot(
    empty_db_url: str, idp: FakeIdentityProvider, graph: FakeGraph, connector: FakeBotConnector
) -> AsyncIterator[RunningBot]:
    async with running_bot(auth_settings(empty_db_url, idp, graph, connector)) as running:
        await seed_ledger()
        yield running


async def scrape(bot: RunningBot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with bot.http.get(str(bot.server.make_url("/metrics"))) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_readyz_loads_the_signing_keys(bot: RunningBot, idp: FakeIdentityProvider) -> None:
    fetched = sum(1 for r in idp.requests if "openid" in r.path or "keys" in r.path)
    assert await bot.get("/readyz") == (
        200,
        {"status": "ok", "database": "ok", "migrations": "ok", "signing_keys": "ok"},
    )
    assert sum(1 for r in idp.requests if "openid" in r.path or "keys" in r.path) > fetched


async def test_readyz_503_when_the_signing_keys_cannot_be_fetched(
    empty_db_url: str, idp: FakeIdentityProvider, graph: FakeGraph, connector: FakeBotConnector
) -> None:
    idp.refuse_connections()
    try:
        async with running_bot(auth_settings(empty_db_url, idp, graph, connector)) as bot:
            status, body = await bot.get("/readyz")
            assert status == 503 and body["signing_keys"].startswith("unavailable")
            assert await bot.get("/healthz") == (200, {"status": "ok"})
    finally:
        idp.accept_connections()


async def test_metrics_count_turns_graph_calls_and_connector_answers(
    bot: RunningBot,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
) -> None:
    before = await scrape(bot)
    token = idp.channel_token(APP_ID, connector.service_url)
    graph.throttle(1, retry_after=0.1)  # the first membership check is throttled, then answered
    sent = len(connector.activities)
    posted = await bot.post(message("products", connector.service_url, tenant=idp.tenant_id), token)
    assert posted.status == 201
    await connector.wait_for_async(sent + 1)
    assert (await bot.post(message("usage", connector.service_url), "garbage")).status == 401
    connector.fail_next(1, Failure.throttled(0.1))
    outsider = message("help", connector.service_url, sender=OUTSIDER_OID, tenant=idp.tenant_id)
    await bot.post(outsider, token)
    after = await scrape(bot)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("fusion_turns_total", outcome="ok") == 2
    assert grew("fusion_turns_total", outcome="unauthenticated") == 1
    assert grew("fusion_turn_duration_seconds_count") == 3
    assert grew("fusion_graph_calls_total", outcome="throttled") == 1
    assert grew("fusion_graph_calls_total", outcome="ok") >= 1
    assert grew("fusion_connector_calls_total", outcome="ok") >= 1
    assert grew("fusion_connector_calls_total", outcome="throttled") == 1
    assert ("fusion_approvals_pending", ()) in after
    assert ("process_resident_memory_bytes", ()) in after or ("python_info", ()) in {
        (k[0], ()) for k in after
    }


async def test_metrics_are_404_to_other_networks(empty_db_url: str) -> None:
    async def ask(settings: Settings, peer: str) -> int:
        app = create_app(settings)
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda key, default=None: (
            (peer, 40000) if key == "peername" else default
        )
        request = make_mocked_request("GET", "/metrics", app=app, transport=transport)
        try:
            response = await metrics_page(request)
        except aiohttp.web.HTTPNotFound:
            return 404
        return response.status

    settings = Settings(database_url=empty_db_url)
    assert await ask(settings, "203.0.113.9") == 404
    assert await ask(settings, "10.1.2.3") == 404
    allowed = replace(settings, metrics_networks=("10.0.0.0/8",))
    assert await ask(allowed, "10.1.2.3") != 404
    assert await ask(allowed, "203.0.113.9") == 404
