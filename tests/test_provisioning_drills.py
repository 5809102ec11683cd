"""SPEC §8/§9 provisioning drills, small: `benchmarks/drills/provisioning.py --quick` runs the
bot as `python app.py` (provisioning on) against the Graph fake and, on SQLite and PostgreSQL,
a Graph outage mid-load and kill -9 of the bot mid-load (numbers and Microsoft 365 license
jobs in flight), two instances, and failing operations;
each checks that every job ended once, Teams and the ledger agree, failed jobs left Teams
alone and say why, and the audit chain verifies. Full-size figures: docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import dbutil
from tests.test_drills import run_drill

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("drill", ["outage", "kill9", "two", "failed"])
def test_provisioning_drill(drill: str, tmp_path: Path) -> None:
    databases = "both" if dbutil.postgres_available() is None else "sqlite"
    if databases == "sqlite" and dbutil.REQUIRE_POSTGRES:
        pytest.fail("PostgreSQL is required (FUSION_REQUIRE_POSTGRES=1) but is not available")
    result = run_drill("provisioning", tmp_path, "--database", databases, "--drill", drill)
    for run in result["results"]:
        assert (
            run["figures"]["jobs"].get("done", 0) + run["figures"]["jobs"].get("failed", 0)
            == run["jobs"]
        )
        if drill in ("outage", "kill9"):  # license jobs ride along (license-add, -remove, pack)
            assert run["figures"]["license jobs"].get("done", 0) > run["assignments"]
        if drill == "two":
            assert len(run["figures"]["ended by worker"]) == 2, "both instances worked"
