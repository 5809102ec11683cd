"""How long the two bulk operations of the consumption side take, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/bench_numbers_packs.py
    .venv/bin/python benchmarks/bench_numbers_packs.py --postgres postgres://postgres@127.0.0.1:5432/fusion_bench
    .venv/bin/python benchmarks/bench_numbers_packs.py --skip-postgres --rounds 5

Measures, through the domain services (the same code the commands run):
- `numbers add` of a 10,000-number range: validation of every number with `phonenumbers`,
  the duplicate check and the bulk insert in one audited transaction;
- `pack assign` of a 3-license service pack to 500 accounts: one transaction per account
  (locks, in-use counts, inserts, audit event), with a dry run of the same for comparison.

Each figure is the median of `--rounds` runs (fresh numbers / fresh accounts every round).
The PostgreSQL database named in the URL is dropped and created again: never point it at
real data. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.domain import db, ledger, licensing, numbers  # noqa: E402
from bot.domain.change import Origin  # noqa: E402
from bot.domain.models import Account, ProductKind, Subscription  # noqa: E402

OPS = Origin(actor_id="bench", actor_name="Benchmark", source="cli")
ACCOUNTS = 500
RANGE = 10_000
# London numbers +44 20 7123 0000 onwards: every 10,000 of them are valid geographic numbers.
FIRST = 442071230000


async def reset(url: str) -> None:
    if db.connection_name(url) == "postgres":
        import asyncpg

        base, name = url.split("?", 1)[0].rsplit("/", 1)
        admin = await asyncpg.connect(base.replace("postgres://", "postgresql://", 1) + "/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    else:
        await asyncio.to_thread(_remove_sqlite_files, url)
    await db.open_database(url, migrate=True)


def _remove_sqlite_files(url: str) -> None:
    path = url.split("://", 1)[1].split("?", 1)[0]
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


async def bench(url: str, rounds: int) -> dict[str, float]:
    await reset(url)
    try:
        await ledger.add_customer(OPS, "Bench Ltd")
        await ledger.add_subscription(OPS, "BENCH-01", "Bench Ltd")
        licenses = ["BENCH-E5", "BENCH-PHONE", "BENCH-CALLING"]
        for name in licenses:
            await ledger.add_product(OPS, name, ProductKind.LICENSE, ACCOUNTS * (rounds + 1))
            await ledger.allocate(OPS, ACCOUNTS * (rounds + 1), name, "BENCH-01")
        await licensing.create_pack(OPS, "BENCH-PACK", licenses)
        sub = await Subscription.get(code="BENCH-01")

        parse, add = [], []
        for r in range(rounds):
            first = FIRST + r * RANGE
            text = f"+{first}-+{first + RANGE - 1}"
            start = time.perf_counter()
            numbers.parse_range(text)
            parse.append(time.perf_counter() - start)
            start = time.perf_counter()
            await numbers.add_numbers(OPS, text)
            add.append(time.perf_counter() - start)

        dry, real = [], []
        for r in range(rounds):
            upns = [f"user{r}-{i:03d}@bench.example" for i in range(ACCOUNTS)]
            await Account.bulk_create([Account(upn=u, subscription_id=sub.id) for u in upns])
            start = time.perf_counter()
            await licensing.assign_pack(OPS, "BENCH-PACK", upns, dry_run=True)
            dry.append(time.perf_counter() - start)
            start = time.perf_counter()
            outcome = await licensing.assign_pack(OPS, "BENCH-PACK", upns)
            real.append(time.perf_counter() - start)
            assert len(outcome.succeeded) == ACCOUNTS, outcome.failed[:3]

        start = time.perf_counter()
        await numbers.list_numbers(page=200, size=25)
        listing = time.perf_counter() - start
        return {
            "validate 10,000 numbers (s)": statistics.median(parse),
            "numbers add 10,000-range (s)": statistics.median(add),
            "pack assign 500 accounts (s)": statistics.median(real),
            "  per account (ms)": statistics.median(real) / ACCOUNTS * 1000,
            "pack assign 500, dry run (s)": statistics.median(dry),
            f"numbers page 200 of {rounds * RANGE:,} (ms)": listing * 1000,
        }
    finally:
        await db.close_database()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/fusion_bench")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite"] = asyncio.run(bench(f"sqlite://{tmp}/bench.sqlite3", args.rounds))
    if not args.skip_postgres:
        results["PostgreSQL"] = asyncio.run(bench(args.postgres, args.rounds))

    names = list(next(iter(results.values())))
    width = max(len(n) for n in names)
    print(f"{'':{width}}  " + "  ".join(f"{k:>10}" for k in results))
    for name in names:
        print(f"{name:{width}}  " + "  ".join(f"{results[k][name]:>10.3f}" for k in results))
    print(f"(median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
