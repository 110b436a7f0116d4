"""Fair use: a per-client request budget on /api (RATE_LIMIT), counted in Redis."""

import math
import time

from flask import request
from flask_limiter import Limiter, RateLimitExceeded
from redis.exceptions import RedisError

from tracker.extensions import api as rest_api

# Also the headers CORS exposes to browser code, so it can back off before a 429.
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
# A Redis that hangs must not hang the request: give up quickly and count in memory instead.
REDIS_TIMEOUT_SECONDS = 0.5


def init_app(app):
    """Limit each client's requests to /api/* to RATE_LIMIT; nothing at all when it is empty."""
    if not app.config["RATE_LIMIT"]:
        return
    # One limiter per app, not a module-level one: it keeps its storage and limits on itself,
    # so a second app (tests, `flask up`) with other settings would share the first one's.
    limiter = Limiter(
        _client_address,
        # One budget per client across every endpoint ("global" scope), not one per endpoint.
        application_limits=[app.config["RATE_LIMIT"]],
        # Redis: every gunicorn worker and every web host counts against the same budget.
        storage_uri=app.config["REDIS_URL"],
        storage_options={
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
        },
        # No burst of twice the limit across a window boundary, as a fixed window allows.
        strategy="sliding-window-counter",
        # Written by _rate_limit_headers instead: the limiter's own would put Retry-After on
        # every response, and stretch the 503's Retry-After to the end of the window.
        headers_enabled=False,
        # Redis down: one warning, then each worker counts in its own memory (requests keep
        # passing, never a 500) and goes back to Redis once it answers a ping again.
        in_memory_fallback_enabled=True,
        key_prefix="tracker",
    )
    limiter.request_filter(_not_api)
    limiter.init_app(app)
    app.after_request(lambda response: _rate_limit_headers(limiter, response))
    app.register_error_handler(RateLimitExceeded, _too_many_requests)


def _client_address():
    # After ProxyFix (TRUSTED_PROXIES), the client nginx saw, not nginx itself.
    return request.remote_addr or "unknown"


def _not_api():
    # Probes, metrics, docs and the chart page stay free: an orchestrator must never be refused.
    return not request.path.startswith("/api/")


def _rate_limit_headers(limiter, response):
    """X-RateLimit-* on every limited response, and Retry-After (at least 1 s) on a 429."""
    current = limiter.current_limit
    if current is None:  # not /api, or no Redis and no count
        return response
    try:
        reset_at, remaining = current.reset_at, current.remaining
    except RedisError:  # Redis went away after the check: the answer matters more
        return response
    limit_name, remaining_name, reset_name = RATE_LIMIT_HEADERS
    response.headers[limit_name] = str(current.limit.amount)
    response.headers[remaining_name] = str(remaining)
    response.headers[reset_name] = str(reset_at)
    if response.status_code == 429:
        response.headers["Retry-After"] = str(max(1, math.ceil(reset_at - time.time())))
    return response


def _too_many_requests(exc):
    """The 429 in the API's error shape; _rate_limit_headers adds Retry-After and the rest."""
    exc.data = {
        "message": f"Rate limit of {exc.description} per client exceeded:"
        " retry after the seconds in Retry-After."
    }
    return rest_api.handle_http_exception(exc)
