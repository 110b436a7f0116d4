"""Scheduler and worker live through Redis and PostgreSQL outages: real servers, real processes."""

import time

import pytest
from redis import Redis
from rq.job import Job

from tests.conftest import (
    command,
    free_port,
    read_log,
    start_redis,
    stop_process_group,
)
from tracker.config import load_config
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
