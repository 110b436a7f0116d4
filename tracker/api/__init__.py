"""The REST API under /api/v1: one flask-smorest blueprint, its views by subject in this package."""

import time
from datetime import UTC, datetime
from http import HTTPStatus

from flask import current_app
from flask_smorest import abort
from marshmallow import RAISE

from tracker.extensions import Blueprint, ErrorSchema
from tracker.models import DAY_SECONDS, oldest_timestamp
from tracker.schemas import error_body

blp = Blueprint(
    "prices",
    __name__,
    url_prefix="/api/v1",
    description="Deribit index prices, one observation per ticker per FETCH_INTERVAL.",
)

LINK_HEADER = {
    "Link": {
        "description": 'The next page: `<URL>; rel="next"`; absent on the last page.',
        "schema": {"type": "string"},
    }
}


def query_args(schema, remember=False):
    """Parse query arguments strictly: an unknown or repeated parameter is an error (422), not
    silently ignored (see StrictQueryParser). `remember`: the arguments depend on the query
    string and the app's settings alone, so each query string is parsed once per app."""
    # An instance, not the class: webargs would build a new schema on every request.
    instance = schema()
    if remember:
        blp.ARGUMENTS_PARSER.remembered.add(id(instance))  # alive as long as the view
    return blp.arguments(instance, location="query", unknown=RAISE, as_kwargs=False)


def check_span(limit, ticker, start, end):
    """A 422 naming `from` when [start, end] spans more than `limit` (a schemas.SpanLimit)
    allows.

    Measured up to now: `end` None (no `to`) or later is now, since nothing is stored later
    (to=9999-12-31 means "up to now", not a hint to start in 9997). `start` None is a range
    left open, which starts at the ticker's first stored price (an index lookup): the whole
    history is served while it fits, and refused rather than cut short once it does not, so a
    download never silently lacks its oldest rows.
    """
    days = current_app.config[limit.setting]
    now = int(time.time())
    end = now if end is None else min(end, now)
    open_range = start is None
    if open_range:
        start = oldest_timestamp(ticker)
        if start is None:  # nothing stored: nothing to bound
            return
    if end - start <= days * DAY_SECONDS:
        return
    earliest = end - days * DAY_SECONDS
    where = (
        f"Without `from` the range starts at the first stored price of {ticker}"
        f" ({_iso(start)}), and it spans"
        if open_range
        else "This range spans"
    )
    abort(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        errors={
            "query": {
                "from": [
                    f"{where} more than {days} days, the most {limit.setting} allows:"
                    f" use a `from` at or after {_iso(earliest)} ({earliest}) and ask for"
                    " the rest in parts."
                ]
            }
        },
    )


def _iso(timestamp):
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _header(description, example):
    return {"description": description, "schema": {"type": "integer", "example": example}}


RATE_LIMIT_HEADERS = {
    "Retry-After": _header("Seconds until a request fits in the budget again.", 42),
    "X-RateLimit-Limit": _header("Requests allowed per window (RATE_LIMIT).", 600),
    "X-RateLimit-Remaining": _header("Requests left in the current window.", 0),
    "X-RateLimit-Reset": _header("When the window resets, UNIX seconds.", 1795176060),
}


def documented_errors(view):
    """Document the 503 every endpoint answers while the database is unreachable, and the 429
    of a client over its RATE_LIMIT."""
    view = blp.alt_response(
        429,
        schema=ErrorSchema,
        description="This client is over its request budget (RATE_LIMIT, if the server sets"
        " one); retry after `Retry-After` seconds.",
        example=error_body(
            429,
            "Rate limit of 600 per 1 minute per client exceeded:"
            " retry after the seconds in Retry-After.",
        ),
        headers=RATE_LIMIT_HEADERS,
    )(view)
    return blp.alt_response(
        503,
        schema=ErrorSchema,
        description="The database is unreachable; retry later.",
        example=error_body(503, "Database unavailable, retry later."),
    )(view)


def csv_documented(example):
    """Document the CSV a paged endpoint answers with `format=csv` or `Accept: text/csv`."""

    # flask-smorest documents one media type per response: the CSV, the 200's other
    # representation, is merged into the generated operation.
    csv = {"schema": {"type": "string"}, "example": example}
    disposition = {
        "description": "`attachment; filename=...` (ticker and range) on a CSV response.",
        "schema": {"type": "string"},
    }
    return blp.doc(
        responses={
            200: {"content": {"text/csv": csv}, "headers": {"Content-Disposition": disposition}}
        }
    )


# The views register themselves on `blp` as they are imported.
from tracker.api import candles, history, prices  # noqa: E402, F401
