"""WSGI entry point: `gunicorn wsgi:app`; the `flask` CLI finds the app here too."""

from tracker import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:
    # One clear line instead of a traceback: the operator has a setting to fix.
    raise SystemExit(f"configuration error: {exc}") from None
