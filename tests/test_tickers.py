"""TICKERS=all: Deribit's index list read at start-up, its fallback, and a cycle of ~50 tickers.

Everything against the fake Deribit over loopback; what touches the database runs on both.
"""

import logging
import time
from decimal import Decimal

import pytest
import requests

from tests.conftest import command, free_port, read_log, wait_for_http
from tests.fake_deribit import INDEX_NAMES, NAMES_SHAPES, Reply, error_reply
from tests.test_observability import readyz
from tests.test_observability import store as store_aged
from tracker import ConfigError
from tracker.deribit import (
    MAX_CONNECTIONS,
    DeribitClient,
    DeribitUnavailable,
    InvalidPrice,
    RequestPace,
)
from tracker.extensions import db
from tracker.jobs import fetch_prices
from tracker.models import Price, insert_prices

ALL = tuple(sorted(INDEX_NAMES))
# Entries of an index list that are no index name, and why each one is refused.
GARBAGE = [
    "drbfix-btc_usdc",  # in Deribit's real list: a hyphen, not a pair
    "",
    "btc usd",
    "btc_usd_x",
    "x" * 40 + "_usd",  # longer than price_records.ticker holds
    5,
    None,
    True,
    ["eth_usd"],
    {"nom": "sol_usdc"},
    {"name": 7},
    {"name": None},
]


@pytest.fixture
def client(deribit):
    client = DeribitClient(deribit.base_url, timeout=0.5, attempts=3, backoff=0.01)
    yield client
    client.session.close()


@pytest.mark.parametrize("shape", NAMES_SHAPES)
def test_the_index_list_is_read_in_both_documented_shapes(client, deribit, shape):
    deribit.reset(names_shape=shape)
    names, rejected = client.index_names()
    assert names == list(ALL) and len(names) == 50
    assert rejected == []


@pytest.mark.parametrize("shape", NAMES_SHAPES)
def test_garbage_entries_are_left_out_one_by_one_with_a_reason(client, deribit, shape):
    deribit.reset(index_names=["eth_usd", *GARBAGE, "BTC_USD", "btc_usd"], names_shape=shape)
    names, rejected = client.index_names()
    # Upper case is lower-cased as in TICKERS, and a repeat is dropped without a word.
    assert names == ["btc_usd", "eth_usd"]
    assert [position for position, _ in rejected] == list(range(1, len(GARBAGE) + 1))
    assert all("not an index name like btc_usd" in reason for _, reason in rejected)


def test_an_index_list_that_is_not_a_list_is_rejected(client, deribit):
    deribit.script_names(Reply(200, '{"jsonrpc":"2.0","result":{"btc_usd":1}}'))
    with pytest.raises(InvalidPrice) as info:
        client.index_names()
    assert info.value.reason == "malformed_names"


def test_the_index_list_is_retried_like_a_price(client, deribit):
    busy = error_reply(10028, "too_many_requests", status=429)
    deribit.script_names(busy, busy)
    assert client.index_names()[0] == list(ALL)
    assert deribit.names_requests == 3


@pytest.mark.parametrize("shape", NAMES_SHAPES)
def test_tickers_all_tracks_every_listed_index_in_the_api_and_its_spec(make_app, deribit, shape):
    deribit.reset(names_shape=shape)
    app = make_app(TICKERS="all")
    assert app.config["TICKERS"] == ALL
    assert deribit.names_requests == 1  # asked once, at start-up
    client = app.test_client()
    listed = client.get("/api/v1/tickers").json["tickers"]
    assert [entry["ticker"] for entry in listed] == list(ALL)
    spec = client.get("/openapi.json").json
    (enum,) = {
        tuple(parameter["schema"]["enum"])
        for path in spec["paths"].values()
        for parameter in path["get"].get("parameters", [])
        if parameter.get("name") == "ticker"  # not the shared $ref ones
    }
    assert enum == ALL
    assert client.get("/api/v1/prices/latest?ticker=SOL_USDC").status_code == 404  # tracked
    assert client.get("/api/v1/prices/latest?ticker=nope_usd").status_code == 422
    assert deribit.names_requests == 1  # and never again


def test_tickers_all_logs_the_entries_it_left_out(make_app, deribit, caplog):
    deribit.reset(index_names=["btc_usd", "drbfix-btc_usdc", {"name": 7}, "eth_usd"])
    with caplog.at_level(logging.INFO, logger="tracker.tickers"):
        app = make_app(TICKERS="ALL")
    assert app.config["TICKERS"] == ("btc_usd", "eth_usd")
    warning, info = [r for r in caplog.records if r.name == "tracker.tickers"]
    assert warning.levelno == logging.WARNING
    assert "left out 2 entries of Deribit's index list" in warning.getMessage()
    assert "entry 1: not an index name like btc_usd: 'drbfix-btc_usdc'" in warning.getMessage()
    assert "tracking the 2 indexes Deribit lists: btc_usd,eth_usd" in info.getMessage()


def store(app, *tickers):
    with app.app_context():
        insert_prices([{"ticker": t, "price": Decimal("1.5"), "timestamp": 60} for t in tickers])


@pytest.mark.parametrize("trouble", ["outage", "nothing usable"])
def test_deribit_unavailable_at_start_falls_back_on_the_stored_tickers(
    make_app, deribit, caplog, trouble
):
    store(make_app(), "sol_usdc", "btc_usd")
    if trouble == "outage":
        deribit.outage = True  # a 503, retried, then given up
    else:
        deribit.reset(index_names=["drbfix-btc_usdc"])
    with caplog.at_level(logging.WARNING, logger="tracker.tickers"):
        app = make_app(TICKERS="all", DERIBIT_TIMEOUT="0.2")
    assert app.config["TICKERS"] == ("btc_usd", "sol_usdc")
    assert deribit.names_requests == (3 if trouble == "outage" else 1)
    message = [r for r in caplog.records if r.name == "tracker.tickers"][-1].getMessage()
    assert "Deribit's index list is unavailable" in message
    assert "tracking the 2 tickers already stored until the next start: btc_usd,sol_usdc" in message
    listed = app.test_client().get("/api/v1/tickers").json["tickers"]
    assert [entry["ticker"] for entry in listed] == ["btc_usd", "sol_usdc"]


def test_deribit_unavailable_and_nothing_stored_stops_the_start_saying_why(make_app, deribit):
    deribit.outage = True
    with pytest.raises(ConfigError, match="no price is stored yet") as info:
        make_app(TICKERS="all", DERIBIT_TIMEOUT="0.2")
    assert "deribit_13028" in str(info.value) and "set TICKERS to a list" in str(info.value)


def test_a_fetch_cycle_stores_a_price_for_every_listed_index(make_app, deribit):
    app = make_app(TICKERS="all")
    with app.app_context():
        summary = fetch_prices()
        rows = db.session.execute(db.select(Price.ticker, Price.price)).all()
    assert summary["failed"] == {} and summary["stored"] == list(ALL)
    assert dict(rows) == {t: Decimal(deribit.price_at(t, 0)) for t in ALL}


def test_with_tickers_all_readiness_reports_never_priced_indexes_without_failing(
    make_app, deribit, redis_conn
):
    """An index Deribit lists but never prices (or one this process tracks and the worker,
    resolved at another start, does not) would keep every web host out of the load balancer:
    named in the body instead. A stale price, or none at all, still fails."""
    app = make_app(TICKERS="all")
    client = app.test_client()
    status, body = readyz(client)
    assert status == 503 and body["failed"] == ["prices"]  # nothing stored: not ready
    store_aged(app, **{ALL[0]: 5, ALL[1]: 30})
    status, body = readyz(client)
    prices = body["checks"]["prices"]
    assert status == 200 and prices["ok"] is True, body
    assert prices["never_priced"] == list(ALL[2:]) and "error" not in prices
    store_aged(app, **{ALL[2]: 181})  # older than 3 x FETCH_INTERVAL
    status, body = readyz(client)
    assert status == 503, body
    assert body["checks"]["prices"]["error"].startswith(f"newest {ALL[2]} price is ")
    # A list names what it wants: one without a price fails, as before.
    status, body = readyz(make_app(TICKERS=f"{ALL[0]},{ALL[3]}").test_client())
    assert status == 503, body
    assert body["checks"]["prices"]["error"] == f"no price stored for {ALL[3]}"
    assert "never_priced" not in body["checks"]["prices"]


@pytest.fixture
def patient_client(deribit):
    """A client that waits out the fake's held answers (HOLD_SECONDS) without a timeout."""
    deribit.latency = 0.1
    deribit.hold_answers_until = MAX_CONNECTIONS
    client = DeribitClient(deribit.base_url, timeout=10)
    yield client
    client.session.close()


def test_a_cycle_of_as_many_tickers_as_connections_is_one_round_trip(patient_client, deribit):
    names = list(ALL[:MAX_CONNECTIONS])
    results = patient_client.index_prices(names, time.monotonic() + 30)
    assert all(isinstance(results[name], Decimal) for name in names)
    # Every request had arrived before the first answer left: one round trip for the cycle.
    assert deribit.max_in_flight == MAX_CONNECTIONS


def test_a_cycle_of_50_never_opens_more_connections_than_deribit_allows(patient_client, deribit):
    results = patient_client.index_prices(ALL, time.monotonic() + 30)
    assert all(isinstance(price, Decimal) for price in results.values()) and len(results) == 50
    # Two waves of 25: Deribit answers a 33rd simultaneous connection from one IP with a 429.
    assert deribit.max_in_flight == MAX_CONNECTIONS
    assert len(deribit.client_ports) == MAX_CONNECTIONS  # kept alive, reused by the second wave


def test_requests_beyond_the_burst_are_paced_at_the_rate(deribit):
    rate, burst = 5, 10
    started = time.time()
    client = DeribitClient(deribit.base_url, timeout=2, pace=RequestPace(rate, burst))
    results = client.index_prices(ALL[:20], time.monotonic() + 10)
    client.session.close()
    assert all(isinstance(price, Decimal) for price in results.values())
    arrivals = sorted(at for _, at in deribit.requests)
    # Past the first `burst`, request k no sooner than its turn. (Only a lower bound: a slow
    # machine makes the gaps longer, never shorter.)
    for k in range(burst, 20):
        assert arrivals[k] - started >= (k - burst + 1) / rate - 0.02, k


class CountingPace(RequestPace):
    """A RequestPace that counts the turns it refused."""

    def __init__(self, rate, burst):
        super().__init__(rate, burst)
        self.refused = []

    def wait(self, deadline):
        try:
            super().wait(deadline)
        except DeribitUnavailable as exc:
            self.refused.append(exc.reason)  # list.append: safe from the pool's threads
            raise


def test_a_request_whose_turn_comes_after_the_deadline_fails_as_paced(deribit):
    # The default backoff (0.25 s): a refused turn is not tried again, once per ticker.
    pace = CountingPace(1, 2)
    client = DeribitClient(deribit.base_url, timeout=5, pace=pace)
    results = client.index_prices(ALL[:5], time.monotonic() + 1.9)
    client.session.close()
    # Turns at 0, 0, 1, 2 and 3 s: the third has 0.9 s left for its request (a busy machine
    # needs it), the last two would wait past the deadline.
    assert sum(isinstance(price, Decimal) for price in results.values()) == 3
    failed = [error for error in results.values() if not isinstance(error, Decimal)]
    assert [error.reason for error in failed] == ["paced", "paced"]
    assert pace.refused == ["paced", "paced"]  # not retried
    assert len(deribit.requests) == 3  # the paced ones never reached Deribit


def test_web_and_flask_fetch_each_ask_deribit_once_at_start(app, spawn, deribit, redis_conn):
    """The real processes: gunicorn (its master asks, workers inherit) and a CLI command.

    (`app` only to have the rows they store wiped afterwards.)
    """
    port = free_port()
    web = spawn(
        command("gunicorn", "wsgi:app"),
        TICKERS="all",
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS=2,
    )
    wait_for_http(f"http://127.0.0.1:{port}/healthz", process=web)
    for _ in range(4):  # both workers, most likely
        listed = requests.get(f"http://127.0.0.1:{port}/api/v1/tickers", timeout=5).json()
        assert [entry["ticker"] for entry in listed["tickers"]] == list(ALL)
    assert deribit.names_requests == 1
    assert "TICKERS=all: tracking the 50 indexes Deribit lists" in read_log(web)

    fetch = spawn(command("flask", "fetch"), TICKERS="all", FLASK_APP="wsgi")
    assert fetch.wait(timeout=60) == 0, read_log(fetch)
    assert deribit.names_requests == 2
    assert sum(line.endswith("  stored") for line in read_log(fetch).splitlines()) == 50
    listed = requests.get(f"http://127.0.0.1:{port}/api/v1/tickers", timeout=5).json()
    assert all(entry["price"] is not None for entry in listed["tickers"])


def test_a_worker_that_cannot_learn_the_list_exits_with_one_line_saying_why(
    app, spawn, deribit, redis_conn
):
    """Deribit down on a first start (nothing stored): no silent loop, no empty list."""
    deribit.outage = True
    worker = spawn(command("flask", "worker"), TICKERS="all", DERIBIT_TIMEOUT="0.2")
    assert worker.wait(timeout=60) == 1
    log = read_log(worker)
    assert "configuration error: TICKERS=all: Deribit's index list is unavailable" in log
    assert "Traceback" not in log
    assert deribit.names_requests == 3  # retried, then given up
