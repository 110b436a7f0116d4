"""The REST API over the test PostgreSQL: results, pagination, exactness and every error path."""

from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import ADMIN_DATABASE_URL, admin_connection
from tracker import caching
from tracker.api import prices
from tracker.models import insert_prices, latest_price
from tracker.responses import PricePageSchema, PriceSchema
from tracker.schemas import encode_cursor

DAY = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp())  # 2026-11-23T00:00:00Z


def seed(app, ticker, timestamps, price=lambda i: Decimal(80000) + Decimal(i) / 100, source="live"):
    rows = [
        {"ticker": ticker, "price": price(i), "timestamp": ts, "source": source}
        for i, ts in enumerate(timestamps)
    ]
    with app.app_context():
        insert_prices(rows)
    return rows


def walk(client, url):
    """Follow next_cursor from `url` to the last page; returns (pages, items)."""
    pages, items = [], []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.json
        pages.append(response)
        items += response.json["items"]
        cursor = response.json["next_cursor"]
        url = None
        if cursor:
            link = response.headers["Link"]
            assert link.endswith('>; rel="next"')
            next_url = urlsplit(link[1 : link.index(">")])
            assert parse_qs(next_url.query)["cursor"] == [cursor]
            url = f"{next_url.path}?{next_url.query}"
        else:
            assert "Link" not in response.headers
    return pages, items


# --- Exactness -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["86955.73", "0.00001234", "123456789012.123456789", "2950.10", "86955", "0.1"]
)
def test_prices_come_back_digit_for_digit_as_json_numbers(app, client, raw):
    seed(app, "btc_usd", [DAY], price=lambda i: Decimal(raw))
    for url in [
        "/api/v1/prices/latest?ticker=btc_usd",
        f"/api/v1/prices/at?ticker=btc_usd&timestamp={DAY}",
        "/api/v1/prices?ticker=btc_usd",
        "/api/v1/prices/by-date?ticker=btc_usd&date=2026-11-23",
    ]:
        text = client.get(url).get_data(as_text=True)
        assert f'"price":{raw},' in text, (url, text)


@pytest.mark.parametrize("raw", ["86955.73", "0.00001234", "123456789012.123456789", "2950.10"])
def test_price_format_string_writes_the_same_digits_as_json_strings(app, client, raw):
    # Clients that read JSON numbers as floats (most, pandas, generated clients) lose digits
    # of 123456789012.123456789; as a string it arrives whole.
    seed(app, "btc_usd", [DAY], price=lambda i: Decimal(raw))
    as_strings = {
        "/api/v1/prices/latest?ticker=btc_usd": f'"price":"{raw}",',
        f"/api/v1/prices/at?ticker=btc_usd&timestamp={DAY}": f'"price":"{raw}",',
        "/api/v1/prices?ticker=btc_usd": f'"price":"{raw}",',
        "/api/v1/prices/by-date?ticker=btc_usd&date=2026-11-23": f'"price":"{raw}",',
        f"/api/v1/candles?ticker=btc_usd&interval=1d&to={DAY}": (
            f'"open":"{raw}","high":"{raw}","low":"{raw}","close":"{raw}",'
        ),
        "/api/v1/prices/stats?ticker=btc_usd": f'"first":{{"price":"{raw}",',
        "/api/v1/tickers?": f'"price":"{raw}",',
    }
    for url, expected in as_strings.items():
        response = client.get(f"{url}&price_format=string")
        assert response.status_code == 200, (url, response.json)
        text = response.get_data(as_text=True)
        assert expected in text, (url, text)
        # The default is still a number with the same digits.
        assert expected.replace('"', "").split(":", 1)[1] in client.get(url).text.replace('"', "")
    stats = client.get("/api/v1/prices/stats?ticker=btc_usd&price_format=string").json
    assert stats["mean"] == str(Decimal(raw).quantize(Decimal("1E-8")))
    assert (stats["change"], stats["change_percent"]) == (str(Decimal(raw) * 0), "0.0000")
    assert stats["count"] == 1 and stats["from"] is None  # only decimals change form
    # CSV has no JSON types: the same either way.
    csv = "/api/v1/prices?ticker=btc_usd&format=csv"
    assert client.get(f"{csv}&price_format=string").text == client.get(csv).text


# --- /prices/latest and /prices/at -------------------------------------------------------------


def test_latest_is_the_newest_row_of_that_ticker(app, client):
    seed(app, "btc_usd", [DAY, DAY + 60, DAY + 120])
    seed(app, "eth_usd", [DAY + 180], price=lambda i: Decimal("2950.12"))
    response = client.get("/api/v1/prices/latest?ticker=BTC_USD")
    assert response.status_code == 200
    assert response.json == {
        "ticker": "btc_usd",
        "price": 80000.02,
        "timestamp": DAY + 120,
        "source": "live",
    }
    assert PriceSchema().validate(response.json) == {}


def test_latest_is_404_with_a_message_when_nothing_is_stored(client):
    response = client.get("/api/v1/prices/latest?ticker=eth_usd")
    assert response.status_code == 404
    assert response.json["message"] == "No price stored for eth_usd yet."


def test_latest_parses_each_query_string_once_per_app_and_never_keeps_a_refusal(make_app):
    # /prices/latest remembers its parsed arguments (StrictQueryParser.parse): by query
    # string and by app, whose TICKERS decide what is valid, and only when they were valid.
    both = make_app(TICKERS="btc_usd,eth_usd").test_client()
    btc_only = make_app(TICKERS="btc_usd").test_client()
    url = "/api/v1/prices/latest?ticker=eth_usd"
    for _ in range(2):
        assert both.get(url).status_code == 404  # valid, nothing stored yet
        assert btc_only.get(url).status_code == 422
        repeated = both.get(f"{url}&ticker=eth_usd")
        assert repeated.status_code == 422 and "Given 2 times" in repeated.text
    assert both.get(url).json == both.get(url).json


# /prices/latest keeps a ticker's newest row while it is the current slot's (FETCH_INTERVAL=60).
SLOT = DAY + 3600
LATEST = "/api/v1/prices/latest?ticker=btc_usd"


@pytest.fixture
def clock(monkeypatch):
    """The clock of /prices/latest and of its cache headers, set by the test (clock.now)."""
    clock = SimpleNamespace(now=SLOT + 10)
    fake = SimpleNamespace(time=lambda: clock.now)
    monkeypatch.setattr(prices, "time", fake)
    monkeypatch.setattr(caching, "time", fake)
    return clock


@pytest.fixture
def latest_queries(monkeypatch):
    """The tickers /prices/latest asked the database for, one entry per query."""
    asked = []

    def counted(ticker):
        asked.append(ticker)
        return latest_price(ticker)

    monkeypatch.setattr(prices, "latest_price", counted)
    return asked


def test_latest_of_the_current_slot_is_answered_without_a_query_until_the_slot_ends(
    app, client, clock, latest_queries
):
    seed(app, "btc_usd", [SLOT - 60, SLOT])
    first = client.get(LATEST)
    assert first.json["timestamp"] == SLOT and latest_queries == ["btc_usd"]
    for now in (SLOT + 10, SLOT + 30, SLOT + 59):
        clock.now = now
        assert client.get(LATEST).json == first.json
    assert latest_queries == ["btc_usd"]
    # The slot turns: the database is asked on every request until the next fetch lands...
    clock.now = SLOT + 60
    assert [client.get(LATEST).json["timestamp"] for _ in range(2)] == [SLOT, SLOT]
    assert len(latest_queries) == 3
    # ...whose price is served at once, and then kept in its turn.
    seed(app, "btc_usd", [SLOT + 60], price=lambda i: Decimal("81234.5"))
    assert [client.get(LATEST).json["price"] for _ in range(3)] == [81234.5] * 3
    assert len(latest_queries) == 4


def test_latest_older_than_the_current_slot_is_asked_every_time_and_a_new_price_served_at_once(
    app, client, clock, latest_queries
):
    assert client.get(LATEST).status_code == 404  # nothing stored: never kept either
    seed(app, "btc_usd", [SLOT - 60])
    for _ in range(3):
        assert client.get(LATEST).json["timestamp"] == SLOT - 60
    assert len(latest_queries) == 4
    seed(app, "btc_usd", [SLOT], price=lambda i: Decimal("81234.5"))
    response = client.get(LATEST)
    assert (response.json["timestamp"], response.json["price"]) == (SLOT, 81234.5)
    # A row of a later slot (from a worker whose clock runs ahead) is served, never kept.
    seed(app, "eth_usd", [SLOT + 60])
    for _ in range(2):
        assert client.get("/api/v1/prices/latest?ticker=eth_usd").json["timestamp"] == SLOT + 60
    assert latest_queries[-2:] == ["eth_usd", "eth_usd"]


@pytest.mark.parametrize("query", ["", "&price_format=string"])
def test_a_kept_latest_is_the_same_answer_as_a_queried_one(
    app, client, clock, latest_queries, query
):
    seed(app, "btc_usd", [SLOT], price=lambda i: Decimal("86955.70"))
    seed(app, "eth_usd", [SLOT - 60], price=lambda i: Decimal("2950.10"))

    def answer(ticker, **headers):
        response = client.get(f"/api/v1/prices/latest?ticker={ticker}{query}", headers=headers)
        kept = {k: v for k, v in response.headers.items() if k not in ("Date", "X-Request-ID")}
        return response.status_code, kept, response.data

    queried = answer("btc_usd")  # asked the database, and kept
    assert answer("btc_usd") == queried and latest_queries == ["btc_usd"]
    assert b'"price":"86955.70"' in queried[2] if query else b'"price":86955.70,' in queried[2]
    etag = queried[1]["ETag"]
    assert answer("btc_usd", **{"If-None-Match": etag})[0] == 304
    assert latest_queries == ["btc_usd"]
    # Another ticker is its own: eth_usd's newest row is older than the slot, asked each time.
    assert answer("eth_usd") == answer("eth_usd")
    assert latest_queries == ["btc_usd", "eth_usd", "eth_usd"]


def test_each_app_keeps_its_own_latest(make_app, clock, latest_queries):
    first, second = make_app(), make_app()
    seed(first, "btc_usd", [SLOT])
    assert first.test_client().get(LATEST).json["timestamp"] == SLOT
    assert second.test_client().get(LATEST).json["timestamp"] == SLOT
    assert len(latest_queries) == 2


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (DAY + 60, DAY + 60),  # exactly on an observation
        (DAY + 119, DAY + 60),  # between two: the older one
        (DAY + 10_000, DAY + 120),  # after the last: the last
        ("2026-11-23T00:01:30Z", DAY + 60),  # ISO 8601 with Z
        ("2026-11-23T01:01:30%2B01:00", DAY + 60),  # ISO 8601 with an offset
        ("2026-11-23T01:01:30+01:00", DAY + 60),  # the same, "+" left unencoded (a space)
        ("2026-11-23 00:02", DAY + 120),  # naive ISO: UTC
    ],
)
def test_at_is_the_newest_observation_at_or_before_the_moment(app, client, moment, expected):
    seed(app, "btc_usd", [DAY, DAY + 60, DAY + 120])
    response = client.get(f"/api/v1/prices/at?ticker=btc_usd&timestamp={moment}")
    assert response.status_code == 200, response.json
    assert response.json["timestamp"] == expected


def test_at_before_the_first_observation_is_404(app, client):
    seed(app, "btc_usd", [DAY])
    response = client.get(f"/api/v1/prices/at?ticker=btc_usd&timestamp={DAY - 1}")
    assert response.status_code == 404
    assert str(DAY - 1) in response.json["message"]


# --- /prices and pagination --------------------------------------------------------------------


def test_prices_walks_every_row_once_newest_first(app, client):
    timestamps = [DAY + 60 * i for i in range(250)]
    seed(app, "btc_usd", timestamps)
    seed(app, "eth_usd", timestamps[:10])
    pages, items = walk(client, "/api/v1/prices?ticker=btc_usd")
    assert [len(p.json["items"]) for p in pages] == [100, 100, 50]
    assert [i["timestamp"] for i in items] == sorted(timestamps, reverse=True)
    assert {i["ticker"] for i in items} == {"btc_usd"}
    assert pages[-1].json["next_cursor"] is None
    for page in pages:
        assert PricePageSchema().validate(page.json) == {}


def test_a_last_page_of_exactly_limit_rows_has_no_next_cursor(app, client):
    # A next_cursor here would send clients to an empty page.
    seed(app, "btc_usd", [DAY + 60 * i for i in range(6)])
    pages, items = walk(client, "/api/v1/prices?ticker=btc_usd&limit=3")
    assert [len(p.json["items"]) for p in pages] == [3, 3]
    assert pages[-1].json["next_cursor"] is None and len(items) == 6
    single = client.get("/api/v1/prices?ticker=btc_usd&limit=6")
    assert single.json["next_cursor"] is None and "Link" not in single.headers


def test_next_link_keeps_the_query_and_is_absolute(app, client):
    seed(app, "btc_usd", [DAY + 60 * i for i in range(10)])
    response = client.get(f"/api/v1/prices?ticker=btc_usd&limit=3&from={DAY}&to={DAY + 540}")
    link = response.headers["Link"]
    assert link.startswith("<http://localhost/api/v1/prices?")
    query = parse_qs(urlsplit(link[1 : link.index(">")]).query)
    assert (
        query["limit"] == ["3"] and query["from"] == [str(DAY)] and query["to"] == [str(DAY + 540)]
    )


def test_from_and_to_are_inclusive_and_accept_unix_iso_and_dates(app, client):
    seed(app, "btc_usd", [DAY - 60, DAY, DAY + 60, DAY + 86400, DAY + 86460])
    cases = {
        f"from={DAY}&to={DAY + 86400}": [DAY + 86400, DAY + 60, DAY],
        "from=2026-11-23&to=2026-11-24": [DAY + 86400, DAY + 60, DAY],
        "from=2026-11-23T00:01:00Z": [DAY + 86460, DAY + 86400, DAY + 60],
        "to=2026-11-23": [DAY, DAY - 60],
    }
    for query, expected in cases.items():
        _, items = walk(client, f"/api/v1/prices?ticker=btc_usd&{query}")
        assert [i["timestamp"] for i in items] == expected, query


def test_a_cursor_with_a_range_pages_within_the_range(app, client):
    seed(app, "btc_usd", [DAY + 60 * i for i in range(20)])
    _, items = walk(client, f"/api/v1/prices?ticker=btc_usd&limit=4&from={DAY + 60}&to={DAY + 600}")
    assert [i["timestamp"] for i in items] == [DAY + 60 * i for i in range(10, 0, -1)]


def test_empty_result_is_an_empty_page(client):
    response = client.get("/api/v1/prices?ticker=btc_usd")
    assert response.status_code == 200
    assert response.json == {"ticker": "btc_usd", "items": [], "next_cursor": None}


# --- /prices/by-date ---------------------------------------------------------------------------


def test_by_date_returns_exactly_that_utc_day(app, client):
    day = [DAY + 60 * i for i in range(1440)]
    seed(app, "btc_usd", [DAY - 60, *day, DAY + 86400])
    pages, items = walk(client, "/api/v1/prices/by-date?ticker=btc_usd&date=2026-11-23&limit=1000")
    assert [len(p.json["items"]) for p in pages] == [1000, 440]
    assert [i["timestamp"] for i in items] == sorted(day, reverse=True)
    assert "date=2026-11-23" in pages[0].headers["Link"]


# --- Bad input: always a 422 in flask-smorest's shape, saying what is wrong --------------------

OTHER_TICKER_CURSOR = encode_cursor("eth_usd", DAY)


@pytest.mark.parametrize(
    ("url", "field", "says"),
    [
        ("/api/v1/prices", "ticker", "Missing data"),
        ("/api/v1/prices/latest", "ticker", "Missing data"),
        ("/api/v1/prices/latest?ticker=doge_usd", "ticker", "Tracked tickers: btc_usd, eth_usd"),
        ("/api/v1/prices/latest?ticker=", "ticker", "Unknown ticker"),
        ("/api/v1/prices?ticker=btc_usd&from=yesterday", "from", "Not a valid time"),
        ("/api/v1/prices?ticker=btc_usd&from=-1", "from", "out of range"),
        ("/api/v1/prices?ticker=btc_usd&to=253402300800", "to", "out of range"),
        ("/api/v1/prices?ticker=btc_usd&from=0001-01-01", "from", "out of range"),
        ("/api/v1/prices?ticker=btc_usd&from=2026-13-01", "from", "Not a valid time"),
        (
            "/api/v1/prices?ticker=btc_usd&from=2026-11-24&to=2026-11-23",
            "from",
            "must not be after",
        ),
        ("/api/v1/prices?ticker=btc_usd&limit=0", "limit", "greater than or equal to 1"),
        ("/api/v1/prices?ticker=btc_usd&limit=1001", "limit", "less than or equal to 1000"),
        ("/api/v1/prices?ticker=btc_usd&limit=ten", "limit", "Not a valid integer"),
        ("/api/v1/prices?ticker=btc_usd&cursor=forged", "cursor", "Invalid cursor"),
        ("/api/v1/prices?ticker=btc_usd&cursor=!!!!", "cursor", "Invalid cursor"),
        (
            f"/api/v1/prices?ticker=btc_usd&cursor={encode_cursor('btc_usd', 10**13)}",
            "cursor",
            "Invalid cursor",
        ),
        (f"/api/v1/prices?ticker=btc_usd&cursor={OTHER_TICKER_CURSOR}", "cursor", "eth_usd"),
        ("/api/v1/prices?ticker=btc_usd&limt=5", "limt", "Unknown field"),
        ("/api/v1/prices/by-date?ticker=btc_usd", "date", "Missing data"),
        ("/api/v1/prices/by-date?ticker=btc_usd&date=2026-02-30", "date", "Not a valid date"),
        ("/api/v1/prices/by-date?ticker=btc_usd&date=1969-12-31", "date", "greater than"),
        ("/api/v1/prices/at?ticker=btc_usd", "timestamp", "Missing data"),
        ("/api/v1/prices/at?ticker=btc_usd&timestamp=1e9", "timestamp", "Not a valid time"),
        ("/api/v1/prices/at?ticker=btc_usd&timestamp=" + "9" * 5000, "timestamp", "Not a valid"),
        ("/api/v1/prices?ticker=btc_usd&to=1969-12-31T23:59:59.5Z", "to", "out of range"),
        # Strict input: a parameter given twice is an error, not "the first one wins".
        ("/api/v1/prices?ticker=btc_usd&ticker=eth_usd", "ticker", "Given 2 times: give it once"),
        ("/api/v1/prices?ticker=btc_usd&limit=5&limit=5", "limit", "give it once"),
        ("/api/v1/candles?ticker=btc_usd&interval=1h&interval=1d", "interval", "give it once"),
        ("/api/v1/tickers?price_format=string&price_format=string", "price_format", "give it"),
        # Milliseconds (Date.now(), most exchanges) say so instead of "out of range".
        (
            "/api/v1/prices/at?ticker=btc_usd&timestamp=1763928000000",
            "timestamp",
            "looks like milliseconds; use seconds (1763928000)",
        ),
        ("/api/v1/prices?ticker=btc_usd&from=1763928000123", "from", "looks like milliseconds"),
        ("/api/v1/prices/by-date?ticker=btc_usd&date=23.11.2026", "date", "use YYYY-MM-DD"),
        ("/api/v1/prices/latest?ticker=btc_usd&price_format=float", "price_format", "Must be one"),
    ],
)
def test_bad_input_is_a_422_that_names_the_field(client, url, field, says):
    response = client.get(url)
    assert response.status_code == 422, response.get_data(as_text=True)
    body = response.json
    assert body["code"] == 422 and body["status"] == "Unprocessable Entity"
    messages = body["errors"]["query"][field]
    assert any(says in message for message in messages), messages


def test_unknown_path_is_a_json_404(client):
    response = client.get("/api/v1/nope?ticker=btc_usd")
    assert response.status_code == 404
    assert response.is_json and "not found" in response.json["message"].lower()


def test_wrong_method_is_a_json_405(client):
    response = client.post("/api/v1/prices?ticker=btc_usd")
    assert response.status_code == 405
    assert response.is_json and response.json["message"]
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"


def test_fractional_bounds_never_let_in_an_excluded_second(app, client):
    seed(app, "btc_usd", [DAY, DAY + 1, DAY + 2])
    _, items = walk(client, "/api/v1/prices?ticker=btc_usd&from=2026-11-23T00:00:00.5Z")
    assert [i["timestamp"] for i in items] == [DAY + 2, DAY + 1]
    _, items = walk(client, "/api/v1/prices?ticker=btc_usd&to=2026-11-23T00:00:01.5Z")
    assert [i["timestamp"] for i in items] == [DAY + 1, DAY]


# --- Failures: JSON, never a stack trace ----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/prices/latest?ticker=btc_usd",
        "/api/v1/prices?ticker=btc_usd",
        "/api/v1/prices/by-date?ticker=btc_usd&date=2026-11-23",
        "/api/v1/prices/at?ticker=btc_usd&timestamp=1",
        "/api/v1/prices/stats?ticker=btc_usd",
        "/api/v1/candles?ticker=btc_usd&interval=1h",
        # A CSV is streamed, but its query starts before the response: still the JSON 503.
        "/api/v1/prices?ticker=btc_usd&format=csv",
        "/api/v1/candles?ticker=btc_usd&interval=1d&format=csv",
    ],
)
def test_database_down_is_a_json_503(make_app, url):
    client = make_app(DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere").test_client()
    response = client.get(url)
    assert response.status_code == 503
    assert response.json == {
        "code": 503,
        "status": "Service Unavailable",
        "message": "Database unavailable, retry later.",
    }
    assert response.headers["Retry-After"]


def test_connections_a_database_restart_dropped_are_replaced_without_an_error(
    make_app, postgres_url
):
    # PostgreSQL's read pool does not pre-ping (a round trip per request): a read that meets
    # a dead connection must retry on a fresh one instead of answering 503.
    app = make_app(DATABASE_URL=postgres_url)
    client = app.test_client()
    seed(app, "btc_usd", [DAY])
    assert client.get("/api/v1/prices/latest?ticker=btc_usd").status_code == 200
    connection = admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (make_url(postgres_url).database,),
            )
            assert cursor.fetchone()[0] >= 1  # the API's pooled connection, at least
    finally:
        connection.close()
    for url in [
        # First: a stream's cursor meets the dead connection (a read would replace the pool).
        "/api/v1/prices?ticker=btc_usd&format=csv",
        "/api/v1/prices/latest?ticker=btc_usd",
        "/api/v1/prices?ticker=btc_usd",
        f"/api/v1/prices/at?ticker=btc_usd&timestamp={DAY}",
    ]:
        response = client.get(url)
        assert response.status_code == 200, response.json


def test_unexpected_database_error_is_a_json_500_without_details(make_app):
    # The admin database has no price_records table: a programming error, not an outage.
    client = make_app(DATABASE_URL=ADMIN_DATABASE_URL).test_client()
    response = client.get("/api/v1/prices/latest?ticker=btc_usd")
    assert response.status_code == 500
    assert response.json == {
        "code": 500,
        "status": "Internal Server Error",
        "message": "Internal server error.",
    }


# --- Documentation -----------------------------------------------------------------------------


def test_openapi_documents_every_endpoint_parameter_and_error(client):
    spec = client.get("/openapi.json").json
    # The operations endpoints (/healthz, ...) are checked in test_observability.py.
    api_paths = {path: item for path, item in spec["paths"].items() if path.startswith("/api/")}
    tickers = api_paths.pop("/api/v1/tickers")["get"]  # the one endpoint without `ticker`
    # Every GET under /api/ also takes the shared If-None-Match (test_caching.py checks it).
    shared = {"$ref": "#/components/parameters/IfNoneMatch"}
    assert tickers["parameters"] == [tickers["parameters"][0], shared]
    assert tickers["parameters"][0]["name"] == "price_format"
    assert {"200", "422", "503"} <= set(tickers["responses"])
    assert tickers["responses"]["200"]["content"]["application/json"]["example"]["tickers"]
    assert set(api_paths) == {
        "/api/v1/prices",
        "/api/v1/prices/latest",
        "/api/v1/prices/by-date",
        "/api/v1/prices/at",
        "/api/v1/prices/gaps",
        "/api/v1/prices/stats",
        "/api/v1/candles",
    }
    for path, item in api_paths.items():
        operation = item["get"]
        assert operation["summary"], path
        assert shared in operation["parameters"], path
        params = {p["name"]: p for p in operation["parameters"] if p != shared}
        assert params["ticker"]["required"] is True, path
        assert params["ticker"]["schema"]["example"] == "btc_usd"
        assert {"200", "422", "503"} <= set(operation["responses"]), path
        ok = operation["responses"]["200"]["content"]["application/json"]
        assert ok["example"]["ticker"] == "btc_usd", path
        # Every endpoint that answers prices can write them as strings; the gaps have none.
        assert ("price_format" in params) is (path != "/api/v1/prices/gaps"), path
    prices = spec["paths"]["/api/v1/prices"]["get"]
    assert {"ticker", "limit", "cursor", "from", "to", "source", "format", "price_format"} == {
        p["name"] for p in prices["parameters"] if p != shared
    }
    assert "Link" in prices["responses"]["200"]["headers"]
    assert "404" in spec["paths"]["/api/v1/prices/latest"]["get"]["responses"]
    candles = spec["paths"]["/api/v1/candles"]["get"]
    assert {"ticker", "interval", "limit", "cursor", "from", "to", "format", "price_format"} == {
        p["name"] for p in candles["parameters"] if p != shared
    }
    # The paged endpoints also answer CSV: documented as the 200's other media type.
    for path in ("/api/v1/prices", "/api/v1/prices/by-date", "/api/v1/candles"):
        ok = spec["paths"][path]["get"]["responses"]["200"]
        assert ok["content"]["text/csv"]["example"].count("\n") == 3, path
        assert {"Link", "Content-Disposition"} <= set(ok["headers"]), path
    stats = spec["paths"]["/api/v1/prices/stats"]["get"]["responses"]["200"]["content"]
    assert "text/csv" not in stats and stats["application/json"]["example"]["mean"]


def test_swagger_ui_is_served_with_its_assets_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'href="swagger-ui/swagger-ui.css"' in html  # relative: works under a path prefix
    assert 'data-spec-url="/openapi.json"' in html
    for asset in ["swagger-ui/swagger-ui.css", "swagger-ui/swagger-ui-bundle.js"]:
        response = client.get(f"/{asset}")
        assert response.status_code == 200 and len(response.data) > 10_000, asset
    assert 'src="static/swagger-ui-init.js"' in html  # relative too
    assert b"SwaggerUIBundle" in client.get("/static/swagger-ui-init.js").data


def test_redoc_page_is_served(client):
    page = client.get("/redoc")
    assert page.status_code == 200
    assert 'spec-url="/openapi.json"' in page.get_data(as_text=True)
