"""Scheduler and worker live through Redis and PostgreSQL outages: real servers, real processes."""

import time

import pytest
from redis import Redis
from rq.job import Job
from sqlalchemy.engine import make_url

from tests.conftest import (
    TCPProxy,
    command,
    free_port,
    read_log,
    start_redis,
    stop_process_group,
    truncate_prices,
)
from tracker.config import load_config
from tracker.extensions import fetch_queue
from tracker.schedule import make_scheduler, periodic_jobs

INTERVAL = 2


@pytest.fixture
def database_url(postgres_url):
    """Process tests run once, on PostgreSQL (the database tests cover SQLite)."""
    return postgres_url


@pytest.fixture
def own_redis(spawn, tmp_path):
    """A throwaway redis-server (no persistence) that a test may stop and start again empty."""
    port = free_port()

    class OwnRedis:
        url = f"redis://127.0.0.1:{port}/0"
        connection = Redis(port=port, protocol=2)
        process = start_redis(spawn, port, tmp_path)

        def restart_empty(self, down_for):
            """Stop the server, wait `down_for` seconds, start a fresh one on the same port."""
            stop_process_group(self.process)
            time.sleep(down_for)
            self.process = start_redis(spawn, port, tmp_path)
            return time.time()  # when it answers again

    server = OwnRedis()
    try:
        yield server
    finally:
        server.connection.close()


def wait_until(predicate, timeout, processes, what):
    """Poll `predicate` until truthy; fail with the processes' logs if any dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, read_log(process)
        try:
            value = predicate()
        except Exception:  # Redis not there yet, job not created yet
            value = None
        if value:
            return value
        time.sleep(0.05)
    logs = "\n---\n".join(read_log(p) for p in processes)
    raise AssertionError(f"timed out waiting for {what}:\n{logs}")


def count(log, needle):
    return sum(needle in line for line in log.splitlines())


def test_scheduler_lives_through_redis_restarting_empty(spawn, own_redis):
    """Redis away for 5 s, back empty: same process, schedule restored, next boundary on time."""
    scheduler = spawn(command("flask", "scheduler"), REDIS_URL=own_redis.url, FETCH_INTERVAL=2)
    job_id = periodic_jobs(load_config({"FETCH_INTERVAL": str(INTERVAL)}))[0].id
    redis = own_redis.connection

    def enqueued_at():
        return Job.fetch(job_id, connection=redis).enqueued_at.timestamp()

    wait_until(enqueued_at, 10, [scheduler], "a first run")
    before = redis.info("server")["run_id"]

    back = own_redis.restart_empty(down_for=5)
    assert redis.info("server")["run_id"] != before  # a new server: it started empty
    # The first boundary at least a poll after Redis answers again is enqueued on time.
    boundary = (back + 0.5) // INTERVAL * INTERVAL + INTERVAL
    at = wait_until(
        lambda: (t := enqueued_at()) >= boundary and t, boundary - time.time() + 3, [scheduler],
        f"the run due at {boundary} (Redis back at {back:.2f})",
    )  # fmt: skip
    assert at - boundary <= 1.0, (at, boundary, back)

    assert scheduler.poll() is None
    assert job_id in [job.id for job in make_scheduler(redis).get_jobs()]
    log = read_log(scheduler)
    assert count(log, "scheduler: lost Redis at 127.0.0.1:") == 1, log
    assert count(log, "scheduler: Redis is back after") == 1, log
    assert "Traceback" not in log and " ERROR " not in log, log


def test_worker_lives_through_redis_restarting_empty(spawn, own_redis, deribit, database_url):
    """Idle worker, Redis away for 5 s and back empty: it takes the next job enqueued."""
    worker = spawn(command("flask", "worker"), REDIS_URL=own_redis.url)
    queue = fetch_queue(own_redis.connection)
    try:
        wait_until(lambda: own_redis.connection.scard("rq:workers"), 10, [worker], "its birth")
        own_redis.restart_empty(down_for=5)
        job = queue.enqueue("tracker.jobs.fetch_prices")
        wait_until(lambda: job.get_status(refresh=True) == "finished", 15, [worker], "the job")
        assert job.return_value()["stored"] == ["btc_usd", "eth_usd"]
        log = read_log(worker)
        assert count(log, "worker: lost Redis at 127.0.0.1:") == 1, log
        assert count(log, "worker: Redis is back after") == 1, log
        assert "could not connect" not in log and "Traceback" not in log and " ERROR " not in log
        assert own_redis.connection.scard("rq:workers") == 1  # registered again
    finally:
        truncate_prices(database_url)


def test_worker_lives_through_redis_going_away_during_a_job(
    spawn, own_redis, deribit, database_url
):
    """Redis stops while a job runs (Deribit answers slowly): RQ cannot record the job's end."""
    worker = spawn(command("flask", "worker"), REDIS_URL=own_redis.url, DERIBIT_TIMEOUT=5)
    queue = fetch_queue(own_redis.connection)
    deribit.latency = 2
    try:
        queue.enqueue("tracker.jobs.fetch_prices")
        wait_until(lambda: deribit.requests_for("btc_usd"), 10, [worker], "the slow job to start")
        own_redis.restart_empty(down_for=4)
        deribit.latency = 0
        job = queue.enqueue("tracker.jobs.fetch_prices", kwargs={"skip_stored": False})
        wait_until(lambda: job.get_status(refresh=True) == "finished", 15, [worker], "the job")
        log = read_log(worker)
        assert count(log, "fetch slot=") == 2, log  # the slow one stored its prices too
        assert count(log, "worker: lost Redis at 127.0.0.1:") == 1, log
        assert count(log, "worker: Redis is back after") == 1, log
        assert "could not connect" not in log and "Traceback" not in log, log
    finally:
        truncate_prices(database_url)


def test_worker_lives_through_postgres_going_away(spawn, redis_conn, deribit, postgres_url):
    """A job run while PostgreSQL is unreachable fails alone; the next one stores its prices."""
    url = make_url(postgres_url)
    proxy = TCPProxy((url.host, url.port))
    proxy.open()
    through_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
    worker = spawn(command("flask", "worker"), DATABASE_URL=through_proxy)
    queue = fetch_queue(redis_conn)
    try:
        first = queue.enqueue("tracker.jobs.fetch_prices")
        wait_until(lambda: first.get_status(refresh=True) == "finished", 10, [worker], "job 1")
        proxy.shut()
        failed = queue.enqueue("tracker.jobs.fetch_prices", kwargs={"skip_stored": False})
        wait_until(lambda: failed.get_status(refresh=True) == "failed", 15, [worker], "job 2")
        proxy.open()
        last = queue.enqueue("tracker.jobs.fetch_prices", kwargs={"skip_stored": False})
        wait_until(lambda: last.get_status(refresh=True) == "finished", 15, [worker], "job 3")
        assert worker.poll() is None
        assert last.return_value()["duplicate"] == ["btc_usd", "eth_usd"]  # read the database
    finally:
        proxy.shut()
        truncate_prices(postgres_url)


def test_worker_and_scheduler_started_before_redis_wait_for_it(
    spawn, tmp_path, deribit, database_url
):
    """Both start while Redis is not there yet (a host booting): prices flow once it is."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    worker = spawn(command("flask", "worker"), REDIS_URL=url, FETCH_INTERVAL=INTERVAL)
    scheduler = spawn(command("flask", "scheduler"), REDIS_URL=url, FETCH_INTERVAL=INTERVAL)
    processes = [worker, scheduler]
    try:
        wait_until(
            lambda: all("lost Redis" in read_log(p) for p in processes),
            15,
            processes,
            "both to try",
        )
        start_redis(spawn, port, tmp_path)
        wait_until(lambda: count(read_log(worker), "fetch slot=") >= 1, 15, processes, "a fetch")
        for process in processes:
            log = read_log(process)
            assert count(log, "Redis is back after") == 1, log
            assert "Traceback" not in log and "could not connect" not in log, log
    finally:
        truncate_prices(database_url)
