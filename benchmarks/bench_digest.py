"""Benchmark: building the usage digest at scale, and posting it to many conversations.

    .venv/bin/python benchmarks/bench_digest.py                    # SQLite, and PostgreSQL if up
    .venv/bin/python benchmarks/bench_digest.py --subscriptions 2000 --conversations 100

1. Build: a ledger of N subscriptions × 20 products (every subscription holds every product;
   each has a Teams user with an assigned number, a SIP trunk and a license; 28 days of usage
   snapshots; 1,000 audit events; 50 pending approvals). Times `build_report` (+ the changes
   since the last digest), the Digest reply and its card, and counts the SQL statements sent
   (at the driver, `tests/support/querycount.py`) — for N and for N/10, to show the count does
   not grow with the data.
2. Send: M conversations subscribed to a digest whose slot is due, one scheduler tick against
   the fake Bot Connector (127.0.0.1, own thread; tokens from the fake Entra ID through msal).
   Once with Teams' limits (50 requests/s per tenant, all conversations in one tenant), once
   with 10 % of sends answered 429 Retry-After 1 s, once with the limits lifted (raw speed).

Prints figures; asserts nothing. Uses its own databases (a temporary SQLite file and
`fusion_bench_digest` on the PostgreSQL server of FUSION_TEST_POSTGRES_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from bot.auth.credentials import ClientCredentials, client_ssl_context  # noqa: E402
from bot.commands.digests import digest_reply  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.domain import db, digests  # noqa: E402
from bot.domain.models import (  # noqa: E402
    Account,
    Allocation,
    ApprovalRequest,
    AuditEvent,
    Category,
    ConversationRef,
    Customer,
    DigestDelivery,
    DigestSubscription,
    LicenseAssignment,
    NumberState,
    NumberType,
    PhoneNumber,
    Product,
    ProductKind,
    SipTrunk,
    Subscription,
    UsageSnapshot,
)
from bot.scheduler import Scheduler  # noqa: E402
from bot.teams.connector import TrustedServiceUrls  # noqa: E402
from bot.teams.proactive import PER_CONVERSATION, ProactiveSender, RateLimiter, Window  # noqa: E402
from bot.teams.render import card_size, render  # noqa: E402
from tests.fakes import Failure, FakeBotConnector, FakeIdentityProvider, shared_tls  # noqa: E402
from tests.support.querycount import count_queries  # noqa: E402

APP_ID = "7e1b9c3a-5d2f-4a6b-8c9d-0e1f2a3b4c5d"
APP_SECRET = "bench-secret"
TENANT = "11111111-2222-4333-8444-555555555555"
BATCH = 5000


async def populate(subscriptions: int) -> None:
    now = datetime.now(UTC)
    customer = await Customer.create(name="Bench Customer")
    await Subscription.bulk_create(
        [Subscription(code=f"SUB-{i:05d}", customer_id=customer.id) for i in range(subscriptions)],
        batch_size=BATCH,
    )
    products = [
        Product(
            name="NUMBERS-GB-GEO",
            category=Category.TECHNICAL,
            kind=ProductKind.NUMBERS,
            unit="number",
            capacity=3 * subscriptions,
            country="GB",
            number_type=NumberType.GEOGRAPHIC,
        ),
        Product(
            name="TEAMS-SEATS",
            category=Category.TECHNICAL,
            kind=ProductKind.TEAMS_SEATS,
            unit="seat",
            capacity=3 * subscriptions,
        ),
        Product(
            name="SIP-CHANNELS",
            category=Category.TECHNICAL,
            kind=ProductKind.SIP_CHANNELS,
            unit="channel",
            capacity=12 * subscriptions,
        ),
    ]
    products += [
        Product(
            name=f"CUSTOM-{i:02d}",
            category=Category.TECHNICAL,
            kind=ProductKind.CUSTOM,
            unit="unit",
            capacity=(2 + i % 3) * subscriptions,
        )
        for i in range(12)
    ]
    products += [
        Product(
            name=f"LICENSE-{i}",
            category=Category.LICENSE,
            kind=ProductKind.LICENSE,
            unit="license",
            capacity=2 * subscriptions,
        )
        for i in range(5)
    ]
    await Product.bulk_create(products)
    product_ids = dict(await Product.all().values_list("name", "id"))
    sub_ids = await Subscription.all().order_by("id").values_list("id", flat=True)
    allocations = [
        Allocation(subscription_id=s, product_id=p, quantity=2 if name != "SIP-CHANNELS" else 10)
        for s in sub_ids
        for name, p in product_ids.items()
    ]
    await Allocation.bulk_create(allocations, batch_size=BATCH)
    await Account.bulk_create(
        [Account(upn=f"user{i}@bench.example", subscription_id=s) for i, s in enumerate(sub_ids)],
        batch_size=BATCH,
    )
    accounts = await Account.all().order_by("id").values_list("id", "subscription_id")
    await PhoneNumber.bulk_create(
        [
            PhoneNumber(
                e164=f"+4420{7000000 + i:07d}",
                country="GB",
                number_type=NumberType.GEOGRAPHIC,
                state=NumberState.ASSIGNED,
                subscription_id=s,
                holder_id=a,
            )
            for i, (a, s) in enumerate(accounts)
        ],
        batch_size=BATCH,
    )
    await SipTrunk.bulk_create(
        [
            SipTrunk(name=f"TRUNK-{i:05d}", subscription_id=s, channels=9)
            for i, s in enumerate(sub_ids)
        ],
        batch_size=BATCH,
    )
    await LicenseAssignment.bulk_create(
        [LicenseAssignment(product_id=product_ids["LICENSE-0"], account_id=a) for a, _ in accounts],
        batch_size=BATCH,
    )
    today = now.date()
    await UsageSnapshot.bulk_create(
        [
            UsageSnapshot(
                day=today - timedelta(days=d),
                product_id=p,
                capacity=10 * subscriptions,
                allocated=2 * subscriptions - d * subscriptions // 30,
                in_use=subscriptions,
            )
            for d in range(28)
            for p in product_ids.values()
        ],
        batch_size=BATCH,
    )
    # Audit rows written directly: this throw-away database is not about the hash chain.
    await AuditEvent.bulk_create(
        [
            AuditEvent(
                at=now - timedelta(minutes=i),
                actor_id="oid-bench",
                actor_name="Bench",
                source="chat",
                action="allocation.allocate",
                target=f"allocation:SUB-{i:05d}",
                before={"allocated": 1},
                after={"allocated": 2},
                prev_hash="0" * 64,
                hash=f"{i:064d}",
            )
            for i in range(1000)
        ],
        batch_size=BATCH,
    )
    await ApprovalRequest.bulk_create(
        [
            ApprovalRequest(
                id=f"bench{i:04d}",
                action="allocation.allocate",
                payload={},
                summary=f"Allocate 500 TEAMS-SEATS to SUB-{i:05d}",
                requester_id="oid-b",
                requester_name="Bench",
                expires_at=now + timedelta(hours=48),
            )
            for i in range(50)
        ]
    )
    if db.dialect() is db.POSTGRES:
        # Planner statistics, as autovacuum keeps them in a live database; right after a bulk
        # load they are empty and PostgreSQL picks nested loops (seconds instead of ms).
        await db.connection().execute_script("ANALYZE")


async def open_fresh(url: str) -> None:
    if db.connection_name(url) == "postgres":
        import asyncpg

        base, name = url.rsplit("/", 1)
        conn = await asyncpg.connect(base.replace("postgres://", "postgresql://", 1) + "/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
    else:
        path = url.split("://", 1)[1].split("?", 1)[0]
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)  # noqa: ASYNC240 - a script, not the bot
    await db.open_database(url, migrate=True)


async def bench_build(url: str, subscriptions: int) -> None:
    await open_fresh(url)
    try:
        started = time.perf_counter()
        await populate(subscriptions)
        filled = time.perf_counter() - started
        since = datetime.now(UTC) - timedelta(days=1)
        await digests.build_report(datetime.now(UTC), 90, since=since)  # warm caches
        with count_queries() as queries:
            t0 = time.perf_counter()
            report = await digests.build_report(datetime.now(UTC), 90, since=since)
            t1 = time.perf_counter()
        reply = digest_reply(report, page=1, page_size=25)
        card = render(reply)
        t2 = time.perf_counter()
        print(
            f"  {subscriptions:>6,} subscriptions × {len(report.products)} products "
            f"({subscriptions * len(report.products):,} allocations; filled in {filled:.1f} s): "
            f"report {1000 * (t1 - t0):,.0f} ms in {queries.count} SQL statements, "
            f"reply + card {1000 * (t2 - t1):,.1f} ms, card {card_size(card):,} bytes; "
            f"{report.subscription_alerts_total:,} subscriptions over threshold, "
            f"{len(report.forecasts)} forecasts, {report.changes_total} changes, "
            f"{report.approvals_total} approvals"
        )
    finally:
        await db.close_database()


async def bench_send(url: str, conversations: int, idp: FakeIdentityProvider) -> None:
    settings = Settings(app_id=APP_ID, app_password=APP_SECRET, login_authority=idp.base_url)
    credentials = ClientCredentials(settings)
    await open_fresh(url)
    try:
        await populate(200)
        runs = [
            ("Teams limits (50/s per tenant)", RateLimiter(), None),
            ("Teams limits + 10 % answered 429 (Retry-After 1 s)", RateLimiter(), 0.1),
            (
                "limits lifted (raw)",
                RateLimiter(per_conversation=PER_CONVERSATION, per_tenant=(Window(10**9, 1),)),
                None,
            ),
        ]
        for label, limiter, throttled in runs:
            with FakeBotConnector(idp, expected_app_id=APP_ID) as connector:
                await DigestDelivery.all().delete()
                await DigestSubscription.all().delete()
                await ConversationRef.all().delete()
                await ConversationRef.bulk_create(
                    [
                        ConversationRef(
                            conversation_id=f"19:bench-{i:04d}@thread.tacv2",
                            reference={},
                            tenant_id=TENANT,
                            service_url=connector.service_url,
                        )
                        for i in range(conversations)
                    ]
                )
                refs = await ConversationRef.all().values_list("id", flat=True)
                await DigestSubscription.bulk_create(
                    [
                        DigestSubscription(
                            conversation_id=r,
                            cron="0 8 * * *",
                            timezone="UTC",
                            description="daily at 08:00 UTC",
                        )
                        for r in refs
                    ]
                )
                await DigestSubscription.all().update(created_at=datetime(2026, 1, 1, tzinfo=UTC))
                if throttled:
                    connector.fail_fraction(throttled, Failure.throttled(1.0), seed=1)
                trusted = TrustedServiceUrls((connector.service_url,))
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=client_ssl_context(), limit=100)
                ) as session:
                    sender = ProactiveSender(
                        session,
                        token=credentials.connector_token,
                        is_trusted=trusted.trusts,
                        limiter=limiter,
                    )
                    await credentials.connector_token()
                    slot = datetime.combine(date.today(), datetime.min.time(), UTC).replace(hour=8)
                    clock_now = slot + timedelta(seconds=5)
                    scheduler = Scheduler(
                        settings,
                        sender,
                        clock=lambda: clock_now,  # noqa: B023
                        concurrency=64,
                    )
                    with count_queries() as queries:
                        t0 = time.perf_counter()
                        report = await scheduler.tick()
                        elapsed = time.perf_counter() - t0
                    await scheduler.release_lease()
                sent = sum(1 for d in report.deliveries if d.status == "sent")
                requests = connector.requests
                size = len(requests[-1].body) if requests else 0
                print(
                    f"  {label}: {sent}/{conversations} digests posted in {elapsed:.2f} s "
                    f"({sent / elapsed:,.0f}/s), {len(requests)} requests "
                    f"({sum(1 for r in requests if r.status == 429)} answered 429, "
                    f"{len(connector.retry_violations(tolerance=0.0))} retried early), "
                    f"{queries.count} SQL statements, activity {size:,} bytes"
                )
    finally:
        credentials.close()
        await db.close_database()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    bundle = str(shared_tls().ca_bundle)
    os.environ["REQUESTS_CA_BUNDLE"] = bundle
    os.environ["SSL_CERT_FILE"] = bundle
    urls = [f"sqlite://{tempfile.mkdtemp(prefix='bench-digest-')}/bench.sqlite3"]
    pg = os.environ.get(
        "FUSION_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/fusion_test"
    )
    if not args.no_postgres:
        urls.append(pg.rsplit("/", 1)[0] + "/fusion_bench_digest")
    for url in urls:
        print(f"{db.connection_name(url)}: building the digest")
        try:
            for n in (args.subscriptions // 10, args.subscriptions):
                await bench_build(url, n)
        except OSError as exc:
            print(f"  skipped: {exc}")
            continue
        print(
            f"{db.connection_name(url)}: one scheduler tick posting to {args.conversations} "
            "conversations"
        )
        with FakeIdentityProvider() as idp:
            idp.register_app(APP_ID, APP_SECRET)
            await bench_send(url, args.conversations, idp)


if __name__ == "__main__":
    asyncio.run(main())
