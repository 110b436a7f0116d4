"""CORS: browsers on the allowed origins (CORS_ORIGINS) may read the API and its spec.

Read-only public data and no cookies, so the whole policy is a few headers: no credentials, GET
and HEAD only, and a preflight that allows whatever request headers the browser asks for. A few
lines here rather than flask-cors, which matched its resource patterns and rebuilt its options on
every request: a tenth of the CPU of /prices/latest answered from memory (docs/PERFORMANCE.md).
"""

from flask import request

from tracker import ratelimit

# Exposed so browser code can paginate (Link) and back off (Retry-After, X-RateLimit-*).
EXPOSED = ", ".join(["Link", "Retry-After", *ratelimit.RATE_LIMIT_HEADERS])
METHODS = ("GET", "HEAD", "OPTIONS")
ALLOW_METHODS = ", ".join(METHODS)
PREFLIGHT_MAX_AGE = "86400"


def init_app(app):
    """Put the CORS headers on /api/* and /openapi.json answers, errors and preflights too."""
    origins = app.config["CORS_ORIGINS"]  # "*" or a tuple of origins

    @app.after_request
    def add_cors_headers(response):
        req = request._get_current_object()  # one LocalProxy lookup, not one per attribute
        path = req.path
        if not (path.startswith("/api/") or path == "/openapi.json"):
            return response
        headers = response.headers
        if origins == "*":
            # The same answer for every origin: "*" (cacheable by anyone), not the Origin echoed.
            headers.add("Access-Control-Allow-Origin", "*")
        else:
            # The answer names the Origin or has no ACAO at all, refusals and answers to no
            # Origin included: a cache must keep one copy per Origin.
            response.vary.add("Origin")
            origin = req.environ.get("HTTP_ORIGIN")
            if origin not in origins:
                return response  # refused (or no Origin): no Access-Control-* at all
            headers.add("Access-Control-Allow-Origin", origin)
        environ = req.environ
        if req.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
            if environ["HTTP_ACCESS_CONTROL_REQUEST_METHOD"].upper() not in METHODS:
                return response  # a write: the browser will not send it
            headers.add("Access-Control-Allow-Methods", ALLOW_METHODS)
            asked = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS")
            if asked:
                headers.add("Access-Control-Allow-Headers", asked)
            headers.add("Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
        else:
            headers.add("Access-Control-Expose-Headers", EXPOSED)
        return response
