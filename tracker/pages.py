"""The page for people at `/`: latest prices and a chart, drawn in the browser from the API."""

from flask import Blueprint, current_app, render_template

bp = Blueprint("pages", __name__)

CANDLES_RULE = "/api/v1/candles"


@bp.get("/")
def index():
    """The live chart page: every ticker's latest price and its age, and a chart of one."""
    # The chart draws candles from /api/v1/candles. A server without that endpoint (older than
    # the page) gets a line of raw prices instead; deciding here means the browser never asks
    # for a URL that is not there (a 404 in its console).
    has_candles = any(rule.rule == CANDLES_RULE for rule in current_app.url_map.iter_rules())
    return render_template("index.html", chart_source="candles" if has_candles else "prices")


@bp.get("/favicon.ico")
def favicon():
    """The icon browsers ask for on pages that name none (Swagger UI): no 404 in their console."""
    return current_app.send_static_file("favicon.svg")
