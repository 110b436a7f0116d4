"""HTTP caching of /api answers: strong ETags, 304s, and Cache-Control by how settled they are."""

import hashlib
import time
from decimal import Decimal

import pytest

from tracker.caching import SETTLED_MAX_AGE, max_age_for
from tracker.models import insert_prices

CONFIG = {"FETCH_INTERVAL": 60, "BACKFILL_WINDOW": 172800, "TICKERS": ("btc_usd", "eth_usd")}
SLOT = 1795176000  # 2026-11-20T12:00:00Z, a minute boundary


def seed(app, start, count):
    rows = [
        {"ticker": "btc_usd", "price": Decimal("80000.5") + i, "timestamp": start + 60 * i}
        for i in range(count)
    ]
    with app.app_context():
        insert_prices(rows)


def max_age(response):
    directives = dict(
        part.strip().partition("=")[::2] for part in response.headers["Cache-Control"].split(",")
    )
    assert "public" in directives, response.headers["Cache-Control"]
    return int(directives["max-age"])


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, 5),  # this slot's fetch is due: until it should have landed
        (3, 2),
        (5, 60),  # landed: until the next one has
        (30, 35),
        (59, 6),
    ],
)
def test_fresh_answers_last_until_the_next_fetch_has_landed(offset, expected):
    assert max_age_for(None, SLOT + offset, CONFIG) == expected
    assert max_age_for(SLOT, SLOT + offset, CONFIG) == expected  # a range up to now


def test_never_longer_than_the_fetch_interval():
    for interval in (1, 5, 60, 300, 3600):
        config = {**CONFIG, "FETCH_INTERVAL": interval}
        for offset in range(0, 3600, 7):
            assert 0 <= max_age_for(None, SLOT + offset, config) <= interval


def test_a_paced_list_is_cached_only_until_its_last_ticker_has_landed():
    """TICKERS=all: past a burst of 50, Deribit's pace asks 20 a second, so 100 tickers land
    2.5 s later than two do; 500 (22.5 s) are capped at a quarter of the interval, as ever."""

    def tickers(count):
        return {**CONFIG, "TICKERS": tuple(f"i{n}_usd" for n in range(count))}

    assert max_age_for(None, SLOT + 6, CONFIG) == 59  # two tickers: landed 5 s into the slot
    assert max_age_for(None, SLOT + 6, tickers(100)) == 1  # the last ones land at 7.5 s
    assert max_age_for(None, SLOT + 8, tickers(100)) == 59
    assert max_age_for(None, SLOT + 14, tickers(500)) == 1  # 15 s: FETCH_INTERVAL // 4
    assert max_age_for(None, SLOT + 15, tickers(500)) == 60


def test_a_range_that_ended_before_the_backfill_window_is_cached_for_hours():
    now = SLOT + 30
    assert max_age_for(now - 172801, now, CONFIG) == SETTLED_MAX_AGE
    assert max_age_for(now - 172799, now, CONFIG) == 35  # the backfill may still fill it


def test_latest_has_a_strong_etag_and_answers_if_none_match_with_304(app, client):
    seed(app, int(time.time()) // 60 * 60 - 600, 10)
    response = client.get("/api/v1/prices/latest?ticker=btc_usd")
    assert response.status_code == 200
    etag = response.headers["ETag"]
    assert etag == f'"{hashlib.sha256(response.get_data()).hexdigest()}"'  # strong: no W/
    assert 0 <= max_age(response) <= 60
    assert "Accept" in response.headers["Vary"]

    cached = client.get("/api/v1/prices/latest?ticker=btc_usd", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.get_data() == b""
    assert cached.headers["ETag"] == etag and "max-age" in cached.headers["Cache-Control"]

    other = client.get("/api/v1/prices/latest?ticker=btc_usd", headers={"If-None-Match": '"x"'})
    assert other.status_code == 200 and other.get_data() == response.get_data()
    # Another representation of the same data is another entity.
    strings = client.get("/api/v1/prices/latest?ticker=btc_usd&price_format=string")
    assert strings.headers["ETag"] != etag


def test_tickers_are_cached_until_the_next_fetch(client):
    response = client.get("/api/v1/tickers")
    assert response.status_code == 200 and response.headers["ETag"]
    assert 0 <= max_age(response) <= 60


def test_settled_pages_and_csv_are_cached_for_hours_the_newest_briefly(app, client):
    old = int(time.time()) // 86400 * 86400 - 5 * 86400  # five days ago, 00:00 UTC
    seed(app, old, 30)
    seed(app, int(time.time()) // 60 * 60 - 600, 10)
    settled = [
        f"/api/v1/prices?ticker=btc_usd&to={old + 3600}",
        f"/api/v1/prices?ticker=btc_usd&to={old + 3600}&format=csv",
        f"/api/v1/prices/at?ticker=btc_usd&timestamp={old + 600}",
        f"/api/v1/prices/stats?ticker=btc_usd&from={old}&to={old + 3600}",
        f"/api/v1/prices/gaps?ticker=btc_usd&from={old}&to={old + 3600}",
        f"/api/v1/candles?ticker=btc_usd&interval=1h&to={old}",
        f"/api/v1/candles?ticker=btc_usd&interval=1h&to={old}&format=csv",
    ]
    for path in settled:
        response = client.get(path)
        assert response.status_code == 200, path
        assert max_age(response) == SETTLED_MAX_AGE, path
    newest = client.get("/api/v1/prices?ticker=btc_usd&limit=5")
    assert max_age(newest) <= 60
    # Older pages, reached through the cursor, are settled once they are old enough.
    page = newest
    while page.json["next_cursor"] and max_age(page) <= 60:
        page = client.get(
            f"/api/v1/prices?ticker=btc_usd&limit=5&cursor={page.json['next_cursor']}"
        )
    assert max_age(page) == SETTLED_MAX_AGE
    # A streamed CSV is not buffered to be hashed: no ETag, but a lifetime.
    csv = client.get(f"/api/v1/prices?ticker=btc_usd&to={old + 3600}&format=csv")
    assert "ETag" not in csv.headers and csv.mimetype == "text/csv"


def test_errors_are_never_stored(client):
    assert client.get("/api/v1/prices/latest?ticker=btc_usd").status_code == 404
    for path in ("/api/v1/prices/latest?ticker=btc_usd", "/api/v1/prices?ticker=doge_usd"):
        response = client.get(path)
        assert response.status_code in (404, 422)
        assert response.headers["Cache-Control"] == "no-store"
        assert "ETag" not in response.headers
