"""The periodic jobs as data, and one idempotent reconcile of rq-scheduler with them."""

import hashlib
import warnings
from dataclasses import dataclass

from rq_scheduler import Scheduler

from tracker.extensions import QUEUE_NAME, fetch_queue

# rq-scheduler calls crontab without default_utc and crontab warns once per process; the
# behaviour it warns about does not affect us (rq-scheduler converts the result itself).
warnings.filterwarnings("ignore", message=r"Version 0\.22\.0\+ of crontab", category=FutureWarning)

# How often the scheduler looks for due jobs: rq-scheduler's default 60 s would run a job up to
# 60 s late. Half a second keeps runs within 1 s of the boundary even on a busy machine.
POLL_SECONDS = 0.5


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


def make_scheduler(connection):
    """An rq-scheduler Scheduler that enqueues onto the fetch queue and polls every second."""
    return Scheduler(queue=fetch_queue(connection), connection=connection, interval=POLL_SECONDS)


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
