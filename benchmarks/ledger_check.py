"""Read back what the ledger holds for one product and check it (benchmarks and drills).

    python benchmarks/ledger_check.py DATABASE_URL PRODUCT [--ids-out FILE]

Prints one JSON line: the product's capacity, the sum of its allocations, the sum of the
increments its audited allocate/release events record, how many allocate events there are
and how many distinct correlation ids (activity ids) they carry, whether any activity id was
applied twice, and the audit chain check (`verify_chain`, what `audit verify` runs).
`--ids-out` writes the correlation ids of the applied allocations, one per line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.domain import db  # noqa: E402
from bot.domain.change import verify_chain  # noqa: E402
from bot.domain.models import Allocation, AuditEvent, Product  # noqa: E402


async def check(url: str, product_name: str) -> tuple[dict[str, object], list[str]]:
    await db.open_database(url, migrate=False)
    try:
        product = await Product.get(name=product_name)
        quantities = await Allocation.filter(product_id=product.id).values_list(
            "quantity", flat=True
        )
        allocated = sum(int(q) for q in quantities)  # type: ignore[call-overload]
        increments = 0
        applied: Counter[str] = Counter()
        events = 0
        last = 0
        while True:
            rows = (
                await AuditEvent.filter(
                    id__gt=last,
                    action__in=("allocation.allocate", "allocation.release"),
                    target__endswith=f"/{product_name}",
                )
                .order_by("id")
                .limit(5000)
            )
            if not rows:
                break
            for row in rows:
                delta = int(row.after["allocated"]) - int(row.before["allocated"])
                increments += delta
                if row.action == "allocation.allocate":
                    events += 1
                    applied[row.correlation_id or ""] += 1
            last = rows[-1].id
        intact, checked, problem = await verify_chain()
    finally:
        await db.close_database()
    return {
        "product": product_name,
        "capacity": product.capacity,
        "allocated": allocated,
        "audited_increments": increments,
        "allocate_events": events,
        "distinct_activity_ids": len(applied),
        "applied_twice": sum(1 for n in applied.values() if n > 1),
        "within_capacity": allocated <= product.capacity,
        "allocated_equals_audit": allocated == increments,
        "chain_intact": intact,
        "chain_events": checked,
        "chain_problem": problem,
    }, list(applied)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("product")
    parser.add_argument("--ids-out")
    args = parser.parse_args()
    figures, applied = asyncio.run(check(args.database_url, args.product))
    if args.ids_out:
        Path(args.ids_out).write_text("".join(f"{cid}\n" for cid in applied))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
