"""CSV: the whole range in one streamed download, the same digits as the JSON, errors as JSON."""

from decimal import Decimal

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import admin_connection
from tests.test_api import DAY, seed, walk
from tracker.models import STREAM_BATCH_ROWS

PRICES = "/api/v1/prices?ticker=btc_usd"


def csv_lines(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/csv"
    return response.get_data(as_text=True).splitlines()


@pytest.mark.parametrize(
    "raw", ["86955.73", "0.00001234", "123456789012.123456789", "2950.10", "86955", "0.1"]
)
def test_csv_has_the_same_digits_as_the_json(app, client, raw):
    seed(app, "btc_usd", [DAY], price=lambda i: Decimal(raw), source="backfill")
    json_text = client.get(PRICES).get_data(as_text=True)
    assert f'"price":{raw},' in json_text
    assert csv_lines(client.get(f"{PRICES}&format=csv")) == [
        "ticker,price,timestamp,source",
        f"btc_usd,{raw},{DAY},backfill",
    ]
    lines = csv_lines(client.get(f"/api/v1/candles?ticker=btc_usd&interval=1d&to={DAY}&format=csv"))
    assert lines == [
        "time,open,high,low,close,count,complete",
        f"{DAY},{raw},{raw},{raw},{raw},1,true",
    ]


def test_a_csv_is_the_whole_range_not_a_page_across_many_batches(app, client):
    count = 2 * STREAM_BATCH_ROWS + 7
    timestamps = [DAY + 60 * i for i in range(count)]
    seed(app, "btc_usd", [DAY - 60, *timestamps])
    seed(app, "eth_usd", timestamps[:5])
    response = client.get(f"{PRICES}&from={DAY}", headers={"Accept": "text/csv"})
    lines = csv_lines(response)
    assert lines[0] == "ticker,price,timestamp,source"
    assert [int(line.split(",")[2]) for line in lines[1:]] == timestamps[::-1]
    assert {line.split(",")[0] for line in lines[1:]} == {"btc_usd"}
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=btc_usd_2026-11-23_now.csv"
    )


def test_csv_rows_are_the_json_rows_in_the_same_order(app, client):
    seed(app, "btc_usd", [DAY + 60 * i for i in range(130)])
    seed(app, "btc_usd", [DAY + 60 * i for i in range(130, 140)], source="backfill")
    _, items = walk(client, f"{PRICES}&limit=50")
    lines = csv_lines(client.get(f"{PRICES}&format=csv"))
    assert lines[1:] == [
        f"{i['ticker']},{i['price']},{i['timestamp']},{i['source']}" for i in items
    ]
    lines = csv_lines(client.get(f"{PRICES}&format=csv&source=backfill"))
    assert len(lines) == 11
    _, candles = walk(client, f"/api/v1/candles?ticker=btc_usd&interval=5m&limit=7&to={DAY + 9000}")
    lines = csv_lines(
        client.get(f"/api/v1/candles?ticker=btc_usd&interval=5m&to={DAY + 9000}&format=csv")
    )
    fields = ("time", "open", "high", "low", "close", "count")
    expected = [",".join(str(c[f]) for f in fields) + ",true" for c in candles]
    assert lines[1:] == expected and len(expected) == 28


def test_by_date_csv_is_the_whole_day_and_names_it(app, client):
    seed(app, "btc_usd", [DAY - 60, *(DAY + 60 * i for i in range(1440)), DAY + 86400])
    response = client.get("/api/v1/prices/by-date?ticker=btc_usd&date=2026-11-23&format=csv")
    assert len(csv_lines(response)) == 1 + 1440
    assert response.headers["Content-Disposition"] == "attachment; filename=btc_usd_2026-11-23.csv"


def test_filenames_name_ticker_interval_and_range(client):
    url = "/api/v1/candles?ticker=btc_usd&interval=1h&from=2026-11-01&to=2026-11-30T12:00:00Z"
    response = client.get(f"{url}&format=csv")
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=btc_usd_1h_2026-11-01_2026-11-30T120000Z.csv"
    )
    assert csv_lines(response) == ["time,open,high,low,close,count,complete"]


def test_format_parameter_wins_over_accept(app, client):
    seed(app, "btc_usd", [DAY])
    response = client.get(f"{PRICES}&format=json", headers={"Accept": "text/csv"})
    assert response.is_json and response.json["items"]
    response = client.get(PRICES, headers={"Accept": "text/html,*/*;q=0.8"})  # a browser
    assert response.is_json


@pytest.mark.parametrize(
    "url",
    [
        f"{PRICES}&format=csv&from=yesterday",
        f"{PRICES}&format=csv&limit=10",
        f"{PRICES}&format=csv&cursor=forged",
        "/api/v1/prices/by-date?ticker=btc_usd&date=2026-02-30&format=csv",
        "/api/v1/candles?ticker=btc_usd&interval=2h&format=csv",
    ],
)
def test_bad_input_in_csv_is_the_same_json_422(client, url):
    for response in (
        client.get(url),
        client.get(url.replace("&format=csv", ""), headers={"Accept": "text/csv"}),
    ):
        assert response.status_code == 422
        assert response.is_json and response.json["code"] == 422 and response.json["errors"]


def test_postgresql_streams_from_a_server_side_cursor(app, database_url):
    # Rows are fetched batch by batch while the client reads: mid-download the API's backend
    # sits in its transaction after a FETCH from the named cursor, not after one big SELECT.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server; its cursor steps through the file as it is read")
    seed(app, "btc_usd", [DAY - 60 * i for i in range(3 * STREAM_BATCH_ROWS)])
    response = app.test_client().get(f"{PRICES}&format=csv", buffered=False)
    try:
        chunks = iter(response.response)
        assert next(chunks).startswith(b"ticker,")
        assert next(chunks).count(b"\n") == STREAM_BATCH_ROWS
        connection = admin_connection()
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT state, query FROM pg_stat_activity WHERE datname = %s",
                    (make_url(database_url).database,),
                )
                activity = cursor.fetchall()
        finally:
            connection.close()
        assert ("idle in transaction", 'FETCH FORWARD 5000 FROM "stream"') in activity, activity
    finally:
        response.close()
