"""The benchmark (`make bench`): seed history, load the API and its floors with wrk, print a table.

Everything runs here, on loopback: PostgreSQL database `tracker_bench` (dropped and re-created),
the API under gunicorn exactly as production starts it (`gunicorn wsgi:app`, gunicorn.conf.py),
the two floors on the same settings (tests/bench_floors.py), and wrk, bounded in time.
Timings are printed and checked against the targets in docs/PERFORMANCE.md, never asserted.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import requests
from redis import Redis
from sqlalchemy.engine import make_url

from tests.bench_floors import query_for
from tests.conftest import (
    ADMIN_DATABASE_URL,
    free_port,
    pg_connect,
    render_nginx_conf,
    stop_process_group,
)
from tests.fake_deribit import FakeDeribit
from tracker import create_app
from tracker.config import load_config
from tracker.deribit import BURST_REQUESTS, REQUESTS_PER_SECOND
from tracker.extensions import fetch_queue
from tracker.jobs import fetch_prices
from tracker.schemas import encode_cursor

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TICKER = "btc_usd"
# The ticker whose fetch has not landed: its newest row is older than the current slot, so
# every /prices/latest of it runs the query (the moment after each slot turn in production).
PENDING_TICKER = "eth_usd"
TICKERS = "btc_usd,eth_usd"
ROWS_PER_DAY = 1440 * len(TICKERS.split(","))
# wrk cycles through the paths it is given: one per request, round robin, per connection.
WRK_SCRIPT = """
local paths = {}
local i = 0
function init(args) for _, p in ipairs(args) do paths[#paths + 1] = p end end
function request() i = i % #paths + 1; return wrk.format("GET", paths[i]) end
"""
ENDPOINTS = ("latest", "latest query", "first page", "deep page", "by-date day", "at middle")
# /prices/latest straight to gunicorn and through docs/nginx.conf's cache; each also with the
# If-None-Match a polling client sends (a 304 without a body).
CACHE_CELLS = ("gunicorn", "nginx cache", "gunicorn 304", "nginx cache 304")


def main(argv=None):
    options = _parse(argv)
    wrk = find_wrk()
    database_url = create_database(options.database)
    workdir = Path(tempfile.mkdtemp(prefix="tracker-bench-"))
    (workdir / "paths.lua").write_text(WRK_SCRIPT)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": options.redis_url,
        "TICKERS": ",".join(options.tickers),
        "PYTHONUNBUFFERED": "1",
    }
    results = {
        "machine": machine(),
        "cells": [],
        "seeds": [],
        "plans": [],
        "history": [],
        "ranges": [],
    }
    servers = []
    fetcher = None
    try:
        api = start_gunicorn(["wsgi:app"], env, workdir / "api.log", servers)
        raw = start_gunicorn(
            ["-c", "gunicorn.conf.py", "tests.bench_floors:raw_app"],
            env,
            workdir / "raw.log",
            servers,
        )
        const = start_gunicorn(
            ["-c", "gunicorn.conf.py", "tests.bench_floors:constant_app"],
            env,
            workdir / "constant.log",
            servers,
        )
        load = Load(wrk, workdir / "paths.lua", options, database_url)
        interval = load_config(env)["FETCH_INTERVAL"]
        for size in options.sizes:
            if options.days:
                results["seeds"].append(seed_history(database_url, options.tickers, size))
            else:
                results["seeds"].append(seed(database_url, size, env))
            rows, first, last = table_span(database_url)
            # Before the fetcher below: a candle bucket counts every row in it, and the minute
            # it stores after `last` would join the last hour's.
            results["history"] += history_timings(api.base_url, rows, last)
            results["ranges"] += range_timings(api.base_url, rows, last)
            # As in production from here on: the worker stores TICKER's price at each slot
            # turn; PENDING_TICKER's fetch has not landed (its seeded current minute goes).
            fetcher = CurrentSlotFetcher(database_url, TICKER, interval)
            fetcher.start()
            sql(
                database_url,
                f"DELETE FROM price_records WHERE ticker = '{PENDING_TICKER}'"
                f" AND timestamp >= {int(time.time()) // interval * interval}",
            )
            plan = [(const, "constant", ["/constant"], "floor")]
            for name, api_paths, raw_paths in endpoint_paths(first, last):
                plan += [(api, name, api_paths, "api"), (raw, name, raw_paths, "raw")]
                results["plans"].append(explain(database_url, name, rows, raw_paths))
            results["cells"] += load.best_of(plan, rows)
            # No new price from here on: the 304 cells send the ETag of the answer they start
            # with, and the next size's seed starts from an empty table.
            fetcher.finish()
        # On the largest table: two years of one ticker when the table is 2.1 million rows.
        results["cache"] = cache_cells(load, api, rows, workdir, servers)
        results["csv"] = csv_download(api, last)
        results["latest_during_csv"] = latest_during_downloads(load, api, rows)
        results["rss_web_worker_kb"] = max(vm_rss(pid) for pid in children(api.pid))
        results["fetch"], results["rss_rq_worker_kb"] = fetch_cycle(database_url, options, env)
        results["fetch_all"] = fetch_cycle_all(database_url, options)
    finally:
        if fetcher:
            fetcher.stop.set()
        for process in servers:
            stop_process_group(process)
        shutil.rmtree(workdir, ignore_errors=True)
        if options.drop:
            drop_database(options.database)
    results["targets"] = report(results)
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2))
    return 0


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="10000,1000000,2100000", help="table sizes in rows (both tickers)"
    )
    parser.add_argument("--duration", type=int, default=3, help="seconds of wrk per run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each cell")
    parser.add_argument("--repeats", type=int, default=4, help="runs per cell, the best is kept")
    parser.add_argument("--connections", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--database", default="tracker_bench", help="created, and dropped first")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--days",
        help="history lengths in days, comma-separated, instead of --sizes: seeded on the server"
        " (seed_history), every ticker every minute, as the fetcher writes them",
    )
    parser.add_argument(
        "--tickers",
        type=int,
        default=2,
        help=f"tickers in the table with --days: {', '.join(INDEX_NAMES[:3])}, ... (up to 99)",
    )
    options = parser.parse_args(argv)
    if options.tickers != 2 and not options.days:
        parser.error("--tickers needs --days (flask seed, behind --sizes, seeds two tickers)")
    if not 2 <= options.tickers <= 99:
        parser.error(f"--tickers is 2 to 99 ({PENDING_TICKER}, the second, has a fetch pending)")
    options.tickers = ticker_names(options.tickers)
    if options.days:
        minutes = [round(float(days) * 1440) for days in options.days.split(",")]
        options.sizes = [len(options.tickers) * m for m in minutes]
    else:
        options.sizes = [int(size) for size in options.sizes.split(",")]
    return options


def find_wrk():
    """wrk from PATH; installed from Debian's packages when missing and we are root."""
    if not shutil.which("wrk") and shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk not found: apt-get install -y wrk", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk is needed: apt-get install wrk")
    return wrk


def create_database(name):
    """Drop and re-create the bench's own database, migrated; returns its URL."""
    drop_database(name)
    sql(ADMIN_DATABASE_URL, f'CREATE DATABASE "{name}"')
    url = make_url(ADMIN_DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    subprocess.run(
        [BIN / "flask", "db", "upgrade"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
        capture_output=True,
    )
    return url


def drop_database(name):
    sql(ADMIN_DATABASE_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sql(database_url, statement):
    connection = pg_connect(database_url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else None
    finally:
        connection.close()


def seed(database_url, rows, env):
    """Empty the table and seed about `rows` rows with `flask seed`, then VACUUM ANALYZE."""
    sql(database_url, "TRUNCATE price_records")
    days = rows / ROWS_PER_DAY
    started = time.monotonic()
    done = subprocess.run(
        [BIN / "flask", "seed", "--days", f"{days:.6f}"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - started
    sql(database_url, "VACUUM ANALYZE price_records")
    line = done.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return {"rows": rows, "days": round(days, 3), "seconds": round(seconds, 2), "output": line}


# Deribit index names and a price each looks like (value, decimals), for tables of many
# tickers; past them come synthetic names of the same shape (t21_usd, ...), at 100.0000.
INDEX_PRICES = {
    "btc_usd": (87000, 2),
    "eth_usd": (3000, 2),
    "sol_usdc": (140, 4),
    "xrp_usdc": (2.2, 4),
    "bnb_usdc": (600, 2),
    "ada_usdc": (0.7, 5),
    "avax_usdc": (25, 4),
    "doge_usdc": (0.17, 6),
    "dot_usdc": (4.5, 4),
    "link_usdc": (14, 4),
    "ltc_usdc": (85, 3),
    "bch_usdc": (350, 2),
    "trx_usdc": (0.25, 6),
    "uni_usdc": (7, 4),
    "near_usdc": (3, 4),
    "algo_usdc": (0.2, 5),
    "paxg_usdc": (3300, 2),
    "usde_usdc": (1, 5),
    "btc_usdc": (87000, 2),
    "eth_usdc": (3000, 2),
}
INDEX_NAMES = tuple(INDEX_PRICES)


def ticker_names(count):
    """The first `count` tickers of the bench's table: btc_usd (the one under load) first."""
    return [
        *INDEX_NAMES[:count],
        *(f"t{n:02d}_usd" for n in range(len(INDEX_NAMES) + 1, count + 1)),
    ]


# The bench's history written on the server, minute by minute: one series of row numbers,
# row i is ticker i % n at minute i / n, so nothing is sorted. A price is a slow wave with
# noise around the ticker's usual value, rounded to its usual digits.
SEED_INSERT = (
    "INSERT INTO price_records (ticker, timestamp, price, source)"
    " SELECT (%(names)s::text[])[k], ts, round((base[k] * (1 + 0.2 * sin(ts / 1e6 + k)"
    " + 0.002 * (random() - 0.5)))::numeric, (%(digits)s::int[])[k]), 'live'"
    " FROM (SELECT %(first)s::bigint + i / %(n)s * 60 AS ts, (i %% %(n)s + 1)::int AS k"
    "       FROM generate_series(0::bigint, %(rows)s - 1) AS i) AS minute,"
    " (SELECT %(bases)s::float8[] AS base) AS constant"
)


def seed_history(database_url, tickers, rows):
    """Empty the table and write `rows` rows on the server: one price a minute for every ticker.

    Rows go in the order the fetcher writes them (a minute of every ticker, then the next
    minute), so a ticker's day is spread over the heap as in production; source 'live',
    ending at the current minute. The table is loaded without its indexes, which are then
    built again from their own definitions, as a restore does; then VACUUM and ANALYZE.
    Returns the time of each step and the sizes.
    """
    minutes = rows // len(tickers)
    last = int(time.time()) // 60 * 60
    prices = [INDEX_PRICES.get(ticker, (100, 4)) for ticker in tickers]
    params = {
        "names": list(tickers),
        "bases": [float(base) for base, _ in prices],
        "digits": [digits for _, digits in prices],
        "first": last - (minutes - 1) * 60,
        "n": len(tickers),
        "rows": minutes * len(tickers),
    }
    connection = pg_connect(database_url)
    connection.autocommit = True
    timings = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'price_records'::regclass AND contype IN ('p', 'u')"
            )
            constraints = cursor.fetchall()
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'price_records'"
                " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            )
            indexes = cursor.fetchall()
            cursor.execute("TRUNCATE price_records")
            for name, _ in constraints:
                cursor.execute(f"ALTER TABLE price_records DROP CONSTRAINT {name}")
            for name, _ in indexes:
                cursor.execute(f"DROP INDEX {name}")
            steps = [
                ("insert_s", SEED_INSERT, params),
                *(
                    ("indexes_s", f"ALTER TABLE price_records ADD CONSTRAINT {name} {text}", None)
                    for name, text in constraints
                ),
                *(("indexes_s", text, None) for _, text in indexes),
                ("vacuum_s", "VACUUM price_records", None),
                ("analyze_s", "ANALYZE price_records", None),
                # All visible now: the cost of a vacuum that finds nothing new.
                ("vacuum_again_s", "VACUUM price_records", None),
            ]
            for step, statement, values in steps:
                started = time.monotonic()
                cursor.execute(statement, values)
                timings[step] = round(timings.get(step, 0) + time.monotonic() - started, 2)
            cursor.execute(
                "SELECT count(*), pg_relation_size('price_records'),"
                " pg_indexes_size('price_records') FROM price_records"
            )
            count, table_bytes, index_bytes = cursor.fetchone()
    finally:
        connection.close()
    result = {
        "rows": count,
        "tickers": len(tickers),
        "minutes": minutes,
        **timings,
        "table_bytes": table_bytes,
        "index_bytes": index_bytes,
        "table_bytes_per_row": round(table_bytes / max(count, 1), 1),
        "index_bytes_per_row": round(index_bytes / max(count, 1), 1),
    }
    print(
        f"seeded {count} rows ({len(tickers)} tickers x {minutes} minutes) on the server:"
        f" insert {timings['insert_s']} s, indexes {timings['indexes_s']} s,"
        f" vacuum {timings['vacuum_s']} s, analyze {timings['analyze_s']} s, vacuum again"
        f" {timings['vacuum_again_s']} s; table {table_bytes / 2**20:.0f} MiB"
        f" ({result['table_bytes_per_row']} B/row), indexes {index_bytes / 2**20:.0f} MiB"
        f" ({result['index_bytes_per_row']} B/row)",
        flush=True,
    )
    return result


# The live fetch's insert of a price for the current slot (insert-ignore): here the ticker's
# newest price again, as if the index had not moved.
STORE_CURRENT_SLOT = (
    "INSERT INTO price_records (ticker, timestamp, price, source)"
    " SELECT ticker, %(slot)s, price, 'live' FROM price_records WHERE ticker = %(ticker)s"
    " ORDER BY timestamp DESC LIMIT 1 ON CONFLICT (ticker, timestamp) DO NOTHING"
)


class CurrentSlotFetcher(threading.Thread):
    """The worker's part in production's steady state: `ticker`'s price stored for the current
    slot at each slot turn (at once: a real fetch lands within about a second), so that the
    newest row /prices/latest finds is the current slot's, as it is while a tracker runs."""

    def __init__(self, database_url, ticker, interval):
        super().__init__(daemon=True)
        self.database_url, self.ticker, self.interval = database_url, ticker, interval
        self.stop, self.error = threading.Event(), None

    def run(self):
        connection = pg_connect(self.database_url)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                while not self.stop.is_set():
                    slot = int(time.time()) // self.interval * self.interval
                    cursor.execute(STORE_CURRENT_SLOT, {"slot": slot, "ticker": self.ticker})
                    self.stop.wait(slot + self.interval - time.time() + 0.001)
        except Exception as exc:  # reported by finish(): the bench must not measure without it
            self.error = exc
        finally:
            connection.close()

    def finish(self):
        self.stop.set()
        self.join()
        if self.error:
            raise SystemExit(f"the current slot's fetcher failed: {self.error!r}")


def table_span(database_url):
    """Rows in the table, and the first and last timestamp of the ticker under load."""
    (count,) = sql(database_url, "SELECT count(*) FROM price_records")[0]
    first, last = sql(
        database_url,
        f"SELECT min(timestamp), max(timestamp) FROM price_records WHERE ticker = '{TICKER}'",
    )[0]
    return count, first, last


def endpoint_paths(first, last):
    """(name, API paths, raw floor paths) of each endpoint, for history from `first` to `last`."""
    api = "/api/v1/prices"
    deep = first + 101 * 60  # the page before it holds the oldest 100 rows, and one more follows
    middle = (first + last) // 2
    day = middle // 86400 * 86400  # a full UTC day in the middle of history: 1,440 rows
    date = datetime.fromtimestamp(day, UTC).date().isoformat()
    second_page = day + 86340 - 999 * 60  # the day is two pages: 1,000 rows, then 440
    return [
        ("latest", [f"{api}/latest?ticker={TICKER}"], [f"/latest?ticker={TICKER}"]),
        (
            "latest query",
            [f"{api}/latest?ticker={PENDING_TICKER}"],
            [f"/latest?ticker={PENDING_TICKER}"],
        ),
        ("first page", [f"{api}?ticker={TICKER}"], [f"/page?ticker={TICKER}"]),
        (
            "deep page",
            [f"{api}?ticker={TICKER}&cursor={encode_cursor(TICKER, deep)}"],
            [f"/page?ticker={TICKER}&before={deep}"],
        ),
        (
            "by-date day",
            [
                f"{api}/by-date?ticker={TICKER}&date={date}&limit=1000",
                f"{api}/by-date?ticker={TICKER}&date={date}&limit=1000"
                f"&cursor={encode_cursor(TICKER, second_page)}",
            ],
            [
                f"/page?ticker={TICKER}&start={day}&end={day + 86399}&limit=1000",
                f"/page?ticker={TICKER}&start={day}&end={day + 86399}&limit=1000"
                f"&before={second_page}",
            ],
        ),
        (
            "at middle",
            [f"{api}/at?ticker={TICKER}&timestamp={middle + 30}"],
            [f"/at?ticker={TICKER}&timestamp={middle + 30}"],
        ),
    ]


YEAR = 365 * 86400


def history_timings(base_url, rows, last, runs=7):
    """Time the coverage endpoints, one request at a time: median and best of `runs`.

    The gap report covers the year before `last` (525,600 minutes; the seeded history has
    one price a minute and no hole, so every slot of the year is read); /tickers reads the
    last day of every ticker.
    """
    api = f"{base_url}/api/v1"
    queries = [
        ("gaps year", f"{api}/prices/gaps?ticker={TICKER}&from={last - YEAR}&to={last - 60}"),
        ("tickers", f"{api}/tickers"),
    ]
    timings = []
    for name, url in queries:
        response = requests.get(url, timeout=30)
        response.raise_for_status()
        elapsed = []
        for _ in range(runs):
            started = time.perf_counter()
            requests.get(url, timeout=30).raise_for_status()
            elapsed.append((time.perf_counter() - started) * 1000)
        body = response.json()
        timings.append(
            {
                "endpoint": name,
                "rows": rows,
                "median_ms": round(statistics.median(elapsed), 1),
                "best_ms": round(min(elapsed), 1),
                "slots": body.get("expected_slots", len(body.get("tickers", []))),
            }
        )
        print(f"time  {name:<12} {rows:>9} rows  {timings[-1]['median_ms']} ms median")
    return timings


def explain(database_url, name, rows, raw_paths):
    """How much of the table the endpoint's SQL touches: buffers and plan, from EXPLAIN ANALYZE.

    Noise-free where req/s is not: a flat cost means the same few index and heap pages
    whatever the table's size.
    """
    buffers, nodes = 0, set()
    for path in raw_paths:
        url = urlsplit(path)
        statement, params = query_for(url.path.strip("/"), dict(parse_qsl(url.query)))
        connection = pg_connect(database_url)
        try:
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params)
                plan = cursor.fetchone()[0][0]["Plan"]
        finally:
            connection.close()
        buffers += plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
        while plan:  # down to the scan at the bottom of the plan
            if "Scan" in plan["Node Type"]:
                nodes.add(plan["Node Type"])
            plan = (plan.get("Plans") or [None])[0]
    print(f"plan  {name:<12} {rows:>9} rows  {buffers} buffers  {', '.join(sorted(nodes))}")
    return {"endpoint": name, "rows": rows, "buffers": buffers, "scans": sorted(nodes)}


DAY = 86400


def range_timings(base_url, rows, last, runs=5):
    """Time candle pages and a year's statistics, one request at a time: median and best.

    The full pages (1,000 x 1h, 730 x 1d) cover more of the history as the table grows, up
    to 42 and 730 days; the "3d" pages cover the same last three days at every size, so
    their cost must not move with the table. `read` is how many rows the request covers.
    """
    api = f"{base_url}/api/v1"
    candles = f"{api}/candles?ticker={TICKER}"
    queries = [
        ("candles 1h", f"{candles}&interval=1h&limit=1000&to={last}"),
        ("candles 1d", f"{candles}&interval=1d&limit=730&to={last}"),
        ("candles 1h 3d", f"{candles}&interval=1h&limit=1000&from={last - 3 * DAY}&to={last}"),
        ("candles 1d 3d", f"{candles}&interval=1d&limit=730&from={last - 3 * DAY}&to={last}"),
        ("stats day", f"{api}/prices/stats?ticker={TICKER}&from={last - DAY}&to={last}"),
        ("stats year", f"{api}/prices/stats?ticker={TICKER}&from={last - YEAR}&to={last}"),
    ]
    timings = []
    for name, url in queries:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
        elapsed = []
        for _ in range(runs):
            started = time.perf_counter()
            requests.get(url, timeout=60).raise_for_status()
            elapsed.append((time.perf_counter() - started) * 1000)
        body = response.json()
        items = body.get("items")
        timing = {
            "endpoint": name,
            "rows": rows,
            "items": len(items) if items is not None else 1,
            "read": sum(c["count"] for c in items) if items is not None else body["count"],
            # The buckets the candles span, oldest to newest start (None for statistics).
            "span": [items[-1]["time"], items[0]["time"]] if items else None,
            "median_ms": round(statistics.median(elapsed), 1),
            "best_ms": round(min(elapsed), 1),
        }
        print(
            f"range {name:<14} {rows:>9} rows  {timing['items']:>5} items over"
            f" {timing['read']:>8} rows  median {timing['median_ms']} ms"
            f"  best {timing['best_ms']} ms",
            flush=True,
        )
        timings.append(timing)
    return timings


def cache_cells(load, api, rows, workdir, started):
    """/prices/latest straight to gunicorn and through nginx running docs/nginx.conf (its cache),
    each plain and with If-None-Match carrying the current ETag. None without nginx."""
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if nginx is None:
        print("nginx not found (apt-get install nginx): no cache cells", flush=True)
        return None
    directory = workdir / "nginx"
    directory.mkdir()
    port = free_port()
    conf = render_nginx_conf(directory, port, int(api.base_url.rsplit(":", 1)[1]))
    log = open(directory / "error.log", "wb")  # noqa: SIM115 - nginx's own log, read on failure
    process = subprocess.Popen(
        [nginx, "-e", "stderr", "-p", str(directory), "-c", str(conf)]
        + ["-g", f"daemon off; pid {directory / 'nginx.pid'};"],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    started.append(process)
    process.base_url = f"http://127.0.0.1:{port}"
    path = f"/api/v1/prices/latest?ticker={TICKER}"
    deadline = time.monotonic() + 30
    while not _answers(f"{process.base_url}/tracker{path}"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"nginx did not start:\n{(directory / 'error.log').read_text()}")
        time.sleep(0.1)
    statuses = [
        requests.get(f"{process.base_url}/tracker{path}", timeout=5).headers["X-Cache-Status"]
        for _ in range(3)
    ]
    if "HIT" not in statuses:
        raise SystemExit(f"nginx does not cache {path}: {statuses}")
    etag = {"If-None-Match": requests.get(api.base_url + path, timeout=5).headers["ETag"]}
    plain = [
        (api, "gunicorn", [path], "cache"),
        (process, "nginx cache", [f"/tracker{path}"], "cache"),
    ]
    cells = load.best_of(plain, rows)
    conditional = [
        (api, "gunicorn 304", [path], "cache"),
        (process, "nginx cache 304", [f"/tracker{path}"], "cache"),
    ]
    cells += load.best_of(conditional, rows, headers=etag)
    return cells


def _answers(url):
    try:
        return requests.get(url, timeout=1)
    except requests.ConnectionError:
        return None


def _download(url):
    """GET a CSV as a client would, reading it as it comes; returns (lines, bytes, seconds)."""
    started = time.perf_counter()
    lines = size = 0
    with requests.get(url, stream=True, timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=1 << 16):
            lines += chunk.count(b"\n")
            size += len(chunk)
    return lines, size, time.perf_counter() - started


def csv_download(api, last):
    """Download all of one ticker's seeded history (to `last`: not the rows the fetcher added)
    as CSV; rows per second and workers' memory growth.

    The memory is every gunicorn worker's VmRSS before and after (whichever served it), and
    the largest growth is kept: it must stay flat however long the download.
    """
    url = f"{api.base_url}/api/v1/prices?ticker={TICKER}&format=csv&to={last}"
    _download(url)  # once, so that the worker's first-use allocations are not counted
    workers = children(api.pid)
    before = {pid: vm_rss(pid) for pid in workers}
    lines, size, seconds = _download(url)
    growth = max(vm_rss(pid) - before[pid] for pid in workers)
    result = {
        "rows": lines - 1,
        "megabytes": round(size / 1e6, 1),
        "seconds": round(seconds, 2),
        "rows_per_s": round((lines - 1) / seconds),
        "rss_before_kb": max(before.values()),
        "rss_growth_kb": growth,
    }
    print(f"csv download: {result}", flush=True)
    return result


def latest_during_downloads(load, api, rows, downloads=2):
    """wrk on /prices/latest while `downloads` full-history CSV downloads run, back to back.

    Returns wrk's figures and how many downloads completed meanwhile: a long download must
    not starve the cheap requests (gunicorn.conf.py: gthread workers).
    """
    url = f"{api.base_url}/api/v1/prices?ticker={TICKER}&format=csv"
    stop = threading.Event()
    finished = []

    def download_until_stopped():
        while not stop.is_set():
            finished.append(_download(url)[0])

    threads = [threading.Thread(target=download_until_stopped) for _ in range(downloads)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)  # both downloads under way
        run = load._wrk(api, [f"/api/v1/prices/latest?ticker={TICKER}"], 2 * load.options.duration)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    result = {"rows": rows, "downloads": downloads, "completed": len(finished), **run}
    print(f"latest during {downloads} CSV downloads: {result}", flush=True)
    return result


def start_gunicorn(args, env, log_path, started):
    """Start gunicorn (production settings) on a free loopback port; wait until it answers."""
    port = free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - gunicorn's own log, read on failure
    process = subprocess.Popen(
        [BIN / "gunicorn", *args],
        cwd=ROOT,
        env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}"},
        stdout=subprocess.DEVNULL,  # the access log: written as in production, not kept
        stderr=log,
        start_new_session=True,
    )
    started.append(process)
    process.base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn {args} exited:\n{log_path.read_text()}")
        try:
            requests.get(process.base_url + "/", timeout=1)
            return process
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit(f"gunicorn {args} did not answer:\n{log_path.read_text()}")


class Load:
    """Runs wrk against servers and paths and parses what it prints.

    Each cell is warmed up, then measured `repeats` times in rounds over all cells, keeping
    its best run: other work on a shared machine only ever makes a run slower, and every
    round measures the API and its floors within seconds of each other.
    """

    def __init__(self, wrk, script, options, database_url):
        self.wrk, self.script, self.options = wrk, script, options
        self.database_url = database_url

    def best_of(self, plan, rows, headers=None):
        """Each (server, name, paths, kind) of the plan loaded with wrk, sending `headers`."""
        headers = headers or {}
        # Each path must answer 200 before it is loaded; 304 when it is asked conditionally.
        expected = 304 if "If-None-Match" in headers else 200
        cells = []
        for server, name, paths, kind in plan:
            sizes, items = [], 0
            for path in paths:
                response = requests.get(server.base_url + path, headers=headers, timeout=10)
                if response.status_code != expected:
                    raise SystemExit(f"{path} answered {response.status_code}: {response.text}")
                sizes.append(len(response.content))
                items += len(response.json().get("items", [None])) if response.content else 0
            if self.options.warmup:
                self._wrk(server, paths, self.options.warmup, headers)
            cells.append(
                {
                    "endpoint": name,
                    "server": kind,
                    "rows": rows,
                    "bytes": round(statistics.mean(sizes)),
                    "items": items,  # rows the paths return in all, e.g. 1,440 for a day
                }
            )
        for _ in range(self.options.repeats):
            for cell, (server, _name, paths, _kind) in zip(cells, plan, strict=True):
                run = self._wrk(server, paths, self.options.duration, headers)
                cell["runs"] = [*cell.get("runs", []), run]
        for cell in cells:
            runs = ", ".join(f"{run['rps']:.0f}" for run in cell["runs"])
            best = max(cell["runs"], key=lambda run: run["rps"])
            cell.update({k: best[k] for k in ("rps", "p50_ms", "p99_ms")})
            cell["requests"] = sum(run["requests"] for run in cell["runs"])
            cell["errors"] = sum(run["errors"] for run in cell["runs"])
            cell["cpu_us"] = statistics.median(run["cpu_us"] for run in cell["runs"])
            print(
                f"{cell['server']:>5} {cell['endpoint']:<12} {rows:>9} rows"
                f"  {cell['rps']:>8.0f} req/s  p50 {cell['p50_ms']:.2f} ms"
                f"  p99 {cell['p99_ms']:.2f} ms  errors {cell['errors']}  cpu {cell['cpu_us']} us"
                f"  (runs: {runs})",
                flush=True,
            )
        return cells

    def _wrk(self, server, paths, seconds, headers=None):
        threads = min(self.options.threads, self.options.connections)
        command = [
            self.wrk,
            f"-t{threads}",
            f"-c{self.options.connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "--latency",
            *(f"--header={name}: {value}" for name, value in (headers or {}).items()),
            "-s",
            str(self.script),
            server.base_url,
            "--",
            *paths,
        ]
        before = self._cpu_ticks(server)
        output = subprocess.run(
            command, check=True, capture_output=True, text=True, timeout=seconds + 30
        ).stdout
        after = self._cpu_ticks(server)
        run = parse_wrk(output)
        # CPU the server and PostgreSQL spent, per request: unlike req/s, other work on a
        # shared machine barely moves it.
        ticks = sum(used - before.get(pid, 0) for pid, used in after.items())
        run["cpu_us"] = round(ticks / CLOCK_TICKS * 1e6 / max(run["requests"], 1))
        return run

    def _cpu_ticks(self, server):
        """CPU ticks used so far by the server's workers and this database's backends."""
        backends = sql(
            self.database_url,
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        return cpu_ticks([*children(server.pid), *(pid for (pid,) in backends)])


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(output):
    """req/s, p50, p99 (ms), requests and errors (socket errors + non-2xx/3xx) from wrk's output."""

    def latency(percent):
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M).groups()
        return round(float(value) * UNITS_MS[unit], 3)

    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = sum(int(n) for n in socket.groups()) if socket else 0
    errors += int(non_2xx[1]) if non_2xx else 0
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1]),
        "p50_ms": latency(50),
        "p99_ms": latency(99),
        "requests": int(re.search(r"(\d+) requests in", output)[1]),
        "errors": errors,
    }


def children(pid):
    """PIDs of the direct children of `pid` (gunicorn's workers)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if re.search(rf"^PPid:\s+{pid}$", status.read_text(), re.M):
                found.append(int(status.parent.name))
        except OSError:
            continue
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pids):
    """{pid: user + system CPU ticks} of the processes still running."""
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return used


def vm_rss(pid):
    """Resident memory of a process, in kB."""
    return int(re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)[1])


def fetch_cycle(database_url, options, env, runs=5):
    """Time fetch_prices for two tickers against a fake Deribit answering in 100 ms.

    Then run the same job in a real `flask worker` and read its resident memory.
    """
    fake = FakeDeribit(latency=0.1).start()
    worker = None
    try:
        app = create_app(
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": options.redis_url,
                "DERIBIT_BASE_URL": fake.base_url,
                "TICKERS": TICKERS,
                "LOG_LEVEL": "WARNING",
            }
        )
        walls = []
        with app.app_context():
            for _ in range(runs):
                started = time.monotonic()
                summary = fetch_prices(skip_stored=False)
                walls.append((time.monotonic() - started) * 1000)
                if summary["failed"]:
                    raise SystemExit(f"fetch failed: {summary['failed']}")
        fetch = {
            "cold_ms": round(walls[0], 1),
            "warm_median_ms": round(statistics.median(walls[1:]), 1),
            "max_concurrent_requests": fake.max_in_flight,
            "latency_ms": 100,
        }
        print(f"fetch cycle: {fetch}", flush=True)

        worker = subprocess.Popen(
            [BIN / "flask", "worker"],
            cwd=ROOT,
            env={**env, "DERIBIT_BASE_URL": fake.base_url, "LOG_LEVEL": "WARNING"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        connection = Redis.from_url(options.redis_url, protocol=2)
        jobs = [fetch_queue(connection).enqueue(fetch_prices) for _ in range(3)]
        deadline = time.monotonic() + 60
        while not all(job.is_finished for job in jobs):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit("the RQ worker did not finish its fetch jobs")
            time.sleep(0.1)
        connection.close()
        return fetch, vm_rss(worker.pid)
    finally:
        if worker is not None:
            stop_process_group(worker)
        fake.stop()


def fetch_cycle_all(database_url, options, runs=5):
    """Time fetch_prices with TICKERS=all: the fake Deribit's 50 indexes, answering in 100 ms."""
    fake = FakeDeribit(latency=0.1).start()
    try:
        app = create_app(
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": options.redis_url,
                "DERIBIT_BASE_URL": fake.base_url,
                "TICKERS": "all",
                "LOG_LEVEL": "WARNING",
            }
        )
        walls = []
        with app.app_context():
            for run in range(runs):
                if run:
                    # Cycles are a FETCH_INTERVAL apart: let the client's rate-limit bucket
                    # refill as it would by then, or the next cycle would measure its pace.
                    time.sleep(BURST_REQUESTS / REQUESTS_PER_SECOND)
                started = time.monotonic()
                summary = fetch_prices(skip_stored=False)
                walls.append((time.monotonic() - started) * 1000)
                if summary["failed"]:
                    raise SystemExit(f"fetch of every index failed: {summary['failed']}")
        fetch = {
            "tickers": len(app.config["TICKERS"]),
            "cold_ms": round(walls[0], 1),
            "warm_median_ms": round(statistics.median(walls[1:]), 1),
            "max_concurrent_requests": fake.max_in_flight,
            "latency_ms": 100,
        }
        print(f"fetch cycle, TICKERS=all: {fetch}", flush=True)
        return fetch
    finally:
        fake.stop()


def machine():
    """The machine and versions the numbers belong to."""
    cpu = re.search(r"^model name\s+: (.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    memory = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    postgres = sql(ADMIN_DATABASE_URL, "SHOW server_version")[0][0]
    wrk_version = subprocess.run(
        [shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu[1] if cpu else "?",
        "memory_gb": round(int(memory[1]) / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "postgresql": postgres,
        "wrk": (wrk_version.stdout + wrk_version.stderr).split("\n")[0].strip(),
    }


def report(results):
    """Print the table and, per target, whether it is met and by how much."""
    cells = results["cells"]
    const = {c["rows"]: c for c in cells if c["server"] == "floor"}
    raw = {(c["endpoint"], c["rows"]): c for c in cells if c["server"] == "raw"}
    api = [c for c in cells if c["server"] == "api"]
    plans = {(p["endpoint"], p["rows"]): p["buffers"] for p in results["plans"]}
    m = results["machine"]
    print(f"\nmachine: {m['cpus']} x {m['cpu']}, {m['memory_gb']} GB; Python {m['python']},")
    print(f"PostgreSQL {m['postgresql']}, {m['wrk']}")
    header = (
        f"{'endpoint':<12} {'rows':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'bytes':>7}"
        f" {'errors':>6} {'cpu us':>6} {'bufs':>4} | {'floor req/s':>11} {'errors':>6}"
        f" {'cpu us':>6} {'/floor':>6} {'/const':>6}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for cell in sorted(const.values(), key=lambda c: c["rows"]):
        print(
            f"{'constant':<12} {cell['rows']:>9} {cell['rps']:>8.0f} {cell['p50_ms']:>7.2f}"
            f" {cell['p99_ms']:>7.2f} {cell['bytes']:>7} {cell['errors']:>6}"
            f" {cell['cpu_us']:>6.0f} {'':>4} |"
        )
    for cell in sorted(api, key=lambda c: (ENDPOINTS.index(c["endpoint"]), c["rows"])):
        floor = raw[(cell["endpoint"], cell["rows"])]
        cell["vs_raw"] = cell["rps"] / floor["rps"]
        cell["vs_const"] = cell["rps"] / const[cell["rows"]]["rps"]
        print(
            f"{cell['endpoint']:<12} {cell['rows']:>9} {cell['rps']:>8.0f} {cell['p50_ms']:>7.2f}"
            f" {cell['p99_ms']:>7.2f} {cell['bytes']:>7} {cell['errors']:>6}"
            f" {cell['cpu_us']:>6.0f} {plans[(cell['endpoint'], cell['rows'])]:>4}"
            f" | {floor['rps']:>11.0f} {floor['errors']:>6}"
            f" {floor['cpu_us']:>6.0f} {cell['vs_raw']:>6.2f} {cell['vs_const']:>6.2f}"
        )
    print(f"\n{'coverage':<12} {'rows':>9} {'slots':>8} {'median ms':>9} {'best ms':>8}")
    for cell in results["history"]:
        print(
            f"{cell['endpoint']:<12} {cell['rows']:>9} {cell['slots']:>8}"
            f" {cell['median_ms']:>9.1f} {cell['best_ms']:>8.1f}"
        )
    print(
        f"\n{'range':<14} {'rows':>9} {'items':>6} {'read':>8} {'median ms':>9} {'best ms':>8}"
        f" {'us/row':>6}"
    )
    for cell in results["ranges"]:
        print(
            f"{cell['endpoint']:<14} {cell['rows']:>9} {cell['items']:>6} {cell['read']:>8}"
            f" {cell['median_ms']:>9.1f} {cell['best_ms']:>8.1f}"
            f" {cell['best_ms'] * 1000 / max(cell['read'], 1):>6.2f}"
        )
    if results["cache"]:
        print(
            f"\n{'latest via':<16} {'rows':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
            f" {'bytes':>7} {'errors':>6} {'cpu us':>6}"
        )
        for cell in results["cache"]:
            print(
                f"{cell['endpoint']:<16} {cell['rows']:>9} {cell['rps']:>8.0f}"
                f" {cell['p50_ms']:>7.2f} {cell['p99_ms']:>7.2f} {cell['bytes']:>7}"
                f" {cell['errors']:>6} {cell['cpu_us']:>6.0f}"
            )
    csv = results["csv"]
    print(
        f"\nCSV of all {TICKER} history: {csv['rows']} rows, {csv['megabytes']} MB in"
        f" {csv['seconds']} s = {csv['rows_per_s']} rows/s; worker memory"
        f" {csv['rss_before_kb'] / 1024:.0f} MB before, grew {csv['rss_growth_kb'] / 1024:.1f} MB"
    )
    during = results["latest_during_csv"]
    print(
        f"latest during {during['downloads']} CSV downloads: {during['rps']:.0f} req/s,"
        f" p50 {during['p50_ms']} ms, p99 {during['p99_ms']} ms, errors {during['errors']},"
        f" {during['completed']} downloads completed meanwhile"
    )
    fetch = results["fetch"]
    print(
        f"\nfetch cycle, 2 tickers, 100 ms Deribit latency: {fetch['warm_median_ms']} ms"
        f" (first {fetch['cold_ms']} ms; {fetch['max_concurrent_requests']} requests in flight)"
    )
    fetch_all = results["fetch_all"]
    print(
        f"fetch cycle, {fetch_all['tickers']} tickers (TICKERS=all), 100 ms Deribit latency:"
        f" {fetch_all['warm_median_ms']} ms (first {fetch_all['cold_ms']} ms;"
        f" {fetch_all['max_concurrent_requests']} requests in flight)"
    )
    print(
        f"resident memory after the load: gunicorn worker {results['rss_web_worker_kb'] / 1024:.0f}"
        f" MB, RQ worker {results['rss_rq_worker_kb'] / 1024:.0f} MB"
    )
    print("\ntargets:")
    lines = targets(results, api)
    for line in lines:
        print(f"  {line}")
    return lines


def targets(results, api):
    """One line per target: MET or MISSED, with the number."""
    lines = []

    def check(ok, text):
        lines.append(f"{'MET   ' if ok else 'MISSED'} {text}")

    for cell in (c for c in api if c["endpoint"] == "latest"):
        check(
            cell["vs_const"] >= 0.6,
            f"latest at {cell['rows']} rows: {cell['vs_const']:.1%}"
            " of the constant-JSON floor (>= 60%)",
        )
    sizes = sorted({c["rows"] for c in api})
    by_key = {(c["endpoint"], c["rows"]): c for c in api}
    if len(sizes) > 1:
        for name in ENDPOINTS:
            base = by_key[(name, sizes[0])]["rps"]
            worst = min(by_key[(name, s)]["rps"] / base for s in sizes[1:])
            check(
                worst >= 0.9,
                f"{name}: req/s at larger tables is {worst:.1%} of {sizes[0]} rows (>= 90%)",
            )
    for size in sizes:
        ratio = by_key[("deep page", size)]["rps"] / by_key[("first page", size)]["rps"]
        check(ratio >= 0.9, f"deep page at {size} rows: {ratio:.1%} of the first page (>= 90%)")
        cell = by_key[("by-date day", size)]
        check(
            cell["vs_raw"] >= 0.5,
            f"by-date day at {size} rows: {cell['vs_raw']:.1%} of the"
            " psycopg2 + json.dumps floor (>= 50%)",
        )
    errors = sum(c["errors"] for c in results["cells"])
    check(errors == 0, f"errors and non-2xx responses under load: {errors}")
    spread = max(c["p99_ms"] / c["p50_ms"] for c in api)
    check(spread < 10, f"worst p99/p50 of the API: {spread:.1f} (< 10)")
    for cell in (c for c in results["history"] if c["endpoint"] == "gaps year"):
        check(
            cell["median_ms"] < 1000,
            f"gap report of a year at {cell['rows']} rows: {cell['median_ms']} ms (< 1 s)",
        )
    ranges = {(c["endpoint"], c["rows"]): c for c in results["ranges"]}
    range_sizes = sorted({c["rows"] for c in results["ranges"]})
    for name in ("candles 1h 3d", "candles 1d 3d"):  # the same range at every size
        base = ranges[(name, range_sizes[0])]["best_ms"]
        worst = max(ranges[(name, size)]["best_ms"] for size in range_sizes)
        check(
            worst <= max(1.25 * base, base + 2),
            f"{name}: {worst} ms at the slowest size, {base} ms at {range_sizes[0]} rows"
            " (flat: within 25 % or 2 ms)",
        )
    for cell in (c for c in results["ranges"] if c["endpoint"] == "stats year"):
        check(
            cell["median_ms"] < 1000,
            f"stats of a year at {cell['rows']} rows: {cell['median_ms']} ms (< 1 s)",
        )
    csv = results["csv"]
    check(
        csv["rss_growth_kb"] < 20 * 1024,
        f"CSV of {csv['rows']} rows: worker memory grew {csv['rss_growth_kb'] / 1024:.1f} MB"
        " (< 20 MB)",
    )
    during = results["latest_during_csv"]
    check(
        during["errors"] == 0 and during["p99_ms"] < 100,
        f"latest during two CSV downloads: p99 {during['p99_ms']} ms, errors"
        f" {during['errors']} (< 100 ms, none)",
    )
    fetch = results["fetch"]["warm_median_ms"]
    check(fetch < 200, f"fetch cycle for two tickers at 100 ms latency: {fetch} ms (< 200 ms)")
    fetch_all = results["fetch_all"]
    check(
        fetch_all["warm_median_ms"] < 500,
        f"fetch cycle for {fetch_all['tickers']} tickers (TICKERS=all) at 100 ms latency:"
        f" {fetch_all['warm_median_ms']} ms (< 500 ms)",
    )
    return lines


if __name__ == "__main__":
    sys.exit(main())
