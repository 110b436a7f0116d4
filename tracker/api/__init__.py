"""The REST API under /api/v1: one flask-smorest blueprint, its views by subject in this package."""

from marshmallow import RAISE

from tracker.extensions import Blueprint, ErrorSchema
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
