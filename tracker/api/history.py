"""How complete the history is: the gap report of a range and every ticker's last day."""

import math
import time
from decimal import ROUND_DOWN, Decimal

from flask import current_app
from flask.views import MethodView

from tracker.api import blp, check_span, documented_errors, query_args
from tracker.api.prices import PRICE_EXAMPLE
from tracker.caching import range_ends_at
from tracker.models import (
    DAY_SECONDS,
    latest_price,
    missing_slots,
    oldest_timestamp,
    stored_slots,
    window_slots,
)
from tracker.responses import GapReportSchema, TickerListSchema
from tracker.schemas import GAPS_SPAN, GapsArgsSchema, PriceFormatArgsSchema, as_price_format

GAPS_EXAMPLE = {
    "ticker": "btc_usd",
    "from": 1763856000,
    "to": 1763942400,
    "interval": 60,
    "expected_slots": 1440,
    "stored_slots": 1435,
    "missing_slots": 5,
    "coverage_percent": 99.65,
    "gap_count": 2,
    "gaps": [
        {"from": 1763900040, "to": 1763900160, "missing_slots": 3},
        {"from": 1763921400, "to": 1763921460, "missing_slots": 2},
    ],
    "truncated": False,
}


@blp.route("/prices/gaps")
class PriceGaps(MethodView):
    @blp.doc(operationId="getPriceGaps")
    @query_args(GapsArgsSchema)
    @blp.response(200, GapReportSchema, example=GAPS_EXAMPLE)
    @documented_errors
    def get(self, args):
        """Where a ticker's history has holes: the missing slots of a range, and its coverage.

        A slot is one FETCH_INTERVAL (a minute by default); it is missing when no price, live or
        backfilled, is stored for it. The slot in progress is not expected yet. Computed in the
        database in one pass over the range's index entries.
        """
        interval = current_app.config["FETCH_INTERVAL"]
        now = time.time()
        end = args.get("end", int(now))
        range_ends_at(end)
        start = args.get("start", end - DAY_SECONDS)
        check_span(GAPS_SPAN, args["ticker"], start, end)
        first = math.ceil(start / interval)
        last = min(end // interval, int(now) // interval - 1)
        gaps, gap_count, missing = missing_slots(
            args["ticker"], interval, first, last, limit=args["limit"]
        )
        return {
            "ticker": args["ticker"],
            "start": start,
            "end": end,
            "interval": interval,
            **coverage(max(0, last - first + 1), missing),
            "gap_count": gap_count,
            "gaps": [
                {"start": a * interval, "end": b * interval, "missing_slots": b - a + 1}
                for a, b in gaps
            ],
            "truncated": gap_count > len(gaps),
        }


TICKERS_EXAMPLE = {
    "interval": 60,
    "tickers": [
        {
            **PRICE_EXAMPLE,
            "age_seconds": 42,
            "first_timestamp": 1732320000,
            "coverage_24h": {
                "expected_slots": 1440,
                "stored_slots": 1440,
                "missing_slots": 0,
                "coverage_percent": 100,
                "live_slots": 1437,
                "backfill_slots": 3,
            },
        }
    ],
}


@blp.route("/tickers")
class Tickers(MethodView):
    @blp.doc(operationId="listTickers")
    @query_args(PriceFormatArgsSchema)
    @blp.response(200, TickerListSchema, example=TICKERS_EXAMPLE)
    @documented_errors
    def get(self, args):
        """Every tracked ticker: newest price and its age, first timestamp, last day's coverage.

        The only endpoint without a `ticker` parameter. Coverage counts the slots of the last
        24 hours (the one in progress left out), live and backfilled apart.
        """
        interval = current_app.config["FETCH_INTERVAL"]
        now = time.time()
        first, last = window_slots(interval, DAY_SECONDS, now)
        summaries = []
        for ticker in current_app.config["TICKERS"]:
            row = latest_price(ticker)
            slots = stored_slots(ticker, interval, first, last)
            stored = slots["live"] + slots["backfill"]
            summaries.append(
                {
                    "ticker": ticker,
                    "price": as_price_format(row[1], args["price_format"]) if row else None,
                    "timestamp": row[2] if row else None,
                    "source": row[3] if row else None,
                    "age_seconds": int(now) - row[2] if row else None,
                    "first_timestamp": oldest_timestamp(ticker),
                    "coverage_24h": {
                        **coverage(last - first + 1, last - first + 1 - stored),
                        "live_slots": slots["live"],
                        "backfill_slots": slots["backfill"],
                    },
                }
            )
        return {"interval": interval, "tickers": summaries}


def coverage(expected, missing):
    """Slot counts and the percentage stored, rounded down so that only complete says 100."""
    percent = None
    if expected:
        percent = (Decimal(100 * (expected - missing)) / expected).quantize(
            Decimal("0.01"), rounding=ROUND_DOWN
        )
    return {
        "expected_slots": expected,
        "stored_slots": expected - missing,
        "missing_slots": missing,
        "coverage_percent": percent,
    }
