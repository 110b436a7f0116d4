"""The fetch job: Deribit client -> validated rows -> one insert -> one log line."""

import logging
import time
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from tracker.deribit import DeribitClient, DeribitError
from tracker.extensions import db
from tracker.models import insert_prices, stored_tickers
from tracker.observability import record_fetches

log = logging.getLogger(__name__)


def deribit_client():
    """The app's Deribit client, created once per process so its connections are reused."""
    client = current_app.extensions.get("deribit")
    if client is None:
        config = current_app.config
        client = DeribitClient(config["DERIBIT_BASE_URL"], timeout=config["DERIBIT_TIMEOUT"])
        current_app.extensions["deribit"] = client
    return client


def fetch_prices(skip_stored=True, now=None):
    """Fetch the index price of every tracked ticker at once and store the valid ones.

    The row's timestamp is the start of the current FETCH_INTERVAL slot, so every run in the
    same slot (a retry, a second scheduler, `flask fetch`) maps to the same primary key and
    cannot add a duplicate. With `skip_stored`, tickers already stored for this slot are not
    fetched again, so a backlog of queued runs drains without calling Deribit.
    `now` (UNIX seconds) picks the slot; it defaults to the current time.
    Returns {"timestamp", "prices", "stored", "duplicate", "failed"}; prices as exact strings.
    """
    config = current_app.config
    interval = config["FETCH_INTERVAL"]
    started = time.monotonic()
    now = time.time() if now is None else now
    slot = int(now) // interval * interval
    tickers = config["TICKERS"]
    done = stored_tickers(tickers, slot) if skip_stored else set()
    # Every request and retry ends inside this slot, so no price fetched in the next slot is
    # filed under this one (a late start leaves less time), and within 80 % of an interval.
    deadline = started + min(interval * 0.8, slot + interval - now)
    results = deribit_client().index_prices([t for t in tickers if t not in done], deadline)

    prices = {t: p for t, p in results.items() if not isinstance(p, DeribitError)}
    failed = {t: e for t, e in results.items() if isinstance(e, DeribitError)}
    rows = [{"ticker": t, "price": p, "timestamp": slot} for t, p in prices.items()]
    try:
        inserted = insert_prices(rows)
    except SQLAlchemyError:
        db.session.rollback()
        log.error("fetch slot=%s store FAILED, prices lost: %s", iso(slot), _pairs(prices))
        record_fetches([], [], {**{t: "store_failed" for t in prices}, **_reasons(failed)})
        raise

    summary = {
        "timestamp": slot,
        "prices": {t: str(p) for t, p in prices.items()},
        "stored": sorted(inserted),
        "duplicate": sorted(done | (prices.keys() - inserted)),
        "failed": {t: f"{e.reason}: {e}" for t, e in failed.items()},
    }
    elapsed = time.monotonic() - started
    log.log(
        logging.WARNING if failed else logging.INFO,
        "fetch slot=%s stored=%s duplicate=%s failed=%s elapsed=%.3fs",
        iso(slot),
        _pairs({t: prices[t] for t in summary["stored"]}) or "-",
        ",".join(summary["duplicate"]) or "-",
        "; ".join(f"{t}={why}" for t, why in summary["failed"].items()) or "-",
        elapsed,
        # The same facts as fields, for LOG_FORMAT=json.
        extra={
            "slot": iso(slot),
            "stored": {t: summary["prices"][t] for t in summary["stored"]},
            "duplicate": summary["duplicate"],
            "failed": summary["failed"],
            "elapsed_s": round(elapsed, 3),
        },
    )
    record_fetches(summary["stored"], summary["duplicate"], _reasons(failed))
    return summary


def iso(timestamp):
    """UNIX seconds as an ISO 8601 UTC string."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reasons(failed):
    return {ticker: error.reason for ticker, error in failed.items()}


def _pairs(prices):
    return ",".join(f"{t}:{p}" for t, p in prices.items())
