"""Count the SQL statements the code sends, as the database driver layer sees them.

Every Tortoise client method that talks to the database (execute_query, execute_query_dict,
execute_insert, execute_many, execute_script — SQLite and asyncpg alike) logs the statement on
the `tortoise.db_client` logger before running it; a handler on that logger counts them. Used by
the tests and by `benchmarks/bench_digest.py` to show that a query count does not grow with the
data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class QueryCount:
    statements: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)


class _Counter(logging.Handler):
    def __init__(self, sink: QueryCount) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        query = record.args[0] if isinstance(record.args, tuple) and record.args else record.msg
        self.sink.statements.append(str(query))


@contextmanager
def count_queries() -> Iterator[QueryCount]:
    logger = logging.getLogger("tortoise.db_client")
    sink = QueryCount()
    handler = _Counter(sink)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # counted, not printed
    try:
        yield sink
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
