"""Flask CLI commands: fetch once, run the RQ worker, run the scheduler, run it all (up)."""

import os
import sys
import time

import click
from flask import current_app
from flask.cli import with_appcontext
from rq import SimpleWorker

from tracker.extensions import fetch_queue, rq_connection
from tracker.jobs import fetch_prices, iso
from tracker.local import up
from tracker.schedule import make_scheduler, periodic_jobs, reconcile


def register_commands(app):
    for command in (fetch, worker, scheduler, up):
        app.cli.add_command(command)


@click.command()
@with_appcontext
def fetch():
    """Fetch every tracked ticker from Deribit now and print what was stored."""
    summary = fetch_prices(skip_stored=False)
    when = iso(summary["timestamp"])
    for ticker in current_app.config["TICKERS"]:
        if ticker in summary["failed"]:
            price, outcome = "-", f"FAILED {summary['failed'][ticker]}"
        else:
            price = summary["prices"][ticker]
            stored = ticker in summary["stored"]
            outcome = "stored" if stored else "not stored: this slot already has a price"
        click.echo(f"{when}  {ticker:<12} {price:>16}  {outcome}")
    if summary["failed"]:
        sys.exit(1)


class AppContextWorker(SimpleWorker):
    """An RQ worker that runs each job in its own app context, in this process.

    No fork: the job is a short I/O burst once a minute, and running in-process keeps the
    database pool and Deribit's kept-alive connections (neither survives a fork safely).
    A fresh app context per job gives each run its own database session.
    """

    flask_app = None

    def _set_ip_address(self, connection):
        # The embedded Redis (fakeredis) answers CLIENT INFO in a form redis-py cannot parse;
        # the address is only informational, so do without it rather than fail to start.
        try:
            super()._set_ip_address(connection)
        except ValueError:
            self.ip_address = "unknown"

    def execute_job(self, job, queue):
        with self.flask_app.app_context():
            return super().execute_job(job, queue)


@click.command()
@click.option("--burst", is_flag=True, help="Run the jobs already queued, then exit.")
@with_appcontext
def worker(burst):
    """Run the RQ worker that executes the fetch jobs."""
    connection = rq_connection()
    rq_worker = AppContextWorker([fetch_queue(connection)], connection=connection)
    rq_worker.flask_app = current_app._get_current_object()
    rq_worker.work(burst=burst, logging_level=current_app.config["LOG_LEVEL"])


@click.command()
@with_appcontext
def scheduler():
    """Register the periodic jobs (idempotently) and enqueue each one when it is due."""
    # rq-scheduler computes cron times from the local clock and converts them as local time:
    # in a zone with a half-hour offset "0 * * * *" would fire at :30 UTC, and around a DST
    # change it would run for an hour on every poll. Slots are UTC, so the scheduler is too.
    os.environ["TZ"] = "UTC"
    time.tzset()
    connection = rq_connection()
    rq_scheduler = make_scheduler(connection)
    cancelled, scheduled = reconcile(rq_scheduler, periodic_jobs(current_app.config))
    click.echo(
        f"schedule: cron {current_app.config['FETCH_CRON']!r}"
        f" scheduled={scheduled or '-'} cancelled={cancelled or '-'}"
    )
    rq_scheduler.run()
