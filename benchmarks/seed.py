"""The benchmark catalog: migrate a database and load what the load and the drills use.

    python benchmarks/seed.py DATABASE_URL [--subscriptions 16]

One customer, subscriptions BENCH-01…, BENCH-POOL and BENCH-POOL-2…8 (custom products with a
capacity so large that allocations keep succeeding), a few products with allocations so that
`usage` has a realistic table to show, and LIMITED-POOL (capacity 1,000 unless told) for the
drills that push against a capacity. Prints one JSON line with what it made. Goes through the
domain services (each change audited), like any other change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.domain import db, ledger  # noqa: E402
from bot.domain.change import Origin  # noqa: E402
from bot.domain.models import NumberType, ProductKind  # noqa: E402

SEED = Origin(actor_id="bench-seed", actor_name="Benchmark seed", source="cli")
POOL = "BENCH-POOL"
#: More pools like BENCH-POOL: allocations spread over them do not queue for one product's lock.
POOLS = [POOL] + [f"{POOL}-{i}" for i in range(2, 9)]
LIMITED = "LIMITED-POOL"
POOL_CAPACITY = 1_000_000_000
LIMITED_CAPACITY = 1_000


def subscription_code(i: int) -> str:
    return f"BENCH-{i + 1:02d}"


async def seed(url: str, subscriptions: int, limited: int) -> dict[str, object]:
    await db.open_database(url, migrate=True)
    try:
        await ledger.add_customer(SEED, "Bench Customer")
        codes = [subscription_code(i) for i in range(subscriptions)]
        for code in codes:
            await ledger.add_subscription(SEED, code, "Bench Customer")
        for pool in POOLS:
            await ledger.add_product(SEED, pool, ProductKind.CUSTOM, POOL_CAPACITY, unit="unit")
        await ledger.add_product(SEED, LIMITED, ProductKind.CUSTOM, limited, unit="unit")
        await ledger.add_product(SEED, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 100_000)
        await ledger.add_product(SEED, "SIP-CHANNELS", ProductKind.SIP_CHANNELS, 100_000)
        for country in ("GB", "DE", "FR", "US"):
            await ledger.add_product(
                SEED,
                f"NUMBERS-{country}-GEO",
                ProductKind.NUMBERS,
                100_000,
                country=country,
                number_type=NumberType.GEOGRAPHIC,
            )
        for code in codes:
            for product in ("TEAMS-SEATS", "SIP-CHANNELS", "NUMBERS-GB-GEO"):
                await ledger.allocate(SEED, 10, product, code)
    finally:
        await db.close_database()
    return {"subscriptions": codes, "pool": POOL, "limited": LIMITED}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("--subscriptions", type=int, default=16)
    parser.add_argument("--limited-capacity", type=int, default=LIMITED_CAPACITY)
    args = parser.parse_args()
    made = asyncio.run(seed(args.database_url, args.subscriptions, args.limited_capacity))
    print(json.dumps(made))


if __name__ == "__main__":
    main()
