"""The cache of docs/nginx.conf, through the real nginx in front of gunicorn: it keeps what the
app's Cache-Control allows, for no longer, and never mixes up requests, clients or origins."""

import re
import time
from decimal import Decimal

import requests

from tests.test_caching import max_age
from tracker.models import insert_prices

# Short, so that a slot passes within a test: max-age is then at most 6 s (tracker/caching.py).
INTERVAL = 6
LATEST = "/tracker/api/v1/prices/latest?ticker=btc_usd"
DASHBOARD = "https://dashboard.example"
NOTEBOOK = "http://localhost:8888"


def store(app, timestamp, price, ticker="btc_usd"):
    with app.app_context():
        insert_prices([{"ticker": ticker, "price": Decimal(price), "timestamp": timestamp}])


def get(proxy, path, **headers):
    return requests.get(f"{proxy.origin}{path}", headers=headers, timeout=10)


def cache_status(response):
    return response.headers.get("X-Cache-Status")


def start_of_a_slot():
    """Wait until a fetch slot has just begun and its fetch is due to have landed (slot + 1 s at
    INTERVAL = 6): answers given now last the longest, INTERVAL - 1 s. Returns the slot."""
    now = time.time()
    slot = now // INTERVAL * INTERVAL
    start = slot + 1.2 if now < slot + 1.2 else slot + INTERVAL + 1.2
    time.sleep(start - now)
    return int(start // INTERVAL * INTERVAL)


def lasting():
    """Wait, if need be, until an answer given now lasts 2 s or more: not in the last 2 s before
    a fetch is due to land (FETCH_INTERVAL 60: 5 s into the minute), when max-age is 0 or 1."""
    phase = time.time() % 60
    if 3 <= phase < 5:
        time.sleep(5.1 - phase)


def test_a_second_latest_within_the_slot_is_a_hit_with_this_requests_headers(app, start_proxy):
    proxy = start_proxy(FETCH_INTERVAL=INTERVAL, RATE_LIMIT="600/minute")
    slot = start_of_a_slot()
    store(app, slot, "80000.5")
    first = get(proxy, LATEST, **{"X-Request-ID": "first-4711"})
    second = get(proxy, LATEST, **{"X-Request-ID": "second-4712"})
    assert first.status_code == second.status_code == 200, first.text
    assert max_age(first) >= 2, first.headers  # the second request comes within it
    assert (cache_status(first), cache_status(second)) == ("MISS", "HIT")
    assert second.content == first.content and second.json()["timestamp"] == slot
    assert second.headers["ETag"] == first.headers["ETag"]
    # The id is this request's, not the one stored with the answer ...
    assert first.headers["X-Request-ID"] == "first-4711"
    assert second.headers["X-Request-ID"] == "second-4712"
    # ... or one nginx made for it (and passed to the app on a miss), one per request.
    made = get(proxy, LATEST)
    assert cache_status(made) == "HIT"
    assert re.fullmatch("[0-9a-f]{32}", made.headers["X-Request-ID"]), made.headers
    # One the app would not keep is replaced by nginx already: the answer names what was logged.
    odd = get(proxy, LATEST, **{"X-Request-ID": "no spaces allowed"})
    assert re.fullmatch("[0-9a-f]{32}", odd.headers["X-Request-ID"]), odd.headers
    # The rate-limit counts are those of the client the app answered: none on a cached answer.
    assert int(first.headers["X-RateLimit-Remaining"]) < 600
    for cached in (second, made, odd):
        assert not [name for name in cached.headers if name.startswith("X-RateLimit-")]


def test_a_revalidated_answer_carries_no_stale_rate_limit_counts(app, start_proxy):
    """REVALIDATED: the copy had expired and the app answered this request's If-None-Match with
    a 304, counting it; but nginx sends the stored copy with the stored headers, and its
    $upstream_http_x_ratelimit_* are the copy's too (the first client's counts): none sent."""
    proxy = start_proxy(FETCH_INTERVAL=INTERVAL, RATE_LIMIT="600/minute")
    slot = start_of_a_slot()
    store(app, slot, "80000.5")
    first = get(proxy, LATEST)
    assert cache_status(first) == "MISS" and "X-RateLimit-Remaining" in first.headers
    time.sleep(max_age(first) + 1.1)  # expired; no new price, so the same ETag
    again = get(proxy, LATEST)
    assert cache_status(again) == "REVALIDATED", again.headers
    assert again.content == first.content
    assert not [name for name in again.headers if name.startswith("X-RateLimit-")], again.headers


def test_a_new_price_is_served_once_the_max_age_has_passed(app, start_proxy):
    proxy = start_proxy(FETCH_INTERVAL=INTERVAL)
    slot = start_of_a_slot()
    store(app, slot, "80000.5")
    first = get(proxy, LATEST)
    received = time.time()
    assert cache_status(first) == "MISS" and first.json()["timestamp"] == slot
    lifetime = max_age(first)
    assert lifetime >= 2, first.headers
    # The next slot's price, stored already: from now on the app would answer it.
    store(app, slot + INTERVAL, "80100.5")
    answers = []  # (when it was asked, status, timestamp served)
    while not answers or answers[-1][2] != slot + INTERVAL:
        asked = time.time()
        assert asked < received + 3 * lifetime + 10, answers  # it never came
        response = get(proxy, LATEST)
        answers.append((asked, cache_status(response), response.json()["timestamp"]))
        time.sleep(0.2)
    old = [answer for answer in answers if answer[2] == slot]
    # The cache kept the stored answer after the new price was in the database ...
    assert old and all(status == "HIT" for _, status, _ in old), answers
    # ... but not past its max-age: nginx counts whole seconds, so it may serve it until the
    # second after received + max-age, not a request later.
    assert old[-1][0] < received + lifetime + 1, (received, lifetime, answers)
    assert answers[-1][1] in ("EXPIRED", "MISS"), answers


def test_the_link_header_survives_a_hit(app, start_proxy):
    proxy = start_proxy()
    lasting()
    now = int(time.time()) // 60 * 60
    for minute in range(5):
        store(app, now - 60 * minute, f"8000{minute}.5")
    path = "/tracker/api/v1/prices?ticker=btc_usd&limit=2"
    first, second = get(proxy, path), get(proxy, path)
    assert (cache_status(first), cache_status(second)) == ("MISS", "HIT")
    assert second.headers["Link"] == first.headers["Link"]
    assert second.headers["Link"].startswith(f"<{proxy.origin}/tracker/api/v1/prices?")
    assert second.json()["next_cursor"] and second.content == first.content
    # The key holds the Host: the link a client of another name gets names that host.
    other = get(proxy, path, Host="tracker.example")
    assert cache_status(other) == "MISS"
    assert other.headers["Link"].startswith("<http://tracker.example/tracker/api/v1/prices?")


def test_each_origin_gets_its_own_cors_answer(app, start_proxy):
    proxy = start_proxy(CORS_ORIGINS=f"{DASHBOARD},{NOTEBOOK}")
    lasting()
    store(app, int(time.time()) // 60 * 60, "80000.5")
    path = "/tracker/api/v1/tickers"
    # A refused origin first: its answer, without CORS headers, must never reach the others,
    # nor theirs it, nor one allowed origin's the other.
    evil = "https://evil.example"
    statuses = []
    for origin in (evil, DASHBOARD, NOTEBOOK, DASHBOARD, NOTEBOOK, evil, evil, DASHBOARD):
        response = get(proxy, path, Origin=origin)
        assert response.status_code == 200
        allowed = None if origin == evil else origin
        assert response.headers.get("Access-Control-Allow-Origin") == allowed, (origin, statuses)
        statuses.append(cache_status(response))
    # Cached per origin (Vary: Origin), not fetched anew every time.
    assert statuses[3:5] == ["HIT", "HIT"], statuses
    assert "HIT" in statuses[5:7], statuses


def test_errors_are_never_served_from_the_cache(app, start_proxy):
    proxy = start_proxy()
    for path in (LATEST, "/tracker/api/v1/prices?ticker=doge_usd"):  # no price yet; unknown
        answers = [get(proxy, path) for _ in range(3)]
        assert [r.status_code for r in answers] in ([404] * 3, [422] * 3), path
        assert [cache_status(r) for r in answers] == ["MISS"] * 3, path
        assert all(r.headers["Cache-Control"] == "no-store" for r in answers)
    # The 404 turns into data as soon as a price is stored: no cached error stands in the way.
    store(app, int(time.time()) // 60 * 60, "80000.5")
    assert get(proxy, LATEST).status_code == 200


def test_if_none_match_gets_a_304_through_nginx(app, start_proxy):
    proxy = start_proxy()
    lasting()
    store(app, int(time.time()) // 60 * 60, "80000.5")
    etag = get(proxy, LATEST).headers["ETag"]
    for headers in ({}, {"Host": "tracker.example"}):  # from the cache; on a miss
        response = get(proxy, LATEST, **{"If-None-Match": etag}, **headers)
        assert response.status_code == 304, (headers, response.headers)
        assert response.content == b"" and response.headers["ETag"] == etag
    other = get(proxy, LATEST, **{"If-None-Match": '"not-it"'})
    assert other.status_code == 200 and other.headers["ETag"] == etag
