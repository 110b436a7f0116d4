"""Log setup: one stderr handler, text or JSON lines, each tagged with its request id."""

import json
import logging
import time
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


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with its date and time made once per second instead of once per line.

    logging's formatTime runs localtime() and strftime() for every record: a few per cent of
    a cheap request's CPU with one log line per request. The text is the same.
    """

    def __init__(self):
        super().__init__(TEXT_FORMAT)
        self._second = (None, "")  # (whole second, its text), replaced as one tuple: threads

    def formatTime(self, record, datefmt=None):
        second, text = self._second
        if second != int(record.created):
            second = int(record.created)
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, text)
        return self.default_msec_format % (text, record.msecs)


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
    formatter = JSONFormatter() if log_format == "json" else TextFormatter()
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)


class _TrackerHandler(logging.StreamHandler):
    """Ours, so configure_logging can find and replace it without touching anyone else's."""


def first_line(exc):
    """An exception as one short line, for a log line or a probe's answer."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
