"""Fair use: a per-client request budget on /api (RATE_LIMIT), counted in Redis, open without it."""

import logging
import math
import threading
import time

from flask import request
from flask_limiter import Limiter, RateLimitExceeded
from redis.exceptions import RedisError

from tracker.extensions import api as rest_api
from tracker.logs import first_line

log = logging.getLogger(__name__)

# Also the headers CORS exposes to browser code, so it can back off before a 429.
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
# A Redis that hangs must not hang the request: give up quickly and let it through instead.
REDIS_TIMEOUT_SECONDS = 0.5
# While Redis is down, one request this often tries it again; the others pass unchecked.
REDIS_RETRY_SECONDS = 5


class RedisOutage:
    """Whether the limiter's Redis is down, as one web process (all its threads) last saw it.

    Down, requests pass with no limit at all and one request every REDIS_RETRY_SECONDS
    checks its limit in Redis again (at most REDIS_TIMEOUT_SECONDS lost if Redis hangs).
    One warning when Redis goes away, one line when it answers again: not one per request.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._retry_at = None  # monotonic time of the next try while down; None while up

    def check_now(self):
        """(check, probe): whether this request checks its limit, and whether it is the one
        request that tries a Redis that was down."""
        if self._retry_at is None:  # the common case: no lock
            return True, False
        with self._lock:
            if self._retry_at is None:
                return True, False
            if time.monotonic() < self._retry_at:
                return False, False
            self._retry_at = time.monotonic() + REDIS_RETRY_SECONDS
            return True, True

    def failed(self, exc):
        with self._lock:
            went_away = self._retry_at is None
            self._retry_at = time.monotonic() + REDIS_RETRY_SECONDS
        if went_away:
            log.warning(
                "rate limit off: Redis unreachable (%s); every request passes unlimited until"
                " it answers again (tried every %d s)",
                first_line(exc),
                REDIS_RETRY_SECONDS,
            )

    def answered(self):
        """The probe's check succeeded. Only a probe ends an outage: a request that began
        while Redis was still up proves nothing about it now."""
        with self._lock:
            came_back = self._retry_at is not None
            self._retry_at = None
        if came_back:
            log.info("rate limit on again: Redis answers")


class FailOpenLimiter(Limiter):
    """Flask-Limiter that lets every request through while Redis is down (see RedisOutage).

    Flask-Limiter's own choices do not fit: its in-memory fallback still limits, per worker,
    and swallow_errors tries Redis (and logs a traceback) on every request.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outage = RedisOutage()

    def _check_request_limit(self, callable_name=None, in_middleware=True):
        # Flask-Limiter's before_request hook. Not public API: Flask-Limiter is pinned, and
        # test_ratelimit's Redis outage fails if a new version stops calling it.
        if _not_api():  # first, so that a probe is always a request that asks Redis
            return
        check, probe = self.outage.check_now()
        if not check:
            return
        try:
            super()._check_request_limit(callable_name, in_middleware)
        except RedisError as exc:
            self.outage.failed(exc)
            return
        except RateLimitExceeded:  # Redis answered: this client is over its limit
            if probe:
                self.outage.answered()
            raise
        if probe:
            self.outage.answered()


def init_app(app):
    """Limit each client's requests to /api/* to RATE_LIMIT; nothing at all when it is empty."""
    if not app.config["RATE_LIMIT"]:
        return
    # One limiter per app, not a module-level one: it keeps its storage and limits on itself,
    # so a second app (tests, `flask up`) with other settings would share the first one's.
    limiter = FailOpenLimiter(
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
        # Redis errors reach FailOpenLimiter, which lets the request through.
        in_memory_fallback_enabled=False,
        swallow_errors=False,
        key_prefix="tracker",
    )
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
    if current is None:  # not /api, or Redis is down
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
