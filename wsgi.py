"""WSGI entry point: `gunicorn wsgi:app`; the `flask` CLI finds the app here too."""

import gc

from tracker import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:
    # One clear line instead of a traceback: the operator has a setting to fix.
    raise SystemExit(f"configuration error: {exc}") from None

# What start-up built (the app, its schemas, SQLAlchemy's and apispec's objects) lives as long
# as the process: take it out of the garbage collector's sight. A full collection scanned all
# of it, ~110,000 objects in 60 ms, and set /prices/by-date's p99 (docs/PERFORMANCE.md).
# Done before gunicorn forks its workers, it also keeps those pages shared between them.
gc.freeze()
