"""Benchmark: 1,000 number assignments provisioned into one Teams tenant against a Graph fake
that throttles like Graph does.

    .venv/bin/python benchmarks/bench_provisioning.py [--assignments 1000]
        [--database sqlite|postgres]
        [--instances 1] [--rate 30] [--lookups] [--json OUT]

The assignments are made through the ledger first (each writes its job in the same
transaction; that time is reported apart), then the bot — `python app.py`, provisioning on,
`--instances` of it on one database — carries them into the tenant. The fake Graph answers
assignNumber with 202 and an operation that finishes 0.5 s later, and throttles each tenant to
`--rate` requests a second (sliding window; 429 with Retry-After): Microsoft documents 30 rps
per app per tenant for Teams calls of this kind ("Microsoft Teams service limits"; number
management publishes no figure of its own). With `--lookups` the accounts have no Entra object
id (no directory sync), so each job first looks the user up by UPN.

Printed: wall time until every job ended, assignments a second, Graph calls per assignment (by
kind), 429s, and the floor that the tenant's rate limit alone sets (calls ÷ rate): when the
wall time sits on that floor, Graph's throttling is the bottleneck, not the bot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.drills import _provisioning as p  # noqa: E402
from benchmarks.harness import work_folder  # noqa: E402
from bot.config import DEFAULT_NAMING_RULE  # noqa: E402
from bot.domain import db  # noqa: E402
from bot.domain.models import Account  # noqa: E402
from bot.domain.naming import set_naming_rule  # noqa: E402


async def bench(args: argparse.Namespace, url: str, work: Path) -> dict[str, Any]:
    n = args.assignments
    result: dict[str, Any] = {
        "assignments": n,
        "database": args.database,
        "instances": args.instances,
        "rate_limit_rps": args.rate,
        "lookups_by_upn": args.lookups,
    }
    with p.fakes(operation_delay=0.5) as (idp, graph):
        set_naming_rule(DEFAULT_NAMING_RULE)
        await p.open_db(url)
        bots = []
        try:
            await p.seed(graph, n)
            if not args.lookups:
                # As the directory sync leaves them: every account knows its Entra object id.
                for account in await Account.all():
                    await Account.filter(id=account.id).update(object_id=p.oid(account.upn))
            started = time.monotonic()
            await p.assign(0, n)
            result["ledger_s"] = round(time.monotonic() - started, 1)
            graph.rate_limit(args.rate, per_seconds=1.0)
            graph.clear_records()
            env = p.bot_env(url, idp, graph)
            started = time.monotonic()
            for i in range(args.instances):
                bots.append(p.start_bot(work, f"bench-bot{i + 1}", env))
            await p.wait_ended(n, 3600)
            wall = time.monotonic() - started
            reading = await p.read_back(graph, {})
            calls = Counter(str(x.info.get("kind")) for x in graph.requests)
            total = sum(calls.values())
            accepted = total - reading.figures["graph 429s"]
            result.update(
                {
                    "wall_s": round(wall, 1),
                    "assignments_per_s": round(n / wall, 1),
                    "graph_calls": dict(calls),
                    "graph_calls_per_assignment": round(total / n, 2),
                    "graph_calls_per_assignment_without_429s": round(accepted / n, 2),
                    "graph_429s": reading.figures["graph 429s"],
                    "rate_floor_s": round(accepted / args.rate, 1),
                    "checks": reading.checks,
                    "jobs": reading.figures["jobs"],
                    "bot_cpu_s": round(sum(b.cpu_seconds() for b in bots), 1),
                }
            )
            result["wall_over_floor"] = round(wall / max(result["rate_floor_s"], 0.1), 2)
        finally:
            for bot in bots:
                bot.stop()
            await db.close_database()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assignments", type=int, default=1000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--rate", type=int, default=30, help="Graph requests a second per tenant")
    parser.add_argument("--lookups", action="store_true", help="no object ids: look users up")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    with work_folder() as work, p.database(args.database, work) as url:
        result = asyncio.run(bench(args, url, work))
    print(json.dumps(result, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
