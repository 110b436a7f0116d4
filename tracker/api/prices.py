"""The price endpoints: pages, the latest, a day, a moment, a range's statistics; CSV too."""

import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal

from flask import current_app
from flask.views import MethodView
from flask_smorest import abort

from tracker.api import (
    LINK_HEADER,
    blp,
    check_span,
    csv_documented,
    documented_errors,
    query_args,
)
from tracker.api.formats import (
    PRICE_CSV,
    PRICE_CSV_HEADER,
    PRICE_JSON,
    csv_filename,
    csv_response,
    json_response,
    page_response,
)
from tracker.caching import range_ends_at
from tracker.extensions import ErrorSchema
from tracker.models import LAST, latest_price, price_at, price_page, price_range, stream
from tracker.queries import range_stats
from tracker.responses import PricePageSchema, PriceSchema, PriceStatsSchema
from tracker.schemas import (
    CSV_SPAN,
    STATS_SPAN,
    ByDateArgsSchema,
    PriceAtArgsSchema,
    PriceQueryArgsSchema,
    StatsArgsSchema,
    TickerPriceArgsSchema,
    as_price_format,
    encode_cursor,
    error_body,
)

PRICE_EXAMPLE = {"ticker": "btc_usd", "price": 86955.73, "timestamp": 1763928000, "source": "live"}
PAGE_EXAMPLE = {
    "ticker": "btc_usd",
    "items": [PRICE_EXAMPLE, {**PRICE_EXAMPLE, "price": 86950.1, "timestamp": 1763927940}],
    "next_cursor": encode_cursor("btc_usd", 1763927940),
}
PRICES_CSV_EXAMPLE = (
    PRICE_CSV_HEADER + "btc_usd,86955.73,1763928000,live\nbtc_usd,86950.1,1763927940,backfill\n"
)


def prices_response(args, rows, has_more):
    """A page of prices as JSON (PricePageSchema's shape), with a Link to the next one."""
    template = PRICE_JSON[args["price_format"]]
    items = [template % row for row in rows]
    return page_response(args, items, rows[-1][2] if has_more else None)


def prices_csv(args, start, end, filename_parts=None):
    """Every price of [start, end] (and of `source`, if asked) as a streamed CSV download."""
    query, params = price_range(args["ticker"], start=start, end=end, source=args.get("source"))
    filename = filename_parts or csv_filename(args["ticker"], start, end)
    return csv_response(filename, PRICE_CSV_HEADER, stream(query, params), PRICE_CSV.__mod__)


def _before(args):
    cursor = args.get("cursor")
    return cursor[1] if cursor else None


def _page_end(end, before):
    """The last moment a page can hold: `to`, or just before the cursor, whichever is earlier."""
    ends = [m for m in (end, None if before is None else before - 1) if m is not None]
    return min(ends) if ends else None


@blp.route("/prices")
class Prices(MethodView):
    @blp.doc(operationId="listPrices")
    @query_args(PriceQueryArgsSchema)
    @blp.response(200, PricePageSchema, example=PAGE_EXAMPLE, headers=LINK_HEADER)
    @csv_documented(PRICES_CSV_EXAMPLE)
    @documented_errors
    def get(self, args):
        """All stored prices of a ticker, newest first, paginated; or the whole range as CSV.

        Optional `from`/`to` (inclusive) narrow the time range. Follow `next_cursor` (or the
        `Link` header) for older prices; every page costs the same, however deep. With
        `format=csv` (or `Accept: text/csv`) the answer is every price of the range in one
        streamed download instead: `ticker,price,timestamp,source` lines, newest first.
        """
        if args["format"] == "csv":
            check_span(CSV_SPAN, args["ticker"], args.get("start"), args.get("end"))
            range_ends_at(args.get("end"))
            return prices_csv(args, args.get("start"), args.get("end"))
        range_ends_at(_page_end(args.get("end"), _before(args)))
        rows, has_more = price_page(
            args["ticker"],
            start=args.get("start"),
            end=args.get("end"),
            before=_before(args),
            limit=args["limit"],
            source=args.get("source"),
        )
        return prices_response(args, rows, has_more)


@blp.route("/prices/latest")
class LatestPrice(MethodView):
    @blp.doc(operationId="getLatestPrice")
    @query_args(TickerPriceArgsSchema, remember=True)
    @blp.response(200, PriceSchema, example=PRICE_EXAMPLE)
    @blp.alt_response(
        404,
        schema=ErrorSchema,
        description="No price of this ticker is stored yet.",
        example=error_body(404, "No price stored for btc_usd yet."),
    )
    @documented_errors
    def get(self, args):
        """The newest stored price of a ticker.

        The price of the newest slot holding one, live or backfilled: with a fetch every
        FETCH_INTERVAL it is at most that old while the worker runs (/tickers gives its age).
        404 until the first price of the ticker is stored.
        """
        row = current_latest_price(args["ticker"])
        if row is None:
            abort(404, message=f"No price stored for {args['ticker']} yet.")
        return json_response(PRICE_JSON[args["price_format"]] % tuple(row))


def current_latest_price(ticker):
    """latest_price(ticker), answered from memory while it is the current slot's row.

    Exact, not a cache with a lifetime: the live fetch writes only the current slot
    (jobs.fetch_prices), the backfill never the last two, and a stored row is never replaced
    (insert-ignore). So once a ticker's newest row is this slot's, nothing newer can be stored
    before the slot ends, and that row is the answer until then: kept, one per ticker, per
    process. While the newest row is older (this slot's fetch has not landed) nothing is kept:
    every request asks the database, so a price is served as soon as it is stored. The slot is
    this process's clock: a worker whose clock runs d seconds ahead stores the next slot d
    seconds before this process stops answering the previous one (docs/PERFORMANCE.md).
    A kept row is also the answer while the database is down, until its slot ends.
    """
    app = current_app._get_current_object()  # one LocalProxy lookup
    interval = app.config["FETCH_INTERVAL"]
    slot = int(time.time()) // interval * interval
    kept = app.extensions.setdefault("current_prices", {})  # {ticker: (slot, row)}, per app
    kept_for, row = kept.get(ticker, NOTHING_KEPT)
    if kept_for != slot:
        row = latest_price(ticker)
        if row is not None and row[2] == slot:  # the rule that makes it exact
            kept[ticker] = (slot, row)  # replaced whole: a thread reads the old or the new
    return row


NOTHING_KEPT = (None, None)


@blp.route("/prices/by-date")
class PricesByDate(MethodView):
    @blp.doc(operationId="listPricesByDate")
    @query_args(ByDateArgsSchema)
    @blp.response(200, PricePageSchema, example=PAGE_EXAMPLE, headers=LINK_HEADER)
    @csv_documented(PRICES_CSV_EXAMPLE)
    @documented_errors
    def get(self, args):
        """The prices of one UTC day, newest first, paginated like /prices (or CSV, like it).

        `date` is a day in UTC, 00:00:00 to 23:59:59. Follow `next_cursor` (or the `Link`
        header) for older prices of that day; `format=csv` (or `Accept: text/csv`) answers the
        whole day in one streamed download, named after the ticker and the day.
        """
        start = int(datetime.combine(args["date"], datetime.min.time(), UTC).timestamp())
        range_ends_at(_page_end(start + 86399, None if args["format"] == "csv" else _before(args)))
        if args["format"] == "csv":
            filename = f"{args['ticker']}_{args['date'].isoformat()}.csv"
            return prices_csv(args, start, start + 86399, filename)
        rows, has_more = price_page(
            args["ticker"],
            start=start,
            end=start + 86399,
            before=_before(args),
            limit=args["limit"],
        )
        return prices_response(args, rows, has_more)


@blp.route("/prices/at")
class PriceAt(MethodView):
    @blp.doc(operationId="getPriceAt")
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
        """The price as of a moment: the newest observation at or before `timestamp`.

        However old it is: a price stored at 12:00 is the price at 12:30 if nothing was stored
        in between (/prices/gaps says whether anything is missing). 404 when the ticker has no
        price at or before the moment.
        """
        range_ends_at(args["timestamp"])
        row = price_at(args["ticker"], args["timestamp"])
        if row is None:
            abort(
                404,
                message=f"No price stored for {args['ticker']} at or before {args['timestamp']}.",
            )
        return json_response(PRICE_JSON[args["price_format"]] % tuple(row))


STATS_EXAMPLE = {
    "ticker": "btc_usd",
    "from": 1763856000,
    "to": 1763942399,
    "count": 1440,
    "first": {"price": 86921.44, "timestamp": 1763856000},
    "last": {"price": 86955.73, "timestamp": 1763942340},
    "min": {"price": 86102.5, "timestamp": 1763891220},
    "max": {"price": 87390.18, "timestamp": 1763860500},
    "mean": 86812.40763889,
    "change": 34.29,
    "change_percent": 0.0394,
}
# Wide enough that no step before the final rounding rounds: prices lie within 1E-30..1E+30.
EXACT = Context(prec=100)
MEAN_PLACES = Decimal("1E-8")
PERCENT_PLACES = Decimal("1E-4")


@blp.route("/prices/stats")
class PriceStats(MethodView):
    @blp.doc(operationId="getPriceStats")
    @query_args(StatsArgsSchema)
    @blp.response(200, PriceStatsSchema, example=STATS_EXAMPLE)
    @documented_errors
    def get(self, args):
        """Statistics of a range: count, first, last, min, max, mean, change and change in %.

        Prices, min, max and change are exact. The mean is the exact sum over the count,
        rounded half-even to 8 decimal places; the change in % is (last - first) / first x 100,
        rounded half-even to 4 decimal places. Computed in the database in one statement;
        with no price in the range, count is 0 and everything else null.
        `price_format=string` writes prices, mean, change and change in % as strings.
        """
        check_span(STATS_SPAN, args["ticker"], args.get("start"), args.get("end"))
        range_ends_at(args.get("end"))
        stats = range_stats(args["ticker"], args.get("start", 0), args.get("end", LAST))
        mean = change = percent = None
        if stats["count"]:
            first, last = stats["first"][1], stats["last"][1]
            mean = EXACT.divide(stats["sum"], stats["count"]).quantize(
                MEAN_PLACES, ROUND_HALF_EVEN, EXACT
            )
            change = EXACT.subtract(last, first)
            percent = EXACT.divide(EXACT.multiply(change, 100), first).quantize(
                PERCENT_PLACES, ROUND_HALF_EVEN, EXACT
            )
        price_format = args["price_format"]
        return {
            "ticker": args["ticker"],
            "start": args.get("start"),
            "end": args.get("end"),
            "count": stats["count"],
            **{name: _point(stats[name], price_format) for name in ("first", "last", "min", "max")},
            "mean": as_price_format(mean, price_format),
            "change": as_price_format(change, price_format),
            "change_percent": as_price_format(percent, price_format),
        }


def _point(found, price_format):
    if found is None:
        return None
    return {"price": as_price_format(found[1], price_format), "timestamp": found[0]}
