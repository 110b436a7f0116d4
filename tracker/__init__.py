"""The Deribit price tracker: create_app() wires config, extensions, API, errors and CLI."""

import os
from pathlib import Path

import flask_swagger_ui
from flask import Flask, jsonify, send_from_directory
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.middleware.proxy_fix import ProxyFix

from tracker import caching, cors, logs, observability, ratelimit, security
from tracker.config import ConfigError, load_config

# Aliased: importing the tracker.api module below would shadow a plain `api` name here.
from tracker.extensions import ExactJSONProvider, db, migrate
from tracker.extensions import api as rest_api
from tracker.models import ExactSum
from tracker.schemas import error_body
from tracker.tickers import resolve_tickers

__all__ = ["ConfigError", "create_app"]

SWAGGER_UI_DIST = Path(flask_swagger_ui.__file__).parent / "dist"

API_DESCRIPTION = """\
Deribit index prices, one observation per tracked ticker per FETCH_INTERVAL (a minute by
default), stored with the exact digits Deribit sent.

- **Times** (`from`, `to`, `timestamp`) are UNIX seconds or ISO 8601; a date alone or a time
  without an offset is UTC. Milliseconds are refused with a hint.
- **Prices** are JSON numbers with their exact digits; `price_format=string` writes them as
  JSON strings instead, for clients that read JSON numbers as floating point.
- **Strict input:** a missing, unknown, repeated or invalid query parameter is a 422 whose
  `errors` names each parameter and says what is wrong.
- **Pages** are keyset-paginated: follow `next_cursor` or the `Link` header. `/prices`,
  `/prices/by-date` and `/candles` also answer the whole range as CSV (`format=csv`).
"""

API_SETTINGS = {
    "API_TITLE": "Deribit price tracker",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    # Relative, so the page finds its assets under any path prefix a reverse proxy adds.
    "OPENAPI_SWAGGER_UI_URL": "swagger-ui/",
    "OPENAPI_REDOC_PATH": "redoc",
    # Served by the app (pinned, scripts/vendor.sh), relative like Swagger UI's: no CDN.
    "OPENAPI_REDOC_URL": "static/vendor/redoc/redoc.standalone.js",
    "API_SPEC_OPTIONS": {
        "info": {
            "description": API_DESCRIPTION,
            "contact": {"name": "The Deribit price tracker's maintainers"},
            # The repository states no licence (no LICENSE file): MIT is assumed, to be confirmed.
            "license": {"name": "MIT", "url": "https://opensource.org/licenses/MIT"},
        },
        # Public read-only data: no operation needs credentials.
        "security": [],
        # What `flask openapi write` puts in the file; /openapi.json names the request's prefix.
        "servers": [{"url": "/"}],
    },
}


def create_app(test_config=None):
    """Build the app from the environment; `test_config` overrides it (same validation)."""
    app = Flask(__name__, instance_relative_config=True)
    app.json = ExactJSONProvider(app)
    app.config.update(API_SETTINGS)
    app.config.update(load_config(os.environ, test_config, instance_path=app.instance_path))
    logs.configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])

    db.init_app(app)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        os.makedirs(app.instance_path, exist_ok=True)
        with app.app_context():
            for engine in db.engines.values():  # the default one and the API's read pool
                event.listen(engine, "connect", _sqlite_wal)
    migrate.init_app(app, db)
    resolve_tickers(app)  # TICKERS=all asks Deribit here: before the spec's enum is built
    rest_api.init_app(app)
    cors.init_app(app)

    from tracker.api import blp
    from tracker.pages import bp as pages

    rest_api.register_blueprint(blp)
    app.register_blueprint(pages)  # the chart page at /
    observability.init_app(app)  # /healthz, /readyz, /metrics; request ids and request log
    ratelimit.init_app(app)  # after observability: a 429 is logged and counted like any answer
    caching.init_app(app)  # after observability too: a 304 is logged as one
    security.init_app(app)  # security headers on every response, errors included
    app.add_url_rule("/swagger-ui/<path:filename>", "swagger_ui_assets", _swagger_ui_asset)
    _register_error_handlers(app)

    from tracker.cli import register_commands

    register_commands(app)
    _trust_proxies(app, app.config["TRUSTED_PROXIES"])
    return app


def _sqlite_wal(dbapi_connection, connection_record):
    """Write-ahead logging: the web keeps reading while the worker writes to the same file.

    Also gives SQLite exact_sum(), the exact sum of decimal texts /prices/stats needs.
    """
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.create_aggregate("exact_sum", 1, ExactSum)


def _trust_proxies(app, hops):
    """Believe X-Forwarded-For/-Proto/-Host/-Prefix set by the last `hops` reverse proxies.

    Then links and the docs say what the client used (https://example.com/tracker/...). Only
    the proxies' own entries count, so a client cannot forge them; 0 (default) trusts none.
    """
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops)


def _swagger_ui_asset(filename):
    """Serve Swagger UI's files from the installed wheel: /docs works with no internet."""
    return send_from_directory(SWAGGER_UI_DIST, filename, max_age=86400)


def error_response(status, message):
    """A JSON error response in flask-smorest's shape."""
    return jsonify(error_body(status, message)), status


def _register_error_handlers(app):
    @app.errorhandler(HTTPException)
    def http_error(exc):
        # flask-smorest renders HTTP errors as JSON; give bare ones (unknown path, wrong
        # method) a message too, so every error says what is wrong.
        if not getattr(exc, "data", None):
            exc.data = {"message": exc.description}
            if isinstance(exc, MethodNotAllowed):  # HTTP requires Allow on a 405
                exc.data["headers"] = {"Allow": ", ".join(sorted(exc.valid_methods))}
        return rest_api.handle_http_exception(exc)

    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeout)
    def database_unavailable(exc):
        app.logger.warning("database unavailable: %s", str(exc).splitlines()[0])
        response, status = error_response(503, "Database unavailable, retry later.")
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(Exception)
    def internal_error(exc):
        app.logger.exception("unhandled error")
        return error_response(500, "Internal server error.")
