"""Metrics: HTTP counters, fetch and backfill counts in Redis, and /metrics' registry."""

import logging
import time

from flask import current_app
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from tracker.extensions import db, redis_connection
from tracker.logs import first_line
from tracker.models import DAY_SECONDS, latest_price, missing_slots, window_slots

log = logging.getLogger(__name__)

# Fetch counts live in Redis: the worker counts, the web (another container) exports them.
FETCHES_KEY = "tracker:metrics:fetches"
# Seconds a probe or a scrape waits for Redis, so neither hangs while Redis is down.
REDIS_TIMEOUT = 2

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


def newest_timestamps():
    """The timestamp of the newest price of every tracked ticker, None when it has none."""
    newest = {}
    for ticker in current_app.config["TICKERS"]:
        row = latest_price(ticker)  # one primary-key index lookup
        newest[ticker] = row[2] if row else None  # (ticker, price, timestamp)
    return newest


def ops_redis():
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
    counts = {f"stored|{t}|": 1 for t in stored} | {f"duplicate|{t}|": 1 for t in duplicate}
    counts |= {f"failed|{t}|{reason}": 1 for t, reason in failures.items()}
    _count(counts, "fetch")


def record_backfill(filled):
    """Count backfilled rows per ticker in Redis, next to the fetch counts; {ticker: rows}."""
    _count({f"backfilled|{t}|": rows for t, rows in filled.items() if rows}, "backfill")


def _count(counts, what):
    try:
        pipeline = ops_redis().pipeline(transaction=False)
        for field, amount in counts.items():
            pipeline.hincrby(FETCHES_KEY, field, amount)
        pipeline.execute()
    except RedisError as exc:
        # The prices are stored; only their counts are lost, which must not fail the job.
        log.warning("%s counts not recorded, Redis unavailable: %s", what, exc)


def fetch_counts():
    """{(outcome, ticker, reason): count} of every fetch since the counts began."""
    raw = ops_redis().hgetall(FETCHES_KEY)
    return {tuple(field.decode().split("|", 2)): int(count) for field, count in raw.items()}


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
            log.warning("metrics: database unavailable: %s", first_line(exc))
            errors.add_metric(["database"], 1)
        else:
            errors.add_metric(["database"], 0)
            yield _price_ages(newest)
            yield _missing_slots()
        try:
            counts = fetch_counts()
        except RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", first_line(exc))
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
