"""gunicorn settings for production, from the environment; `gunicorn wsgi:app` reads this file."""

import multiprocessing
import os
import shutil
import tempfile


def _positive_int(name, default):
    """A whole number > 0 from the environment, or stop with one line (as the app's settings do)."""
    value = os.environ.get(name, str(default))
    if not value.strip().isdigit() or int(value) <= 0:
        raise SystemExit(
            f"configuration error: {name} must be a positive whole number, got {value!r}"
        )
    return int(value)


bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = _positive_int("GUNICORN_WORKERS", multiprocessing.cpu_count())
# gthread (any GUNICORN_THREADS above 1; 1 gives the sync worker), for two reasons. A browser
# opens connections it does not use at once (preconnects), and a sync worker waits on each one
# until `timeout` kills it, so with a browser in front of gunicorn (no proxy: `make run`,
# compose's port 8000) a page could stall for 30 s; a gthread thread waits at most 5 s on a
# connection that sends nothing, then parks it in the worker's poller. And a CSV download
# streams for seconds to minutes: two of them would hold both sync workers of a 2-CPU host, and
# /prices/latest would wait behind them (a sync worker busy past `timeout` is even killed
# mid-download). Two threads, not four: with four, one worker ran more requests at once and
# their contention for the GIL showed as p99 tails of 20-100 ms under `make bench`
# (docs/PERFORMANCE.md). `flask up` (make run) uses 4.
threads = _positive_int("GUNICORN_THREADS", 2)
timeout = _positive_int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _positive_int("GUNICORN_GRACEFUL_TIMEOUT", 20)
keepalive = _positive_int("GUNICORN_KEEPALIVE", 5)

# Bounded work per request, set here rather than left to gunicorn's defaults: the longest URL the
# API takes (a CSV range with every parameter) is under 300 bytes, and nginx or a browser sends
# a dozen headers. Past these limits gunicorn answers 400/431 before any app code runs.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

# Load the app once in the master: a configuration error stops the server with one line
# instead of a crash loop of workers, and workers start faster.
preload_app = True
# gunicorn 27 opens a control socket under ~/.gunicorn; production must not need a writable home.
control_socket_disable = True

# Addresses whose X-Forwarded-Proto (and SCRIPT_NAME/PATH_INFO headers) gunicorn itself believes.
# Loopback only, never "*": anyone who can reach gunicorn directly could otherwise claim https.
# The app's own trust in X-Forwarded-* is TRUSTED_PROXIES (ProxyFix, see README).
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Off unless GUNICORN_ACCESS_LOG is set ("-" = stdout, or a file path): the app already logs one
# line per request, so a second line per request would only double the log volume.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
# Client (after ProxyFix), request, status, bytes, duration in ms, the proxy's X-Request-ID.
access_log_format = os.environ.get(
    "GUNICORN_ACCESS_LOG_FORMAT",
    '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}i)s "%(a)s"',
)
errorlog = "-"

# Workers' heartbeat files (touched every second): in the temporary directory, a tmpfs in
# docker-compose.yml, so the heartbeat never waits on a disk and the root filesystem can stay
# read-only. gunicorn's default is the same directory; named here because compose depends on it.
worker_tmp_dir = tempfile.gettempdir()

# Metrics: prometheus_client's multiprocess mode, so /metrics in any worker reports the sum over
# all workers. One fresh directory per server start, made here in the master before the app is
# loaded (every worker inherits it), removed when gunicorn exits. It is in the temporary
# directory too (TMPDIR, else /tmp: compose's tmpfs). Only counters and histograms
# live there, so no child_exit/mark_process_dead hook is needed.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tracker-metrics-")

    def on_exit(server):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
