"""One log format for the bot, the scheduler and the CLI: one JSON object per line on standard
error (`FUSION_LOG_FORMAT=json`, the default), or a readable line for local development
(`text`). Every line of a turn carries the Teams activity id as `correlation_id`, the same id
the audit records."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

#: The id of the activity being served: the correlation id of every log line of its turn.
CORRELATION_ID: ContextVar[str | None] = ContextVar("correlation_id", default=None)

FORMATS = ("json", "text")

_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class CorrelationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = CORRELATION_ID.get()
        return True


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}


def _timestamp(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extra(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`HH:MM:SS level logger: message key=value ...` (local time), for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        # aiohttp's access lines already say everything their extra fields hold.
        extra = {} if record.name == "aiohttp.access" else _extra(record)
        message = record.getMessage()
        fields = " ".join(
            f"{k}={v}" for k, v in extra.items() if v is not None and str(v) not in message
        )
        line = f"{clock} {record.levelname.lower():7} {record.name}: {message}"
        if fields:
            line += f"  [{fields}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(fmt: str = "json", level: int | str = logging.INFO) -> None:
    """Send every logger's records to standard error in `fmt` (`json` or `text`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    handler.addFilter(CorrelationFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
