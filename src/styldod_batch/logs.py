"""The package's logging: one logger, ``styldod_batch``, with structured events.

Every record carries an ``event`` name and its fields as extras (``retry`` with ``reason``
and ``wait_s``, ``rate_limited``, ``order``, ``file_failed``...), so a JSON log is as useful
as the text one. The library only logs; the runner decides where records go
(``configure``): text or one JSON object per line on stderr.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

logger = logging.getLogger("styldod_batch")

# Attributes every LogRecord has: what is left are the event's own fields.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "event"}


def event(level: int, name: str, message: str, **fields: Any) -> None:
    """Log ``message`` as event ``name`` with ``fields`` (never a secret: callers pass
    fingerprints and paths, not keys)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"event": name, **fields})


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``event``, ``message``
    and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        body: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        body.update(fields_of(record))
        if record.exc_info:
            body["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return orjson.dumps(body, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"styldod-batch: {level}{record.getMessage()}"


def configure(*, verbosity: int, fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """Send the package's records to ``stream`` (stderr): ``verbosity`` -1 quiet (errors),
    0 warnings, 1 info, 2 and more debug; ``fmt`` "text" or "json"."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
