"""Configuration: read from the environment once, validated, invalid values fail at start-up."""

import logging
import re
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULTS = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/crypto_prices",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DERIBIT_BASE_URL": "https://www.deribit.com/api/v2",
    "DERIBIT_TIMEOUT": "5",
    "TICKERS": "btc_usd,eth_usd",
    "FETCH_INTERVAL": "60",
    "LOG_LEVEL": "INFO",
    "DB_STATEMENT_TIMEOUT_MS": "5000",
}

# The Flask-SQLAlchemy bind of the read-only, autocommit engine.
READ_BIND = "read"

# Deribit index names: lower-case currency pairs such as btc_usd, eth_usdc, btcdvol_usdc.
TICKER_RE = re.compile(r"^[a-z0-9]+_[a-z0-9]+$")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def load_config(environ, overrides=None):
    """Return the Flask config for the given environment (plus test overrides), validated."""
    raw = {key: environ.get(key, default) for key, default in DEFAULTS.items()}
    raw.update(overrides or {})
    interval = _positive_int("FETCH_INTERVAL", raw["FETCH_INTERVAL"])
    database_url = database_uri(raw["DATABASE_URL"])
    engine_options = _engine_options(
        _positive_int("DB_STATEMENT_TIMEOUT_MS", raw["DB_STATEMENT_TIMEOUT_MS"])
    )
    config = {
        "TICKERS": _tickers(raw["TICKERS"]),
        "FETCH_INTERVAL": interval,
        "FETCH_CRON": cron_for_interval(interval),
        "REDIS_URL": _redis_url(raw["REDIS_URL"]),
        "DERIBIT_BASE_URL": _http_url("DERIBIT_BASE_URL", raw["DERIBIT_BASE_URL"]),
        "DERIBIT_TIMEOUT": _positive_float("DERIBIT_TIMEOUT", raw["DERIBIT_TIMEOUT"]),
        "LOG_LEVEL": _log_level(raw["LOG_LEVEL"]),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options,
        # The API's reads use their own pool of autocommit connections (models.read): one
        # round trip per SELECT instead of BEGIN, SELECT, ROLLBACK (switching a pooled
        # connection to autocommit and back costs a round trip too). No pre-ping there: its
        # SELECT 1 was 17 % of a /prices/latest request (py-spy); reads retry once instead.
        "SQLALCHEMY_BINDS": {
            READ_BIND: {
                "url": database_url,
                **engine_options,
                "isolation_level": "AUTOCOMMIT",
                "pool_pre_ping": False,
            }
        },
    }
    # Keys that are not ours (TESTING, flask-smorest settings, ...) pass through untouched.
    config.update({k: v for k, v in (overrides or {}).items() if k not in DEFAULTS})
    return config


def database_uri(url):
    """Map the URLs users write (postgres://, postgresql://) to the psycopg2 driver we install."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"DATABASE_URL is not a database URL: {url!r}") from exc
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    raise ConfigError(f"DATABASE_URL must be a postgresql:// URL, got {parsed.drivername}://")


def cron_for_interval(seconds):
    """The cron string that fires every `seconds`, aligned to the clock (60 s: on the minute).

    rq-scheduler's `interval=` jobs reschedule from "now" and drift; a cron string does not.
    Only intervals that divide a minute or an hour evenly stay aligned, so only those are allowed.
    """
    if seconds < 60 and 60 % seconds == 0:
        # 7-field crontab: second minute hour day month weekday year.
        return f"*/{seconds} * * * * * *"
    minutes, rest = divmod(seconds, 60)
    if rest == 0 and 60 % minutes == 0:
        return "0 * * * *" if minutes == 60 else f"*/{minutes} * * * *"
    raise ConfigError(
        f"FETCH_INTERVAL must divide a minute (1-30 s) or an hour (1-60 min) evenly, got {seconds}"
    )


def _tickers(value):
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    tickers = []
    for item in items:
        ticker = item.strip().lower()
        if not TICKER_RE.match(ticker):
            raise ConfigError(
                f"TICKERS has an invalid index name {item.strip()!r} (want e.g. btc_usd)"
            )
        if ticker not in tickers:
            tickers.append(ticker)
    if not tickers:
        raise ConfigError("TICKERS is empty")
    return tuple(tickers)


def _positive_int(name, value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{name} must be positive, got {number}")
    return number


def _positive_float(name, value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not 0 < number < float("inf"):
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return number


def _http_url(name, value):
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s):// URL, got {value!r}")
    return str(value).rstrip("/")


def _redis_url(value):
    parts = urlsplit(str(value))
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL must be a redis:// URL, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a non-numeric port
    except ValueError:
        raise ConfigError(f"REDIS_URL has an invalid port: {value!r}") from None
    return str(value)


def _log_level(value):
    level = str(value).upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
    return level


def _engine_options(statement_timeout_ms):
    # Fail fast instead of hanging a request when PostgreSQL is down or a query runs away;
    # pre-ping replaces connections a database restart has killed (the writes' pool keeps it:
    # one round trip a minute; the API's read pool retries instead, see models.read).
    return {
        "pool_pre_ping": True,
        "connect_args": {
            "connect_timeout": 3,
            "options": f"-c statement_timeout={statement_timeout_ms}",
        },
    }
