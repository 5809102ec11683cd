"""SPEC §8 drills, small: each runs its script in `benchmarks/drills/` with --quick.

The scripts start the bot as `python app.py` (production mode, against the fakes in their own
processes) and do the unkind thing: kill -9 mid-load, PostgreSQL stopped mid-load (a private
cluster the drill starts itself, never the machine's), every activity delivered twice. Each
checks the ledger afterwards through the database and the CLI (`usage --json`, `audit
verify`) and reports every check; a test passes when all of them held. The full-size runs and
what they print are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DRILLS = Path(__file__).resolve().parent.parent / "benchmarks" / "drills"

pytestmark = pytest.mark.slow


def _postgres_server() -> str | None:
    """Why a private PostgreSQL cluster cannot be started here, or None if it can."""
    if shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        return None
    return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"


def run_drill(name: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [sys.executable, str(DRILLS / f"{name}.py"), "--quick", "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))},
    )
    print(done.stdout)  # what the drill saw, shown when the test fails
    assert out.exists(), f"the drill did not finish:\n{done.stdout}\n{done.stderr[-3000:]}"
    result: dict = json.loads(out.read_text())
    for run in result["results"]:
        failed = [check for check, held in run["checks"].items() if not held]
        assert not failed, f"{name} on {run['database']}: {failed}\n{done.stdout}"
    assert done.returncode == 0, done.stderr[-3000:]
    return result


def test_kill_9_mid_load_then_restart_keeps_the_ledger_whole(tmp_path: Path) -> None:
    databases = "sqlite" if _postgres_server() else "both"
    run_drill("kill9", tmp_path, "--database", databases)


def test_every_activity_delivered_twice_has_one_effect(tmp_path: Path) -> None:
    databases = "sqlite" if _postgres_server() else "both"
    run_drill("duplicates", tmp_path, "--database", databases)


def test_postgresql_stopped_mid_load_says_try_again_and_loses_nothing(tmp_path: Path) -> None:
    problem = _postgres_server()
    if problem:
        pytest.skip(problem)
    result = run_drill("pg_outage", tmp_path)
    assert result["results"][0]["during"].get("try-again", 0) > 0
