"""One OS process of the concurrency proof (tests/test_ledger_concurrency.py launches several).

    python tests/support/concurrency_worker.py DATABASE_URL WORKER_NAME < plan.json

The plan on standard input is a JSON list of attempts, e.g.
`{"op": "allocate", "quantity": 1, "product": "P", "subscription": "S"}`,
`{"op": "release", ...}` or `{"op": "capacity", "capacity": 80, "product": "P"}`.
The worker opens its own connection pool, prints `ready`, waits for a line on standard input
(so that every process starts at the same moment), runs all attempts at once as asyncio tasks,
and prints one JSON line: per attempt, whether it was carried out and, if not, why, with
wall-clock start and finish times (so the test can show attempts of different processes overlap).
Each attempt's correlation id is `WORKER_NAME-INDEX`, so the test can match audit rows to it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot.domain import db, ledger  # noqa: E402
from bot.domain.change import Origin, limit_writers  # noqa: E402
from bot.domain.errors import DomainError  # noqa: E402


async def attempt(worker: str, index: int, step: dict[str, Any]) -> dict[str, Any]:
    origin = Origin(
        actor_id=f"worker:{worker}",
        actor_name=f"Worker {worker}",
        source="system",
        correlation_id=f"{worker}-{index}",
    )
    result: dict[str, Any] = {"index": index, "correlation_id": origin.correlation_id, **step}
    result["started"] = time.time()
    try:
        if step["op"] == "allocate":
            await ledger.allocate(origin, step["quantity"], step["product"], step["subscription"])
        elif step["op"] == "release":
            await ledger.release(origin, step["quantity"], step["product"], step["subscription"])
        elif step["op"] == "capacity":
            await ledger.set_capacity(origin, step["product"], step["capacity"])
        else:
            raise ValueError(f"unknown op {step['op']!r}")
        result.update(ok=True)
    except DomainError as exc:
        result.update(ok=False, code=exc.code, message=exc.message)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        result.update(ok=False, code="crash", message=f"{type(exc).__name__}: {exc}")
    result["finished"] = time.time()
    return result


async def main(url: str, worker: str) -> None:
    plan = json.loads(sys.stdin.readline())
    await db.open_database(url, migrate=False)
    limit_writers(0)  # every attempt of this process at the database at once: its locks decide
    try:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        results = await asyncio.gather(*(attempt(worker, i, s) for i, s in enumerate(plan)))
    finally:
        await db.close_database()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
