"""Drills: provisioning into Teams survives a Graph outage, kill -9, two instances, a failure.

    .venv/bin/python benchmarks/drills/provisioning.py [--database sqlite|postgres|both]
        [--drill outage|kill9|two|failed|all] [--quick] [--json OUT]

Each drill makes N assignments through the ledger (each writes its job in the same
transaction) while the bot — `python app.py`, provisioning on — carries them into the fake
Teams tenant (Graph with operations that take 0.5 s), and does one unkind thing:

- outage: Graph refuses every connection for 30 s (quick: 4 s) once a third of 200 (quick: 40)
  jobs have ended; the rest ride it out and end once it is back;
- kill9: the bot is killed with SIGKILL once a third of the jobs have ended, whatever it had
  in flight, and started again; its claims run out (the lease: 9 s here) and are taken again;
- two: two bot instances from the start, on one database, both working the same jobs;
- failed: a few numbers' operations fail in Teams (statusDetail scripted).

The outage and kill9 drills carry Microsoft 365 license jobs too, made with the numbers (one
per user: pack VOICE for every third, TEAMS-PHONE for the others, and for every sixth a
license-remove right after), so the outage and the kill find license jobs pending or on their
way; afterwards each add and each remove has taken effect once in the fake Microsoft 365 (one
accepted assignLicense per user and SKU each way) and Microsoft 365 holds what the ledger says.

Checks afterwards (from the database and the fake tenant): every job ended; each assignment
was accepted by Teams exactly once; each job has exactly one end in the audit; Teams and the
ledger agree; the failed jobs are exactly the scripted ones, left Teams alone and say why; the
audit chain verifies. Figures: wall time, time to drain after the trouble, Graph calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.drills import _provisioning as p  # noqa: E402
from benchmarks.harness import work_folder  # noqa: E402
from bot.config import DEFAULT_NAMING_RULE  # noqa: E402
from bot.domain import db  # noqa: E402
from bot.domain.naming import set_naming_rule  # noqa: E402

DRILLS = ("outage", "kill9", "two", "failed")
# Drills that carry Microsoft 365 license jobs (license-add, license-remove, a pack) beside the
# numbers.
LICENSE_DRILLS = ("outage", "kill9")


async def drill(name: str, kind: str, url: str, quick: bool, work: Path) -> dict[str, Any]:
    total = 40 if quick else 200
    outage = 4.0 if quick else 30.0
    result: dict[str, Any] = {"drill": name, "database": kind, "assignments": total}
    failures: dict[str, str] = {}
    with p.fakes() as (idp, graph):
        set_naming_rule(DEFAULT_NAMING_RULE)
        await p.open_db(url)
        bots = []
        try:
            await p.seed(graph, total)
            licenses = name in LICENSE_DRILLS
            if licenses:
                await p.seed_licenses(graph, total)
            jobs_total = total
            if name == "failed":
                for i in range(0, total, max(total // 5, 1)):
                    failures[p.e164(i)] = f"Number {p.e164(i)} is not in the tenant's inventory."
                    graph.fail_number(p.e164(i), failures[p.e164(i)])
            env = p.bot_env(url, idp, graph)
            bots.append(p.start_bot(work, f"{name}-{kind}-bot1", env))
            if name == "two":
                bots.append(p.start_bot(work, f"{name}-{kind}-bot2", env))
                await p.workers_started(bots)
            started = time.monotonic()
            third = total // 3
            await p.assign(0, third * 2)
            if licenses:
                jobs_total += await p.license_work(0, third * 2)
            await p.wait_ended(third, 120)
            if name == "outage":
                graph.down("refuse")
                result["outage_seconds"] = outage
                await p.assign(third * 2, total)
                if licenses:
                    result["license_jobs_open_at_outage"] = await p.license_open()
                    jobs_total += await p.license_work(third * 2, total)
                await asyncio.sleep(outage)
                graph.up()
                back = time.monotonic()
                await p.wait_ended(jobs_total, 300)
                result["drained_after_outage_s"] = round(time.monotonic() - back, 1)
            elif name == "kill9":
                bots[0].kill9()
                result["killed_at_ended"] = await p.ended()
                if licenses:
                    result["license_jobs_open_at_kill"] = await p.license_open()
                await p.assign(third * 2, total)
                if licenses:
                    jobs_total += await p.license_work(third * 2, total)
                bots[0] = p.start_bot(work, f"{name}-{kind}-bot1b", env)
                back = time.monotonic()
                await p.wait_ended(jobs_total, 300)
                result["drained_after_restart_s"] = round(time.monotonic() - back, 1)
            else:
                await p.assign(third * 2, total)
                await p.wait_ended(total, 300)
            result["wall_s"] = round(time.monotonic() - started, 1)
            result["jobs"] = jobs_total
            reading = await p.read_back(graph, failures)
            if licenses:
                await p.license_checks(graph, reading)
            result["checks"] = reading.checks
            result["figures"] = reading.figures
        finally:
            for bot in bots:
                bot.stop()
            await db.close_database()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--drill", choices=(*DRILLS, "all"), default="all")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()
    kinds = ("sqlite", "postgres") if args.database == "both" else (args.database,)
    names = DRILLS if args.drill == "all" else (args.drill,)
    results = []
    ok = True
    with work_folder(args.keep) as work:
        for kind in kinds:
            for name in names:
                folder = work / f"{name}-{kind}"
                folder.mkdir()
                with p.database(kind, folder) as url:
                    result = asyncio.run(drill(name, kind, url, args.quick, folder))
                results.append(result)
                held = all(result["checks"].values())
                ok = ok and held
                print(json.dumps(result, default=str))
                p.save(args.json_out, results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
