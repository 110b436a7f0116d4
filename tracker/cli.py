"""Flask CLI commands: fetch once, backfill, worker, scheduler, run it all (up), seed history."""

import io
import logging
import os
import random
import sys
import time

import click
from flask import current_app
from flask.cli import with_appcontext
from marshmallow import ValidationError
from rq import SimpleWorker

from tracker.extensions import db, fetch_queue, rq_connection
from tracker.healing import REDIS_DOWN, DropRQConnectionErrors, RedisLink, exit_on_signals
from tracker.jobs import backfill_prices, fetch_prices, iso
from tracker.local import up
from tracker.schedule import make_scheduler, periodic_jobs, run_schedule
from tracker.schemas import TimeField


def register_commands(app):
    for command in (fetch, backfill, worker, scheduler, up, seed):
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


class TimeParam(click.ParamType):
    """A moment as the API takes it: UNIX seconds or ISO 8601 (UTC unless it says otherwise)."""

    name = "TIME"

    def convert(self, value, param, ctx):
        try:
            return TimeField().deserialize(value)
        except ValidationError as exc:
            self.fail(" ".join(exc.messages), param, ctx)


@click.command()
@click.option("--ticker", "tickers", multiple=True, help="Only this ticker (repeatable).")
@click.option("--since", type=TimeParam(), help="From this time; default: BACKFILL_WINDOW back.")
@click.option("--until", type=TimeParam(), help="Up to this time; default: now.")
@with_appcontext
def backfill(tickers, since, until):
    """Fill missing slots from Deribit's chart data and print what is still missing, and why.

    Without --since it looks back BACKFILL_WINDOW seconds, but not before a ticker's first
    stored price; with --since it also fills the time before that.
    """
    tracked = current_app.config["TICKERS"]
    unknown = [t for t in tickers if t.lower() not in tracked]
    if unknown:
        raise click.BadParameter(f"not tracked: {', '.join(unknown)}", param_hint="--ticker")
    if since is not None and until is not None and since > until:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    reports = backfill_prices([t.lower() for t in tickers] or None, since, until)
    for ticker, report in reports.items():
        line = f"{ticker:<12} missing {report['missing']}, filled {report['filled']}"
        line += f", still missing {report['still_missing']}"
        if report["range"]:
            spacing = report["spacing_s"]
            line += f"  (chart range {report['range']}: {report['points']} points"
            line += f", every {spacing:g}s)" if spacing is not None else ")"
        click.echo(line + (f"  {report['note']}" if "note" in report else ""))
        for why, count in report["why"].items():
            click.echo(f"{'':<12} {count} still missing: {why}")
        for rejected in report["rejected"]:
            click.echo(f"{'':<12} rejected {rejected}")


class AppContextWorker(SimpleWorker):
    """An RQ worker running each job in its own app context, in this process; outlives Redis.

    No fork: the job is a short I/O burst once a minute, and running in-process keeps the
    database pool and Deribit's kept-alive connections (neither survives a fork safely).
    A fresh app context per job gives each run its own database session.
    """

    flask_app = None
    redis_link = None
    stopping = False

    def _set_ip_address(self, connection):
        # The embedded Redis (fakeredis) answers CLIENT INFO in a form redis-py cannot parse;
        # the address is only informational, so do without it rather than fail to start.
        try:
            super()._set_ip_address(connection)
        except ValueError:
            self.ip_address = "unknown"

    def request_stop(self, signum, frame):
        """RQ's warm shutdown, remembered: `flask worker` must not start the loop again."""
        self.stopping = True
        super().request_stop(signum, frame)

    def heartbeat(self, timeout=None, pipeline=None):
        """RQ's heartbeat; between jobs it first waits for Redis and registers again if needed.

        RQ sends it before every wait for a job, also after a lost connection, so this is where
        the worker waits out an outage (one line when Redis is lost, one when it is back).
        """
        if pipeline is None:  # not one of a job's own pipelined heartbeats
            while True:
                try:
                    # A Redis that came back empty forgot this worker; RQ would carry on
                    # unregistered (invisible to `rq info`), so register again.
                    if not self.connection.exists(self.key):
                        self.register_birth()
                    break
                except REDIS_DOWN as error:
                    self.redis_link.lost(error)
                    self.redis_link.wait()
        super().heartbeat(timeout, pipeline)

    def execute_job(self, job, queue):
        """Run the job in a fresh app context; Redis lost while recording it loses only that."""
        with self.flask_app.app_context():
            try:
                return super().execute_job(job, queue)
            except REDIS_DOWN as error:
                # The job itself ran; what failed is RQ marking it done or failed. Without this
                # RQ would quit its loop. A job left "started" is cleaned up by RQ later.
                self.redis_link.lost(error)

    def teardown(self):
        """RQ's teardown, except that Redis being away does not make it raise."""
        try:
            super().teardown()
        except REDIS_DOWN:
            # The registration expires on its own; stop the pub/sub thread RQ could not.
            if self.pubsub_thread is not None:
                self.pubsub_thread.stop()


@click.command()
@click.option("--burst", is_flag=True, help="Run the jobs already queued, then exit.")
@with_appcontext
def worker(burst):
    """Run the RQ worker that executes the fetch jobs, until SIGINT/SIGTERM."""
    connection = rq_connection()
    link = RedisLink(connection, "worker")
    logging.getLogger("rq.worker").addFilter(DropRQConnectionErrors())
    while True:
        try:
            # Even this needs Redis: RQ names its connection on the server.
            rq_worker = AppContextWorker([fetch_queue(connection)], connection=connection)
            rq_worker.flask_app = current_app._get_current_object()
            rq_worker.redis_link = link
            rq_worker.work(burst=burst, logging_level=current_app.config["LOG_LEVEL"])
            if burst or rq_worker.stopping:
                return
        except REDIS_DOWN as error:  # at start-up
            link.lost(error)
        # RQ quits its loop on a Redis error it does not retry itself: wait, then a new one.
        # Meanwhile RQ's signal handlers belong to the worker that quit, so install ours.
        exit_on_signals()
        link.wait()


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
    run_schedule(
        make_scheduler(connection),
        periodic_jobs(current_app.config),
        RedisLink(connection, "scheduler"),
    )


# Where each seeded random walk starts, in cents; other tickers start at 100.00.
SEED_START_CENTS = {"btc_usd": 5_000_000, "eth_usd": 300_000}
SEED_CHUNK_ROWS = 200_000


@click.command()
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    required=True,
    help="How much history to write, ending at the current minute (e.g. 730).",
)
@click.option("--random-seed", type=int, default=0, help="Seed of the random walk.")
@with_appcontext
def seed(days, random_seed):
    """Write synthetic history: one random-walk price per minute per tracked ticker, bulk-loaded.

    An empty table is filled with COPY directly; otherwise rows go through a temporary table
    and INSERT ... ON CONFLICT DO NOTHING, so stored prices are never overwritten.
    """
    if db.engine.dialect.name != "postgresql":
        raise click.UsageError("flask seed bulk-loads with PostgreSQL's COPY: set DATABASE_URL")
    started = time.monotonic()
    minutes = round(days * 1440)
    end = int(time.time()) // 60 * 60
    first = end - (minutes - 1) * 60
    # Synthetic prices for tests and benchmarks, reproducible by seed: nothing secret.
    rng = random.Random(random_seed)  # nosec B311
    connection = db.engine.raw_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT NOT EXISTS (SELECT 1 FROM price_records)")
            empty = cursor.fetchone()[0]
            target = "price_records"
            if not empty:
                target = "seed_rows"
                cursor.execute(
                    "CREATE TEMP TABLE seed_rows (LIKE price_records INCLUDING DEFAULTS)"
                    " ON COMMIT DROP"
                )
            for ticker in current_app.config["TICKERS"]:
                cents = SEED_START_CENTS.get(ticker, 10_000)
                for chunk_first in range(first, end + 1, SEED_CHUNK_ROWS * 60):
                    chunk_end = min(end, chunk_first + (SEED_CHUNK_ROWS - 1) * 60)
                    lines, cents = _walk(ticker, chunk_first, chunk_end, cents, rng)
                    cursor.copy_expert(
                        f"COPY {target} (ticker, timestamp, price) FROM STDIN",
                        io.StringIO(lines),
                    )
            inserted = len(current_app.config["TICKERS"]) * minutes
            if not empty:
                cursor.execute(
                    "INSERT INTO price_records SELECT * FROM seed_rows"
                    " ON CONFLICT (ticker, timestamp) DO NOTHING"
                )
                inserted = cursor.rowcount
        connection.commit()
    finally:
        connection.close()
    tickers = len(current_app.config["TICKERS"])
    click.echo(
        f"seeded {inserted} new rows ({minutes} minutes x {tickers} tickers,"
        f" {iso(first)} .. {iso(end)}) via {'COPY' if empty else 'COPY + INSERT ON CONFLICT'}"
        f" in {time.monotonic() - started:.1f}s"
    )


def _walk(ticker, first, last, cents, rng):
    """COPY text for one minute per row from `first` to `last`, and the walk's last price."""
    step = max(cents // 2000, 1)  # about 0.05 % per minute
    floor = max(cents // 100, 1)
    gauss = rng.gauss
    out = []
    for timestamp in range(first, last + 1, 60):
        cents += int(gauss(0, step))
        if cents < floor:  # reflect, so the walk stays positive (the CHECK constraint)
            cents = 2 * floor - cents
        out.append(f"{ticker}\t{timestamp}\t{cents // 100}.{cents % 100:02d}\n")
    return "".join(out), cents
