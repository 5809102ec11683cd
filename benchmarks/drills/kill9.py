"""Drill: kill -9 the bot in the middle of a load of allocations, restart it, check the ledger.

    .venv/bin/python benchmarks/drills/kill9.py [--database sqlite|postgres|both] [--quick]

The bot (`python app.py`, production mode) gets allocations of LIMITED-POOL from 32
conversations at once — typed commands, and every fifth one a form submitted from a card —
more of them than the pool holds, so the last ones must be refused. A moment into the load
the bot is killed with SIGKILL: whatever was in flight is cut off mid-transaction. It is
started again on the same port, and, as Teams does, every activity that got no answer is
delivered again (same activity id), then the rest of the load follows.

What must hold afterwards (read back from the database, and through the CLI: `usage --json`,
`audit verify`): the pool's allocations stay within its capacity; the allocated total equals
the sum of the increments of the audited allocate events (every change has its audit event,
and nothing else changed); no activity took effect twice; the audit chain verifies; every
activity got an answer in the end; and the allocated total is exactly the number of
activities the bot said it did (now, or "already done" on redelivery).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import harness  # noqa: E402
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
from benchmarks.seed import LIMITED  # noqa: E402

CONVERSATIONS = 32


async def drill(database: str, quick: bool, keep: bool) -> dict[str, Any]:
    capacity = 200 if quick else 600
    kill_after = 0.8 if quick else 1.5
    seen: dict[str, Any] = {"database": database, "capacity": capacity}
    with rig(keep) as r:
        url = r.database(database, "drill_kill9", limited=capacity)
        port = harness.free_port()
        bot, bot_url = r.start("bot", url, port=port)
        load = allocations(r, LIMITED, capacity + 100, CONVERSATIONS, "k9", card_every=5)
        async with r.generator(seconds=60, max_turns=10**9) as gen:
            courier = Courier(gen)
            stop = asyncio.Event()
            sending = asyncio.create_task(
                courier.deliver(lambda: bot_url, load, CONVERSATIONS, stop=stop)
            )
            await asyncio.sleep(kill_after)
            bot.kill9()
            stop.set()
            await sending
            await courier.collect()
            before_kill = courier.all_answers()
            sent_before = len(courier.deliveries)
            started = time.monotonic()
            r.start("bot-restarted", url, port=port)
            restart_seconds = time.monotonic() - started
            redeliver = courier.unanswered()
            rest = [a for a in load if str(a["id"]) not in courier.deliveries]
            await courier.deliver(lambda: bot_url, redeliver + rest, CONVERSATIONS)
            await courier.collect()
            if courier.unanswered():  # once more, as Teams would
                await courier.deliver(lambda: bot_url, courier.unanswered(), CONVERSATIONS)
                await courier.collect()
            redelivered = [courier.deliveries[str(a["id"])] for a in redeliver]
        check = ledger(url, LIMITED)
    finals = courier.finals()
    took_effect = sum(1 for d in courier.deliveries.values() if d.took_effect)
    again = [d.answers[-1] for d in redelivered]
    lines = [
        f"{database}: LIMITED-POOL capacity {capacity}, {len(load)} allocations from "
        f"{CONVERSATIONS} conversations (every 5th a card submission)",
        f"killed with SIGKILL after {kill_after}s: {sent_before} delivered by then — "
        f"{dict(before_kill)} (no-answer: cut off in flight)",
        f"restarted on the same port in {restart_seconds:.1f}s; redelivered the "
        f"{len(redeliver)} unanswered: {dict((k, again.count(k)) for k in sorted(set(again)))}",
        f"final answers of all {len(courier.deliveries)} activities: {dict(finals)}",
        f"ledger: capacity {check['capacity']}, allocated {check['allocated']}, audited "
        f"increments {check['audited_increments']}, allocate events {check['allocate_events']} "
        f"for {check['distinct_activity_ids']} activity ids",
        f"CLI: usage --json allocated {check['cli_usage_allocated']}; audit verify exit "
        f"{check['cli_audit_verify_exit']}: {' '.join(check['cli_audit_verify'])}",
        *samples(courier),
    ]
    checks = {
        "the kill cut off turns in flight": before_kill.get("no-answer", 0) > 0,
        "sum of allocations ≤ capacity": bool(check["within_capacity"]),
        "allocated = sum of the audited allocate events' increments": bool(
            check["allocated_equals_audit"]
        ),
        "no activity took effect twice": check["applied_twice"] == 0,
        "audit chain intact (audit verify passes)": bool(check["chain_intact"])
        and check["cli_audit_verify_exit"] == 0,
        "every activity answered in the end (done, already done, or refused)": set(finals)
        <= {"applied", "already", "refused"},
        "allocated = activities the bot said it did": check["allocated"] == took_effect,
        "CLI usage --json agrees": check["cli_usage_allocated"] == check["allocated"],
    }
    seen.update(check=check, finals=dict(finals), before_kill=dict(before_kill))
    report(f"kill -9 mid-load ({database})", lines, checks, seen)
    return seen


def main() -> int:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="both", choices=["sqlite", "postgres", "both"])
    args = parser.parse_args()
    databases = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    results = [asyncio.run(drill(db, args.quick, args.keep)) for db in databases]
    save(args.json, {"drill": "kill9", "results": results})
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
