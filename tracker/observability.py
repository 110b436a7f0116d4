"""Operations: /healthz, /readyz, /metrics, the request log line with its request id, log setup."""

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime

from flask import Response, current_app, g, has_request_context, request
from flask.views import MethodView
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from tracker.extensions import Blueprint, db, redis_connection
from tracker.extensions import api as rest_api
from tracker.models import DAY_SECONDS, latest_price, missing_slots, window_slots
from tracker.schemas import HealthSchema, ReadinessSchema

log = logging.getLogger(__name__)
request_log = logging.getLogger("tracker.request")

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept only if it is short and safe to put in a log line and a header.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Fetch counts live in Redis: the worker counts, the web (another container) exports them.
FETCHES_KEY = "tracker:metrics:fetches"
# Seconds a probe or a scrape waits for Redis, so neither hangs while Redis is down.
REDIS_TIMEOUT = 2
# Label values are bounded: a client must not mint time series with made-up methods or paths.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has; anything else on a record came from `extra=` and goes in the JSON.
RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Not in the global registry: /metrics builds its registry per scrape (see metrics_registry).
# With PROMETHEUS_MULTIPROC_DIR set, prometheus_client keeps these in files shared by every
# gunicorn worker, so any worker's scrape reports the sum over all of them.
HTTP_REQUESTS = Counter(
    "tracker_http_requests",
    "HTTP requests answered, by endpoint, method and status.",
    ["endpoint", "method", "status"],
    registry=None,
)
HTTP_DURATION = Histogram(
    "tracker_http_request_duration_seconds",
    "Time to answer an HTTP request, by endpoint, method and status.",
    ["endpoint", "method", "status"],
    registry=None,
)

blp = Blueprint(
    "operations",
    __name__,
    description="Probes for orchestrators and metrics for Prometheus.",
)


def init_app(app):
    """Add the probes and /metrics, and give every request an id and one log line."""
    app.before_request(_start_request)
    app.after_request(_finish_request)
    rest_api.register_blueprint(blp)


# --- Logging -------------------------------------------------------------------------------


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


# --- Requests: id, metrics, one log line ---------------------------------------------------


def _start_request():
    g.request_started = time.perf_counter()
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex


def _finish_request(response):
    duration = time.perf_counter() - g.get("request_started", time.perf_counter())
    request_id = g.get("request_id") or uuid.uuid4().hex
    response.headers[REQUEST_ID_HEADER] = request_id
    # The route's pattern, not the path: /prices?ticker=... and unknown paths stay one series.
    endpoint = request.url_rule.rule if request.url_rule else "<unmatched>"
    method = request.method if request.method in METHODS else "OTHER"
    labels = (endpoint, method, str(response.status_code))
    HTTP_REQUESTS.labels(*labels).inc()
    HTTP_DURATION.labels(*labels).observe(duration)
    request_log.info(
        "%s %s %s %.1fms id=%s remote=%s",
        request.method,
        request.path,
        response.status_code,
        duration * 1000,
        request_id,
        request.remote_addr,
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(duration * 1000, 3),
            "request_id": request_id,
            "remote_addr": request.remote_addr,
        },
    )
    return response


# --- Shared state: newest prices (PostgreSQL), fetch counts (Redis) --------------------------


def newest_timestamps():
    """The timestamp of the newest price of every tracked ticker, None when it has none."""
    newest = {}
    for ticker in current_app.config["TICKERS"]:
        row = latest_price(ticker)  # one primary-key index lookup
        newest[ticker] = row[2] if row else None  # (ticker, price, timestamp)
    return newest


def _redis():
    """The app's Redis client for probes, scrapes and fetch counts, with short timeouts.

    Created once per process and kept: its pool reuses the connection instead of opening a
    new one for every probe, scrape and fetch cycle (and reconnects after an outage).
    """
    connection = current_app.extensions.get("ops_redis")
    if connection is None:
        connection = redis_connection(
            socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
        )
        current_app.extensions["ops_redis"] = connection
    return connection


def record_fetches(stored, duplicate, failures):
    """Count one fetch cycle's outcome per ticker in Redis; `failures` maps ticker to reason.

    Counting where every process can see it is what makes the numbers global: the worker
    runs the fetches, a web worker in another container answers the scrape.
    """
    fields = [f"stored|{t}|" for t in stored] + [f"duplicate|{t}|" for t in duplicate]
    fields += [f"failed|{t}|{reason}" for t, reason in failures.items()]
    try:
        pipeline = _redis().pipeline(transaction=False)
        for field in fields:
            pipeline.hincrby(FETCHES_KEY, field, 1)
        pipeline.execute()
    except RedisError as exc:
        # The prices are stored; only their counts are lost, which must not fail the job.
        log.warning("fetch counts not recorded, Redis unavailable: %s", exc)


def record_backfill(filled):
    """Count backfilled rows per ticker in Redis, next to the fetch counts; {ticker: rows}."""
    try:
        pipeline = _redis().pipeline(transaction=False)
        for ticker, rows in filled.items():
            if rows:
                pipeline.hincrby(FETCHES_KEY, f"backfilled|{ticker}|", rows)
        pipeline.execute()
    except RedisError as exc:
        log.warning("backfill counts not recorded, Redis unavailable: %s", exc)


def fetch_counts():
    """{(outcome, ticker, reason): count} of every fetch since the counts began."""
    raw = _redis().hgetall(FETCHES_KEY)
    return {tuple(field.decode().split("|", 2)): int(count) for field, count in raw.items()}


# --- Probes ----------------------------------------------------------------------------------


@blp.route("/healthz")
class Health(MethodView):
    @blp.doc(operationId="health")
    @blp.response(200, HealthSchema)
    def get(self):
        """Liveness: the process answers. No I/O, so a database outage never restarts it.

        Always `{"status": "ok"}` while the web process serves requests: restart it when this
        fails. Whether it can do its job is /readyz.
        """
        return {"status": "ok"}


@blp.route("/readyz")
class Readiness(MethodView):
    @blp.doc(operationId="readiness")
    @blp.response(200, ReadinessSchema, description="Database, Redis and prices are fine.")
    @blp.alt_response(503, schema=ReadinessSchema, description="At least one check failed.")
    def get(self):
        """Readiness: the database and Redis answer, and every ticker has a recent price.

        Recent means younger than 3 x FETCH_INTERVAL. The body details every check; `failed`
        names the ones that failed (database, redis, prices).
        """
        checks = readiness_checks()
        failed = [name for name, check in checks.items() if not check["ok"]]
        body = {"status": "unavailable" if failed else "ready", "failed": failed, "checks": checks}
        return body, 503 if failed else 200


def readiness_checks():
    """Run the readiness checks: {"database": {...}, "redis": {...}, "prices": {...}}."""
    checks = {}
    newest = None
    try:
        newest = newest_timestamps()
        checks["database"] = {"ok": True}
    except SQLAlchemyError as exc:
        db.session.rollback()
        checks["database"] = {"ok": False, "error": _first_line(exc)}
    try:
        _redis().ping()
        checks["redis"] = {"ok": True}
    except RedisError as exc:
        checks["redis"] = {"ok": False, "error": _first_line(exc)}
    checks["prices"] = _prices_check(newest)
    return checks


def _prices_check(newest):
    max_age = 3 * current_app.config["FETCH_INTERVAL"]
    if newest is None:
        return {"ok": False, "max_age_seconds": max_age, "error": "unknown: database failed"}
    now = int(time.time())
    tickers = {
        t: {"timestamp": ts, "age_seconds": None if ts is None else now - ts}
        for t, ts in newest.items()
    }
    missing = [t for t, ts in newest.items() if ts is None]
    stale = [t for t, ts in newest.items() if ts is not None and now - ts >= max_age]
    check = {"ok": not (missing or stale), "max_age_seconds": max_age, "tickers": tickers}
    problems = [f"no price stored for {t}" for t in missing]
    problems += [f"newest {t} price is {now - newest[t]} s old" for t in stale]
    if problems:
        check["error"] = "; ".join(problems)
    return check


def _first_line(exc):
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- Metrics ---------------------------------------------------------------------------------


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(
        operationId="metrics",
        responses={
            "200": {
                "description": "Prometheus text format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    def get(self):
        """Prometheus metrics: HTTP requests, fetches and their failures, age of the newest prices.

        Totals over every web worker and the fetch worker. A source that cannot be read is
        skipped and flagged by tracker_scrape_error{source}, so the scrape itself never fails.
        """
        # content_type, not mimetype: CONTENT_TYPE_LATEST already carries its charset, and
        # mimetype= would append a second one.
        return Response(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)


def metrics_registry():
    """A registry for one scrape: HTTP metrics of every worker plus state read right now."""
    registry = CollectorRegistry()
    path = current_app.config["PROMETHEUS_MULTIPROC_DIR"]
    if path:
        MultiProcessCollector(registry, path=path)
    else:  # a single process: its own counters are the totals
        registry.register(HTTP_REQUESTS)
        registry.register(HTTP_DURATION)
    registry.register(SharedStateCollector())
    return registry


class SharedStateCollector:
    """Fetch counts from Redis and price ages from the database, read at scrape time."""

    def describe(self):
        return []  # families depend on what the sources hold; nothing to check up front

    def collect(self):
        errors = GaugeMetricFamily(
            "tracker_scrape_error",
            "1 when this scrape could not read the source; its metrics are missing.",
            labels=["source"],
        )
        try:
            newest = newest_timestamps()
        except SQLAlchemyError as exc:
            db.session.rollback()
            log.warning("metrics: database unavailable: %s", _first_line(exc))
            errors.add_metric(["database"], 1)
        else:
            errors.add_metric(["database"], 0)
            yield _price_ages(newest)
            yield _missing_slots()
        try:
            counts = fetch_counts()
        except RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", _first_line(exc))
            errors.add_metric(["redis"], 1)
        else:
            errors.add_metric(["redis"], 0)
            yield from _fetch_families(counts)
        yield errors


def _price_ages(newest):
    ages = GaugeMetricFamily(
        "tracker_price_age_seconds",
        "Seconds since the newest stored price of the ticker (absent while it has none).",
        labels=["ticker"],
    )
    now = time.time()
    for ticker, timestamp in newest.items():
        if timestamp is not None:
            ages.add_metric([ticker], now - timestamp)
    return ages


def _missing_slots():
    gauge = GaugeMetricFamily(
        "tracker_missing_slots",
        "Slots of the last 24 hours (the one in progress left out) with no stored price.",
        labels=["ticker"],
    )
    interval = current_app.config["FETCH_INTERVAL"]
    first, last = window_slots(interval, DAY_SECONDS, time.time())
    for ticker in current_app.config["TICKERS"]:
        gauge.add_metric([ticker], missing_slots(ticker, interval, first, last)[2])
    return gauge


def _fetch_families(counts):
    fetches = CounterMetricFamily(
        "tracker_fetches",
        "Ticker fetches by outcome: stored, duplicate (already stored for the slot) or failed.",
        labels=["ticker", "outcome"],
    )
    failures = CounterMetricFamily(
        "tracker_fetch_failures",
        "Failed ticker fetches by reason.",
        labels=["ticker", "reason"],
    )
    backfilled = CounterMetricFamily(
        "tracker_backfilled_rows",
        "Rows the backfill filled from Deribit's chart data, by ticker.",
        labels=["ticker"],
    )
    by_outcome = {}
    for (outcome, ticker, reason), count in sorted(counts.items()):
        if outcome == "backfilled":
            backfilled.add_metric([ticker], count)
            continue
        by_outcome[ticker, outcome] = by_outcome.get((ticker, outcome), 0) + count
        if outcome == "failed":
            failures.add_metric([ticker, reason], count)
    for (ticker, outcome), count in by_outcome.items():
        fetches.add_metric([ticker, outcome], count)
    return fetches, failures, backfilled
