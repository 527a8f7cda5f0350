"""Logging set-up for the CLI: plain text for people, JSON lines for machines.

With ``--log-format json`` every line on stderr is one JSON object with
``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, plus
``job_id``, ``run_id``, ``batch_id`` and ``agent_id`` when the code that
logged passed them (``log.info(..., extra={"job_id": ...})``). uvicorn's own
loggers go through the same handler.
"""

from __future__ import annotations

import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

import msgspec

IDS = ("job_id", "run_id", "batch_id", "agent_id")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in IDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(out).decode()


def dict_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` document: one stderr handler on the
    root logger; uvicorn's loggers propagate to it instead of printing their own."""
    if fmt not in FORMATS:
        raise ValueError(f"--log-format: {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    formatter: dict[str, Any] = {"()": JsonFormatter} if fmt == "json" else {"format": TEXT_FORMAT}
    uvicorn = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"qgjob": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "qgjob"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {name: dict(uvicorn) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }


def configure(level: str = "info", fmt: str = "text") -> None:
    logging.config.dictConfig(dict_config(level, fmt))
