"""Structured logs for every shardctl process: one line per event, console or JSON.

Modules log with the standard library (`logging.getLogger(__name__)`) and pass fields
through `extra={...}`; structlog renders them. Lifecycle events (a shard acquired or
released with its token, a leader change, a checkpoint) are one line each, with an
`event` name a machine can match on.

Secrets never reach a log line: values of fields whose names look secret are
replaced, and SecretStr values render as '**********' by themselves.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_FIELD = re.compile(r"pass(word)?|secret|token_value|sasl|credential", re.IGNORECASE)
_STDLIB_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event_dict:
        if SECRET_FIELD.search(key):
            event_dict[key] = "[redacted]"
    return event_dict


def _lift_extra(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Move `extra={...}` fields of stdlib records into the structured event."""
    record: logging.LogRecord | None = event_dict.get("_record")
    if record is not None:
        for key, value in vars(record).items():
            if key not in _STDLIB_FIELDS and not key.startswith("_"):
                event_dict.setdefault(key, value)
    return event_dict


def configure(level: str = "INFO", json: bool = False) -> None:
    """Route stdlib and structlog logging to stderr, rendered as console text or JSON."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _lift_extra],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter stays out of the operator's way unless asked for.
    for noisy in ("kafka", "tornado", "nsq", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
