"""The page for people at `/`: latest prices and a chart, drawn in the browser from the API."""

from flask import Blueprint, current_app, render_template

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    """The live chart page: every ticker's latest price and its age, and a chart of one."""
    return render_template("index.html")


@bp.get("/favicon.ico")
def favicon():
    """The icon browsers ask for on pages that name none (Swagger UI): no 404 in their console."""
    return current_app.send_static_file("favicon.svg")
