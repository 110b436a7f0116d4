"""The soak (`make soak`): the real processes at FETCH_INTERVAL=1 under random faults; a report.

Everything runs here, on loopback: its own PostgreSQL database `tracker_soak` (dropped and
re-created), its own redis-server on a free port, the fake Deribit with a price that moves
every second, `flask scheduler` and two `flask worker`s. One fault at a time, in random order,
for a random time: Redis killed and started again empty, PostgreSQL cut (a TCP proxy in
between), a worker SIGKILLed (and started again at once, as compose would), Deribit answering
503, Deribit sending garbage. After each fault it measures how long until live prices
resume and until the backfill has filled the hole. At the end it prints, per ticker, the
coverage before and after backfill, duplicates, garbage stored, and the recovery times.
Bounded in time; every process is stopped by its process group at the end.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis
from sqlalchemy.engine import make_url

from tests.conftest import (
    ADMIN_DATABASE_URL,
    ROOT,
    TCPProxy,
    admin_connection,
    free_port,
    pg_connect,
    stop_process_group,
)
from tests.fake_deribit import FakeDeribit, chart_reply, price_reply

BIN = Path(sys.executable).parent
TICKERS = ("btc_usd", "eth_usd")
FAULTS = ("redis", "postgres", "worker", "deribit", "garbage")
GARBAGE = ("NaN", "-5", "0", '"86955.73"', "1E+40", "null")


def main(argv=None):
    options = _parse(argv)
    rng = random.Random(options.seed)
    soak = Soak(options)
    try:
        soak.start()
        first = soak.wait_for_first_slot()
        print(f"soak: first prices at slot {first}; faults for {options.seconds} s", flush=True)
        began = time.monotonic()
        ends = began + options.seconds
        kinds = list(options.faults)
        while kinds or time.monotonic() < ends:  # at least one whole round
            if not kinds:
                kinds = list(options.faults)
            kind = kinds.pop(rng.randrange(len(kinds)))  # each kind once per round
            duration = rng.uniform(options.min_fault, options.max_fault)
            soak.inject(kind, duration)
            time.sleep(rng.uniform(1, options.max_quiet))
        results = soak.finish(first, time.monotonic() - began)
    finally:
        soak.stop()
    report(results)
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2))
    problems = results["duplicates"] + results["garbage_stored"] + results["dead_processes"]
    complete = all(t["coverage_after"] == 100 for t in results["tickers"].values())
    return 0 if problems == 0 and complete else 1


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=600, help="how long to inject faults (at least one round)"
    )
    parser.add_argument("--faults", default=",".join(FAULTS), help="kinds, comma-separated")
    parser.add_argument("--min-fault", type=float, default=3, help="shortest fault, seconds")
    parser.add_argument("--max-fault", type=float, default=12, help="longest fault, seconds")
    parser.add_argument("--max-quiet", type=float, default=8, help="longest calm between faults")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault order and times")
    parser.add_argument("--database", default="tracker_soak", help="created, and dropped first")
    parser.add_argument("--json", help="also write the results to this file")
    options = parser.parse_args(argv)
    options.faults = [kind for kind in options.faults.split(",") if kind]
    unknown = set(options.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    return options


class Soak:
    """The processes under test, the things it breaks, and what it measured."""

    interval = 1
    backfill_interval = 5

    def __init__(self, options):
        self.options = options
        self.workdir = Path(tempfile.mkdtemp(prefix="tracker-soak-"))
        self.database_url = make_url(ADMIN_DATABASE_URL).set(database=options.database)
        self.redis_port = free_port()
        self.proxy = TCPProxy((self.database_url.host, self.database_url.port or 5432))
        self.fake = FakeDeribit()
        self.processes = {}
        self.faults = []
        self.garbage_sent = 0

    # --- the processes -------------------------------------------------------------------

    def start(self):
        admin = admin_connection()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{self.options.database}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{self.options.database}"')
        admin.close()
        self.fake.reset(random_walk=True, chart_spacing=1)
        self.fake.start()
        self.proxy.open()
        self.start_redis()
        via_proxy = self.database_url.set(port=self.proxy.port)
        self.env = {
            **os.environ,
            "DATABASE_URL": via_proxy.render_as_string(hide_password=False),
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "DERIBIT_BASE_URL": self.fake.base_url,
            "DERIBIT_TIMEOUT": "0.5",
            "TICKERS": ",".join(TICKERS),
            "FETCH_INTERVAL": str(self.interval),
            "BACKFILL_INTERVAL": str(self.backfill_interval),
            "BACKFILL_WINDOW": "3600",
            "PYTHONUNBUFFERED": "1",
        }
        migrate = subprocess.run(
            [BIN / "flask", "db", "upgrade"], cwd=ROOT, env=self.env, capture_output=True
        )
        if migrate.returncode:
            raise SystemExit(migrate.stderr.decode())
        for name in ("scheduler", "worker-1", "worker-2"):
            self.spawn(name)

    def spawn(self, name):
        command = "scheduler" if name == "scheduler" else "worker"
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            [BIN / "flask", command],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def start_redis(self):
        self.processes["redis"] = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        redis = Redis(port=self.redis_port, socket_connect_timeout=1)
        for _ in range(100):
            try:
                redis.ping()
                return
            except Exception:
                time.sleep(0.1)
        raise SystemExit("redis-server did not start")

    def stop(self):
        for process in self.processes.values():
            stop_process_group(process)
        self.proxy.shut()
        try:
            self.fake.stop()
        except Exception:  # never started
            pass
        admin = admin_connection()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{self.options.database}" WITH (FORCE)')
        admin.close()

    # --- faults ----------------------------------------------------------------------------

    def inject(self, kind, duration):
        """Break one thing for `duration` seconds, mend it, and measure the recovery."""
        began = time.time()
        if kind == "redis":
            stop_process_group(self.processes.pop("redis"))
            time.sleep(duration)
            self.start_redis()  # the same port, empty
        elif kind == "postgres":
            self.proxy.shut()
            time.sleep(duration)
            self.proxy.open()
        elif kind == "worker":
            victim = random.choice(["worker-1", "worker-2"])
            os.killpg(self.processes[victim].pid, signal.SIGKILL)
            self.processes[victim].wait()
            self.spawn(victim)  # a supervisor (compose, flask up) starts it again
            time.sleep(duration)
        elif kind == "deribit":
            self.fake.outage = True
            time.sleep(duration)
            self.fake.outage = False
        elif kind == "garbage":
            self.send_garbage(duration)
        ended = time.time()
        fault = {"kind": kind, "seconds": round(ended - began, 1)}
        fault["live_again_s"] = self.seconds_until(lambda: self.live_since(ended), ended, 60)
        hole = (int(began) // self.interval, int(ended) // self.interval)
        deadline = 30 + self.backfill_interval
        fault["filled_s"] = self.seconds_until(lambda: self.hole_filled(*hole), ended, deadline)
        self.faults.append(fault)
        print(f"soak: {json.dumps(fault)}", flush=True)

    def send_garbage(self, duration):
        """Live answers, then chart points, that must never be stored, for `duration` seconds.

        The live fetch rejects them and leaves holes; the next backfill run gets garbage for
        those very slots and rejects it too; the one after fills them from good chart data.
        """
        ends = time.time() + duration
        while time.time() < ends:
            for ticker in TICKERS:
                self.fake.script(ticker, price_reply(random.choice(GARBAGE)))
                self.garbage_sent += 1
            time.sleep(self.interval)
        now = int(time.time())
        for ticker in TICKERS:
            bad = [(second * 1000, random.choice(GARBAGE)) for second in range(now - 30, now)]
            self.fake.script_chart(ticker, chart_reply(bad))
            self.garbage_sent += len(bad)

    def seconds_until(self, predicate, since, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return round(time.time() - since, 1)
            time.sleep(0.2)
        return None

    # --- what is stored --------------------------------------------------------------------

    def rows(self, since_slot=0):
        """[(ticker, slot, price text, source)] from `since_slot` on, read directly."""
        connection = pg_connect(self.database_url.render_as_string(hide_password=False))
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT ticker, timestamp, price::text, source FROM price_records"
                    " WHERE timestamp >= %s",
                    (since_slot * self.interval,),
                )
                return [(t, ts // self.interval, p, s) for t, ts, p, s in cursor.fetchall()]
        finally:
            connection.close()

    def live_since(self, moment):
        """Both tickers have a live price for a slot that began after `moment`."""
        slot = int(moment) // self.interval + 1
        live = {(t, s) for t, s, _, source in self.rows(slot) if source == "live"}
        return any(all((t, s) in live for t in TICKERS) for s in {s for _, s in live})

    def hole_filled(self, first, last):
        stored = {(t, s) for t, s, _, _ in self.rows(first)}
        return all((t, s) in stored for t in TICKERS for s in range(first, last + 1))

    def wait_for_first_slot(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            slots = {s for _, s, _, _ in self.rows()}
            if slots:
                return min(slots)
            time.sleep(0.2)
        raise SystemExit(f"no price within 30 s; logs in {self.workdir}")

    def finish(self, first, seconds):
        """Let the last backfill run, then measure coverage, duplicates and garbage."""
        last = int(time.time()) // self.interval - 3
        self.seconds_until(lambda: self.hole_filled(first, last), time.time(), 30)
        rows = self.rows(first)
        rows = [row for row in rows if row[1] <= last]
        expected = last - first + 1
        tickers = {}
        for ticker in TICKERS:
            mine = [row for row in rows if row[0] == ticker]
            live = {s for _, s, _, source in mine if source == "live"}
            tickers[ticker] = {
                "expected_slots": expected,
                "live_slots": len(live),
                "backfill_slots": len(mine) - len(live),
                "coverage_before": round(100 * len(live) / expected, 2),
                "coverage_after": round(100 * len({s for _, s, _, _ in mine}) / expected, 2),
            }
        keys = [(t, s) for t, s, _, _ in rows]
        return {
            "seconds": round(seconds),
            "interval": self.interval,
            "tickers": tickers,
            "duplicates": len(keys) - len(set(keys)),
            "garbage_sent": self.garbage_sent,
            "garbage_stored": sum(not self.exact(*row) for row in rows),
            "faults": self.faults,
            "dead_processes": sum(
                p.poll() is not None for name, p in self.processes.items() if name != "redis"
            ),
            "logs": str(self.workdir),
        }

    def exact(self, ticker, slot, price, source):
        """The row holds a price the fake served: at a second of its slot (live), or the chart
        point at the slot's start (backfill)."""
        start = slot * self.interval
        if source == "backfill":
            return price == self.fake.price_at(ticker, start)
        return price in {self.fake.price_at(ticker, start + s) for s in range(self.interval)}


def report(results):
    print(f"\nsoak: {results['seconds']} s of faults at FETCH_INTERVAL={results['interval']}")
    print(
        f"\n{'ticker':<9} {'slots':>6} {'live':>6} {'backfill':>8} {'before %':>9} {'after %':>8}"
    )
    for ticker, t in results["tickers"].items():
        print(
            f"{ticker:<9} {t['expected_slots']:>6} {t['live_slots']:>6} {t['backfill_slots']:>8}"
            f" {t['coverage_before']:>9.2f} {t['coverage_after']:>8.2f}"
        )
    print(f"\n{'fault':<9} {'seconds':>7} {'live again s':>12} {'hole filled s':>13}")
    for fault in results["faults"]:
        print(
            f"{fault['kind']:<9} {fault['seconds']:>7} {fault['live_again_s']!s:>12}"
            f" {fault['filled_s']!s:>13}"
        )
    print(
        f"\nduplicates: {results['duplicates']}; garbage sent: {results['garbage_sent']},"
        f" stored: {results['garbage_stored']}; processes dead at the end:"
        f" {results['dead_processes']}; logs: {results['logs']}"
    )


if __name__ == "__main__":
    sys.exit(main())
