"""/prices/stats: count, first, last, min, max exact; mean and change in % rounded as documented."""

from decimal import Decimal

from tests.test_api import DAY, seed
from tracker.responses import PriceStatsSchema

STATS = "/api/v1/prices/stats?ticker=btc_usd"


def test_stats_of_a_range_are_exact_and_rounded_as_the_spec_says(app, client):
    # Text order differs from numeric order ("99.10" > "100.5" as text).
    values = ["100.5", "99.10", "123.456", "99.1", "0.00001234", "123.456", "101.00"]
    seed(app, "btc_usd", [DAY + 60 * i for i in range(7)], price=lambda i: Decimal(values[i]))
    seed(app, "btc_usd", [DAY - 60, DAY + 3600], price=lambda i: Decimal("1000000"))  # outside
    seed(app, "eth_usd", [DAY + 120], price=lambda i: Decimal("0.000001"))  # another ticker
    response = client.get(f"{STATS}&from={DAY}&to={DAY + 360}")
    assert response.status_code == 200, response.json
    text = response.get_data(as_text=True)
    assert f'"first":{{"price":100.5,"timestamp":{DAY}}}' in text
    assert f'"last":{{"price":101.00,"timestamp":{DAY + 360}}}' in text
    assert f'"min":{{"price":0.00001234,"timestamp":{DAY + 240}}}' in text
    # 123.456 twice: the first time it was reached.
    assert f'"max":{{"price":123.456,"timestamp":{DAY + 120}}}' in text
    body = response.json
    assert body["count"] == 7 and body["from"] == DAY and body["to"] == DAY + 360
    # The exact sum 646.61201234 / 7 = 92.37314462 exactly.
    assert '"mean":92.37314462,' in text
    assert '"change":0.50,' in text  # 101.00 - 100.5, exact
    # 0.50 / 100.5 x 100 = 0.497512437...: 4 places.
    assert '"change_percent":0.4975' in text
    assert PriceStatsSchema().validate(body) == {}


def test_rounding_is_half_even(app, client):
    # mean (1 + 2.000000005) / 2 = 1.5000000025: half-even to 8 places keeps the 2.
    # change in % 0.00005 / 1 x 100 = 0.005: 4 places, half-even, gives 0.0050.
    seed(app, "btc_usd", [DAY, DAY + 60], price=lambda i: Decimal(["1", "2.000000005"][i]))
    assert '"mean":1.50000000,' in client.get(STATS).get_data(as_text=True)
    seed(app, "eth_usd", [DAY, DAY + 60], price=lambda i: Decimal(["1", "1.00005"][i]))
    body = client.get("/api/v1/prices/stats?ticker=eth_usd").get_data(as_text=True)
    assert '"change_percent":0.0050' in body


def test_the_mean_is_exact_before_it_is_rounded_on_both_databases(app, client):
    # A sum of doubles keeps ~16 digits: 123456789012.12346 here, and a mean of ...06173000.
    values = ["123456789012.123456789", "0.000000015"]
    seed(app, "btc_usd", [DAY, DAY + 60], price=lambda i: Decimal(values[i]))
    assert '"mean":61728394506.06172840,' in client.get(STATS).get_data(as_text=True)


def test_an_empty_range_counts_zero_and_is_null_elsewhere(app, client):
    seed(app, "btc_usd", [DAY])
    response = client.get(f"{STATS}&from={DAY + 1}")
    assert response.status_code == 200
    assert response.json == {
        "ticker": "btc_usd",
        "from": DAY + 1,
        "to": None,
        "count": 0,
        "first": None,
        "last": None,
        "min": None,
        "max": None,
        "mean": None,
        "change": None,
        "change_percent": None,
    }


def test_bad_input_is_a_422(client):
    response = client.get(f"{STATS}&from=2026-11-24&to=2026-11-23")
    assert response.status_code == 422
    assert "must not be after" in response.json["errors"]["query"]["from"][0]
    assert client.get(f"{STATS}&limit=5").status_code == 422
