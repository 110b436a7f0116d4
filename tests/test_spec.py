"""The OpenAPI spec, tried the way its users' tools try it: a linter's rules, a generated
Python client calling every operation, and a fuzzer (schemathesis) against a live gunicorn.

The spec's lint (Redocly CLI) runs in CI as `make lint-spec`.
"""

import importlib
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import requests

from tests.conftest import command, free_port, read_log, wait_for_http
from tracker.models import insert_prices

OPERATION_IDS = {
    ("/api/v1/prices", "listPrices"),
    ("/api/v1/prices/latest", "getLatestPrice"),
    ("/api/v1/prices/by-date", "listPricesByDate"),
    ("/api/v1/prices/at", "getPriceAt"),
    ("/api/v1/prices/gaps", "getPriceGaps"),
    ("/api/v1/prices/stats", "getPriceStats"),
    ("/api/v1/candles", "listCandles"),
    ("/api/v1/tickers", "listTickers"),
    ("/healthz", "health"),
    ("/readyz", "readiness"),
    ("/metrics", "metrics"),
}
# Response fields that are left out when they have nothing to say; every other is required.
OPTIONAL = {
    ("Check", "error"),
    ("PricesCheck", "error"),
    ("PricesCheck", "tickers"),
    ("PricesCheck", "never_priced"),  # TICKERS=all only
    ("Error", "message"),  # a 422 says it in `errors`
    ("Error", "errors"),  # 422 only
}
# More digits than a float holds: what a client must get back whole as a string.
WIDE = "123456789012.123456789"
# The fuzzer's budget: a fixed seed and a bounded number of cases per operation, so a run is
# repeatable and takes about a minute on two cores.
FUZZ_SEED = 20261123
FUZZ_EXAMPLES = 300


# --- The spec itself ---------------------------------------------------------------------------


def operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def resolved(spec):
    """A function that follows a local $ref ("#/components/...") to what it names."""

    def follow(item):
        while "$ref" in item:
            node = spec
            for key in item["$ref"].removeprefix("#/").split("/"):
                node = node[key]
            item = node
        return item

    return follow


def test_every_operation_has_an_id_a_description_and_examples(client):
    spec = client.get("/openapi.json").json
    assert {(path, op["operationId"]) for path, _, op in operations(spec)} == OPERATION_IDS
    for path, _, operation in operations(spec):
        assert operation["summary"] and operation["description"], path
        for parameter in map(resolved(spec), operation.get("parameters", [])):
            assert "example" in parameter["schema"], (path, parameter["name"])
        # Every operation that takes parameters says what a 422 looks like.
        if operation.get("parameters"):
            assert operation["responses"]["422"] == {
                "$ref": "#/components/responses/UNPROCESSABLE_ENTITY"
            }
    unprocessable = spec["components"]["responses"]["UNPROCESSABLE_ENTITY"]["content"]
    example = unprocessable["application/json"]["example"]
    assert example["code"] == 422 and example["errors"]["query"]["ticker"]
    errors = spec["components"]["schemas"]["Error"]["properties"]["errors"]
    assert errors["additionalProperties"]["additionalProperties"]["items"] == {"type": "string"}


def test_every_api_get_documents_its_caching(client):
    """If-None-Match in, ETag and Cache-Control out, and the 304: added in one place
    (tracker/caching.py's CachingDocs) to every GET under /api/, to nothing else."""
    spec = client.get("/openapi.json").json
    follow = resolved(spec)
    cached = set()
    for path, method, operation in operations(spec):
        parameters = [follow(p) for p in operation.get("parameters", [])]
        if_none_match = [p for p in parameters if p["name"] == "If-None-Match"]
        if path.startswith("/api/") and method == "get":
            cached.add(path)
            assert if_none_match == [follow({"$ref": "#/components/parameters/IfNoneMatch"})]
            assert if_none_match[0]["in"] == "header", path
            not_modified = follow(operation["responses"]["304"])
            assert "content" not in not_modified and "If-None-Match" in not_modified["description"]
            for response in (operation["responses"]["200"], not_modified):
                headers = {name: follow(h) for name, h in response["headers"].items()}
                assert "strong validator" in headers["ETag"]["description"], path
                assert "max-age" in headers["Cache-Control"]["schema"]["example"], path
        else:
            assert not if_none_match and "304" not in operation["responses"], path
    assert len(cached) == 8


def test_info_security_and_components_satisfy_the_linters(client):
    spec = client.get("/openapi.json").json
    assert spec["security"] == []  # public data: no operation needs credentials
    assert spec["info"]["license"]["name"] and spec["info"]["contact"]
    assert "price_format=string" in spec["info"]["description"]
    assert "PaginationMetadata" not in spec["components"]["schemas"]  # flask-smorest's, unused


def test_every_response_field_is_required_unless_it_may_be_left_out(client):
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    for name, schema in schemas.items():
        required = set(schema.get("required", []))
        expected = {field for field in schema["properties"] if (name, field) not in OPTIONAL}
        assert required == expected, name


def test_the_spec_lists_the_configured_tickers_and_intervals(make_app):
    # Built per app: the enum is exactly TICKERS, and FETCH_INTERVAL rules out short candles.
    app = make_app(TICKERS="eth_usd,btc_usd,sol_usdc", FETCH_INTERVAL="3600")
    spec = app.test_client().get("/openapi.json").json
    tickers = [
        parameter["schema"]["enum"]
        for _, _, operation in operations(spec)
        for parameter in map(resolved(spec), operation.get("parameters", []))
        if parameter["name"] == "ticker"
    ]
    assert len(tickers) == 7 and all(enum == ["eth_usd", "btc_usd", "sol_usdc"] for enum in tickers)
    candles = spec["paths"]["/api/v1/candles"]["get"]["parameters"]
    (interval,) = [p["schema"] for p in candles if p.get("name") == "interval"]
    assert interval["enum"] == ["1h", "4h", "1d", "1w"]


# --- Against a live server ---------------------------------------------------------------------


@pytest.fixture
def live_api(app, spawn):
    """gunicorn over the test database holding the last two days of both tickers, every
    minute, one price wider than a float; yields its base URL."""
    now = int(time.time()) // 60 * 60
    rows = [
        {
            "ticker": ticker,
            "price": Decimal(base) + Decimal(i % 997) / 100,
            "timestamp": now - 60 * i,
            "source": "backfill" if i % 50 == 7 else "live",
        }
        for ticker, base in (("btc_usd", "86955.73"), ("eth_usd", "2950.10"))
        for i in range(2 * 1440)
        if i % 333 != 5  # a few holes for /prices/gaps
    ]
    rows[0]["price"] = Decimal(WIDE)  # btc_usd's newest
    with app.app_context():
        insert_prices(rows)
    port = free_port()
    web = spawn(command("gunicorn", "wsgi:app"), GUNICORN_BIND=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", process=web)
    yield base
    assert web.poll() is None, read_log(web)  # it served every request without dying


def generate_client(spec_url, directory):
    """openapi-python-client's client for the spec at `spec_url`, importable as tracker_client."""
    spec = directory / "openapi.json"
    spec.write_bytes(requests.get(spec_url, timeout=10).content)
    config = directory / "client.yaml"
    # No post hooks: they would format the code with a ruff found on PATH.
    config.write_text("package_name_override: tracker_client\npost_hooks: []\n")
    package = directory / "tracker_client"
    result = subprocess.run(
        command("openapi-python-client", "generate", "--path", str(spec), "--meta", "none")
        + ["--output-path", str(package), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout  # nothing was left out
    for name in [name for name in sys.modules if name.split(".")[0] == "tracker_client"]:
        del sys.modules[name]  # another test's client
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module("tracker_client")
    finally:
        sys.path.remove(str(directory))


def test_a_generated_client_calls_every_operation(live_api, tmp_path):
    tracker_client = generate_client(f"{live_api}/openapi.json", tmp_path)
    from tracker_client.api.operations import health, metrics, readiness
    from tracker_client.api.prices import (
        get_latest_price,
        get_price_at,
        get_price_gaps,
        get_price_stats,
        list_candles,
        list_prices,
        list_prices_by_date,
        list_tickers,
    )
    from tracker_client.models import (
        CandlePage,
        GapReport,
        Health,
        Price,
        PricePage,
        PriceStats,
        Readiness,
        TickerList,
    )

    api = tracker_client.Client(base_url=live_api, raise_on_unexpected_status=True)
    latest = requests.get(f"{live_api}/api/v1/prices/latest?ticker=btc_usd", timeout=5).json()
    now = latest["timestamp"]
    today = datetime.fromtimestamp(now, UTC).date()

    def call(module, **kwargs):
        """The operation's parsed answer, after checking it was a 200."""
        response = module.sync_detailed(client=api, **kwargs)
        assert response.status_code == 200, (module.__name__, response.content)
        return response.parsed

    def arg(module, name, value):
        """`value` as the enum type the generated module takes for parameter `name`."""
        annotation = module.sync_detailed.__annotations__[name]  # Enum, or Enum | Unset
        types = getattr(annotation, "__args__", (annotation,))
        return next(t for t in types if t.__name__ != "Unset")(value)

    ticker = "btc_usd"
    price = call(get_latest_price, ticker=arg(get_latest_price, "ticker", ticker))
    assert isinstance(price, Price) and price.timestamp == now and price.source.value == "live"
    # A float loses digits of WIDE; price_format=string brings them all.
    assert price.price == float(WIDE)
    exact = call(
        get_latest_price,
        ticker=arg(get_latest_price, "ticker", ticker),
        price_format=arg(get_latest_price, "price_format", "string"),
    )
    assert exact.price == WIDE
    # The ETag of an answer, sent back: a 304 without a body, as the spec says.
    etag = requests.get(f"{live_api}/api/v1/prices/latest?ticker=btc_usd", timeout=5).headers
    unchanged = get_latest_price.sync_detailed(
        client=api, ticker=arg(get_latest_price, "ticker", ticker), if_none_match=etag["ETag"]
    )
    assert unchanged.status_code == 304 and unchanged.content == b""

    page = call(list_prices, ticker=arg(list_prices, "ticker", ticker), limit=3)
    assert isinstance(page, PricePage) and [i.timestamp for i in page.items] == [
        now,
        now - 60,
        now - 120,
    ]
    following = call(
        list_prices, ticker=arg(list_prices, "ticker", ticker), limit=3, cursor=page.next_cursor
    )
    assert following.items[0].timestamp == now - 180
    day = call(
        list_prices_by_date,
        ticker=arg(list_prices_by_date, "ticker", "eth_usd"),
        date=today,
        price_format=arg(list_prices_by_date, "price_format", "string"),
    )
    assert day.items and all(isinstance(item.price, str) for item in day.items)
    assert day.items[0].ticker == "eth_usd"

    at = call(get_price_at, ticker=arg(get_price_at, "ticker", ticker), timestamp=str(now - 30))
    assert at.timestamp == now - 60
    gaps = call(get_price_gaps, ticker=arg(get_price_gaps, "ticker", ticker))
    assert isinstance(gaps, GapReport) and gaps.gap_count >= 4 and gaps.interval == 60
    stats = call(
        get_price_stats,
        ticker=arg(get_price_stats, "ticker", ticker),
        from_=str(now - 600),
        price_format=arg(get_price_stats, "price_format", "string"),
    )
    assert isinstance(stats, PriceStats) and stats.last.price == WIDE and stats.max_.price == WIDE
    assert stats.count == 10 and stats.from_ == now - 600 and stats.to is None  # 11 - a hole
    candles = call(
        list_candles,
        ticker=arg(list_candles, "ticker", ticker),
        interval=arg(list_candles, "interval", "1h"),
        limit=2,
        price_format=arg(list_candles, "price_format", "string"),
    )
    assert isinstance(candles, CandlePage) and candles.items[0].high == WIDE
    assert candles.items[0].complete is False and candles.items[1].complete is True
    tickers = call(list_tickers)
    assert isinstance(tickers, TickerList)
    assert [t.ticker for t in tickers.tickers] == ["btc_usd", "eth_usd"]
    assert tickers.tickers[0].price == float(WIDE)
    coverage = tickers.tickers[0].coverage_24h
    assert coverage.stored_slots == coverage.live_slots + coverage.backfill_slots > 1400

    assert isinstance(call(health), Health)
    # /readyz is 503 here (no worker fetches), a documented answer the client parses.
    ready = readiness.sync_detailed(client=api)
    assert ready.status_code in (200, 503) and isinstance(ready.parsed, Readiness)
    assert "tracker_http_requests_total" in call(metrics)


def test_schemathesis_finds_nothing(live_api, app, database_url, tmp_path):
    # On PostgreSQL, production's database: one run of about a minute is the budget.
    if database_url.startswith("sqlite"):
        pytest.skip("one fuzzing run, on PostgreSQL")
    started = time.monotonic()
    # /readyz wants a price younger than 3 fetch intervals; a slow run on a busy machine outlives
    # the seeded ones, so each new slot gets its price, as the worker would store it.
    stop = threading.Event()
    fetcher = threading.Thread(target=_store_each_slot, args=(app, stop), daemon=True)
    fetcher.start()
    try:
        result = _fuzz(live_api, tmp_path)
    finally:
        stop.set()
        fetcher.join()
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr
    assert "0 failures" in result.stdout or "passed" in result.stdout, result.stdout
    print(f"schemathesis: {time.monotonic() - started:.0f} s\n{result.stdout[-1500:]}")


def _store_each_slot(app, stop):
    with app.app_context():
        while not stop.wait(1.0):
            slot = int(time.time()) // 60 * 60
            insert_prices(
                [
                    {"ticker": "btc_usd", "price": Decimal("86960.5"), "timestamp": slot},
                    {"ticker": "eth_usd", "price": Decimal("2951.25"), "timestamp": slot},
                ]
            )


def _fuzz(live_api, tmp_path):
    return subprocess.run(
        command("schemathesis", "run", f"{live_api}/openapi.json", "--no-color")
        + ["--checks", "not_a_server_error,response_schema_conformance"]
        + ["--seed", str(FUZZ_SEED), "--max-examples", str(FUZZ_EXAMPLES)]
        + ["--generation-database", "none", "--workers", "2", "--request-timeout", "10"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
