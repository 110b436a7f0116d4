"""A history with no silent holes: the backfill, the gap report, /tickers, sources, metrics."""

import threading
import time
from decimal import Decimal

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import migrated_database
from tests.fake_deribit import chart_reply, error_reply
from tests.test_observability import metric
from tracker.extensions import db
from tracker.jobs import backfill_prices
from tracker.models import Price, insert_prices

INTERVAL = 60


def current_slot():
    return int(time.time()) // INTERVAL


@pytest.fixture(autouse=True)
def clear_of_a_minute_boundary():
    """Start well inside a minute: these tests count slots relative to the current one, and
    the code under test reads the clock again (a boundary passing in between moves it by one)."""
    if time.time() % INTERVAL > INTERVAL - 8:
        time.sleep(INTERVAL - time.time() % INTERVAL + 0.1)


def store(app, ticker, slots, price="100.5", source="live"):
    """Store one row per slot number (timestamp = slot x INTERVAL)."""
    rows = [
        {"ticker": ticker, "price": Decimal(price), "timestamp": s * INTERVAL, "source": source}
        for s in slots
    ]
    with app.app_context():
        insert_prices(rows)


def rows_of(app, ticker):
    """{timestamp: (price, source)} of every stored row of `ticker`."""
    with app.app_context():
        query = db.select(Price.timestamp, Price.price, Price.source).where(Price.ticker == ticker)
        return {ts: (price, source) for ts, price, source in db.session.execute(query)}


@pytest.fixture
def moving(deribit):
    """The fake Deribit with a price that moves every second and a chart point every minute."""
    deribit.reset(random_walk=True, chart_spacing=60)
    return deribit


# --- The backfill ----------------------------------------------------------------------------


def test_backfill_fills_each_hole_with_exactly_the_price_deribit_gave_for_that_moment(app, moving):
    now = current_slot()
    holes = {now - 20, now - 12, now - 11, now - 10}
    live = [s for s in range(now - 30, now) if s not in holes]
    store(app, "btc_usd", live, price="90000.01")
    store(app, "eth_usd", range(now - 30, now), price="3000.5")

    with app.app_context():
        reports = backfill_prices()

    rows = rows_of(app, "btc_usd")
    for slot in holes:
        price, source = rows[slot * INTERVAL]
        assert source == "backfill"
        assert str(price) == moving.price_at("btc_usd", slot * INTERVAL)  # digit for digit
    assert {rows[s * INTERVAL] for s in live} == {(Decimal("90000.01"), "live")}  # untouched
    assert len(rows) == 30  # nothing beyond the holes: no invented prices
    assert reports["btc_usd"]["missing"] == 4 and reports["btc_usd"]["filled"] == 4
    assert reports["btc_usd"]["still_missing"] == 0 and reports["btc_usd"]["range"] == "1h"
    assert reports["btc_usd"]["spacing_s"] == 60
    # eth_usd had no hole, so Deribit was not asked for it; btc_usd was asked once.
    assert [(name, rng) for name, rng, _ in moving.chart_requests] == [("btc_usd", "1h")]


def test_a_second_backfill_run_finds_nothing_to_do(app, moving):
    now = current_slot()
    store(app, "btc_usd", [now - 10, now - 5])
    store(app, "eth_usd", [now - 10])
    with app.app_context():
        first = backfill_prices(tickers=["btc_usd"])
        second = backfill_prices(tickers=["btc_usd"])
    assert first["btc_usd"]["filled"] == 7  # now-9 .. now-6 and now-4 .. now-2
    assert second["btc_usd"]["missing"] == 0 and second["btc_usd"]["filled"] == 0
    assert len(moving.chart_requests) == 1


def test_the_window_starts_at_the_first_stored_row_and_spares_the_newest_slots(app, moving):
    now = current_slot()
    store(app, "btc_usd", [now - 5])
    with app.app_context():
        reports = backfill_prices(tickers=["btc_usd", "eth_usd"])
    # Before now-5 is not a hole but the time before tracking began; now-1 and now may still
    # be stored by the live fetch. Only now-4 .. now-2 are holes.
    assert sorted(rows_of(app, "btc_usd")) == [s * INTERVAL for s in range(now - 5, now - 1)]
    assert reports["btc_usd"]["missing"] == 3
    assert reports["eth_usd"]["note"] == "no price stored yet"


@pytest.fixture
def read_database(postgres_url):
    """A second PostgreSQL database, migrated: what READ_DATABASE_URL points at (a replica
    stands in; no replication needed to tell which database a query went to)."""
    with migrated_database(f"{make_url(postgres_url).database}_read") as url:
        yield url


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_backfill_reads_the_primary_not_the_read_database(make_app, moving, read_database):
    """The worker's holes are the primary's: a read database (replica) with other rows, or
    lagging, must not hide a hole nor invent one."""
    now = current_slot()
    app = make_app(READ_DATABASE_URL=read_database)
    store(app, "btc_usd", [now - 10, now - 5])  # the primary: holes now-9 .. now-6, now-4 .. now-2
    replica = make_app(DATABASE_URL=read_database)
    store(replica, "btc_usd", range(now - 30, now))  # the read database: no hole at all
    with app.app_context():
        report = backfill_prices(tickers=["btc_usd"])["btc_usd"]
    assert report["missing"] == 7 and report["filled"] == 7
    assert sorted(rows_of(app, "btc_usd")) == [s * INTERVAL for s in range(now - 10, now - 1)]


def test_points_coarser_than_the_interval_fill_only_their_slots(app, moving):
    moving.chart_spacing = 300
    now = current_slot()
    store(app, "btc_usd", [now - 40, now - 25])
    with app.app_context():
        report = backfill_prices(tickers=["btc_usd"], until=(now - 25) * INTERVAL)["btc_usd"]
    filled = {ts for ts, (_, source) in rows_of(app, "btc_usd").items() if source == "backfill"}
    assert filled == {s * INTERVAL for s in range(now - 39, now - 25) if s % 5 == 0}
    assert report["spacing_s"] == 300
    assert report["why"] == {"no chart point falls in the slot": 14 - len(filled)}


def test_holes_older_than_the_chart_data_stay_holes_and_say_why(app, moving):
    moving.chart_spacing = None  # per range: "all" is one point a day
    now = current_slot()
    store(app, "btc_usd", [now - 3])
    first_slot = now - 4 * 366 * 1440  # beyond the fake's whole history
    with app.app_context():
        report = backfill_prices(tickers=["btc_usd"], since=first_slot * INTERVAL)["btc_usd"]
    assert report["range"] == "all" and report["spacing_s"] == 86400
    backfilled = {ts: p for ts, (p, s) in rows_of(app, "btc_usd").items() if s == "backfill"}
    assert len(backfilled) == report["filled"] >= report["points"] - 1
    assert all(str(p) == moving.price_at("btc_usd", ts) for ts, p in backfilled.items())
    assert {ts % 86400 for ts in backfilled} == {0}  # only where a point was: nothing invented
    older = report["why"]["older than Deribit's all chart data"]
    assert older == min(backfilled) // INTERVAL - first_slot
    assert report["still_missing"] == report["missing"] - report["filled"]
    assert report["still_missing"] == sum(report["why"].values())


def test_garbage_points_are_never_stored(app, moving):
    now = current_slot()
    store(app, "btc_usd", [now - 10, now - 5])
    good = (now - 9) * INTERVAL
    moving.script_chart(
        "btc_usd",
        chart_reply(
            [
                (good * 1000, "86955.73"),
                ((now - 8) * INTERVAL * 1000, "-1"),
                ((now - 7) * INTERVAL * 1000, '"86955.73"'),
                ((now - 6) * INTERVAL * 1000, "1E+40"),
            ]
        ),
    )
    with app.app_context():
        report = backfill_prices(tickers=["btc_usd"], until=(now - 5) * INTERVAL)["btc_usd"]
    backfilled = {ts: p for ts, (p, s) in rows_of(app, "btc_usd").items() if s == "backfill"}
    assert backfilled == {good: Decimal("86955.73")}
    assert len(report["rejected"]) == 3 and "non_positive" in report["rejected"][0]
    assert report["still_missing"] == 3


def test_a_failing_deribit_fills_nothing_and_says_so(app, moving):
    now = current_slot()
    store(app, "btc_usd", [now - 10, now - 5])
    moving.outage = True
    with app.app_context():
        report = backfill_prices(tickers=["btc_usd"], until=(now - 5) * INTERVAL)["btc_usd"]
    assert report["filled"] == 0 and report["still_missing"] == 4
    assert list(report["why"]) == [
        "Deribit failed: deribit_13028: Deribit error 13028: temporarily_unavailable"
        " (gave up after 3 attempts)"
    ]
    assert len(rows_of(app, "btc_usd")) == 2


def test_a_live_row_stored_while_the_chart_request_runs_is_kept(app, moving):
    now = current_slot()
    store(app, "btc_usd", [now - 10, now - 5])
    slow = chart_reply(moving.chart_points("btc_usd", "1h", time.time()))
    slow.delay = 1.0
    moving.script_chart("btc_usd", slow)
    # The live fetch stores now-7 while the chart request is under way.
    late_live = threading.Timer(0.3, store, (app, "btc_usd", [now - 7], "1.23"))
    late_live.start()
    with app.app_context():
        report = backfill_prices(tickers=["btc_usd"], until=(now - 5) * INTERVAL)["btc_usd"]
    late_live.join()
    assert rows_of(app, "btc_usd")[(now - 7) * INTERVAL] == (Decimal("1.23"), "live")
    assert report["missing"] == 4 and report["filled"] == 3


def test_flask_backfill_prints_what_it_filled_and_what_is_still_missing(app, moving):
    now = current_slot()
    store(app, "btc_usd", [now - 10, now - 5])
    store(app, "eth_usd", [now - 3])
    moving.script_chart("eth_usd", error_reply(-32602, "Invalid params"))
    since, until = (now - 8) * INTERVAL, f"{(now - 5) * INTERVAL}"
    result = app.test_cli_runner().invoke(args=["backfill", "--since", since, "--until", until])
    lines = result.output.splitlines()
    assert result.exit_code == 0, result.output
    chart = "(chart range 1h: 61 points, every 60s)"
    assert lines[0] == f"btc_usd      missing 3, filled 3, still missing 0  {chart}"
    assert lines[1].startswith("eth_usd      missing 4, filled 0, still missing 4")
    assert "Deribit failed: deribit_-32602" in lines[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ticker", "doge_usd"], "not tracked: doge_usd"),
        (["--since", "yesterday"], "Not a valid time"),
        (["--since", "2026-11-02", "--until", "2026-11-01"], "--since is after --until"),
    ],
)
def test_flask_backfill_rejects_bad_arguments(app, args, message):
    result = app.test_cli_runner().invoke(args=["backfill", *args])
    assert result.exit_code == 2 and message in result.output


# --- The gap report --------------------------------------------------------------------------


def gaps(client, **query):
    response = client.get("/api/v1/prices/gaps", query_string={"ticker": "btc_usd", **query})
    assert response.status_code == 200, response.json
    return response.json


def test_gaps_lists_every_missing_run_with_its_size_and_the_coverage(app, client):
    base = 29_000_000  # a slot number: 2025-02-20
    store(app, "btc_usd", [base + 2, base + 3, base + 7, base + 8])
    report = gaps(client, **{"from": base * 60, "to": (base + 9) * 60})
    assert report["gaps"] == [
        {"from": base * 60, "to": (base + 1) * 60, "missing_slots": 2},
        {"from": (base + 4) * 60, "to": (base + 6) * 60, "missing_slots": 3},
        {"from": (base + 9) * 60, "to": (base + 9) * 60, "missing_slots": 1},
    ]
    assert report["expected_slots"] == 10 and report["stored_slots"] == 4
    assert report["missing_slots"] == 6 and report["gap_count"] == 3
    assert report["coverage_percent"] == 40 and report["truncated"] is False


def test_a_complete_range_has_no_gap_and_full_coverage(app, client):
    base = 29_000_000
    store(app, "btc_usd", range(base, base + 10))
    store(app, "eth_usd", [base + 20])
    report = gaps(client, **{"from": base * 60, "to": (base + 9) * 60 + 59})
    assert report["gaps"] == [] and report["coverage_percent"] == 100
    assert report["stored_slots"] == 10


def test_an_empty_range_is_one_gap(app, client):
    base = 29_000_000
    store(app, "btc_usd", [base - 1, base + 10])  # just outside
    report = gaps(client, **{"from": base * 60, "to": (base + 9) * 60})
    assert report["gaps"] == [{"from": base * 60, "to": (base + 9) * 60, "missing_slots": 10}]
    assert report["coverage_percent"] == 0


def test_coverage_rounds_down_so_only_a_complete_range_says_100(app, client):
    base = 29_000_000
    store(app, "btc_usd", [s for s in range(base, base + 100_000) if s != base + 500])
    report = gaps(client, **{"from": base * 60, "to": (base + 99_999) * 60})
    assert report["coverage_percent"] == 99.99 and report["missing_slots"] == 1


def test_limit_cuts_the_list_but_not_the_totals(app, client):
    base = 29_000_000
    store(app, "btc_usd", range(base, base + 20, 2))  # every other slot
    report = gaps(client, **{"from": base * 60, "to": (base + 19) * 60, "limit": 3})
    assert len(report["gaps"]) == 3 and report["truncated"] is True
    assert report["gap_count"] == 10 and report["missing_slots"] == 10
    assert report["gaps"][0]["from"] == (base + 1) * 60  # oldest first


def test_gaps_defaults_to_the_last_24_hours_without_the_slot_in_progress(app, client):
    now = current_slot()
    store(app, "btc_usd", range(now - 1440, now))
    report = gaps(client)
    assert report["expected_slots"] in (1439, 1440)  # 24 h before now, the current slot out
    assert report["gaps"] == [] and report["coverage_percent"] == 100


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"ticker": "doge_usd"}, "ticker"),
        ({"ticker": "btc_usd", "from": "2026-11-02", "to": "2026-11-01"}, "from"),
        ({"ticker": "btc_usd", "limit": "0"}, "limit"),
        ({"ticker": "btc_usd", "from": "soon"}, "from"),
        ({"ticker": "btc_usd", "extra": "1"}, "extra"),
    ],
)
def test_gaps_rejects_bad_input_with_a_422_naming_the_parameter(client, query, field):
    response = client.get("/api/v1/prices/gaps", query_string=query)
    assert response.status_code == 422
    assert field in response.json["errors"]["query"]


def test_gaps_answers_a_json_503_when_the_database_is_down(make_app):
    client = make_app(DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere").test_client()
    response = client.get("/api/v1/prices/gaps?ticker=btc_usd")
    assert response.status_code == 503 and response.json["code"] == 503


# --- /tickers, sources and metrics -----------------------------------------------------------


def test_tickers_lists_each_with_its_latest_price_first_row_and_coverage(app, client):
    now = current_slot()
    store(app, "btc_usd", range(now - 1500, now - 10), price="86955.73")
    store(app, "btc_usd", range(now - 10, now - 4), price="86955.70", source="backfill")
    response = client.get("/api/v1/tickers")
    assert response.status_code == 200
    btc, eth = response.json["tickers"]
    assert btc["ticker"] == "btc_usd" and btc["price"] == 86955.70
    assert '"price":86955.70' in response.get_data(as_text=True)  # exact digits
    assert btc["timestamp"] == (now - 5) * INTERVAL and btc["source"] == "backfill"
    assert btc["first_timestamp"] == (now - 1500) * INTERVAL
    assert 5 * INTERVAL <= btc["age_seconds"] <= 7 * INTERVAL
    coverage = btc["coverage_24h"]
    assert coverage["backfill_slots"] == 6
    assert coverage["live_slots"] == coverage["expected_slots"] - 10
    assert coverage["missing_slots"] == 4  # now-4 .. now-1
    assert eth["price"] is None and eth["first_timestamp"] is None
    assert eth["coverage_24h"]["coverage_percent"] == 0
    assert response.json["interval"] == 60


def test_every_price_says_where_it_came_from_and_prices_filter_by_source(app, client):
    base = 29_000_000
    store(app, "btc_usd", range(base, base + 5))
    store(app, "btc_usd", [base + 5, base + 7], source="backfill")
    items = client.get("/api/v1/prices?ticker=btc_usd").json["items"]
    assert [i["source"] for i in items] == ["backfill", "backfill"] + ["live"] * 5
    only = client.get("/api/v1/prices?ticker=btc_usd&source=backfill&limit=1").json
    assert [i["timestamp"] for i in only["items"]] == [(base + 7) * 60]
    rest = client.get(f"/api/v1/prices?ticker=btc_usd&source=backfill&cursor={only['next_cursor']}")
    assert [i["timestamp"] for i in rest.json["items"]] == [(base + 5) * 60]
    assert rest.json["next_cursor"] is None
    live = client.get("/api/v1/prices?ticker=btc_usd&source=live").json["items"]
    assert {i["source"] for i in live} == {"live"} and len(live) == 5
    assert client.get("/api/v1/prices?ticker=btc_usd&source=guess").status_code == 422


def test_metrics_count_missing_slots_and_backfilled_rows(app, client, moving, redis_conn):
    now = current_slot()
    store(app, "btc_usd", range(now - 1440, now - 10))
    store(app, "btc_usd", [now - 5])
    with app.app_context():
        backfill_prices(tickers=["btc_usd"])
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "tracker_backfilled_rows_total", ticker="btc_usd") == 8  # -10..-2
    # now-1 is still missing: the live fetch may still store it, so the backfill waits.
    assert metric(text, "tracker_missing_slots", ticker="btc_usd") == 1
    assert metric(text, "tracker_missing_slots", ticker="eth_usd") >= 1439
