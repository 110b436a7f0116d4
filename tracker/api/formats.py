"""How the API writes its answers: prices and candles as JSON text, whole ranges as CSV."""

import itertools
from datetime import UTC, datetime

from flask import current_app, request, url_for

from tracker.schemas import CSV_MIMETYPE, encode_cursor

# One price as JSON text. Safe to fill in without an encoder: the ticker is a validated
# [a-z0-9_] name, the timestamp an int, and str() of the Decimal price is its exact digits,
# which is what simplejson writes for a Decimal too. Building a dict per row and encoding it
# took 1.46 ms of a 1,000-row page; this takes 0.25 ms (docs/PERFORMANCE.md).
PRICE_JSON = '{"ticker":"%s","price":%s,"timestamp":%d,"source":"%s"}'
# One candle, the same way: (time, open, high, low, close, count, complete as true/false).
CANDLE_JSON = '{"time":%d,"open":%s,"high":%s,"low":%s,"close":%s,"count":%d,"complete":%s}'
# The same fields as CSV lines, in the same order, with the same digits.
PRICE_CSV_HEADER = "ticker,price,timestamp,source\n"
PRICE_CSV = "%s,%s,%d,%s\n"
CANDLE_CSV_HEADER = "time,open,high,low,close,count,complete\n"
CANDLE_CSV = "%d,%s,%s,%s,%s,%d,%s\n"


def page_response(args, items, next_position, fields=""):
    """A page as JSON text: `fields` ('"name":value,' text), the items, and the next cursor.

    `items` are the items' JSON texts; `next_position` the timestamp the next page continues
    before, or None on the last page. The next page's URL is also in a Link header. Written
    without marshmallow or a per-row dict (see PRICE_JSON); the bodies have exactly the
    shapes of PricePageSchema and CandlePageSchema (tested).
    """
    ticker = args["ticker"]
    next_cursor = None if next_position is None else encode_cursor(ticker, next_position)
    cursor_json = f'"{next_cursor}"' if next_cursor else "null"  # base64url: nothing to escape
    response = json_response(
        f'{{"ticker":"{ticker}",{fields}"items":[{",".join(items)}],"next_cursor":{cursor_json}}}'
    )
    if next_cursor:
        query = {**request.args.to_dict(), "cursor": next_cursor}
        next_url = url_for(request.endpoint, _external=True, **query)
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


def json_response(text):
    """A JSON response of ready-made JSON text."""
    return current_app.response_class(f"{text}\n", mimetype=current_app.json.mimetype)


def csv_response(filename, header, batches, line):
    """The rows of `batches` (lists of row tuples) as a CSV download, streamed as they come.

    The first batch is read here, before the response starts, so that a database that is
    down is still the JSON 503 and not a broken download. `line` formats one row. Nothing
    needs quoting: tickers are [a-z0-9_] names, prices and numbers digits, booleans words.
    """
    first = next(batches, [])

    def body():
        yield header
        for batch in itertools.chain([first], batches):
            yield "".join([line(row) for row in batch])

    response = current_app.response_class(body(), mimetype=CSV_MIMETYPE)
    # The rows are read while the client downloads; one that hangs up ends the query.
    response.call_on_close(batches.close)
    response.headers["Content-Disposition"] = f"attachment; filename={filename}"
    return response


def csv_filename(ticker, start, end, *parts):
    """btc_usd_2026-11-01_2026-11-30.csv: the ticker, anything else, and the range asked."""
    bounds = [_day_or_moment(start, "start"), _day_or_moment(end, "now")]
    return "_".join([ticker, *parts, *bounds]) + ".csv"


def _day_or_moment(timestamp, missing):
    if timestamp is None:
        return missing
    moment = datetime.fromtimestamp(timestamp, UTC)
    # No colons: they are not allowed in file names on Windows.
    return moment.strftime("%Y-%m-%d" if timestamp % 86400 == 0 else "%Y-%m-%dT%H%M%SZ")
