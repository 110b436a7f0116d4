"""What the largest requests the limits allow cost: `python -m tests.bench_limits`.

Seeds `tracker_bench_limits` (its own PostgreSQL database, dropped at the end) with `--days` of
one price a minute for one ticker, then times, in-process, each bounded request at exactly its
maximum (MAX_RANGE_DAYS, MAX_CSV_DAYS) and the 422 one second beyond it. Prints; asserts nothing.
"""

import argparse
import os
import statistics
import subprocess
import time

from tests.benchmark import BIN, ROOT, create_database, drop_database, sql
from tracker import create_app
from tracker.config import DEFAULTS

DATABASE = "tracker_bench_limits"
TICKER = "btc_usd"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=int(DEFAULTS["MAX_CSV_DAYS"]))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", default=DATABASE, help="dropped, created, dropped again")
    parser.add_argument(
        "--statement-timeout-ms",
        default=DEFAULTS["DB_STATEMENT_TIMEOUT_MS"],
        help="DB_STATEMENT_TIMEOUT_MS of the app under test (a request over it is a 503)",
    )
    args = parser.parse_args(argv)
    url = create_database(args.database)
    try:
        env = {**os.environ, "DATABASE_URL": url, "TICKERS": TICKER}
        seeded = subprocess.run(
            [BIN / "flask", "seed", "--days", str(args.days + 1)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        print(seeded.stdout.strip().splitlines()[-1], flush=True)
        sql(url, "VACUUM ANALYZE price_records")
        (last,) = sql(url, "SELECT max(timestamp) FROM price_records")[0]
        app = create_app(
            {
                "DATABASE_URL": url,
                "TICKERS": TICKER,
                "LOG_LEVEL": "ERROR",
                "MAX_RANGE_DAYS": str(args.days),
                "MAX_CSV_DAYS": str(args.days),
                "DB_STATEMENT_TIMEOUT_MS": args.statement_timeout_ms,
            }
        )
        report(app.test_client(), last - args.days * 86400, last, args.runs)
        print(f"load average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        drop_database(args.database)


def report(client, start, end, runs):
    span = f"ticker={TICKER}&from={start}&to={end}"
    cases = [
        ("stats", f"/api/v1/prices/stats?{span}"),
        ("gaps", f"/api/v1/prices/gaps?{span}"),
        ("prices CSV", f"/api/v1/prices?{span}&format=csv"),
        ("candles 1m CSV", f"/api/v1/candles?{span}&interval=1m&format=csv"),
        ("candles 1d CSV", f"/api/v1/candles?{span}&interval=1d&format=csv"),
        ("candles 1w page 1000", f"/api/v1/candles?ticker={TICKER}&interval=1w&limit=1000"),
        ("CSV 1 s over", f"/api/v1/prices?ticker={TICKER}&from={start - 1}&to={end}&format=csv"),
    ]
    print(f"{'request':22} status  best s  median s       MB     lines", flush=True)
    for name, path in cases:
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            response = client.get(path)
            body = response.get_data()  # the whole streamed CSV
            seconds.append(time.perf_counter() - started)
        lines = body.count(b"\n") - 1 if response.mimetype == "text/csv" else ""
        best, median = min(seconds), statistics.median(seconds)
        print(
            f"{name:22} {response.status_code:6} {best:7.3f} {median:9.3f}"
            f" {len(body) / 1e6:8.1f} {lines:>9}",
            flush=True,
        )


if __name__ == "__main__":
    main()
