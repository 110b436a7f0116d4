"""Fair use: RATE_LIMIT per client on /api, shared by workers through Redis, off without it."""

import logging
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import (
    command,
    free_port,
    read_log,
    start_redis,
    stop_process_group,
    wait_for_http,
)
from tracker import ratelimit
from tracker.ratelimit import REDIS_RETRY_SECONDS

LIMITED = "/api/v1/tickers"
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def assert_too_many(response):
    assert response.status_code == 429
    assert response.json["code"] == 429 and response.json["status"] == "Too Many Requests"
    assert "5 per 1 minute" in response.json["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 61
    assert response.headers["X-RateLimit-Limit"] == "5"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["X-RateLimit-Reset"]) > time.time()


def test_off_by_default(client, redis_conn):
    for _ in range(20):
        response = client.get(LIMITED)
        assert response.status_code == 200
    assert not set(RATE_HEADERS) & set(response.headers)
    assert redis_conn.dbsize() == 0


def test_over_the_limit_is_a_json_429_and_only_api_counts(make_app, deribit, redis_conn):
    client = make_app(RATE_LIMIT="5/minute").test_client()
    remaining = []
    for _ in range(5):
        response = client.get(LIMITED)
        assert response.status_code == 200
        assert "Retry-After" not in response.headers  # a 200 needs no back-off
        remaining.append(response.headers["X-RateLimit-Remaining"])
    assert remaining == ["4", "3", "2", "1", "0"]
    assert_too_many(client.get(LIMITED))
    # Any endpoint: the budget is the client's, not one per endpoint.
    assert_too_many(client.get("/api/v1/prices/latest?ticker=btc_usd"))
    # Probes, metrics, docs and the spec are never limited.
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "X-RateLimit-Limit" not in response.headers, path


def test_behind_a_proxy_each_forwarded_client_has_its_own_budget(make_app, deribit, redis_conn):
    client = make_app(RATE_LIMIT="5/minute", TRUSTED_PROXIES="1").test_client()
    first, second = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"}
    for _ in range(5):
        assert client.get(LIMITED, headers=first).status_code == 200
    assert_too_many(client.get(LIMITED, headers=first))
    assert client.get(LIMITED, headers=second).status_code == 200
    # Without a trusted proxy the header is the client's own claim: ignored.
    untrusting = make_app(RATE_LIMIT="5/minute").test_client()
    for _ in range(5):
        assert untrusting.get(LIMITED, headers=first).status_code == 200
    assert untrusting.get(LIMITED, headers=second).status_code == 429


@pytest.fixture(params=["refused", "hung"])
def dead_redis_url(request):
    """A Redis URL nothing answers: a closed port, or a socket that accepts and never replies."""
    if request.param == "refused":
        yield f"redis://127.0.0.1:{free_port()}/0"
        return
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # the kernel completes the handshakes; nobody reads
        yield f"redis://127.0.0.1:{hung.getsockname()[1]}/0"


def test_redis_down_every_request_passes_with_one_warning(
    make_app, deribit, dead_redis_url, caplog, monkeypatch
):
    # Every request tries Redis again (and fails): still one warning for the whole outage.
    monkeypatch.setattr(ratelimit, "REDIS_RETRY_SECONDS", 0)
    client = make_app(RATE_LIMIT="5/minute", REDIS_URL=dead_redis_url).test_client()
    with caplog.at_level(logging.INFO, logger="tracker.ratelimit"):
        for _ in range(8):
            response = client.get(LIMITED)
            assert response.status_code == 200
            assert not set(RATE_HEADERS) & set(response.headers)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("rate limit off: Redis unreachable (")
    assert "every request passes unlimited until it answers again" in warnings[0]


def test_redis_outage_in_gunicorn_lifts_the_limit_until_redis_is_back(spawn, tmp_path):
    redis_port = free_port()
    redis = start_redis(spawn, redis_port, tmp_path)
    port = free_port()
    web = spawn(
        command("gunicorn", "wsgi:app"),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        # One process: the outage is each process's own (one warning per worker).
        GUNICORN_WORKERS=1,
        GUNICORN_THREADS=4,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        RATE_LIMIT="5/minute",
    )
    url = f"http://127.0.0.1:{port}{LIMITED}"
    wait_for_http(f"http://127.0.0.1:{port}/healthz", process=web)
    for remaining in ("4", "3", "2"):  # within the limit, counted in Redis
        response = requests.get(url, timeout=10)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Remaining"] == remaining

    stop_process_group(redis)
    # Eight at a time, far over the limit, for longer than one retry of Redis: every one
    # passes, none is limited or a 500.
    outage, ends = [], time.monotonic() + REDIS_RETRY_SECONDS + 2
    with ThreadPoolExecutor(8) as pool:
        while time.monotonic() < ends:
            outage += pool.map(lambda _: requests.get(url, timeout=10), range(8))
    assert [r.status_code for r in outage] == [200] * len(outage)
    assert not any(set(RATE_HEADERS) & set(r.headers) for r in outage)
    assert warning_lines(web) == ["rate limit off: Redis unreachable"]

    start_redis(spawn, redis_port, tmp_path)  # empty: the counts went with the old one
    statuses = []
    deadline = time.monotonic() + 30  # the next try is REDIS_RETRY_SECONDS away
    while 429 not in statuses and time.monotonic() < deadline:
        statuses.append(requests.get(url, timeout=10).status_code)
        time.sleep(0.2)
    # Limited again: five requests counted in the new Redis, then the 429.
    assert statuses[-6:] == [200] * 5 + [429], statuses
    assert read_log(web).count("rate limit on again: Redis answers") == 1
    assert warning_lines(web) == ["rate limit off: Redis unreachable"]


def warning_lines(web):
    """The start of each WARNING (or worse) line the web process logged."""
    lines = re.findall(r" (?:WARNING|ERROR|CRITICAL) [\w.]+: (.*)", read_log(web))
    return [line.split(" (")[0] for line in lines]


def test_the_limit_holds_across_gunicorn_workers(spawn, redis_conn):
    port = free_port()
    web = spawn(
        command("gunicorn", "wsgi:app"),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS=2,
        GUNICORN_ACCESS_LOG="-",
        GUNICORN_ACCESS_LOG_FORMAT="access pid=%(p)s status=%(s)s",
        RATE_LIMIT="5/minute",
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", process=web)
    statuses = []
    # A new connection per request, until both workers have answered (the kernel picks one).
    for _ in range(200):
        response = requests.get(f"{base}{LIMITED}", headers={"Connection": "close"}, timeout=5)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.headers["X-RateLimit-Limit"] == "5"
            assert response.headers["X-RateLimit-Remaining"] == "0"
            assert response.json()["code"] == 429
        if len(statuses) > 5 and len(answered_by(web)) == 2:
            break
    assert statuses[:6] == [200] * 5 + [429]
    assert statuses.count(200) == 5, statuses
    assert len(answered_by(web)) == 2, read_log(web)


def answered_by(web):
    """The pids of the gunicorn workers that logged an /api answer so far."""
    return set(re.findall(r"access pid=<(\d+)> status=(?:200|429)", read_log(web)))
