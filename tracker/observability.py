"""Operations: /healthz, /readyz, /metrics, and every request's id and one log line."""

import logging
import os
import re
import time

from flask import Response, current_app, g, request
from flask.views import MethodView
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from tracker.extensions import Blueprint, db
from tracker.extensions import api as rest_api
from tracker.logs import first_line
from tracker.metrics import (
    HTTP_DURATION,
    HTTP_REQUESTS,
    metrics_registry,
    newest_timestamps,
    ops_redis,
)
from tracker.responses import HealthSchema, ReadinessSchema

request_log = logging.getLogger("tracker.request")

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"
# An incoming id is kept only if it is short and safe to put in a log line and a header.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Label values are bounded: a client must not mint time series with made-up methods or paths.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

blp = Blueprint(
    "operations",
    __name__,
    description="Probes for orchestrators and metrics for Prometheus.",
)


def init_app(app):
    """Add the probes and /metrics, and give every request an id and one log line."""
    app.before_request(_start_request)
    app.after_request(_finish_request)
    rest_api.register_blueprint(blp)


# --- Requests: id, metrics, one log line ---------------------------------------------------


def _start_request():
    g.request_started = time.perf_counter()
    # From the environ: request.headers.get() raises and catches a KeyError when it is absent.
    incoming = request.environ.get(REQUEST_ID_ENVIRON, "")
    g.request_id = incoming if REQUEST_ID_RE.fullmatch(incoming) else new_request_id()


def new_request_id():
    """32 random hex digits, the shape of nginx's $request_id; a quarter of uuid4().hex's cost."""
    return os.urandom(16).hex()


# Every request pays this hook, so it reads the request and g once each (a LocalProxy lookup
# per attribute otherwise) and keeps the metric children it has used (labels() builds its key
# and takes a lock on every call). Label values are bounded, and so is this dict.
_children = {}


def _finish_request(response):
    now = time.perf_counter()
    req, state = request._get_current_object(), g._get_current_object()
    duration = now - getattr(state, "request_started", now)
    request_id = getattr(state, "request_id", None) or new_request_id()
    response.headers[REQUEST_ID_HEADER] = request_id
    # The route's pattern, not the path: /prices?ticker=... and unknown paths stay one series.
    endpoint = req.url_rule.rule if req.url_rule else "<unmatched>"
    method, path, status, remote = req.method, req.path, response.status_code, req.remote_addr
    labels = (endpoint, method if method in METHODS else "OTHER", status)
    children = _children.get(labels)
    if children is None:
        label_values = (*labels[:2], str(status))
        children = (HTTP_REQUESTS.labels(*label_values), HTTP_DURATION.labels(*label_values))
        _children[labels] = children
    children[0].inc()
    children[1].observe(duration)
    duration_ms = duration * 1000
    request_log.info(
        "%s %s %s %.1fms id=%s remote=%s",
        method,
        path,
        status,
        duration_ms,
        request_id,
        remote,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 3),
            "request_id": request_id,
            "remote_addr": remote,
        },
    )
    return response


# --- Probes ----------------------------------------------------------------------------------


@blp.route("/healthz")
class Health(MethodView):
    @blp.doc(operationId="health")
    @blp.response(200, HealthSchema)
    def get(self):
        """Liveness: the process answers. No I/O, so a database outage never restarts it.

        Always `{"status": "ok"}` while the web process serves requests: restart it when this
        fails. Whether it can do its job is /readyz.
        """
        return {"status": "ok"}


@blp.route("/readyz")
class Readiness(MethodView):
    @blp.doc(operationId="readiness")
    @blp.response(200, ReadinessSchema, description="Database, Redis and prices are fine.")
    @blp.alt_response(503, schema=ReadinessSchema, description="At least one check failed.")
    def get(self):
        """Readiness: the database and Redis answer, and every ticker has a recent price.

        Recent means younger than 3 x FETCH_INTERVAL. The body details every check; `failed`
        names the ones that failed (database, redis, prices).
        """
        checks = readiness_checks()
        failed = [name for name, check in checks.items() if not check["ok"]]
        body = {"status": "unavailable" if failed else "ready", "failed": failed, "checks": checks}
        return body, 503 if failed else 200


def readiness_checks():
    """Run the readiness checks: {"database": {...}, "redis": {...}, "prices": {...}}."""
    checks = {}
    newest = None
    try:
        newest = newest_timestamps()
        checks["database"] = {"ok": True}
    except SQLAlchemyError as exc:
        db.session.rollback()
        checks["database"] = {"ok": False, "error": first_line(exc)}
    try:
        ops_redis().ping()
        checks["redis"] = {"ok": True}
    except RedisError as exc:
        checks["redis"] = {"ok": False, "error": first_line(exc)}
    checks["prices"] = _prices_check(newest)
    return checks


def _prices_check(newest):
    max_age = 3 * current_app.config["FETCH_INTERVAL"]
    if newest is None:
        return {"ok": False, "max_age_seconds": max_age, "error": "unknown: database failed"}
    now = int(time.time())
    tickers = {
        t: {"timestamp": ts, "age_seconds": None if ts is None else now - ts}
        for t, ts in newest.items()
    }
    missing = [t for t, ts in newest.items() if ts is None]
    stale = [t for t, ts in newest.items() if ts is not None and now - ts >= max_age]
    check = {"ok": not (missing or stale), "max_age_seconds": max_age, "tickers": tickers}
    # TICKERS=all: an index Deribit lists but has never priced is reported, not a failure (it
    # would keep every web host out); one price stored at all is still needed.
    if current_app.config.get("TICKERS_ALL") and missing and len(missing) < len(newest):
        check["never_priced"], missing = missing, []
        check["ok"] = not stale
    problems = [f"no price stored for {t}" for t in missing]
    problems += [f"newest {t} price is {now - newest[t]} s old" for t in stale]
    if problems:
        check["error"] = "; ".join(problems)
    return check


# --- Metrics ---------------------------------------------------------------------------------


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(
        operationId="metrics",
        responses={
            "200": {
                "description": "Prometheus text format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    def get(self):
        """Prometheus metrics: HTTP requests, fetches and their failures, age of the newest prices.

        Totals over every web worker and the fetch worker. A source that cannot be read is
        skipped and flagged by tracker_scrape_error{source}, so the scrape itself never fails.
        """
        # content_type, not mimetype: CONTENT_TYPE_LATEST already carries its charset, and
        # mimetype= would append a second one.
        return Response(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)
