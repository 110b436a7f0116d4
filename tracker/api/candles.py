"""Candles: the open, high, low, close and count of each interval, computed in the database."""

import time

from flask.views import MethodView

from tracker.api import (
    LINK_HEADER,
    blp,
    check_span,
    csv_documented,
    documented_errors,
    query_args,
)
from tracker.api.formats import (
    CANDLE_CSV,
    CANDLE_CSV_HEADER,
    CANDLE_JSON,
    csv_filename,
    csv_response,
    page_response,
)
from tracker.caching import range_ends_at
from tracker.models import stream
from tracker.queries import INTERVALS, bucket_start, candle_page, candle_statement
from tracker.responses import CandlePageSchema
from tracker.schemas import CSV_SPAN, CandleArgsSchema, encode_cursor

CANDLE_EXAMPLE = {
    "time": 1763924400,
    "open": 86921.44,
    "high": 87010.5,
    "low": 86890.1,
    "close": 86955.73,
    "count": 60,
    "complete": True,
}
CANDLES_EXAMPLE = {
    "ticker": "btc_usd",
    "interval": "1h",
    "items": [
        {
            "time": 1763928000,
            "open": 86955.73,
            "high": 86990.02,
            "low": 86940,
            "close": 86990.02,
            "count": 12,
            "complete": False,
        },
        CANDLE_EXAMPLE,
    ],
    "next_cursor": encode_cursor("btc_usd", 1763924400),
}
CANDLES_CSV_EXAMPLE = (
    CANDLE_CSV_HEADER
    + "1763928000,86955.73,86990.02,86940,86990.02,12,false\n"
    + "1763924400,86921.44,87010.5,86890.1,86955.73,60,true\n"
)


@blp.route("/candles")
class Candles(MethodView):
    @blp.doc(operationId="listCandles")
    @query_args(CandleArgsSchema)
    @blp.response(200, CandlePageSchema, example=CANDLES_EXAMPLE, headers=LINK_HEADER)
    @csv_documented(CANDLES_CSV_EXAMPLE)
    @documented_errors
    def get(self, args):
        """OHLC candles of a ticker, newest first, paginated like /prices; or all of them as CSV.

        One candle per `interval` bucket holding at least one price: `open` is its first price,
        `close` its last, `high` and `low` its extremes, `count` how many it holds; all exact.
        Buckets without a price are left out (/prices/gaps says where), so a page, which covers
        `limit` buckets back from the newest one with a price, may hold fewer than `limit`.
        `from`/`to` select candles by the start of their bucket, and each covers its whole
        bucket. The bucket holding the current time is `complete: false`. CSV (`format=csv`
        or `Accept: text/csv`): every candle of the range, `time,open,high,low,close,count,
        complete` lines, newest first. `price_format=string` writes the prices as strings.
        """
        width = INTERVALS[args["interval"]]
        now = time.time()
        # Rows from the first bucket starting at or after `from` to the end of the one `to`
        # (default: now) falls in.
        low = bucket_start(args["start"] + width - 1, width) if "start" in args else 0
        low = bucket_start(low, width)
        high = bucket_start(args.get("end", int(now)), width) + width - 1

        def complete(bucket):
            return "true" if bucket + width <= now else "false"

        if args["format"] == "csv":
            check_span(CSV_SPAN, args["ticker"], args.get("start"), args.get("end"))
            range_ends_at(high)
            query, params = candle_statement(args["ticker"], width, low, high)
            name = csv_filename(
                args["ticker"], args.get("start"), args.get("end"), args["interval"]
            )
            return csv_response(
                name,
                CANDLE_CSV_HEADER,
                stream(query, params),
                lambda row: CANDLE_CSV % (*row[:6], complete(row[0])),
            )
        if "cursor" in args:
            high = min(high, args["cursor"][1] - 1)
        range_ends_at(high)
        candles, older = candle_page(args["ticker"], width, low, high, args["limit"])
        template = CANDLE_JSON[args["price_format"]]
        items = [template % (*candle, complete(candle[0])) for candle in candles]
        return page_response(args, items, older, f'"interval":"{args["interval"]}",')
