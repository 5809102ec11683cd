"""Drill: every activity of a load delivered twice — one effect each.

    .venv/bin/python benchmarks/drills/duplicates.py [--database sqlite|postgres|both] [--quick]

Teams delivers an activity again when it got no answer in time (about 15 s), and a user can
click a card's button twice. Here every activity of a load of allocations (typed commands,
and every third one a form submitted from a card) is delivered twice with the same activity
id: half of them with both copies racing (sent at the same moment, so both are in the bot at
once), half with the second copy sent after the first was answered. 32 conversations at once.

What must hold: each activity was done exactly once — one answer "Allocated …", the other
"already done" (showing what the first one did); the allocated total equals the number of
distinct activities and the audited increments; no activity id appears on two allocate events;
the audit chain verifies.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.drills._drill import (  # noqa: E402
    Courier,
    allocations,
    arguments,
    ledger,
    report,
    samples,
    save,
)
from benchmarks.load import rig  # noqa: E402
from benchmarks.seed import POOL  # noqa: E402

CONVERSATIONS = 32


async def drill(database: str, quick: bool, keep: bool) -> dict[str, Any]:
    count = 150 if quick else 1000
    seen: dict[str, Any] = {"database": database, "activities": count}
    with rig(keep) as r:
        url = r.database(database, "drill_duplicates")
        bot, bot_url = r.start("bot", url)
        load = allocations(r, POOL, count, CONVERSATIONS, "dup", card_every=3)
        racing = {str(a["id"]) for a in load[::2]}
        async with r.generator(seconds=60, max_turns=10**9) as gen:
            courier = Courier(gen)
            queue = list(reversed(load))

            async def worker() -> None:
                while queue:
                    activity = queue.pop()
                    if str(activity["id"]) in racing:
                        await asyncio.gather(
                            courier.deliver_one(bot_url, activity),
                            courier.deliver_one(bot_url, activity),
                        )
                    else:
                        await courier.deliver_one(bot_url, activity)
                        await courier.deliver_one(bot_url, activity)

            await asyncio.gather(*(worker() for _ in range(CONVERSATIONS)))
            await courier.collect()
        check = ledger(url, POOL)
    pairs: Counter[str] = Counter()
    wrong: list[str] = []
    for delivery in courier.deliveries.values():
        pair = "+".join(sorted(delivery.answers))
        pairs[("racing " if delivery.aid in racing else "one after the other ") + pair] += 1
        if sorted(delivery.answers) != ["already", "applied"]:
            wrong.append(f"{delivery.aid}: {delivery.answers} {delivery.texts}")
    lines = [
        f"{database}: {count} allocations of 1 {POOL} (every 3rd a card's form), each delivered "
        f"twice, {CONVERSATIONS} conversations at once",
        f"answer pairs: {dict(pairs)}",
        *(f"unexpected: {w[:200]}" for w in wrong[:5]),
        f"ledger: allocated {check['allocated']}, audited increments "
        f"{check['audited_increments']}, allocate events {check['allocate_events']} for "
        f"{check['distinct_activity_ids']} activity ids; audit verify exit "
        f"{check['cli_audit_verify_exit']}",
        *samples(courier),
    ]
    checks = {
        "every activity: one 'Allocated', one 'already done'": not wrong,
        "allocated = number of distinct activities": check["allocated"] == count,
        "allocated = sum of the audited allocate events' increments": bool(
            check["allocated_equals_audit"]
        ),
        "no activity id on two allocate events": check["applied_twice"] == 0
        and check["allocate_events"] == count,
        "audit chain intact (audit verify passes)": bool(check["chain_intact"])
        and check["cli_audit_verify_exit"] == 0,
    }
    seen.update(check=check, pairs=dict(pairs))
    report(f"every activity delivered twice ({database})", lines, checks, seen)
    return seen


def main() -> int:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="both", choices=["sqlite", "postgres", "both"])
    args = parser.parse_args()
    databases = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    results = [asyncio.run(drill(db, args.quick, args.keep)) for db in databases]
    save(args.json, {"drill": "duplicates", "results": results})
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
