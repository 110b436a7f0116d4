"""Smoke test of `make bench`: the whole benchmark on a tiny table, so it cannot rot.

It checks that the run completes and reports every endpoint with no errors, not how fast
anything is: timings belong to the benchmark's report (docs/PERFORMANCE.md), not to tests.
"""

import json
import os
import re
import secrets
import subprocess
import sys
import time

import pytest

from tests.benchmark import (
    CACHE_CELLS,
    ENDPOINTS,
    INDEX_PRICES,
    _parse,
    create_database,
    drop_database,
    parse_wrk,
    seed_history,
    sql,
)
from tests.conftest import ROOT, TEST_REDIS_URL, installed
from tracker.config import _tickers
from tracker.deribit import MAX_CONNECTIONS

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:8000
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.06ms  412.20us  12.31ms   91.02%
    Req/Sec     1.91k   123.45     2.10k    70.00%
  Latency Distribution
     50%  980.00us
     75%    1.10ms
     90%    1.40ms
     99%    2.50ms
  3812 requests in 1.00s, 1.01MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   3805.12
Transfer/sec:      1.01MB
"""


def test_wrk_output_is_parsed_with_units_and_every_kind_of_error():
    assert parse_wrk(WRK_OUTPUT) == {
        "rps": 3805.12,
        "p50_ms": 0.98,
        "p99_ms": 2.5,
        "requests": 3812,
        "errors": 7,
    }


def test_size_options_make_20_tickers_of_two_years_21_million_rows_of_valid_names():
    options = _parse(["--tickers=20", "--days=3,730"])
    assert options.sizes == [20 * 1440 * 3, 21_024_000]
    assert options.tickers[0] == "btc_usd"  # the ticker the bench loads
    assert _tickers(",".join(options.tickers)) == tuple(options.tickers)  # TICKERS accepts them
    assert len(set(_parse(["--tickers=50", "--days=1"]).tickers)) == 50
    with pytest.raises(SystemExit):  # flask seed, behind --sizes, writes two tickers only
        _parse(["--tickers=20"])


# What the schema holds besides rows: keys, indexes and checks, each with its definition.
SCHEMA = (
    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
    " WHERE conrelid = 'price_records'::regclass"
    " UNION SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'price_records'"
    " ORDER BY 1"
)


def test_seed_history_writes_every_minute_of_every_ticker_as_the_fetcher_does():
    database = f"tracker_bench_seed_{os.getpid()}_{secrets.token_hex(3)}"
    url = create_database(database)
    try:
        schema = sql(url, SCHEMA)
        tickers = _parse(["--tickers=3", "--days=1"]).tickers
        result = seed_history(url, tickers, 3 * 1440)
        now = int(time.time())

        assert result["rows"] == 3 * 1440 and result["table_bytes"] > 0
        # The keys and indexes dropped for the load are back, exactly as the migrations made them.
        assert sql(url, SCHEMA) == schema
        spans = sql(
            url,
            "SELECT ticker, count(*), min(timestamp), max(timestamp), min(price),"
            " min(scale(price)), max(scale(price)), count(*) FILTER (WHERE source = 'live')"
            " FROM price_records GROUP BY ticker ORDER BY ticker",
        )
        assert [span[0] for span in spans] == sorted(tickers)
        for ticker, count, first, last, lowest, *scales, live in spans:
            assert count == 1440 and last - first == 1439 * 60 and last % 60 == 0, ticker
            assert now - 120 <= last <= now, ticker  # history ends at the current minute
            assert lowest > 0 and live == count, ticker
            # Prices carry the ticker's usual digits: 2 for btc_usd, 4 for sol_usdc.
            assert scales == [INDEX_PRICES[ticker][1]] * 2, ticker
        # On disk, a minute of every ticker, then the next minute: the fetcher's order.
        heap = sql(url, "SELECT ticker, timestamp FROM price_records ORDER BY ctid LIMIT 6")
        first = min(span[2] for span in spans)
        assert heap == [(ticker, first + 60 * minute) for minute in (0, 1) for ticker in tickers]
    finally:
        drop_database(database)


def test_bench_runs_end_to_end_on_a_tiny_table(redis_conn, tmp_path):
    installed("nginx", "bash .ci/run installs Debian's nginx")  # for the cache cells
    database = f"tracker_bench_smoke_{os.getpid()}_{secrets.token_hex(3)}"
    report = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmark",
            "--sizes=10000",
            "--duration=1",
            "--warmup=0",
            "--repeats=1",
            f"--database={database}",
            "--drop",
            f"--redis-url={TEST_REDIS_URL}",
            f"--json={report}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(report.read_text())

    api = {c["endpoint"]: c for c in results["cells"] if c["server"] == "api"}
    raw = {c["endpoint"]: c for c in results["cells"] if c["server"] == "raw"}
    assert set(api) == set(raw) == set(ENDPOINTS)
    for cell in results["cells"]:
        assert cell["rows"] == 10000 or cell["server"] == "floor"
        assert cell["requests"] > 0 and cell["rps"] > 0, cell
        assert cell["errors"] == 0, cell
        assert 0 < cell["p50_ms"] <= cell["p99_ms"], cell
    # The same rows from the API and its floor: a page of 100, a whole day over two pages.
    for cells in (api, raw):
        assert cells["latest"]["items"] == cells["latest query"]["items"] == 1
        assert cells["at middle"]["items"] == 1
        assert cells["first page"]["items"] == cells["deep page"]["items"] == 100
        assert cells["by-date day"]["items"] == 1440
    # Every endpoint's SQL is an index range scan: its cost cannot grow with the table.
    assert {p["endpoint"] for p in results["plans"]} == set(ENDPOINTS)
    for plan in results["plans"]:
        assert plan["scans"] and "Seq Scan" not in plan["scans"], plan
    history = {c["endpoint"]: c for c in results["history"]}
    assert history["gaps year"]["slots"] == 525600 and history["gaps year"]["median_ms"] > 0
    assert history["tickers"]["slots"] == 2
    ranges = {c["endpoint"]: c for c in results["ranges"]}
    # 10,000 rows are ~3.5 days of two tickers: every candle page reads all of btc_usd or
    # the last three days; the year's statistics read all of it, the day's 1,441 minutes.
    assert set(ranges) == {
        "candles 1h",
        "candles 1d",
        "candles 1h 3d",
        "candles 1d 3d",
        "stats day",
        "stats year",
    }
    assert ranges["candles 1h"]["read"] == ranges["stats year"]["read"] == 5000
    assert ranges["stats day"]["read"] == 1441  # from and to included
    assert 0 < ranges["candles 1d 3d"]["read"] <= ranges["candles 1h 3d"]["read"] < 5000
    # Every hour and day of the 5,000 minutes has its candle: 84 or 85 hours, by the minute
    # of the hour the seeded history starts at.
    for name, width in (("candles 1h", 3600), ("candles 1d", 86400)):
        oldest, newest = ranges[name]["span"]
        assert ranges[name]["items"] == (newest - oldest) // width + 1, ranges[name]
    assert ranges["candles 1h"]["items"] in (84, 85) and 4 <= ranges["candles 1d"]["items"] <= 5
    assert all(c["median_ms"] > 0 for c in ranges.values())
    assert results["csv"]["rows"] == 5000 and results["csv"]["rows_per_s"] > 0
    assert results["csv"]["rss_before_kb"] > 0
    # /prices/latest through nginx's cache, next to gunicorn, each also answered with a 304.
    cache = {c["endpoint"]: c for c in results["cache"]}
    assert tuple(cache) == CACHE_CELLS
    for name, cell in cache.items():
        assert cell["requests"] > 0 and cell["errors"] == 0, cell
        assert cell["bytes"] == (0 if name.endswith("304") else api["latest"]["bytes"]), cell
    during = results["latest_during_csv"]
    assert during["requests"] > 0 and during["errors"] == 0 and during["completed"] >= 2
    assert results["fetch"]["max_concurrent_requests"] == 2
    # TICKERS=all over the fake's 50 indexes, never more at once than the client allows (how
    # many were, a slow machine decides: tests/test_tickers.py checks it exactly).
    assert results["fetch_all"]["tickers"] == 50
    assert 0 < results["fetch_all"]["max_concurrent_requests"] <= MAX_CONNECTIONS
    assert results["rss_web_worker_kb"] > 0 and results["rss_rq_worker_kb"] > 0
    assert any(t.startswith(("MET", "MISSED")) for t in results["targets"])
    table = done.stdout
    for name in ENDPOINTS:
        assert f"\n{name:<12} " in table
    assert "fetch cycle, 2 tickers, 100 ms Deribit latency" in table
    assert "fetch cycle, 50 tickers (TICKERS=all), 100 ms Deribit latency" in table
    for name in CACHE_CELLS:
        assert f"\n{name:<16} " in table
    assert "CSV of all btc_usd history: 5000 rows" in table
    assert "latest during 2 CSV downloads" in table


def test_bench_limits_runs_end_to_end_on_a_few_days(redis_conn):
    database = f"tracker_bench_limits_smoke_{os.getpid()}_{secrets.token_hex(3)}"
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench_limits", "--days=2", "--runs=1"]
        + [f"--database={database}"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": TEST_REDIS_URL},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = dict(re.findall(r"^(\S.*?) +(\d{3}) ", done.stdout, re.MULTILINE))
    assert statuses == {
        "stats": "200",
        "gaps": "200",
        "prices CSV": "200",
        "candles 1m CSV": "200",
        "candles 1d CSV": "200",
        "candles 1w page 1000": "200",
        "CSV 1 s over": "422",
    }, done.stdout
    assert "2881" in done.stdout  # two days and their last minute, as CSV lines
