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
CMD ["gunicorn", "wsgi:app"]
