# The tracker's image: runtime dependencies only, a non-root user, one image for every process
# (web, worker, scheduler, migrate differ only by command; see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --system --uid 10001 --no-create-home tracker

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY wsgi.py gunicorn.conf.py ./
COPY tracker/ tracker/
COPY migrations/ migrations/

USER tracker
EXPOSE 8000
# Liveness of the web process (no I/O behind /healthz); compose turns it off for the services
# that serve no HTTP (worker, scheduler, migrate). The image has no curl: Python does the GET.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
CMD ["gunicorn", "wsgi:app"]
