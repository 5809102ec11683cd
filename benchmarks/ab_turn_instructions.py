"""A/B in instructions, not seconds: what one turn of a command costs in each app tree,
counted by valgrind's callgrind, so that a busy machine does not blur the comparison.

    .venv/bin/python benchmarks/ab_turn_instructions.py /tmp/at13 . --command usage

For each tree: the benchmark catalog (its own `benchmarks/seed.py`, 32 subscriptions) is made
in a SQLite file, then `benchmarks/ab_turn_cpu.py` serves the command to that tree's app
under callgrind twice, with FEW and MANY measured turns (the same warm-up both times).
(instructions of MANY − instructions of FEW) ÷ (MANY − FEW) is one turn's cost without the
start-up; the fake Bot Connector is a thread of the same process and reads every answer, the
same way for both trees. Slow (about two minutes a run); the count repeats to well under 1 %.
Prints one JSON line per tree.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLLECTED = re.compile(rb"==(\d+)== Collected : (\d+)")


def instructions(tree: Path, seeded: Path, turns: int, command: str) -> int:
    """Instructions callgrind counted in the serving process (the largest count: a run also
    counts the short-lived children that libraries start)."""
    with tempfile.TemporaryDirectory() as folder:
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={folder}/cg.%p",
                sys.executable,
                str(HERE / "ab_turn_cpu.py"),
                str(turns),
                *command.split(),
            ],
            env={"TREE": str(tree), "SEEDED_DB": str(seeded), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            check=False,
            timeout=3600,
        )
    counts = [int(n) for _, n in COLLECTED.findall(run.stderr)]
    if run.returncode != 0 or not counts:
        raise SystemExit(f"callgrind run failed ({run.returncode}): {run.stderr[-2000:]!r}")
    return max(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path, help="app trees (checkouts) to compare")
    parser.add_argument("--command", default="usage", help="what each turn says (usage)")
    parser.add_argument("--few", type=int, default=40)
    parser.add_argument("--many", type=int, default=120)
    args = parser.parse_args()
    for tree in (t.resolve() for t in args.trees):
        with tempfile.TemporaryDirectory() as folder:
            seeded = Path(folder) / "seed.sqlite3"
            subprocess.run(
                [sys.executable, str(tree / "benchmarks/seed.py"), f"sqlite://{seeded}"]
                + ["--subscriptions", "32"],
                check=True,
                capture_output=True,
                cwd=folder,
            )
            few = instructions(tree, seeded, args.few, args.command)
            many = instructions(tree, seeded, args.many, args.command)
        per_turn = (many - few) / (args.many - args.few)
        print(
            json.dumps(
                {
                    "tree": str(tree),
                    "command": args.command,
                    "instructions_per_turn": round(per_turn),
                    "millions_per_turn": round(per_turn / 1e6, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
