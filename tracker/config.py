"""Configuration: read from the environment once, validated, invalid values fail at start-up."""

import logging
import os
import re
from urllib.parse import urlsplit

from limits import parse_many
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULTS = {
    # Empty: a SQLite file in the app's instance folder (the laptop default; see README).
    "DATABASE_URL": "",
    # A PostgreSQL streaming replica for the API's reads; empty: DATABASE_URL (docs/SCALING.md).
    "READ_DATABASE_URL": "",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DERIBIT_BASE_URL": "https://www.deribit.com/api/v2",
    "DERIBIT_TIMEOUT": "5",
    "TICKERS": "btc_usd,eth_usd",
    "FETCH_INTERVAL": "60",
    # The backfill: how often it looks for holes, and how far back (48 hours).
    "BACKFILL_INTERVAL": "300",
    "BACKFILL_WINDOW": "172800",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "text",
    # Read by prometheus_client itself too; unset means metrics of this process only.
    "PROMETHEUS_MULTIPROC_DIR": "",
    "DB_STATEMENT_TIMEOUT_MS": "5000",
    "TRUSTED_PROXIES": "0",
    "CORS_ORIGINS": "*",
    # Requests per client to /api/* (e.g. 600/minute); empty: no limit.
    "RATE_LIMIT": "",
    # The longest `from`..`to` one request may ask for, in days: /prices/stats and /prices/gaps
    # (one statement over the range), and a CSV download (every row of the range). Two years
    # with a leap day; a page of JSON is bounded by its `limit` instead.
    "MAX_RANGE_DAYS": "731",
    "MAX_CSV_DAYS": "731",
}

# The Flask-SQLAlchemy bind of the read-only, autocommit engine.
READ_BIND = "read"
# The default bind, DATABASE_URL: the jobs read there what they write, never on a replica (the
# backfill must see the primary's holes, not the replica's view of a moment ago).
WRITE_BIND = None

# Deribit index names: lower-case currency pairs such as btc_usd, eth_usdc, btcdvol_usdc.
TICKER_RE = re.compile(r"^[a-z0-9]+_[a-z0-9]+$")
# The width of price_records.ticker (models.py): a longer name would fail a whole cycle's INSERT.
MAX_TICKER_LENGTH = 32
# TICKERS=all: every index Deribit lists, asked once when each process starts (tracker/tickers.py).
ALL_TICKERS = "all"
# A browser Origin: scheme, host and optional port, no path; tracker/cors.py compares it as text.
ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def load_config(environ, overrides=None, instance_path="instance"):
    """Return the Flask config for the given environment (plus test overrides), validated.

    With no DATABASE_URL the database is the SQLite file `tracker.db` in `instance_path`.
    """
    raw = {key: environ.get(key, default) for key, default in DEFAULTS.items()}
    raw.update(overrides or {})
    interval = _positive_int("FETCH_INTERVAL", raw["FETCH_INTERVAL"])
    backfill_interval = _positive_int("BACKFILL_INTERVAL", raw["BACKFILL_INTERVAL"])
    database_url = database_uri(raw["DATABASE_URL"] or f"sqlite:///{instance_path}/tracker.db")
    read_database_url = _read_database_url(raw["READ_DATABASE_URL"], database_url)
    engine_options = _engine_options(
        database_url, _positive_int("DB_STATEMENT_TIMEOUT_MS", raw["DB_STATEMENT_TIMEOUT_MS"])
    )
    config = {
        "TICKERS": _tickers(raw["TICKERS"]),
        "FETCH_INTERVAL": interval,
        "FETCH_CRON": cron_for_interval(interval),
        "BACKFILL_INTERVAL": backfill_interval,
        "BACKFILL_CRON": cron_for_interval(backfill_interval, "BACKFILL_INTERVAL"),
        "BACKFILL_WINDOW": _positive_int("BACKFILL_WINDOW", raw["BACKFILL_WINDOW"]),
        "REDIS_URL": _redis_url(raw["REDIS_URL"]),
        "DERIBIT_BASE_URL": _http_url("DERIBIT_BASE_URL", raw["DERIBIT_BASE_URL"]),
        "DERIBIT_TIMEOUT": _positive_float("DERIBIT_TIMEOUT", raw["DERIBIT_TIMEOUT"]),
        "LOG_LEVEL": _log_level(raw["LOG_LEVEL"]),
        "LOG_FORMAT": _log_format(raw["LOG_FORMAT"]),
        "PROMETHEUS_MULTIPROC_DIR": _multiproc_dir(
            raw["PROMETHEUS_MULTIPROC_DIR"], "PROMETHEUS_MULTIPROC_DIR" in environ
        ),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options,
        # The API's reads use their own pool of autocommit connections (models.read): one
        # round trip per SELECT instead of BEGIN, SELECT, ROLLBACK (switching a pooled
        # connection to autocommit and back costs a round trip too). No pre-ping there: its
        # SELECT 1 was 17 % of a /prices/latest request (py-spy); reads retry once instead.
        # With READ_DATABASE_URL this pool alone goes to the replica: jobs, migrations and
        # everything else that writes stay on DATABASE_URL.
        "SQLALCHEMY_BINDS": {
            READ_BIND: {
                "url": read_database_url,
                **engine_options,
                "isolation_level": "AUTOCOMMIT",
                "pool_pre_ping": False,
            }
        },
        "TRUSTED_PROXIES": _non_negative_int("TRUSTED_PROXIES", raw["TRUSTED_PROXIES"]),
        "CORS_ORIGINS": _cors_origins(raw["CORS_ORIGINS"]),
        "RATE_LIMIT": _rate_limit(raw["RATE_LIMIT"]),
        "MAX_RANGE_DAYS": _positive_int("MAX_RANGE_DAYS", raw["MAX_RANGE_DAYS"]),
        "MAX_CSV_DAYS": _positive_int("MAX_CSV_DAYS", raw["MAX_CSV_DAYS"]),
    }
    # Keys that are not ours (TESTING, flask-smorest settings, ...) pass through untouched.
    config.update({k: v for k, v in (overrides or {}).items() if k not in DEFAULTS})
    return config


def database_uri(url, name="DATABASE_URL"):
    """Map the URLs users write (postgres://, postgresql://) to the psycopg2 driver we install.

    SQLAlchemy 2.1 would read postgresql:// as psycopg 3, which is not installed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"{name} is not a database URL: {url!r}") from exc
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    if parsed.drivername == "sqlite" and parsed.database:
        return url
    raise ConfigError(
        f"{name} must be a postgresql:// or sqlite:///path URL, got {parsed.drivername}://"
    )


def _read_database_url(value, database_url):
    """The API's read pool: a PostgreSQL replica of DATABASE_URL, or DATABASE_URL itself."""
    if not str(value).strip():
        return database_url
    url = database_uri(str(value).strip(), "READ_DATABASE_URL")
    # SQLite has no replicas: a second file would be another database, not a copy of this one.
    if not (url.startswith("postgresql") and database_url.startswith("postgresql")):
        raise ConfigError(
            "READ_DATABASE_URL must be a postgresql:// URL, and DATABASE_URL too (its primary)"
        )
    return url


def cron_for_interval(seconds, name="FETCH_INTERVAL"):
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
        f"{name} must divide a minute (1-30 s) or an hour (1-60 min) evenly, got {seconds}"
    )


def index_name(value):
    """`value` as a Deribit index name (lower-case, e.g. btc_usd), or None when it is not one.

    The one rule for a ticker: TICKERS and Deribit's own index list (TICKERS=all) both pass it.
    """
    if not isinstance(value, str):
        return None
    name = value.strip().lower()
    return name if len(name) <= MAX_TICKER_LENGTH and TICKER_RE.match(name) else None


def _tickers(value):
    if isinstance(value, str) and value.strip().lower() == ALL_TICKERS:
        return ALL_TICKERS  # resolved by create_app, before anything reads the list
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    tickers = []
    for item in items:
        ticker = index_name(item)
        if ticker is None:
            raise ConfigError(
                f"TICKERS has an invalid index name {str(item).strip()!r:.60}"
                " (want e.g. btc_usd, or all)"
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


def _non_negative_int(name, value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{name} must be 0 or more, got {number}")
    return number


def _cors_origins(value):
    """`*` (any origin), or a tuple of exact origins such as https://dashboard.example.com."""
    items = [item.strip().rstrip("/") for item in str(value).split(",") if item.strip()]
    if items == ["*"]:
        return "*"
    if not items:
        raise ConfigError("CORS_ORIGINS is empty (use * to allow every origin)")
    for item in items:
        if not ORIGIN_RE.match(item):
            raise ConfigError(
                f"CORS_ORIGINS has an invalid origin {item!r} (want e.g. https://app.example.com)"
            )
    return tuple(items)


def _rate_limit(value):
    """A limits expression such as `600/minute` or `20/second;600/minute`, or None (no limit)."""
    value = str(value).strip()
    if not value:
        return None
    try:
        rates = parse_many(value)
    except ValueError:
        rates = []
    if not rates or any(rate.amount <= 0 for rate in rates):
        raise ConfigError(
            f"RATE_LIMIT must be a rate such as 600/minute (or empty for none), got {value!r}"
        )
    return value


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


def _log_format(value):
    log_format = str(value).strip().lower()
    if log_format not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT must be text or json, got {value!r}")
    return log_format


def _multiproc_dir(value, present):
    # prometheus_client switches to multiprocess mode when the variable merely exists: an empty
    # value would make it write its files into the working directory.
    if present and not value:
        raise ConfigError("PROMETHEUS_MULTIPROC_DIR is set but empty: unset it or name a directory")
    if value and not (os.path.isdir(value) and os.access(value, os.W_OK)):
        raise ConfigError(
            f"PROMETHEUS_MULTIPROC_DIR must be an existing writable directory, got {value!r}"
        )
    return value or None


def _engine_options(database_url, statement_timeout_ms):
    if database_url.startswith("sqlite"):
        # web, worker and scheduler share the file: wait for a writer's lock instead of failing.
        return {"connect_args": {"timeout": 30}}
    # Fail fast instead of hanging a request when PostgreSQL is down or a query runs away;
    # pre-ping replaces connections a database restart has killed (the writes' pool keeps it:
    # one round trip a minute; the API's read pool retries instead, see models.read).
    # JIT off: our statements are index range reads whose estimates are often far too high
    # (a candle bucket's range has bounds the planner cannot see), and compiling them took up
    # to 280 ms of a 10 ms query (docs/PERFORMANCE.md).
    return {
        "pool_pre_ping": True,
        "connect_args": {
            "connect_timeout": 3,
            "options": f"-c statement_timeout={statement_timeout_ms} -c jit=off",
        },
    }
