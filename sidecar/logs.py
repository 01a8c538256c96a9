"""Structured logs: JSON lines in production, readable console output on a terminal.

What may be logged is decided where events are emitted: ids, models, codes, sizes and timings.
Prompts, completions, signatures' texts and keys are never passed to a logger; ``redact`` is
the last line of defence for keys that name secrets.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = frozenset({"api_key", "authorization", "prompt", "messages", "content", "body"})


def _json_fallback(obj: Any) -> Any:
    # What structlog's JSONRenderer does for a value JSON has no type for.
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


# ``json.dumps`` with a ``default`` builds a new encoder per call; the one line per request
# reuses this one (same output; bench/profile.py).
_JSON_ENCODER = json.JSONEncoder(default=_json_fallback)


def _dumps(obj: Any, **_: Any) -> str:
    return _JSON_ENCODER.encode(obj)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of any field named like a secret or user content."""
    for key in _SECRET_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog once for the process.

    Args:
        fmt: ``json``, ``console``, or ``auto`` (console when stderr is a terminal).
        level: minimum level name.
    """
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer() if console
                     else structlog.processors.JSONRenderer(serializer=_dumps))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        # sys.stderr is looked up per logger, not bound once: it may be replaced later
        # (test capture, a supervisor reopening it).
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
