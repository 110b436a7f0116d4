"""Scaling out (docs/SCALING.md), with the real programs on loopback: the API reading from a
PostgreSQL streaming replica, two gunicorn servers behind one nginx upstream losing one under
load, a standby scheduler, and the app through PgBouncer in transaction mode."""

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg2
import pytest
import requests
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.conftest import (
    ROOT,
    _migrate,
    command,
    free_port,
    installed,
    pg_connect,
    read_log,
    render_nginx_conf,
    stop_process_group,
    wait_for_http,
)
from tests.test_e2e import wait_for
from tests.test_proxy import T0, seed
from tracker.config import READ_BIND, load_config
from tracker.extensions import db, fetch_queue
from tracker.models import STREAM_BATCH_ROWS, insert_prices
from tracker.schedule import periodic_jobs

# Debian's PostgreSQL 15 server programs (initdb, pg_ctl, pg_basebackup): not on PATH.
PG_BIN = "/usr/lib/postgresql/15/bin"
PG_HINT = "Debian's postgresql-15 package (the server CI runs) installs them"
DATABASE = "tracker_replicated"


class Cluster:
    """A throwaway PostgreSQL cluster of our own on a loopback port, run as the `postgres` OS
    user when we are root (initdb refuses root)."""

    def __init__(self, directory, name):
        self.data = directory / name
        self.log = directory / f"{name}.log"
        self.socket_dir = directory
        self.port = free_port()

    def run(self, program, *args):
        argv = [installed(program, PG_HINT, where=PG_BIN), *map(str, args)]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr + self.read_log()
        return result

    def start(self):
        # fsync off: a test cluster that a crash loses costs nothing.
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        self.run("pg_ctl", "-D", self.data, "-l", self.log, "-o", f"{options} -c fsync=off",
                 "-w", "start")  # fmt: skip

    def stop(self):
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def url(self, database=DATABASE):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def read_log(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def replication():
    """A primary (migrated, database DATABASE) and its streaming replica from pg_basebackup -R."""
    # Not pytest's tmp_path: its parents are private to root, and the clusters run as postgres.
    directory = Path(tempfile.mkdtemp(prefix="tracker-replication-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    primary, replica = Cluster(directory, "primary"), Cluster(directory, "replica")
    try:
        # initdb's pg_hba.conf trusts local and loopback connections, replication included.
        primary.run("initdb", "-D", primary.data, "-U", "postgres", "-A", "trust", "--no-sync")
        primary.start()
        sql(primary, f"CREATE DATABASE {DATABASE}", database="postgres")
        _migrate(primary.url())
        # -R writes standby.signal and primary_conninfo: the copy starts as a streaming replica.
        replica.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", primary.port, "-U", "postgres",
            "-D", replica.data, "-R", "-X", "stream", "-c", "fast",
        )  # fmt: skip
        replica.start()
        assert sql(replica, "SELECT pg_is_in_recovery()") == [(True,)]
        yield SimpleNamespace(primary=primary, replica=replica)
    finally:
        for cluster in (replica, primary):
            try:
                cluster.stop()
            except AssertionError:
                pass  # reported by the test itself; the directory goes anyway
        shutil.rmtree(directory, ignore_errors=True)


def sql(cluster, statement, *params, database=DATABASE):
    """Run one statement on `cluster` (autocommit); its rows, if it returns any."""
    connection = pg_connect(cluster.url(database))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else None
    finally:
        connection.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_api_reads_from_a_streaming_replica(deribit, spawn, replication):
    """A price the fetch job stores on the primary is served from the replica: held back while
    the replica's replay is paused, and still served with the primary gone."""
    started = time.monotonic()
    primary, replica = replication.primary, replication.replica
    settings = {"DATABASE_URL": primary.url(), "READ_DATABASE_URL": replica.url()}
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    web = spawn(
        command("gunicorn", "wsgi:app"),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS=1,
        **settings,
    )
    wait_for_http(f"{api}/prices/latest?ticker=btc_usd", process=web)
    fetch = spawn(command("flask", "fetch"), FLASK_APP="wsgi", **settings)
    assert fetch.wait(timeout=60) == 0, read_log(fetch)
    [(slot,)] = sql(primary, "SELECT timestamp FROM price_records WHERE ticker = 'btc_usd'")

    def latest():
        response = requests.get(f"{api}/prices/latest?ticker=btc_usd", timeout=5)
        return response.status_code == 200 and response.json()

    stored = time.monotonic()
    assert wait_for(latest, 20, [web], "the fetched price on the replica") == {
        "ticker": "btc_usd", "price": 86955.73, "timestamp": slot, "source": "live",
    }  # fmt: skip
    print(
        f"\nthe stored price reached the API via the replica in {time.monotonic() - stored:.3f} s"
    )

    # Replay paused: the primary gains a row (the backfill filling the slot before), the
    # replica (and so the API) does not. A page is always read from the database; the latest
    # price may be answered from memory within its slot (api/prices.py), so it cannot tell.
    def stored():
        response = requests.get(f"{api}/prices?ticker=btc_usd", timeout=5)
        return response.status_code == 200 and [
            item["timestamp"] for item in response.json()["items"]
        ]

    sql(replica, "SELECT pg_wal_replay_pause()")
    wait_for(
        lambda: sql(replica, "SELECT pg_get_wal_replay_pause_state()") == [("paused",)],
        10, [web], "the replica's replay to pause",
    )  # fmt: skip
    sql(
        primary,
        "INSERT INTO price_records (ticker, timestamp, price, source) VALUES (%s, %s, %s, %s)",
        "btc_usd", slot - 60, "86901.5", "backfill",
    )  # fmt: skip
    assert sql(primary, "SELECT count(*) FROM price_records WHERE ticker = 'btc_usd'") == [(2,)]
    for _ in range(5):
        assert stored() == [slot]  # the replica's view, not the primary's
        time.sleep(0.2)

    sql(replica, "SELECT pg_wal_replay_resume()")
    wait_for(lambda: stored() == [slot, slot - 60], 20, [web], "the replica to catch up")

    # The primary gone: reads, CSV downloads and the readiness probe carry on from the replica.
    primary.stop()
    assert latest()["price"] == 86955.73
    assert stored() == [slot, slot - 60]
    csv = requests.get(f"{api}/prices?ticker=btc_usd&format=csv", timeout=5)
    assert csv.status_code == 200, csv.text
    assert csv.text.splitlines()[1:] == [
        f"btc_usd,86955.73,{slot},live",
        f"btc_usd,86901.5,{slot - 60},backfill",
    ]
    ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    assert ready["checks"]["database"] == {"ok": True}, ready
    print(f"replica test: {time.monotonic() - started:.1f} s")


# --- Web: two gunicorn servers behind one nginx upstream (docs/nginx-upstream.conf) ----------

LOAD_THREADS = 8


UPSTREAM_MARK = (
    "# --- location /tracker/: these lines in place of docs/nginx.conf's proxy_pass line ---\n"
)


def render_upstream_conf(directory, listen_port, web_ports):
    """docs/nginx.conf on loopback ports with docs/nginx-upstream.conf's changes, put together
    the way that file says: its upstream block first, its location lines in place of the
    proxy_pass line. One source of truth: the cache, headers and maps are nginx.conf's own."""
    main = render_nginx_conf(directory, listen_port, web_ports[0])
    upstream, location = (ROOT / "docs" / "nginx-upstream.conf").read_text().split(UPSTREAM_MARK)
    for old, new in [
        ("server 10.0.0.11:8000 ", f"server 127.0.0.1:{web_ports[0]} "),
        ("server 10.0.0.12:8000 ", f"server 127.0.0.1:{web_ports[1]} "),
    ]:
        assert upstream.count(old) == 1, f"docs/nginx-upstream.conf changed: {old!r} not found once"
        upstream = upstream.replace(old, new)
    site = (directory / "site.conf").read_text()
    proxy_pass = f"        proxy_pass http://127.0.0.1:{web_ports[0]}/;\n"
    assert site.count(proxy_pass) == 1, "docs/nginx.conf changed: its proxy_pass line"
    (directory / "site.conf").write_text(upstream + site.replace(proxy_pass, location))
    return main


@pytest.fixture
def upstream(app, spawn, tmp_path):
    """Two gunicorn servers (one worker each) behind nginx's upstream, both answering."""
    nginx = installed("nginx", "bash .ci/run installs Debian's nginx")
    web_ports, proxy_port = [free_port(), free_port()], free_port()
    webs = [
        spawn(
            command("gunicorn", "wsgi:app"),
            GUNICORN_BIND=f"127.0.0.1:{port}",
            GUNICORN_WORKERS=1,
            GUNICORN_ACCESS_LOG="-",
            TRUSTED_PROXIES=1,
        )
        for port in web_ports
    ]
    conf = render_upstream_conf(tmp_path, proxy_port, web_ports)
    server = spawn(
        [nginx, "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)]
        + ["-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"]
    )
    for port, web in zip(web_ports, webs, strict=True):
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process=web)
    origin = f"http://127.0.0.1:{proxy_port}/tracker"
    wait_for_http(f"{origin}/healthz", process=server)
    yield SimpleNamespace(origin=origin, webs=webs, nginx=server)
    assert server.poll() is None, read_log(server)


def load(url, stop):
    """GET `url` from LOAD_THREADS threads until `stop` is set: [(start, end, status), ...].
    Its {n} is a moment after T0, a new one per request."""
    results = []
    moments = itertools.count(T0 + 1)

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    status = session.get(url.format(n=next(moments)), timeout=10).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                results.append((start, time.monotonic(), status))

    threads = [threading.Thread(target=client) for _ in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    return results, threads


def database_connections(app):
    """Connections to the app's database other than this one, from pg_stat_activity."""
    with app.app_context(), db.engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()


def access_lines(process):
    return read_log(process).count('"GET /api/v1/prices/at?ticker=btc_usd&timestamp=')


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_web_server_stopped_under_load_fails_no_request(app, upstream, signal_name):
    """Load through nginx onto two gunicorn servers; one is stopped (gracefully, or killed)
    mid-load: no request fails, and the survivor serves everything after."""
    seed(app, 1)
    webs = upstream.webs
    # A new moment per request: nginx's cache would answer a repeated URL without a web server.
    url = f"{upstream.origin}/api/v1/prices/at?ticker=btc_usd&timestamp={{n}}"
    assert requests.get(url.format(n=T0), timeout=5).json()["timestamp"] == T0

    stop = threading.Event()
    results, threads = load(url, stop)
    try:
        time.sleep(2)
        victim, survivor = webs
        assert access_lines(victim) > 0 and access_lines(survivor) > 0  # both take turns
        # A gunicorn worker holds one read connection per thread (docs/SCALING.md, Connections):
        # two servers x one worker x GUNICORN_THREADS, and this test's own app (seed) one.
        connections = database_connections(app)
        assert connections <= 2 * 1 * 2 + 1, connections
        stopped_at = time.monotonic()
        os.killpg(victim.pid, getattr(signal, signal_name))
        victim.wait(timeout=30)
        gone_at = time.monotonic()
        served_before = access_lines(survivor)
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    ended_at = time.monotonic()

    failed = [r for r in results if r[2] != 200]
    in_flight = [r for r in results if r[0] < stopped_at < r[1]]
    before = [r for r in results if r[1] <= stopped_at]
    after = [r for r in results if r[0] >= gone_at]
    print(
        f"\n{signal_name}: {len(results)} requests, {len(failed)} failed, {len(in_flight)} in"
        f" flight at the stop; {len(before) / (stopped_at - results[0][0]):.0f} req/s on two"
        f" servers, {len(after) / (ended_at - gone_at):.0f} req/s on the survivor; the victim"
        f" was gone {gone_at - stopped_at:.2f} s after the signal; {connections} connections to"
        " PostgreSQL under load"
    )
    assert failed == [], failed[:10]
    assert after and all(status == 200 for _, _, status in after)
    assert access_lines(survivor) > served_before  # the survivor carries on
    assert upstream.nginx.poll() is None, read_log(upstream.nginx)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_apps_own_503s_take_no_web_server_out(upstream):
    """/readyz answers 503 while no price is stored: the app's answer, not a host that failed.
    Passed on to the client, and both hosts stay in the upstream (with http_503 in
    proxy_next_upstream and max_fails=1, each 503 marked its host down: then every request
    was a 502 for fail_timeout)."""

    def served(web):
        return read_log(web).count('"GET /healthz HTTP')

    before = [served(web) for web in upstream.webs]
    for _ in range(2):
        ready = requests.get(f"{upstream.origin}/readyz", timeout=5)
        assert ready.status_code == 503, ready.text
    statuses = [requests.get(f"{upstream.origin}/healthz", timeout=5).status_code for _ in range(4)]
    assert statuses == [200] * 4, read_log(upstream.nginx)
    assert all(served(web) > count for web, count in zip(upstream.webs, before, strict=True))


# --- Connections: PgBouncer in transaction mode (docs/pgbouncer.ini) -------------------------


@pytest.fixture
def pgbouncer(base_config, spawn):
    """Debian's pgbouncer running docs/pgbouncer.ini in front of the test database; its URL.

    The pooled database keeps the test database's name, so the fixtures that clean up through
    a URL (make_app) reach the test database and nothing else.
    """
    program = installed("pgbouncer", "bash .ci/run installs Debian's pgbouncer")
    server = make_url(base_config["DATABASE_URL"])
    directory = Path(tempfile.mkdtemp(prefix="tracker-pgbouncer-"))
    port = free_port()
    ini = (ROOT / "docs" / "pgbouncer.ini").read_text()
    replacements = [
        (
            "crypto_prices = host=db port=5432 dbname=crypto_prices",
            f"{server.database} = host={server.host} port={server.port} dbname={server.database}",
        ),
        ("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1"),
        ("listen_port = 5432", f"listen_port = {port}\nunix_socket_dir = {directory}"),
        # The test server trusts loopback: no password to hand on.
        ("auth_type = scram-sha-256", "auth_type = trust"),
        ("auth_file = /etc/pgbouncer/userlist.txt", f"auth_file = {directory}/userlist.txt"),
    ]
    for old, new in replacements:
        assert ini.count(old) == 1, f"docs/pgbouncer.ini changed: {old!r} not found once"
        ini = ini.replace(old, new)
    (directory / "pgbouncer.ini").write_text(ini)
    (directory / "userlist.txt").write_text(f'"{server.username}" ""\n')
    argv = [program, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(directory, "postgres")
        argv = ["runuser", "-u", "postgres", "--", *argv]
    process = spawn(argv)
    url = server.set(port=port).render_as_string(hide_password=False)
    try:
        wait_for(lambda: _answers(url), 10, [process], "pgbouncer to accept connections")
        yield url
    finally:
        stop_process_group(process)
        shutil.rmtree(directory, ignore_errors=True)


def _answers(url):
    try:
        pg_connect(url).close()
        return True
    except psycopg2.OperationalError:
        return False


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_app_works_through_pgbouncer_in_transaction_mode(make_app, deribit, spawn, pgbouncer):
    """Every way the app uses PostgreSQL, through PgBouncer lending a server connection per
    transaction: the settings the app cannot send, migrations, the fetch job, reads, a CSV's
    cursor."""
    app = make_app(DATABASE_URL=pgbouncer)
    with app.app_context():
        # Sent in the startup packet, dropped by PgBouncer, set again by its connect_query.
        for engine in (db.engine, db.engines[READ_BIND]):
            with engine.connect() as connection:
                settings = connection.execute(
                    text("SELECT current_setting('statement_timeout'), current_setting('jit')")
                ).one()
                assert tuple(settings) == ("5s", "off"), engine
        # More rows than one FETCH of a CSV stream, so its cursor must outlive a statement.
        rows = STREAM_BATCH_ROWS * 2 + 1
        insert_prices(
            [
                {"ticker": "eth_usd", "price": 2000 + i, "timestamp": T0 + 60 * i}
                for i in range(rows)
            ]
        )
    # Migrations (compose's migrate goes through PgBouncer too; here there is nothing left to
    # apply, but alembic still connects and reads its version table), then a fetch.
    for argv in (["db", "upgrade"], ["fetch"]):
        process = spawn(command("flask", *argv), FLASK_APP="wsgi", DATABASE_URL=pgbouncer)
        assert process.wait(timeout=60) == 0, read_log(process)

    port = free_port()
    web = spawn(
        command("gunicorn", "wsgi:app"),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS=2,
        DATABASE_URL=pgbouncer,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    latest = wait_for_http(f"{api}/prices/latest?ticker=btc_usd", process=web)
    assert latest.status_code == 200 and latest.json()["price"] == 86955.73, latest.text

    # The CSV streams while other requests take server connections in between its FETCHes.
    with requests.get(f"{api}/prices?ticker=eth_usd&format=csv", stream=True, timeout=30) as csv:
        assert csv.status_code == 200, csv.text
        lines = csv.iter_lines()
        header, first = next(lines), next(lines)
        for _ in range(5):
            assert requests.get(f"{api}/prices/latest?ticker=eth_usd", timeout=5).status_code == 200
        rest = list(lines)
    assert header.startswith(b"ticker,") and first.startswith(b"eth_usd,")
    assert len(rest) + 1 == rows + 1  # every stored eth_usd row: the seeded ones and the fetched
    candles = requests.get(f"{api}/candles?ticker=eth_usd&interval=1d", timeout=5)
    assert candles.status_code == 200 and candles.json()["items"], candles.text


# --- Work: a standby scheduler ------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # never opened
def test_a_standby_scheduler_carries_on_when_the_other_is_killed(spawn, redis_conn):
    """Two `flask scheduler` processes at FETCH_INTERVAL=2, no worker; one is SIGKILLed (it
    cannot free its lock or registration): the other keeps enqueuing, each slot once."""
    interval = 2
    first = spawn(command("flask", "scheduler"), FETCH_INTERVAL=interval)
    job_id = periodic_jobs(load_config({"FETCH_INTERVAL": str(interval)}))[0].id
    queue = fetch_queue(redis_conn)
    enqueued_at = []

    def watch(seconds, processes):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for process in processes:
                assert process.poll() is None, read_log(process)
            try:
                at = Job.fetch(job_id, connection=redis_conn).enqueued_at
            except NoSuchJobError:  # not scheduled yet
                at = None
            if at is not None and at.timestamp() not in enqueued_at:  # None: not enqueued yet
                enqueued_at.append(at.timestamp())
            time.sleep(0.05)

    # The first one runs the schedule alone for a while, then the standby joins.
    watch(3, [first])
    schedulers = [first, spawn(command("flask", "scheduler"), FETCH_INTERVAL=interval)]
    watch(3, schedulers)
    # Just after a run: the lock (held for the milliseconds of an enqueue) is free again, so
    # this measures the standby, not the lock's expiry (KEY_SECONDS), the worst case.
    runs = len(enqueued_at)
    while len(enqueued_at) == runs:
        watch(0.05, schedulers)
    time.sleep(0.1)
    killed_at = time.time()
    os.killpg(schedulers[0].pid, signal.SIGKILL)
    schedulers[0].wait(timeout=10)
    watch(12, schedulers[1:])

    after = [at for at in enqueued_at if at > killed_at]
    gaps = [b - a for a, b in zip(enqueued_at[runs:], enqueued_at[runs + 1 :], strict=False)]
    print(
        f"\nscheduler killed: {len(after)} runs in the 12 s after, longest gap between runs"
        f" {max(gaps):.1f} s (runs due every {interval} s)"
    )
    assert queue.job_ids.count(job_id) == len(enqueued_at)  # no slot enqueued twice
    assert len({int(at) for at in enqueued_at}) == len(enqueued_at)
    # Every slot after the kill has its run (each up to a second late on a busy machine); a
    # slot missed would leave a gap of two intervals.
    assert max(gaps) < 2 * interval - 0.5, gaps
    assert len(after) >= 12 / interval - 1, after
