"""The two jobs that write prices: fetch_prices (live) and backfill_prices (fills holes).

Each is Deribit client -> validated rows -> one insert -> one log line.
"""

import bisect
import itertools
import logging
import math
import statistics
import time
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from tracker.config import WRITE_BIND
from tracker.deribit import DeribitClient, DeribitError, chart_range_for
from tracker.extensions import db
from tracker.metrics import record_backfill, record_fetches
from tracker.models import BACKFILL, insert_prices, missing_slots, oldest_timestamp, stored_tickers

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
        inserted = {ticker for ticker, _ in insert_prices(rows)}
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


# The longest a backfill run waits on Deribit (retries included), so that it never holds the
# worker long from the next live fetch.
BACKFILL_DEADLINE_SECONDS = 20


def backfill_prices(tickers=None, since=None, until=None, now=None):
    """Fill missing slots from Deribit's chart data: at most one chart request per ticker.

    The window is [since, until] (UNIX seconds); by default the last BACKFILL_WINDOW seconds,
    but never before a ticker's first stored row (a hole is a gap in the history, not the time
    before tracking began) nor the last two slots (the live fetch may still be storing them).
    A chart point fills the slot it falls in only when that slot has no row; a stored row is
    never overwritten and nothing is interpolated. Returns {ticker: report}; each report says
    how many slots were missing, how many were filled, and why the rest are still missing.
    """
    config = current_app.config
    interval = config["FETCH_INTERVAL"]
    now = time.time() if now is None else now
    last_slot = int(now) // interval - 2
    if until is not None:
        last_slot = min(last_slot, until // interval)
    deadline = time.monotonic() + BACKFILL_DEADLINE_SECONDS
    reports = {}
    for ticker in tickers or config["TICKERS"]:
        if since is None:
            oldest = oldest_timestamp(ticker, bind=WRITE_BIND)
            if oldest is None:
                reports[ticker] = _report(0, 0, {}, note="no price stored yet")
                continue
            start = max(int(now) - config["BACKFILL_WINDOW"], oldest)
        else:
            start = since
        first_slot = math.ceil(start / interval)
        reports[ticker] = _backfill_ticker(ticker, interval, first_slot, last_slot, now, deadline)
    _log_backfill(reports)
    record_backfill({ticker: report["filled"] for ticker, report in reports.items()})
    return reports


def _backfill_ticker(ticker, interval, first_slot, last_slot, now, deadline):
    gaps, _, missing = missing_slots(ticker, interval, first_slot, last_slot, bind=WRITE_BIND)
    if not missing:
        return _report(0, 0, {})
    chart_range = chart_range_for(now - gaps[0][0] * interval)
    try:
        points, rejected = deribit_client().index_chart(ticker, chart_range, deadline)
    except DeribitError as exc:
        return _report(missing, 0, {f"Deribit failed: {exc.reason}: {exc}": missing}, chart_range)

    gap_starts = [first for first, _ in gaps]
    rows, filled_slots = [], set()
    for milliseconds, price in points:
        slot = milliseconds // 1000 // interval
        gap = bisect.bisect_right(gap_starts, slot) - 1
        if gap >= 0 and slot <= gaps[gap][1] and slot not in filled_slots:
            filled_slots.add(slot)  # the slot's first point: the nearest to its start
            rows.append(
                {"ticker": ticker, "price": price, "timestamp": slot * interval, "source": BACKFILL}
            )
    try:
        filled = len(insert_prices(rows))
    except SQLAlchemyError:
        db.session.rollback()
        log.error("backfill %s store FAILED: %d rows lost", ticker, len(rows))
        raise

    # Why the rest is still missing: before the chart data's first point, or between points.
    if not points:
        why = {"Deribit returned no chart points": missing}
    else:
        first_point = points[0][0] // 1000 // interval
        older = sum(max(0, min(last, first_point - 1) - first + 1) for first, last in gaps)
        why = {f"older than Deribit's {chart_range} chart data": older}
        why["no chart point falls in the slot"] = missing - filled - older
        why = {reason: count for reason, count in why.items() if count > 0}
    spacing = None
    if len(points) > 1:
        spacing = statistics.median(b[0] - a[0] for a, b in itertools.pairwise(points)) / 1000
    return _report(
        missing, filled, why, chart_range, points=len(points), spacing=spacing, rejected=rejected
    )


def _report(missing, filled, why, chart_range=None, note=None, points=0, spacing=None, rejected=()):
    return {
        "missing": missing,
        "filled": filled,
        "still_missing": missing - filled,
        "why": why,
        "range": chart_range,
        "points": points,
        "spacing_s": spacing,
        "rejected": [f"point {position}: {reason}" for position, reason in rejected],
        **({"note": note} if note else {}),
    }


def _log_backfill(reports):
    parts = []
    for ticker, report in reports.items():
        part = f"{ticker}: missing={report['missing']} filled={report['filled']}"
        if report["range"]:
            part += f" range={report['range']} points={report['points']}"
            part += f" spacing={report['spacing_s']}s" if report["spacing_s"] is not None else ""
        if report["rejected"]:
            part += f" rejected={len(report['rejected'])} ({report['rejected'][0]})"
        part += "".join(f" left={n} ({why})" for why, n in report["why"].items())
        parts.append(part)
    left = any(report["still_missing"] or report["rejected"] for report in reports.values())
    log.log(
        logging.WARNING if left else logging.INFO,
        "backfill %s",
        "; ".join(parts) or "-",
        extra={"backfill": reports},
    )


def iso(timestamp):
    """UNIX seconds as an ISO 8601 UTC string."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reasons(failed):
    return {ticker: error.reason for ticker, error in failed.items()}


def _pairs(prices):
    return ",".join(f"{t}:{p}" for t, p in prices.items())
