"""wsgi.py's app under the Content-Security-Policy the browser tests hold its pages to.

`gunicorn tests.csp_wsgi:app` (with gunicorn.conf.py, as production). A policy the app sends
itself is kept, so once it has one, that is the policy the browser tests check.
"""

from flask import request

from wsgi import app

# What the rest of the app sends: only its own files, no inline script or style.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'"
)
# Each docs page needs one thing more, found by loading it in Chromium under PAGE_CSP: ReDoc's
# styled-components inject <style> elements and its search runs in a Worker made from a blob:
# URL; Swagger UI is started by an inline script in flask-smorest's template (whose text, and
# so its hash, holds the spec's URL, which changes with a proxy's prefix).
EXTRA_CSP = {
    "/redoc": "style-src 'self' 'unsafe-inline'; worker-src blob:",
    "/docs": "script-src 'self' 'unsafe-inline'",
}


def policy(path):
    """PAGE_CSP with the page's own additions replacing the directives they name."""
    directives = dict(d.strip().split(" ", 1) for d in PAGE_CSP.split(";"))
    for directive in EXTRA_CSP.get(path, "").split(";"):
        if directive.strip():
            name, value = directive.strip().split(" ", 1)
            directives[name] = value
    return "; ".join(f"{name} {value}" for name, value in directives.items())


@app.after_request
def content_security_policy(response):
    """Send the policy for this path unless the app already sent one."""
    response.headers.setdefault("Content-Security-Policy", policy(request.path))
    return response
