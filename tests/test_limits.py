"""Bounded work per request: the span of a range (MAX_RANGE_DAYS) and of a CSV (MAX_CSV_DAYS)."""

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.test_api import DAY, seed
from tracker.queries import WEEK, bucket_start

DAYS_731 = 731 * 86400  # the default of both: any two years, a leap day included
PRICES_CSV = "/api/v1/prices?ticker=btc_usd&format=csv"
CANDLES_CSV = "/api/v1/candles?ticker=btc_usd&interval=1m&format=csv"
STATS = "/api/v1/prices/stats?ticker=btc_usd"
GAPS = "/api/v1/prices/gaps?ticker=btc_usd"
BOUNDED = [(PRICES_CSV, "MAX_CSV_DAYS"), (CANDLES_CSV, "MAX_CSV_DAYS")]
BOUNDED += [(STATS, "MAX_RANGE_DAYS"), (GAPS, "MAX_RANGE_DAYS")]


def iso(timestamp):
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def assert_span_refused(response, setting, earliest):
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.json["code"] == 422 and response.json["status"] == "Unprocessable Entity"
    [message] = response.json["errors"]["query"]["from"]
    assert f"more than 731 days, the most {setting} allows" in message
    assert f"at or after {iso(earliest)} ({earliest})" in message


@pytest.mark.parametrize(("url", "setting"), BOUNDED)
def test_exactly_the_maximum_passes_one_second_more_is_a_422(client, url, setting):
    start, end = DAY - DAYS_731, DAY
    assert client.get(f"{url}&from={start}&to={end}").status_code == 200
    assert_span_refused(client.get(f"{url}&from={start - 1}&to={end}"), setting, start)
    assert_span_refused(client.get(f"{url}&from={start}&to={end + 1}"), setting, start + 1)


@pytest.mark.parametrize(("url", "setting"), BOUNDED)
def test_a_range_is_measured_up_to_now(client, url, setting):
    """A `to` far in the future spans no more than up to now: no 422 for it, and a refusal
    names a `from` before now, not one in 9997."""
    now = int(time.time())
    assert client.get(f"{url}&from={now - DAYS_731 + 3600}&to=9999-12-31").status_code == 200
    response = client.get(f"{url}&from={now - DAYS_731 - 3600}&to=9999-12-31")
    assert response.status_code == 422, response.get_data(as_text=True)
    [message] = response.json["errors"]["query"]["from"]
    earliest = int(message.split("(")[1].split(")")[0])
    assert now - DAYS_731 <= earliest <= int(time.time()) - DAYS_731, message


def test_a_range_of_the_maximum_holds_both_of_its_ends(app, client):
    seed(app, "btc_usd", [DAY - DAYS_731 - 60, DAY - DAYS_731, DAY, DAY + 60])
    query = f"from={DAY - DAYS_731}&to={DAY}"
    assert client.get(f"{STATS}&{query}").json["count"] == 2
    lines = client.get(f"{PRICES_CSV}&{query}").get_data(as_text=True).splitlines()
    assert [line.split(",")[2] for line in lines[1:]] == [str(DAY), str(DAY - DAYS_731)]
    lines = client.get(f"{CANDLES_CSV}&{query}").get_data(as_text=True).splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == [str(DAY), str(DAY - DAYS_731)]


@pytest.mark.parametrize(("url", "setting"), BOUNDED[:3])
def test_without_from_the_whole_history_is_served_while_it_fits(app, client, url, setting):
    # Without `from` the range starts at the first stored price: all of it, or a 422 saying
    # where to start, never a download silently cut short.
    seed(app, "btc_usd", [DAY - DAYS_731, DAY])
    assert client.get(f"{url}&to={DAY}").status_code == 200
    seed(app, "btc_usd", [DAY - DAYS_731 - 1])
    response = client.get(f"{url}&to={DAY}")
    assert_span_refused(response, setting, DAY - DAYS_731)
    assert (
        f"the first stored price of btc_usd ({iso(DAY - DAYS_731 - 1)})"
        in (response.json["errors"]["query"]["from"][0])
    )
    # Another ticker's history is its own.
    assert client.get(f"{url.replace('btc_usd', 'eth_usd')}&to={DAY}").status_code == 200


def test_json_pages_are_bounded_by_limit_not_by_their_range(app, client):
    # A page of 1,000 weekly candles (19 years) and a page of prices from 1970 are fine.
    weeks = [bucket_start(DAY, WEEK) - WEEK * i for i in range(1000)]
    seed(app, "btc_usd", weeks, price=lambda i: Decimal(1000 + i))
    response = client.get(f"/api/v1/candles?ticker=btc_usd&interval=1w&limit=1000&to={DAY}")
    assert response.status_code == 200 and len(response.json["items"]) == 1000
    response = client.get(f"/api/v1/prices?ticker=btc_usd&from=0&to={DAY}&limit=1000")
    assert response.status_code == 200 and len(response.json["items"]) == 1000
    # The same range as CSV is refused: it would be every row at once.
    assert client.get(f"{PRICES_CSV}&from=0&to={DAY}").status_code == 422


def test_the_maximums_are_settings_and_the_spec_says_them(make_app, deribit):
    client = make_app(MAX_RANGE_DAYS="7", MAX_CSV_DAYS="30").test_client()
    assert client.get(f"{STATS}&from={DAY - 7 * 86400}&to={DAY}").status_code == 200
    assert client.get(f"{STATS}&from={DAY - 7 * 86400 - 1}&to={DAY}").status_code == 422
    assert client.get(f"{PRICES_CSV}&from={DAY - 30 * 86400}&to={DAY}").status_code == 200
    assert client.get(f"{PRICES_CSV}&from={DAY - 30 * 86400 - 1}&to={DAY}").status_code == 422
    spec = client.get("/openapi.json").json
    described = {
        path: next(p["description"] for p in item["get"]["parameters"] if p["name"] == "from")
        for path, item in spec["paths"].items()
        if path
        in ("/api/v1/prices", "/api/v1/candles", "/api/v1/prices/stats", "/api/v1/prices/gaps")
    }
    assert (
        "In a CSV (`format=csv`), `to` may be at most 30 days (MAX_CSV_DAYS)"
        in (described["/api/v1/prices"])
    )
    assert "30 days (MAX_CSV_DAYS)" in described["/api/v1/candles"]
    assert (
        "`to` may be at most 7 days (MAX_RANGE_DAYS) after `from`, or after the first"
        in (described["/api/v1/prices/stats"])
    )
    assert "7 days (MAX_RANGE_DAYS) after `from`; more" in described["/api/v1/prices/gaps"]
