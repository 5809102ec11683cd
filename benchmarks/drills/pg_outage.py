"""Drill: stop PostgreSQL in the middle of a load of allocations, then bring it back.

    .venv/bin/python benchmarks/drills/pg_outage.py [--mode immediate|fast] [--quick]

PostgreSQL here is a private cluster started for the drill (initdb + pg_ctl in a temporary
folder, on a free port): the machine's own cluster is never touched. The bot (`python app.py`,
production mode) gets allocations of BENCH-POOL from 16 conversations — typed commands and
every fourth one a card's form — for a few seconds; then the cluster is stopped
(`pg_ctl stop -m immediate`: a crash, by default) for a few seconds, then started again
while the load goes on.

What it shows: during the outage every answer is a clear "try again" (the card says the
database is not answering and nothing was changed) — no stack trace, no "something went
wrong", and /readyz answers 503; once the database is back, allocations succeed again (the
time to the first success is printed). Then, as a user or Teams would, every activity that
was told to try again (or got no answer) is sent again with the same activity id: each is
done now or reported as already done (a commit that made it just before the crash). Nothing
is lost or doubled: the allocated total equals the audited increments, and equals the number
of activities that took effect; no activity took effect twice; the audit chain verifies.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402

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

CONVERSATIONS = 16


async def watch_health(url: str, stop: asyncio.Event, seen: list[tuple[float, int]]) -> None:
    """GET /readyz every 100 ms; notes (time, status)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        while not stop.is_set():
            try:
                async with http.get(url) as resp:
                    seen.append((time.monotonic(), resp.status))
            except (aiohttp.ClientError, TimeoutError):
                seen.append((time.monotonic(), 0))
            await asyncio.sleep(0.1)


async def drill(mode: str, quick: bool, keep: bool) -> dict[str, Any]:
    before, outage, after = (1.5, 2.0, 3.0) if quick else (3.0, 5.0, 6.0)
    seen: dict[str, Any] = {"database": "postgres", "mode": mode}
    with rig(keep) as r:
        url = r.database("postgres", "drill_outage")
        assert r.postgres is not None
        pg = r.postgres
        bot, bot_url = r.start("bot", url)
        health_url = bot_url.replace("/api/messages", "/readyz")
        load = allocations(r, POOL, 200_000, CONVERSATIONS, "pg", card_every=4)
        async with r.generator(seconds=60, max_turns=10**9) as gen:
            courier = Courier(gen)
            stop = asyncio.Event()
            health: list[tuple[float, int]] = []
            watcher = asyncio.create_task(watch_health(health_url, stop, health))
            sending = asyncio.create_task(
                courier.deliver(lambda: bot_url, load, CONVERSATIONS, stop=stop, pause=0.02)
            )
            await asyncio.sleep(before)
            down_at = time.monotonic()
            await asyncio.to_thread(pg.stop, mode)
            stopped_at = time.monotonic()
            await asyncio.sleep(outage)
            await asyncio.to_thread(pg.start)
            up_at = time.monotonic()
            await asyncio.sleep(after)
            stop.set()
            await sending
            await watcher
            await courier.collect()
            first_answers = courier.all_answers()
            retry = [
                d.activity
                for d in courier.deliveries.values()
                if d.final in ("try-again", "unconfirmed", "no-answer")
            ]
            await courier.deliver(lambda: bot_url, retry, CONVERSATIONS)
            await courier.collect()
            retried = [courier.deliveries[str(a["id"])].final for a in retry]
        check = ledger(url, POOL)

    def phase(start: float, end: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in courier.deliveries.values():
            for at, answer in zip(d.sent_at, d.answers, strict=False):
                if start <= at < end:
                    counts[answer] = counts.get(answer, 0) + 1
        return counts

    during = phase(stopped_at, up_at)
    successes_after = sorted(
        at
        for d in courier.deliveries.values()
        for at, answer in zip(d.sent_at, d.answers, strict=False)
        if at >= up_at and answer == "applied"
    )
    recovery = successes_after[0] - up_at if successes_after else None
    health_down = [s for t, s in health if stopped_at <= t < up_at]
    health_after = [s for t, s in health if t >= up_at + (recovery or 0) + 0.5]
    finals = courier.finals()
    took_effect = sum(1 for d in courier.deliveries.values() if d.took_effect)
    lines = [
        f"postgres (private cluster on port {pg.port}), {CONVERSATIONS} conversations, "
        f"every 4th allocation a card submission; stop mode '{mode}'",
        f"before the outage ({before}s): {phase(0, down_at)}",
        f"PostgreSQL stopped in {stopped_at - down_at:.1f}s; during the outage ({outage}s): "
        f"{during}",
        f"/readyz during the outage: {sorted(set(health_down))}; after: "
        f"{sorted(set(health_after))}",
        f"started again; first successful allocation "
        f"{f'{recovery:.2f}s' if recovery is not None else 'never'} after it was up; "
        f"after the outage: {phase(up_at, float('inf'))}",
        f"first answers overall: {dict(first_answers)}",
        f"sent again (same activity id) the {len(retry)} told to try again, not sure it was "
        "saved, or unanswered: "
        f"{dict((k, retried.count(k)) for k in sorted(set(retried)))}",
        f"final answers of all {len(courier.deliveries)} activities: {dict(finals)}",
        f"ledger: allocated {check['allocated']}, audited increments "
        f"{check['audited_increments']}, allocate events {check['allocate_events']} for "
        f"{check['distinct_activity_ids']} activity ids; audit verify exit "
        f"{check['cli_audit_verify_exit']}",
        *samples(courier),
    ]
    checks = {
        "clear 'try again' answers during the outage": during.get("try-again", 0) > 0,
        "nothing but 'try again' (or 'not sure it was saved', or no answer) while it was down": (
            set(during) <= {"try-again", "unconfirmed", "no-answer", "applied"}
        ),
        "no answer of any other kind, ever (no 'something went wrong')": "other"
        not in courier.all_answers(),
        "/readyz said 503 while the database was down": 503 in health_down,
        "/readyz back to 200 after": bool(health_after) and set(health_after) == {200},
        "allocations succeed again once it is back": recovery is not None,
        "every activity sent again took effect (done now or already done)": set(retried)
        <= {"applied", "already"},
        "allocated = sum of the audited allocate events' increments": bool(
            check["allocated_equals_audit"]
        ),
        "no activity took effect twice": check["applied_twice"] == 0,
        "allocated = activities that took effect (nothing lost, nothing doubled)": check[
            "allocated"
        ]
        == took_effect,
        "audit chain intact (audit verify passes)": bool(check["chain_intact"])
        and check["cli_audit_verify_exit"] == 0,
    }
    seen.update(check=check, during=during, recovery_seconds=recovery, finals=dict(finals))
    report(f"PostgreSQL outage mid-load (pg_ctl stop -m {mode})", lines, checks, seen)
    return seen


def main() -> int:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="immediate", choices=["immediate", "fast"])
    args = parser.parse_args()
    result = asyncio.run(drill(args.mode, args.quick, args.keep))
    save(args.json, {"drill": "pg_outage", "results": [result]})
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
