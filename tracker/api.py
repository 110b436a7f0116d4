"""The REST API: thin flask-smorest views over the shared price queries."""

import math
import time
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal

from flask import current_app, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from flask_smorest.error_handler import ErrorSchema
from marshmallow import RAISE

from tracker.models import (
    DAY_SECONDS,
    latest_price,
    missing_slots,
    oldest_timestamp,
    price_at,
    price_page,
    stored_slots,
    window_slots,
)
from tracker.schemas import (
    ByDateArgsSchema,
    GapReportSchema,
    GapsArgsSchema,
    PriceAtArgsSchema,
    PricePageSchema,
    PriceQueryArgsSchema,
    PriceSchema,
    TickerArgsSchema,
    TickerListSchema,
    encode_cursor,
    error_body,
)

blp = Blueprint(
    "prices",
    __name__,
    url_prefix="/api/v1",
    description="Deribit index prices, one observation per ticker per FETCH_INTERVAL.",
)

PRICE_EXAMPLE = {"ticker": "btc_usd", "price": 86955.73, "timestamp": 1763928000, "source": "live"}
PAGE_EXAMPLE = {
    "ticker": "btc_usd",
    "items": [PRICE_EXAMPLE, {**PRICE_EXAMPLE, "price": 86950.1, "timestamp": 1763927940}],
    "next_cursor": encode_cursor("btc_usd", 1763927940),
}
LINK_HEADER = {
    "Link": {
        "description": 'The next page: `<URL>; rel="next"`; absent on the last page.',
        "schema": {"type": "string"},
    }
}


def query_args(schema):
    """Parse query arguments strictly: an unknown parameter is an error, not silently ignored."""
    # An instance, not the class: webargs would build a new schema on every request.
    return blp.arguments(schema(), location="query", unknown=RAISE, as_kwargs=False)


def documented_errors(view):
    """Document the 503 every endpoint answers while the database is unreachable."""
    return blp.alt_response(
        503,
        schema=ErrorSchema,
        description="The database is unreachable; retry later.",
        example=error_body(503, "Database unavailable, retry later."),
    )(view)


# One price as JSON text. Safe to fill in without an encoder: the ticker is a validated
# [a-z0-9_] name, the timestamp an int, and str() of the Decimal price is its exact digits,
# which is what simplejson writes for a Decimal too. Building a dict per row and encoding it
# took 1.46 ms of a 1,000-row page; this takes 0.25 ms (docs/PERFORMANCE.md).
PRICE_JSON = '{"ticker":"%s","price":%s,"timestamp":%d,"source":"%s"}'


def page_response(args, rows, has_more):
    """The page as JSON, with a Link header to the next page when there is one.

    Written without marshmallow or a per-row dict (see PRICE_JSON); the body has exactly
    PricePageSchema's shape (tested).
    """
    ticker = args["ticker"]
    next_cursor = encode_cursor(ticker, rows[-1][2]) if has_more else None
    items = ",".join([PRICE_JSON % row for row in rows])
    cursor_json = f'"{next_cursor}"' if next_cursor else "null"  # base64url: nothing to escape
    response = _json_response(
        f'{{"ticker":"{ticker}","items":[{items}],"next_cursor":{cursor_json}}}'
    )
    if next_cursor:
        query = {**request.args.to_dict(), "cursor": next_cursor}
        next_url = url_for(request.endpoint, _external=True, **query)
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


def price_response(row):
    """One row as JSON, in PriceSchema's shape (tested), written as pages are."""
    return _json_response(PRICE_JSON % tuple(row))


def _json_response(text):
    return current_app.response_class(f"{text}\n", mimetype=current_app.json.mimetype)


def _before(args):
    cursor = args.get("cursor")
    return cursor[1] if cursor else None


@blp.route("/prices")
class Prices(MethodView):
    @query_args(PriceQueryArgsSchema)
    @blp.response(200, PricePageSchema, example=PAGE_EXAMPLE, headers=LINK_HEADER)
    @documented_errors
    def get(self, args):
        """All stored prices of a ticker, newest first, paginated.

        Optional `from`/`to` (inclusive) narrow the time range. Follow `next_cursor` (or the
        `Link` header) for older prices; every page costs the same, however deep.
        """
        rows, has_more = price_page(
            args["ticker"],
            start=args.get("start"),
            end=args.get("end"),
            before=_before(args),
            limit=args["limit"],
            source=args.get("source"),
        )
        return page_response(args, rows, has_more)


@blp.route("/prices/latest")
class LatestPrice(MethodView):
    @query_args(TickerArgsSchema)
    @blp.response(200, PriceSchema, example=PRICE_EXAMPLE)
    @blp.alt_response(
        404,
        schema=ErrorSchema,
        description="No price of this ticker is stored yet.",
        example=error_body(404, "No price stored for btc_usd yet."),
    )
    @documented_errors
    def get(self, args):
        """The newest stored price of a ticker."""
        row = latest_price(args["ticker"])
        if row is None:
            abort(404, message=f"No price stored for {args['ticker']} yet.")
        return price_response(row)


@blp.route("/prices/by-date")
class PricesByDate(MethodView):
    @query_args(ByDateArgsSchema)
    @blp.response(200, PricePageSchema, example=PAGE_EXAMPLE, headers=LINK_HEADER)
    @documented_errors
    def get(self, args):
        """The prices of one UTC day, newest first, paginated like /prices."""
        start = int(datetime.combine(args["date"], datetime.min.time(), UTC).timestamp())
        rows, has_more = price_page(
            args["ticker"],
            start=start,
            end=start + 86399,
            before=_before(args),
            limit=args["limit"],
        )
        return page_response(args, rows, has_more)


@blp.route("/prices/at")
class PriceAt(MethodView):
    @query_args(PriceAtArgsSchema)
    @blp.response(200, PriceSchema, example=PRICE_EXAMPLE)
    @blp.alt_response(
        404,
        schema=ErrorSchema,
        description="No price of this ticker is stored at or before that moment.",
        example=error_body(404, "No price stored for btc_usd at or before 1763928000."),
    )
    @documented_errors
    def get(self, args):
        """The price as of a moment: the newest observation at or before `timestamp`."""
        row = price_at(args["ticker"], args["timestamp"])
        if row is None:
            abort(
                404,
                message=f"No price stored for {args['ticker']} at or before {args['timestamp']}.",
            )
        return price_response(row)


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
        start = args.get("start", end - DAY_SECONDS)
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
    @blp.response(200, TickerListSchema, example=TICKERS_EXAMPLE)
    @documented_errors
    def get(self):
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
                    "price": row[1] if row else None,
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
