"""The periodic jobs as data, one idempotent reconcile of rq-scheduler with them, and its loop."""

import hashlib
import logging
import time
import warnings
from contextlib import suppress
from dataclasses import dataclass

from rq_scheduler import Scheduler
from rq_scheduler.utils import get_next_scheduled_time

from tracker.extensions import QUEUE_NAME, fetch_queue
from tracker.healing import REDIS_DOWN, exit_on_signals

log = logging.getLogger(__name__)

# rq-scheduler calls crontab without default_utc and crontab warns once per process; the
# behaviour it warns about does not affect us (rq-scheduler converts the result itself).
warnings.filterwarnings("ignore", message=r"Version 0\.22\.0\+ of crontab", category=FutureWarning)

# How often the scheduler looks for due jobs: rq-scheduler's default 60 s would run a job up to
# 60 s late. Half a second keeps runs within 1 s of the boundary even on a busy machine.
POLL_SECONDS = 0.5
# rq-scheduler's TTL of its registration and of its lock: a scheduler that vanishes is
# forgotten, and its lock freed, this long after its last poll.
KEY_SECONDS = int(POLL_SECONDS) + 10


@dataclass(frozen=True)
class PeriodicJob:
    """A job rq-scheduler runs on a cron schedule; its id is derived from its definition."""

    func: str
    cron: str
    timeout: int

    @property
    def id(self):
        # RQ ids allow only letters, digits, "_" and "-". A changed definition gets a new id,
        # so reconcile() replaces the old schedule instead of keeping both.
        digest = hashlib.sha256(f"{self.func}|{self.cron}|{self.timeout}".encode()).hexdigest()
        return f"{self.func.rsplit('.', 1)[-1]}-{digest[:12]}"


def periodic_jobs(config):
    """What should run periodically, given the app config."""
    return [
        PeriodicJob(
            func="tracker.jobs.fetch_prices",
            cron=config["FETCH_CRON"],
            timeout=config["FETCH_INTERVAL"],
        ),
        PeriodicJob(
            func="tracker.jobs.backfill_prices",
            cron=config["BACKFILL_CRON"],
            timeout=max(config["BACKFILL_INTERVAL"], 60),
        ),
    ]


class OwnLockScheduler(Scheduler):
    """rq-scheduler's Scheduler whose lock names its holder, so it knows its own after an outage."""

    def acquire_lock(self):
        """Take the lock, or find it is still ours from a round that lost Redis before freeing it.

        rq-scheduler stores only the time in the lock; a lock left behind like that (Redis came
        back with its data) would keep every scheduler out until it expires, 10 s later.
        """
        key = self.scheduler_lock_key
        name = self.name.encode()
        taken = self.connection.set(key, name, ex=KEY_SECONDS, nx=True)
        self._lock_acquired = bool(taken) or self.connection.get(key) == name
        return self._lock_acquired


def make_scheduler(connection):
    """A scheduler that enqueues onto the fetch queue and polls every half second."""
    return OwnLockScheduler(
        queue=fetch_queue(connection), connection=connection, interval=POLL_SECONDS
    )


def reconcile(scheduler, jobs):
    """Make Redis hold exactly `jobs`: cancel scheduled jobs not wanted, schedule missing ones.

    Safe to run on every start and from several schedulers at once: ids are fixed, so
    scheduling an existing id overwrites it rather than adding a second one.
    Returns (cancelled ids, scheduled ids).
    """
    wanted = {job.id: job for job in jobs}
    existing = {job.id for job in scheduler.get_jobs()}
    cancelled = sorted(existing - wanted.keys())
    for job_id in cancelled:
        scheduler.cancel(job_id)
    scheduled = sorted(wanted.keys() - existing)
    for job_id in scheduled:
        job = wanted[job_id]
        scheduler.cron(
            job.cron,
            func=job.func,
            id=job_id,
            queue_name=QUEUE_NAME,
            timeout=job.timeout,
            result_ttl=24 * 3600,
        )
    return cancelled, scheduled


def next_run_at(jobs):
    """The UNIX time the next of `jobs` is due, as rq-scheduler computes it."""
    return min(get_next_scheduled_time(job.cron).timestamp() for job in jobs)


def run_schedule(scheduler, jobs, link):
    """Enqueue `jobs` when due until SIGINT/SIGTERM, living through Redis outages of any length.

    rq-scheduler's own run() dies on the first ConnectionError; this is its loop, guarded. Each
    poll starts with the heartbeat: when Redis no longer holds this scheduler's registration
    (first poll, Redis restarted empty or flushed), it registers again and reconciles, so an
    empty Redis gets its schedule back. While Redis is away it waits (`link`), waking half a
    second before the next run is due so that a Redis back by then gets that run on time.
    """
    exit_on_signals()
    try:
        while True:
            started = time.monotonic()
            try:
                _poll(scheduler, jobs)
            except REDIS_DOWN as error:
                link.lost(error)
                link.wait(wake_by=lambda: next_run_at(jobs) - POLL_SECONDS)
                continue
            time.sleep(max(POLL_SECONDS - (time.monotonic() - started), 0))
    finally:
        with suppress(*REDIS_DOWN):  # unreachable: the lock and registration expire on their own
            scheduler.remove_lock()
            scheduler.register_death()


def _poll(scheduler, jobs):
    """One round: heartbeat (register and reconcile if Redis forgot us), enqueue what is due."""
    if not scheduler.connection.expire(scheduler.key, KEY_SECONDS):
        scheduler.register_birth()
        cancelled, scheduled = reconcile(scheduler, jobs)
        log.info(
            "schedule: %s scheduled=%s cancelled=%s",
            ", ".join(f"{job.func.rsplit('.', 1)[-1]} {job.cron!r}" for job in jobs),
            ",".join(scheduled) or "-",
            ",".join(cancelled) or "-",
        )
    if scheduler.acquire_lock():
        try:
            scheduler.enqueue_jobs()
        finally:
            scheduler.remove_lock()
