"""Faults on purpose, against the real processes: the history heals and stays exact.

Each test runs `flask scheduler` and `flask worker` (and gunicorn where the API matters) with
FETCH_INTERVAL=2 against the fake Deribit, breaks one thing for a bounded time, and checks
that the processes are still alive, that fetching resumes on time, that the backfill fills
the hole, and that every stored price is exactly one the fake served: no duplicate, no
garbage, nothing invented.
"""

import os
import signal
import time

import pytest
import requests
from rq import Worker
from sqlalchemy import text

from tests.conftest import (
    TCPProxy,
    command,
    free_port,
    read_log,
    start_redis,
    truncate_prices,
    wait_for_http,
)
from tracker.extensions import db

INTERVAL = 2
TICKERS = ("btc_usd", "eth_usd")
SETTINGS = {
    "FETCH_INTERVAL": INTERVAL,
    "BACKFILL_INTERVAL": INTERVAL,
    "BACKFILL_WINDOW": 600,
}


@pytest.fixture
def database_url(postgres_url):
    """Process tests run on PostgreSQL only: SQLite is the single-machine default."""
    return postgres_url


@pytest.fixture
def history(deribit, postgres_url):
    """The fake Deribit with a price that moves every second and a chart point every second;
    an empty table, so every row the test checks is one its processes stored."""
    truncate_prices(postgres_url)
    deribit.reset(random_walk=True, chart_spacing=1)
    return deribit


def slot_now():
    return int(time.time()) // INTERVAL


def wait_for(predicate, timeout, processes, what):
    """Poll `predicate` until it is true; fail with the processes' logs if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, f"{process.args} died:\n{read_log(process)}"
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    logs = "\n".join(read_log(p)[-3000:] for p in processes)
    pytest.fail(f"{what} not within {timeout}s:\n{logs}")


def rows(app, since_slot):
    """{(ticker, slot): (price text, source)} of every row from `since_slot` on."""
    with app.app_context():
        result = db.session.execute(
            text(
                "SELECT ticker, timestamp, price, source FROM price_records"
                " WHERE timestamp >= :since"
            ),
            {"since": since_slot * INTERVAL},
        )
        found = {}
        for ticker, timestamp, price, source in result:
            assert (ticker, timestamp // INTERVAL) not in found, "duplicate row"
            found[ticker, timestamp // INTERVAL] = (str(price), source)
        db.session.remove()
        return found


def live_slots(app, since_slot):
    return {key for key, (_, source) in rows(app, since_slot).items() if source == "live"}


def complete(app, first_slot, last_slot):
    """True when every ticker has a row in every slot first_slot..last_slot."""
    stored = rows(app, first_slot)
    return all(
        (ticker, slot) in stored for ticker in TICKERS for slot in range(first_slot, last_slot + 1)
    )


def assert_exact(app, fake, first_slot):
    """Every row is exactly what the fake served: a live price at a second of its slot, a
    backfilled one the chart point at the slot's start."""
    stored = rows(app, first_slot)
    assert stored, "nothing stored"
    for (ticker, slot), (price, source) in stored.items():
        start = slot * INTERVAL
        if source == "backfill":
            assert price == fake.price_at(ticker, start), (ticker, slot)
        else:
            assert source == "live"
            served = {fake.price_at(ticker, start + second) for second in range(INTERVAL)}
            assert price in served, (ticker, slot, price)
        assert float(price) > 0


def start_tracker(spawn, workers=1, **env):
    """`flask scheduler` and `workers` x `flask worker`; then wait for the first price.

    Returns (processes, the first slot stored).
    """
    processes = [spawn(command("flask", "scheduler"), **SETTINGS, **env)]
    for _ in range(workers):
        processes.append(spawn(command("flask", "worker"), **SETTINGS, **env))
    return processes


def first_slot(app, processes):
    """The first slot with a live price of every ticker."""

    def found():
        slots = live_slots(app, 0)
        return min((s for _, s in slots if all((t, s) in slots for t in TICKERS)), default=None)

    return wait_for(found, 20, processes, "the first prices")


def test_redis_restarted_empty_fetching_resumes_and_the_hole_is_backfilled(
    app, history, spawn, tmp_path
):
    port = free_port()
    redis_server = start_redis(spawn, port, tmp_path)
    processes = start_tracker(spawn, REDIS_URL=f"redis://127.0.0.1:{port}/0")
    first = first_slot(app, processes)

    wait_for(lambda: slot_now() >= first + 2, 10, processes, "two intervals")
    os.killpg(redis_server.pid, signal.SIGKILL)
    redis_server.wait()
    down = slot_now()
    time.sleep(10)
    start_redis(spawn, port, tmp_path)  # the same port, empty
    back = time.time()

    # Fetching resumes by the second interval after Redis is back.
    resumed = int(back) // INTERVAL + 2
    wait_for(
        lambda: {("btc_usd", resumed), ("eth_usd", resumed)} <= live_slots(app, resumed),
        resumed * INTERVAL - time.time() + 6,
        processes,
        "a live price in the second interval after Redis came back",
    )
    # The slots missed while Redis was down are backfilled.
    wait_for(lambda: complete(app, first, resumed), 20, processes, "the hole backfilled")
    backfilled = {k for k, (_, s) in rows(app, first).items() if s == "backfill"}
    assert {slot for _, slot in backfilled} >= set(range(down + 1, down + 4))
    assert_exact(app, history, first)
    for process in processes:
        assert process.poll() is None, read_log(process)


def test_postgres_cut_the_api_says_503_then_recovers_and_the_hole_is_backfilled(
    app, history, spawn, redis_conn, postgres_url
):
    from sqlalchemy.engine import make_url

    proxy = TCPProxy(("127.0.0.1", make_url(postgres_url).port or 5432))
    proxy.open()
    try:
        via_proxy = make_url(postgres_url).set(port=proxy.port).render_as_string(False)
        processes = start_tracker(spawn, DATABASE_URL=via_proxy)
        web_port = free_port()
        web = spawn(
            command("gunicorn", "wsgi:app"),
            DATABASE_URL=via_proxy,
            GUNICORN_BIND=f"127.0.0.1:{web_port}",
            GUNICORN_WORKERS=1,
            **SETTINGS,
        )
        processes.append(web)
        latest = f"http://127.0.0.1:{web_port}/api/v1/prices/latest?ticker=btc_usd"
        wait_for_http(latest, process=web)
        first = first_slot(app, processes)
        assert requests.get(latest, timeout=5).status_code == 200

        proxy.shut()
        down = slot_now()
        # A price kept for the current slot stays the answer until the slot ends
        # (tracker/api/prices.py); in the next one the API must ask the database.
        time.sleep(INTERVAL - time.time() % INTERVAL + 0.1)
        cut = requests.get(latest, timeout=10)
        assert cut.status_code == 503 and cut.json()["code"] == 503
        assert cut.headers["Retry-After"]
        time.sleep(10)
        proxy.open()
        back = slot_now()

        wait_for(
            lambda: requests.get(latest, timeout=5).status_code == 200, 15, processes, "API back"
        )
        resumed = back + 2
        wait_for(
            lambda: ("btc_usd", resumed) in live_slots(app, resumed),
            resumed * INTERVAL - time.time() + 6,
            processes,
            "live prices again",
        )
        wait_for(lambda: complete(app, first, resumed), 20, processes, "the hole backfilled")
        backfilled = {slot for (_, slot), (_, s) in rows(app, first).items() if s == "backfill"}
        assert set(range(down + 1, back)) <= backfilled
        assert_exact(app, history, first)
    finally:
        proxy.shut()


def test_a_worker_killed_mid_job_the_next_interval_runs_on_time(app, history, spawn, redis_conn):
    # Two workers, as `docker compose up --scale worker=2` runs them.
    processes = start_tracker(spawn, workers=2)
    first = first_slot(app, processes)
    history.latency = 1.0  # each fetch now takes a second: time to kill it mid-job

    def busy_worker():
        if history.in_flight == 0:
            return None
        for worker in Worker.all(connection=redis_conn):
            if worker.get_current_job_id():
                return worker
        return None

    victim = wait_for(busy_worker, 10, processes, "a worker in the middle of a job")
    killed_slot = slot_now()
    os.kill(victim.pid, signal.SIGKILL)
    survivors = [p for p in processes if p.pid != victim.pid]
    history.latency = 0.0

    next_slot = killed_slot + 1
    wait_for(
        lambda: {("btc_usd", next_slot), ("eth_usd", next_slot)} <= live_slots(app, next_slot),
        next_slot * INTERVAL - time.time() + INTERVAL,  # stored within its own slot
        survivors,
        "the next interval stored on time by the surviving worker",
    )
    wait_for(lambda: complete(app, first, next_slot), 20, survivors, "the hole backfilled")
    assert_exact(app, history, first)


def test_deribit_failing_for_three_intervals_those_slots_are_backfilled(
    app, history, spawn, redis_conn
):
    processes = start_tracker(spawn)
    first = first_slot(app, processes)

    outage_on = time.time()
    history.outage = True
    time.sleep(4 * INTERVAL)
    history.outage = False
    outage_off = time.time()
    # The slots that began and ended within the outage: every request for them failed.
    outage = [
        s
        for s in range(int(outage_on) // INTERVAL, int(outage_off) // INTERVAL + 1)
        if s * INTERVAL >= outage_on and (s + 1) * INTERVAL <= outage_off
    ]
    assert len(outage) >= 3
    assert not {slot for _, slot in live_slots(app, outage[0])} & set(outage)
    wait_for(lambda: complete(app, first, outage[-1] + 2), 20, processes, "the outage backfilled")
    stored = rows(app, first)
    assert {stored[t, s][1] for t in TICKERS for s in outage} == {"backfill"}
    assert_exact(app, history, first)
