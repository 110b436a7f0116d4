"""/candles: exact OHLC per bucket, buckets aligned to the UTC epoch, keyset pages, bad input."""

import time
from decimal import Decimal

import pytest

from tests.test_api import DAY, seed, walk
from tracker.queries import bucket_start
from tracker.responses import CandlePageSchema
from tracker.schemas import encode_cursor

HOUR = 3600
CANDLES = "/api/v1/candles?ticker=btc_usd"


def prices(values):
    """A price function for seed(): the i-th row gets values[i], exactly as written."""
    return lambda i: Decimal(values[i])


def test_a_candle_is_first_highest_lowest_last_and_count_with_the_stored_digits(app, client):
    # Text order differs from numeric order ("99.10" > "100.5" as text): high and low must
    # compare numbers, and still come back with the digits stored ("99.10", not 99.1).
    values = ["100.5", "99.10", "123456789012.123456789", "0.00001234", "2950.10", "101.00"]
    seed(app, "btc_usd", [DAY + 60 * i for i in range(6)], price=prices(values))
    response = client.get(f"{CANDLES}&interval=1h&to={DAY}")
    assert response.status_code == 200, response.json
    text = response.get_data(as_text=True)
    assert (
        f'{{"time":{DAY},"open":100.5,"high":123456789012.123456789,"low":0.00001234,'
        '"close":101.00,"count":6,"complete":true}' in text
    ), text
    assert CandlePageSchema().validate(response.json) == {}
    assert response.json["interval"] == "1h" and response.json["next_cursor"] is None


def test_equal_prices_stored_with_different_digits_pick_the_latest_high_and_earliest_low(
    app, client
):
    # 100.5 = 100.50 and 1.10 = 1.1 as numbers, not as text: which row wins decides the digits.
    # The high is the latest of its equals, the low the earliest.
    values = ["50", "100.5", "1.10", "100.50", "1.1", "60"]
    seed(app, "btc_usd", [DAY + 60 * i for i in range(6)], price=prices(values))
    response = client.get(f"{CANDLES}&interval=1h&to={DAY}")
    assert response.status_code == 200, response.json
    text = response.get_data(as_text=True)
    assert '"open":50,"high":100.50,"low":1.10,"close":60,"count":6' in text, text


@pytest.mark.parametrize(
    ("interval", "width", "first_bucket"),
    [
        ("1m", 60, DAY - 60),
        ("5m", 300, DAY - 300),
        ("4h", 4 * HOUR, DAY - 4 * HOUR),  # 20:00 UTC the day before
        ("1d", 86400, DAY - 86400),  # 00:00 UTC
        ("1w", 7 * 86400, DAY - 7 * 86400),  # DAY is a Monday: the week before starts Monday
    ],
)
def test_buckets_are_aligned_to_the_utc_epoch_and_mondays(
    app, client, interval, width, first_bucket
):
    # One row just before DAY (a Monday, 00:00 UTC) and one on it: two buckets, for every width.
    seed(app, "btc_usd", [DAY - 1, DAY], price=prices(["1.5", "2.5"]))
    response = client.get(f"{CANDLES}&interval={interval}&from=0&to={DAY}")
    assert response.status_code == 200, response.json
    times = [c["time"] for c in response.json["items"]]
    assert times == [DAY, first_bucket], interval
    assert [c["close"] for c in response.json["items"]] == [2.5, 1.5]
    assert bucket_start(DAY + width - 1, width) == DAY


def test_weeks_start_on_monday_not_on_the_epochs_thursday():
    monday = DAY  # 2026-11-23
    assert bucket_start(monday + 6 * 86400 + 86399, 604800) == monday  # Sunday 23:59:59
    assert bucket_start(monday - 1, 604800) == monday - 604800
    assert bucket_start(0, 604800) == -3 * 86400  # the epoch's week began 1969-12-29, a Monday


def test_pages_walk_every_bucket_once_and_the_last_full_page_has_no_cursor(app, client):
    # 10 hours of minutes: 10 candles of 60; pages of 5 are two full pages, the second last.
    seed(app, "btc_usd", [DAY + 60 * i for i in range(600)])
    pages, items = walk(client, f"{CANDLES}&interval=1h&limit=5&to={DAY + 9 * HOUR}")
    assert [len(p.json["items"]) for p in pages] == [5, 5]
    assert pages[-1].json["next_cursor"] is None
    assert [c["time"] for c in items] == [DAY + HOUR * i for i in range(9, -1, -1)]
    assert {c["count"] for c in items} == {60}
    # Each candle is the whole bucket, whichever page it is on.
    assert items[-1]["open"] == 80000 and items[-1]["close"] == 80000.59
    for page in pages:
        assert CandlePageSchema().validate(page.json) == {}


def test_buckets_without_a_price_are_left_out_and_paging_crosses_long_holes(app, client):
    hours = [0, 1, 5, 200]  # a 195-hour hole: far more than a page
    seed(app, "btc_usd", [DAY + HOUR * h for h in hours])
    pages, items = walk(client, f"{CANDLES}&interval=1h&limit=2&to={DAY + 300 * HOUR}")
    assert [c["time"] for c in items] == [DAY + HOUR * h for h in reversed(hours)]
    assert all(page.json["items"] for page in pages)  # no empty page on the way


def test_from_and_to_select_candles_by_bucket_start_and_keep_them_whole(app, client):
    seed(app, "btc_usd", [DAY + 60 * i for i in range(180)])  # 00:00 .. 02:59
    # from=00:30 starts after the first bucket: it is left out, not cut in half.
    _, items = walk(client, f"{CANDLES}&interval=1h&from={DAY + 1800}&to={DAY + HOUR}")
    assert [(c["time"], c["count"]) for c in items] == [(DAY + HOUR, 60)]
    # to=01:30 lies in the 01:00 bucket: it is included, whole.
    _, items = walk(client, f"{CANDLES}&interval=1h&from={DAY}&to={DAY + HOUR + 1800}")
    assert [(c["time"], c["count"]) for c in items] == [(DAY + HOUR, 60), (DAY, 60)]


def test_only_the_bucket_holding_now_is_incomplete(app, client):
    now = int(time.time())
    minute = now // 60 * 60
    seed(app, "btc_usd", [minute - 86400, minute])
    _, items = walk(client, f"{CANDLES}&interval=1d")
    assert [c["complete"] for c in items] == [False, True]
    assert items[0]["time"] == now // 86400 * 86400


def test_other_tickers_rows_stay_out(app, client):
    seed(app, "btc_usd", [DAY])
    seed(app, "eth_usd", [DAY + 60], price=prices(["5"]))
    _, items = walk(client, f"{CANDLES}&interval=1h&to={DAY}")
    assert [c["count"] for c in items] == [1]


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ("", "interval", "Missing data"),
        ("&interval=2h", "interval", "Must be one of"),
        ("&interval=1h&from=2026-11-24&to=2026-11-23", "from", "must not be after"),
        ("&interval=1h&limit=1001", "limit", "less than or equal to 1000"),
        (f"&interval=1d&cursor={encode_cursor('btc_usd', DAY + HOUR)}", "cursor", "1d candles"),
        (f"&interval=1h&cursor={encode_cursor('eth_usd', DAY)}", "cursor", "eth_usd"),
        ("&interval=1h&format=csv&limit=5", "limit", "whole range"),
        ("&interval=1h&format=xml", "format", "Must be one of"),
    ],
)
def test_bad_input_is_a_422_that_names_the_field(client, query, field, says):
    response = client.get(CANDLES + query)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert any(says in m for m in response.json["errors"]["query"][field]), response.json


def test_an_interval_shorter_than_the_fetch_interval_is_a_422(make_app):
    client = make_app(FETCH_INTERVAL="300").test_client()
    response = client.get(f"{CANDLES}&interval=1m")
    assert response.status_code == 422
    assert "shorter than FETCH_INTERVAL" in response.json["errors"]["query"]["interval"][0]
    assert client.get(f"{CANDLES}&interval=5m").status_code == 200
