"""A/B: CPU and wall time per turn of one app tree against another, in one process each.

    TREE=/work/main .venv/bin/python benchmarks/ab_turn_cpu.py 1000 products
    TREE=.          .venv/bin/python benchmarks/ab_turn_cpu.py 1000 products
    SEEDED_DB=/tmp/bench.sqlite3 TREE=. .venv/bin/python benchmarks/ab_turn_cpu.py 300 usage

The app of TREE (its `create_app`, local development mode, a fresh SQLite file, migrations
applied; or a copy of SEEDED_DB, a file made by that tree's `benchmarks/seed.py`) serves
turns posted one after another, 32 chats in turn, replying to the fake Bot Connector (a
thread of this process, so its CPU is counted too, the same for both trees).
Teams' rate-limit windows are lifted where the tree has the setting (FUSION_TEAMS_RATE_LIMITS),
so that what is measured is the code path. 50 warm-up turns, then N measured. Prints one JSON
line: ms per turn (wall) and CPU ms per turn (this process). Alternate the trees a few times:
on a shared machine one run says little.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

TREE = Path(os.environ.get("TREE", ".")).resolve()
sys.path.insert(0, str(TREE))
HERE = Path(__file__).resolve().parent.parent

import aiohttp  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from app import create_app  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.domain.naming import set_naming_rule  # noqa: E402

sys.path.insert(1, str(HERE))
from tests.fakes import FakeBotConnector  # noqa: E402


async def main(turns: int, text: str) -> None:
    connector = FakeBotConnector(None).start()
    path = f"{tempfile.mkdtemp()}/ab.sqlite3"
    if os.environ.get("SEEDED_DB"):
        shutil.copyfile(os.environ["SEEDED_DB"], path)
    database = f"sqlite://{path}"
    settings = Settings(
        database_url=database, dev_admins=("*",), trusted_service_urls=(connector.service_url,)
    )
    if hasattr(settings, "teams_rate_limits"):
        settings = dataclasses.replace(settings, teams_rate_limits=False)
    set_naming_rule(settings.naming_rule)
    server = TestServer(create_app(settings), host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("/api/messages"))
    async with aiohttp.ClientSession() as http:

        async def turn(i: int, words: str) -> None:
            activity = {
                "type": "message",
                "id": f"a{i}",
                "serviceUrl": connector.service_url,
                "channelId": "msteams",
                "from": {"id": "29:u", "aadObjectId": "u1", "name": "U"},
                "conversation": {"id": f"c{i % 32}"},
                "recipient": {"id": "28:b"},
                "text": words,
                "channelData": {"tenant": {"id": "t"}},
            }
            async with http.post(url, json=activity) as resp:
                await resp.read()

        for i in range(50):
            await turn(i, "whoami")
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(50, 50 + turns):
            await turn(i, text)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await server.close()
    connector.stop()
    print(
        json.dumps(
            {
                "tree": str(TREE),
                "command": text,
                "ms_per_turn": round(1000 * wall / turns, 2),
                "cpu_ms_per_turn": round(1000 * cpu / turns, 2),
            }
        )
    )


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    asyncio.run(main(count, " ".join(sys.argv[2:]) or "products"))
