"""The schedule: idempotent registration, clock alignment, one run per interval."""

import time

import pytest
from rq.job import Job

from tests.conftest import TEST_REDIS_URL, command, read_log
from tracker.config import load_config
from tracker.extensions import fetch_queue
from tracker.schedule import make_scheduler, periodic_jobs, reconcile


@pytest.fixture
def base_config(tmp_path):
    """The scheduler needs only Redis; it never opens the (throwaway) database."""
    return {"REDIS_URL": TEST_REDIS_URL, "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}"}


def test_registering_ten_times_leaves_one_scheduled_job_per_definition(redis_conn):
    config = load_config({"FETCH_INTERVAL": "60"})
    scheduler = make_scheduler(redis_conn)
    results = [reconcile(scheduler, periodic_jobs(config)) for _ in range(10)]
    assert results[0] == ([], sorted(job.id for job in periodic_jobs(config)))
    assert all(result == ([], []) for result in results[1:])
    jobs = {job.func_name: (job, when) for job, when in scheduler.get_jobs(with_times=True)}
    assert scheduler.count() == 2 and len(jobs) == 2
    fetch, when = jobs["tracker.jobs.fetch_prices"]
    assert fetch.meta["cron_string"] == "*/1 * * * *"
    assert when.second == 0 and when.microsecond == 0  # on the minute boundary
    backfill, when = jobs["tracker.jobs.backfill_prices"]
    assert backfill.meta["cron_string"] == "*/5 * * * *"  # BACKFILL_INTERVAL 300 s
    assert when.minute % 5 == 0 and when.second == 0


def test_a_changed_interval_replaces_the_old_schedule(redis_conn):
    scheduler = make_scheduler(redis_conn)
    old = periodic_jobs(load_config({"FETCH_INTERVAL": "60"}))
    new = periodic_jobs(load_config({"FETCH_INTERVAL": "300"}))
    reconcile(scheduler, old)
    cancelled, scheduled = reconcile(scheduler, new)
    assert cancelled == [old[0].id] and scheduled == [new[0].id]  # the backfill is unchanged
    assert {job.id for job in scheduler.get_jobs()} == {new[0].id, new[1].id}
    assert Job.fetch(new[0].id, connection=redis_conn).meta["cron_string"] == "*/5 * * * *"


def test_jobs_nobody_wants_are_cancelled(redis_conn):
    scheduler = make_scheduler(redis_conn)
    scheduler.cron("* * * * *", func="tracker.jobs.fetch_prices", id="leftover-from-old-release")
    reconcile(scheduler, periodic_jobs(load_config({})))
    assert "leftover-from-old-release" not in [job.id for job in scheduler.get_jobs()]
    assert scheduler.count() == 2


def test_two_schedulers_enqueue_once_per_interval_on_the_boundary(spawn, redis_conn):
    """Two `flask scheduler` processes, FETCH_INTERVAL=2, no worker: count and time the enqueues."""
    interval = 2
    schedulers = [spawn(command("flask", "scheduler"), FETCH_INTERVAL=interval) for _ in range(2)]
    queue = fetch_queue(redis_conn)
    job_id = periodic_jobs(load_config({"FETCH_INTERVAL": str(interval)}))[0].id

    enqueued_at = set()
    started = time.time()
    while time.time() - started < 12:
        for process in schedulers:
            assert process.poll() is None, read_log(process)
        try:
            enqueued_at.add(Job.fetch(job_id, connection=redis_conn).enqueued_at.timestamp())
        except Exception:  # not created yet
            pass
        time.sleep(0.05)
    elapsed = time.time() - started

    # Every enqueue of the cron job appends its id once; no worker drains the queue.
    runs = queue.job_ids.count(job_id)
    assert make_scheduler(redis_conn).count() == 2  # the fetch and the backfill
    # One run per 2 s boundary passed (the first ones may precede the registration).
    assert elapsed / interval - 2 <= runs <= elapsed / interval + 1, (runs, elapsed)
    assert len(enqueued_at) == runs
    lateness = [at % interval for at in enqueued_at]
    assert max(lateness) <= 1.0, lateness  # polled every second: at most 1 s after the boundary


def test_the_schedule_is_on_the_utc_clock_whatever_the_local_zone(spawn, redis_conn):
    """India is UTC+5:30: a local-time cron "0 * * * *" would fire at :30 UTC."""
    scheduler = spawn(command("flask", "scheduler"), FETCH_INTERVAL=3600, TZ="Asia/Kolkata")
    deadline = time.monotonic() + 20
    scheduled = []
    while len(scheduled) < 2 and time.monotonic() < deadline:
        assert scheduler.poll() is None, read_log(scheduler)
        scheduled = redis_conn.zrange("rq:scheduler:scheduled_jobs", 0, -1, withscores=True)
        time.sleep(0.1)
    runs = {job_id.decode().split("-")[0]: at for job_id, at in scheduled}
    assert runs["fetch_prices"] % 3600 == 0, f"next run {runs['fetch_prices'] % 3600} s past"
    assert runs["backfill_prices"] % 300 == 0  # every 5 minutes, on the UTC clock too


def test_a_scheduler_takes_back_the_lock_a_round_that_lost_redis_left(redis_conn):
    """The lock names its holder: a lock left by our own failed round must not keep us out."""
    scheduler, other = make_scheduler(redis_conn), make_scheduler(redis_conn)
    redis_conn.set(scheduler.scheduler_lock_key, scheduler.name, ex=10)  # left behind
    assert not other.acquire_lock()
    assert scheduler.acquire_lock()
    scheduler.remove_lock()
    assert other.acquire_lock()
    assert not scheduler.acquire_lock()
