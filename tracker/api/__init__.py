"""The REST API under /api/v1: one flask-smorest blueprint, its views by subject in this package."""

from flask_smorest import Blueprint
from flask_smorest.error_handler import ErrorSchema
from marshmallow import RAISE

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
