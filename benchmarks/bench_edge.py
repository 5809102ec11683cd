"""Benchmark: Teams turns through the whole edge, and what the edge reuses between turns.

    .venv/bin/python benchmarks/bench_edge.py
    .venv/bin/python benchmarks/bench_edge.py --turns 500 --concurrency 50

The app runs in production mode on 127.0.0.1 (a temporary SQLite database) against the fakes
(identity provider with channel keys and a token endpoint, Graph, Bot Connector; each on its
own thread, https with a throw-away CA trusted through REQUESTS_CA_BUNDLE / SSL_CERT_FILE).
Each turn is a POST of a channel-signed activity to /api/messages: token validation, the admin
check (Graph, cached), the command, the card, the reply to the fake Bot Connector with the
bot's msal token. Measured:

1. `products` one turn after another: latency (median, p95) and turns per second;
2. `products` with N turns in flight at once: turns per second;
3. `allocate 1 ...` one after another (a write and its audit event per turn);
4. what was made or fetched for all of that: connector clients, token requests, tenant
   metadata fetches, TCP connections the Bot Connector saw;
5. for comparison, what the stock SDK spends per turn before sending anything: building a
   ConnectorClient and a TokenApiClient (msrest clients; the stock adapter makes both for
   every turn, plus a new msal application and a new connection).

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402
from botframework.connector.aio import ConnectorClient  # noqa: E402
from botframework.connector.auth import MicrosoftAppCredentials  # noqa: E402
from botframework.connector.token_api.aio import TokenApiClient  # noqa: E402

from app import EDGE  # noqa: E402
from bot.domain import ledger  # noqa: E402
from bot.domain.models import ProductKind  # noqa: E402
from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider, shared_tls  # noqa: E402
from tests.fakes._server import INFO  # noqa: E402
from tests.support.teams_env import (  # noqa: E402
    ADMIN_GROUP,
    ADMIN_OID,
    APP_ID,
    APP_SECRET,
    SEED,
    auth_settings,
    message,
    running_bot,
    seed_ledger,
)

CONNECTOR_SCOPE = "https://api.botframework.com/.default"


class PeerRecordingConnector(FakeBotConnector):
    def build_app(self) -> web.Application:
        app = super().build_app()

        @web.middleware
        async def peer(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            transport = request.transport
            request[INFO]["peer"] = transport.get_extra_info("peername") if transport else None
            return await handler(request)

        app.middlewares.append(peer)
        return app


def stock_client_cost(rounds: int = 50) -> float:
    """Milliseconds to build the two msrest clients the stock adapter builds per turn."""
    credentials = MicrosoftAppCredentials(APP_ID, APP_SECRET)
    started = time.perf_counter()
    for _ in range(rounds):
        ConnectorClient(credentials, base_url="https://smba.trafficmanager.net/amer/")
        TokenApiClient(credentials, "https://api.botframework.com")
    return (time.perf_counter() - started) / rounds * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run(turns: int, concurrency: int) -> None:
    bundle = str(shared_tls().ca_bundle)
    os.environ["REQUESTS_CA_BUNDLE"] = bundle
    os.environ["SSL_CERT_FILE"] = bundle
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeIdentityProvider() as idp,
        FakeGraph(idp) as graph,
        PeerRecordingConnector(idp, expected_app_id=APP_ID) as connector,
    ):
        idp.register_app(APP_ID, APP_SECRET)
        graph.add_user(ADMIN_OID, "alice@provider.example", "Alice Admin")
        graph.add_group(ADMIN_GROUP, [ADMIN_OID])
        settings = auth_settings(
            f"sqlite://{Path(tmp) / 'bench.sqlite3'}", idp, graph, connector, migrate_on_start=True
        )
        async with running_bot(settings) as bot:
            await seed_ledger()
            await ledger.add_product(SEED, "BENCH-POOL", ProductKind.CUSTOM, 1_000_000)
            service_url = connector.service_url
            token = idp.channel_token(APP_ID, service_url)  # valid for an hour: reused
            sent = 0

            async def turn(text: str) -> float:
                nonlocal sent
                activity = message(text, service_url, tenant=idp.tenant_id)
                started = time.perf_counter()
                posted = await bot.post(activity, token)
                assert posted.status == 201, posted
                sent += 1
                await connector.wait_for_async(sent, timeout=30)
                return time.perf_counter() - started

            await turn("products")  # warm-up: keys, msal app, token, Graph, connector client
            warm_tokens = sum(
                1 for r in idp.token_requests if r.info.get("scope") == CONNECTOR_SCOPE
            )

            latencies = [await turn("products") for _ in range(turns)]
            elapsed = sum(latencies)
            print(f"products, one after another ({turns} turns):")
            print(
                f"  median {statistics.median(latencies) * 1000:.1f} ms, "
                f"p95 {pct(latencies, 0.95) * 1000:.1f} ms, {turns / elapsed:.0f} turns/s"
            )

            gate = asyncio.Semaphore(concurrency)

            async def limited() -> None:
                async with gate:
                    activity = message("products", service_url, tenant=idp.tenant_id)
                    posted = await bot.post(activity, token)
                    assert posted.status == 201, posted

            started = time.perf_counter()
            await asyncio.gather(*(limited() for _ in range(turns)))
            sent += turns
            await connector.wait_for_async(sent, timeout=60)
            wall = time.perf_counter() - started
            print(f"products, {concurrency} in flight ({turns} turns):")
            print(f"  {turns / wall:.0f} turns/s ({wall:.2f} s)")

            writes = max(10, turns // 2)
            latencies = [await turn("allocate 1 BENCH-POOL to ACME-01") for _ in range(writes)]
            print(f"allocate, one after another ({writes} turns, each a write + audit event):")
            print(
                f"  median {statistics.median(latencies) * 1000:.1f} ms, "
                f"p95 {pct(latencies, 0.95) * 1000:.1f} ms, {writes / sum(latencies):.0f} turns/s"
            )

            total = 1 + 2 * turns + writes
            edge = bot.server.app[EDGE]
            tokens = sum(1 for r in idp.token_requests if r.info.get("scope") == CONNECTOR_SCOPE)
            metadata = sum(1 for r in idp.requests if r.path.endswith("/openid-configuration"))
            peers = {r.info.get("peer") for r in connector.requests}
            print(f"made or fetched for {total} turns:")
            print(f"  connector clients: {edge.connectors.client_count}")
            print(
                f"  Bot Connector token requests: {tokens} (after warm-up: {tokens - warm_tokens})"
            )
            print(f"  tenant metadata fetches (msal applications made, one per tenant): {metadata}")
            print(f"  TCP connections seen by the Bot Connector: {len(peers)}")
    print("stock SDK, per turn, before anything is sent:")
    print(f"  ConnectorClient + TokenApiClient construction: {stock_client_cost():.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.turns, args.concurrency))


if __name__ == "__main__":
    main()
