"""Probes, request ids, structured logs and metrics, against real PostgreSQL, Redis and gunicorn."""

import json
import logging
import re
import socket
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.conftest import (
    TCPProxy,
    command,
    free_port,
    read_log,
    start_redis,
    stop_process_group,
    truncate_prices,
    wait_for_http,
)
from tests.fake_deribit import error_reply
from tracker.config import ConfigError, load_config
from tracker.extensions import db
from tracker.jobs import fetch_prices
from tracker.logs import JSONFormatter
from tracker.models import insert_prices

DEAD_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/nowhere"


def store(app, **ages):
    """Store one price per ticker, `age` seconds old."""
    now = int(time.time())
    rows = [{"ticker": t, "price": "100.5", "timestamp": now - age} for t, age in ages.items()]
    with app.app_context():
        insert_prices(rows)


def readyz(client):
    response = client.get("/readyz")
    return response.status_code, response.json


def metric(text, name, **labels):
    """The value of the sample `name` with exactly these labels in a scrape, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


# --- Settings ------------------------------------------------------------------------------


def test_log_format_is_text_or_json():
    assert load_config({})["LOG_FORMAT"] == "text"
    assert load_config({"LOG_FORMAT": "JSON"})["LOG_FORMAT"] == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT must be text or json, got 'xml'"):
        load_config({"LOG_FORMAT": "xml"})


def test_metrics_directory_must_be_a_writable_directory_when_set(tmp_path):
    assert load_config({})["PROMETHEUS_MULTIPROC_DIR"] is None
    assert load_config({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})[
        "PROMETHEUS_MULTIPROC_DIR"
    ] == str(tmp_path)
    # prometheus_client would write into the working directory for an empty value.
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR is set but empty"):
        load_config({"PROMETHEUS_MULTIPROC_DIR": ""})
    with pytest.raises(ConfigError, match="must be an existing writable directory"):
        load_config({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")})


# --- /healthz and /readyz ------------------------------------------------------------------


def test_healthz_answers_without_touching_the_database(make_app):
    client = make_app(DATABASE_URL=DEAD_DATABASE_URL).test_client()
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_is_200_when_every_ticker_has_a_fresh_price(app, redis_conn):
    store(app, btc_usd=5, eth_usd=170)  # limit is 3 x 60 s
    status, body = readyz(app.test_client())
    assert status == 200, body
    assert body["status"] == "ready" and body["failed"] == []
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["redis"] == {"ok": True}
    prices = body["checks"]["prices"]
    assert prices["ok"] is True and prices["max_age_seconds"] == 180
    assert set(prices["tickers"]) == {"btc_usd", "eth_usd"}
    assert 170 <= prices["tickers"]["eth_usd"]["age_seconds"] < 180


def test_readyz_is_503_naming_a_stale_ticker(app, redis_conn):
    store(app, btc_usd=5, eth_usd=181)
    status, body = readyz(app.test_client())
    assert status == 503
    assert body["status"] == "unavailable" and body["failed"] == ["prices"]
    assert "eth_usd" in body["checks"]["prices"]["error"]
    assert "btc_usd" not in body["checks"]["prices"]["error"]


def test_readyz_is_503_naming_a_ticker_without_any_price(app, redis_conn):
    store(app, btc_usd=5)
    status, body = readyz(app.test_client())
    assert status == 503 and body["failed"] == ["prices"]
    assert body["checks"]["prices"]["error"] == "no price stored for eth_usd"
    assert body["checks"]["prices"]["tickers"]["eth_usd"] == {
        "timestamp": None,
        "age_seconds": None,
    }


def test_readyz_is_503_naming_postgres_when_it_is_unreachable(make_app, redis_conn):
    client = make_app(DATABASE_URL=DEAD_DATABASE_URL).test_client()
    status, body = readyz(client)
    assert status == 503
    assert body["failed"] == ["database", "prices"]
    assert body["checks"]["database"]["ok"] is False and body["checks"]["database"]["error"]
    assert body["checks"]["redis"] == {"ok": True}


def test_readyz_is_503_naming_redis_when_it_is_unreachable(make_app):
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    store(app, btc_usd=5, eth_usd=5)
    status, body = readyz(app.test_client())
    assert status == 503
    assert body["failed"] == ["redis"]
    assert "127.0.0.1" in body["checks"]["redis"]["error"]


def test_readyz_follows_redis_going_down_and_coming_back(make_app, spawn, tmp_path):
    port = free_port()
    redis = start_redis(spawn, port, tmp_path)
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    store(app, btc_usd=5, eth_usd=5)
    client = app.test_client()
    assert readyz(client)[0] == 200

    stop_process_group(redis)
    status, body = readyz(client)
    assert status == 503 and body["failed"] == ["redis"]

    start_redis(spawn, port, tmp_path)
    status, body = readyz(client)
    assert status == 200, body


def test_readyz_follows_postgres_going_down_and_coming_back(make_app, postgres_url, redis_conn):
    url = make_url(postgres_url)
    proxy = TCPProxy((url.host, url.port))
    proxy.open()
    through_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
    app = make_app(DATABASE_URL=through_proxy)
    try:
        store(app, btc_usd=5, eth_usd=5)
        client = app.test_client()
        assert readyz(client)[0] == 200

        proxy.shut()
        status, body = readyz(client)
        assert status == 503 and body["failed"] == ["database", "prices"]

        proxy.open()
        status, body = readyz(client)
        assert status == 200, body  # pool_pre_ping replaced the connections the outage killed
    finally:
        with app.app_context():
            db.engine.dispose()
        proxy.shut()
        # Stored in PostgreSQL whichever database this run's make_app wipes (SQLite, too): a row
        # left here would be another test's "first price".
        truncate_prices(postgres_url)


def test_probes_are_documented_in_openapi(client):
    paths = client.get("/openapi.json").json["paths"]
    assert {"/healthz", "/readyz", "/metrics"} <= set(paths)
    ready = paths["/readyz"]["get"]
    assert ready["summary"] and {"200", "503"} <= set(ready["responses"])
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]


# --- Request ids and log lines -------------------------------------------------------------


def test_a_sane_incoming_request_id_is_echoed(client):
    response = client.get("/healthz", headers={"X-Request-ID": "edge-42.a_b"})
    assert response.headers["X-Request-ID"] == "edge-42.a_b"


@pytest.mark.parametrize("incoming", [None, "", "has space", "x" * 129, "semi;colon", "é"])
def test_a_missing_or_unsafe_request_id_is_replaced_by_a_new_one(client, incoming):
    headers = {} if incoming is None else {"X-Request-ID": incoming}
    first = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    second = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second


def test_errors_carry_the_request_id_too(client):
    response = client.get("/api/v1/prices/latest", headers={"X-Request-ID": "req-1"})
    assert response.status_code == 422 and response.headers["X-Request-ID"] == "req-1"


def our_handler():
    (handler,) = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and type(h).__name__ == "_TrackerHandler"
    ]
    return handler


def test_json_request_line_has_the_request_fields(make_app, caplog):
    client = make_app(LOG_FORMAT="json").test_client()
    assert isinstance(our_handler().formatter, JSONFormatter)
    with caplog.at_level(logging.INFO, logger="tracker.request"):
        client.get("/healthz?probe=1", headers={"X-Request-ID": "req-7"})
    (record,) = [r for r in caplog.records if r.name == "tracker.request"]
    line = json.loads(our_handler().format(record))
    assert line["method"] == "GET" and line["path"] == "/healthz" and line["status"] == 200
    assert line["request_id"] == "req-7" and line["remote_addr"] == "127.0.0.1"
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["level"] == "INFO" and line["logger"] == "tracker.request"


def test_text_request_line_is_one_readable_line(make_app, caplog):
    client = make_app(LOG_FORMAT="text").test_client()
    with caplog.at_level(logging.INFO, logger="tracker.request"):
        client.get("/nowhere", headers={"X-Request-ID": "req-8"})
    (record,) = [r for r in caplog.records if r.name == "tracker.request"]
    text = our_handler().format(record)
    assert re.search(r"INFO tracker.request: GET /nowhere 404 [\d.]+ms id=req-8 remote=", text)


def test_json_fetch_line_is_still_one_line_with_its_fields(make_app, deribit, redis_conn, caplog):
    app = make_app(LOG_FORMAT="json")
    deribit.script("eth_usd", *[error_reply(10028, "too_many_requests", status=429)] * 3)
    with app.app_context(), caplog.at_level(logging.INFO, logger="tracker.jobs"):
        fetch_prices()
    (record,) = [r for r in caplog.records if r.name == "tracker.jobs"]
    line = json.loads(our_handler().format(record))
    assert line["message"].startswith("fetch slot=")
    assert line["stored"] == {"btc_usd": "86955.73"}
    assert line["failed"]["eth_usd"].startswith("deribit_10028")
    assert line["duplicate"] == [] and line["level"] == "WARNING"


# --- Metrics -------------------------------------------------------------------------------


def test_metrics_content_type_names_its_charset_once(client):
    content_type = client.get("/metrics").headers["Content-Type"]
    assert content_type == "text/plain; version=1.0.0; charset=utf-8"
    assert content_type.count("charset") == 1


def test_http_requests_are_counted_by_endpoint_method_and_status(client):
    labels = {"endpoint": "/healthz", "method": "GET", "status": "200"}
    missing = {"endpoint": "<unmatched>", "method": "GET", "status": "404"}
    before = client.get("/metrics").get_data(as_text=True)
    for _ in range(3):
        client.get("/healthz")
    client.get("/no/such/path")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    after = response.get_data(as_text=True)
    requests_total = "tracker_http_requests_total"
    assert (
        metric(after, requests_total, **labels)
        == (metric(before, requests_total, **labels) or 0) + 3
    )
    assert (
        metric(after, requests_total, **missing)
        == (metric(before, requests_total, **missing) or 0) + 1
    )
    count = "tracker_http_request_duration_seconds_count"
    assert metric(after, count, **labels) == (metric(before, count, **labels) or 0) + 3


def test_fetches_and_failures_are_counted_by_ticker_and_reason(app, deribit, redis_conn):
    deribit.script("eth_usd", *[error_reply(10028, "too_many_requests", status=429)] * 3)
    with app.app_context():
        fetch_prices(now=1795555200)
        fetch_prices(now=1795555230)  # same slot: btc_usd is a duplicate, eth_usd fetched again
    text = app.test_client().get("/metrics").get_data(as_text=True)
    fetches = "tracker_fetches_total"
    assert metric(text, fetches, ticker="btc_usd", outcome="stored") == 1
    assert metric(text, fetches, ticker="btc_usd", outcome="duplicate") == 1
    assert metric(text, fetches, ticker="eth_usd", outcome="failed") == 1
    assert metric(text, fetches, ticker="eth_usd", outcome="stored") == 1
    failures = "tracker_fetch_failures_total"
    assert metric(text, failures, ticker="eth_usd", reason="deribit_10028") == 1
    assert metric(text, failures, ticker="btc_usd", reason="deribit_10028") is None
    assert metric(text, "tracker_scrape_error", source="redis") == 0
    assert metric(text, "tracker_scrape_error", source="database") == 0


def test_a_failed_store_is_counted_for_every_price_it_lost(make_app, deribit, redis_conn):
    dead = make_app(DATABASE_URL=DEAD_DATABASE_URL)
    with dead.app_context(), pytest.raises(Exception, match="OperationalError|connection"):
        fetch_prices(skip_stored=False)
    text = make_app().test_client().get("/metrics").get_data(as_text=True)
    for ticker in ("btc_usd", "eth_usd"):
        assert (
            metric(text, "tracker_fetch_failures_total", ticker=ticker, reason="store_failed") == 1
        )


def test_a_cycle_without_redis_stores_its_prices_and_warns(make_app, deribit, caplog):
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    with app.app_context(), caplog.at_level(logging.INFO, logger="tracker"):
        summary = fetch_prices()
    assert summary["stored"] == ["btc_usd", "eth_usd"]
    assert "fetch counts not recorded, Redis unavailable" in caplog.text


def test_price_age_is_exported_per_ticker(app, redis_conn):
    store(app, btc_usd=30)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 30 <= metric(text, "tracker_price_age_seconds", ticker="btc_usd") < 90
    assert metric(text, "tracker_price_age_seconds", ticker="eth_usd") is None  # none stored


def test_metrics_still_answer_when_postgres_and_redis_are_down(make_app):
    app = make_app(DATABASE_URL=DEAD_DATABASE_URL, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = app.test_client()
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert metric(text, "tracker_scrape_error", source="database") == 1
    assert metric(text, "tracker_scrape_error", source="redis") == 1
    assert "tracker_price_age_seconds" not in text and "tracker_fetches_total" not in text
    labels = {"endpoint": "/healthz", "method": "GET", "status": "200"}
    assert metric(text, "tracker_http_requests_total", **labels) >= 1


def test_gunicorn_workers_report_one_global_total(spawn, tmp_path, redis_conn):
    """N requests over 2 workers: every scrape, whichever worker answers it, says exactly N."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    web = spawn(
        command("gunicorn", "wsgi:app"),
        GUNICORN_WORKERS=2,
        # Sync workers: one holding a half-sent request is busy, which steers the scrapes to
        # the other (a gthread worker would take them on its other threads).
        GUNICORN_THREADS=1,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        PROMETHEUS_MULTIPROC_DIR=metrics_dir,
        LOG_FORMAT="json",
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", process=web)
    n = 40
    for _ in range(n):  # a new connection each time, so both workers take some
        response = requests.get(f"{base}/api/v1/prices/latest?ticker=btc_usd", timeout=5)
        assert response.status_code == 404 and response.headers["X-Request-ID"]
    echoed = requests.get(f"{base}/healthz", headers={"X-Request-ID": "gw-1"}, timeout=5)
    assert echoed.headers["X-Request-ID"] == "gw-1"

    # A sync worker holding a half-sent request is busy, so the other one answers the rest.
    held = socket.create_connection(("127.0.0.1", port))
    held.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    scrapes = [requests.get(f"{base}/metrics", timeout=5).text for _ in range(5)]
    held.sendall(b"Connection: close\r\n\r\n")
    raw = b""
    while chunk := held.recv(65536):
        raw += chunk
    held.close()
    scrapes.append(raw.split(b"\r\n\r\n", 1)[1].decode())

    labels = {"endpoint": "/api/v1/prices/latest", "method": "GET", "status": "404"}
    for text in scrapes:
        assert metric(text, "tracker_http_requests_total", **labels) == n
        assert metric(text, "tracker_http_request_duration_seconds_count", **labels) == n

    lines = [json.loads(line) for line in read_log(web).splitlines() if line.startswith("{")]
    served = [line for line in lines if line.get("logger") == "tracker.request"]
    assert len([line for line in served if line["path"] == "/api/v1/prices/latest"]) == n
    assert len({line["pid"] for line in served if line["path"] == "/metrics"}) == 2
    assert {"method", "path", "status", "duration_ms", "request_id", "remote_addr"} <= set(
        served[0]
    )
    assert any(line["request_id"] == "gw-1" for line in served)
