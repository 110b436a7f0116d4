"""Log setup: one stderr handler, text or JSON lines, each tagged with its request id."""

import json
import logging
from datetime import UTC, datetime

from flask import g, has_request_context

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has; anything else on a record came from `extra=` and goes in the JSON.
RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's extra fields."""

    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,  # which gunicorn worker
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in RECORD_ATTRIBUTES})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RequestIdFilter(logging.Filter):
    """Tag every record logged while a request is handled with that request's id."""

    def filter(self, record):
        if not hasattr(record, "request_id") and has_request_context() and "request_id" in g:
            record.request_id = g.request_id
        return True


def configure_logging(level, log_format):
    """One stderr handler on the root logger, text or JSON; a second app replaces it."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _TrackerHandler)]:
        root.removeHandler(handler)
    handler = _TrackerHandler()
    formatter = JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)


class _TrackerHandler(logging.StreamHandler):
    """Ours, so configure_logging can find and replace it without touching anyone else's."""


def first_line(exc):
    """An exception as one short line, for a log line or a probe's answer."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
