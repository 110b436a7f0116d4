"""Security headers on every response: one strict Content-Security-Policy, relaxed per docs page."""

from urllib.parse import urlsplit

from flask import request

# Same on every response, errors included.
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # The URLs carry nothing secret, but other sites need not learn which ones were viewed.
    "Referrer-Policy": "no-referrer",
    # For browsers that predate CSP's frame-ancestors: nothing here is meant to be framed.
    "X-Frame-Options": "DENY",
}
# Sent only over HTTPS (RFC 6797 tells browsers to ignore it over http). No includeSubDomains:
# the tracker cannot know what else runs under its domain.
HSTS = "max-age=31536000"

# Everything that is not a docs page: the JSON API, errors, probes, /metrics, the chart page.
# Scripts, styles and data come from the app itself only; nothing inline, nothing framed.
STRICT = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
# Swagger UI (/docs) is started by a file (static/swagger-ui-init.js), not an inline script,
# so it runs under STRICT as it is.
SWAGGER_UI_ENDPOINT = "api-docs.openapi_swagger_ui"
REDOC_ENDPOINT = "api-docs.openapi_redoc"


def init_app(app):
    """Put the security headers on every response the app sends."""
    strict = render(STRICT)
    by_endpoint = {SWAGGER_UI_ENDPOINT: strict, REDOC_ENDPOINT: render(redoc_policy(app.config))}

    # The names of what this hook writes, to see in one pass whether a view set one already.
    names = {name.lower() for name in (*HEADERS, "Content-Security-Policy")}

    @app.after_request
    def add_security_headers(response):
        req = request._get_current_object()  # one LocalProxy lookup, not one per attribute
        policy = by_endpoint.get(req.endpoint, strict)
        headers = response.headers
        if any(name.lower() in names for name, _ in headers):
            # A view set one of them: replace it, as set() does.
            headers.update(HEADERS)
            headers["Content-Security-Policy"] = policy
        else:  # the usual case: append, without set()'s scan of the list for each header
            headers.extend(HEADERS)
            headers.add("Content-Security-Policy", policy)
        # request.is_secure: https to gunicorn, or X-Forwarded-Proto from a trusted proxy.
        if req.is_secure:
            headers["Strict-Transport-Security"] = HSTS
        return response


def redoc_policy(config):
    """STRICT, plus what ReDoc's standalone bundle needs on /redoc and nowhere else.

    Its styled-components inject <style> elements (style-src 'unsafe-inline'), its search runs
    in a worker made from a blob: URL, and its script may come from OPENAPI_REDOC_URL's origin
    when that is absolute (a CDN) rather than a file the app serves.
    """
    policy = dict(STRICT, **{"style-src": "'self' 'unsafe-inline'", "worker-src": "'self' blob:"})
    script = urlsplit(config.get("OPENAPI_REDOC_URL") or "")
    if script.scheme and script.netloc:
        policy["script-src"] += f" {script.scheme}://{script.netloc}"
    return policy


def render(policy):
    """The header value of a {directive: sources} policy."""
    return "; ".join(f"{directive} {sources}" for directive, sources in policy.items())
