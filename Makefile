# One entry point for people and CI. `make run` and `make test` are the README's first commands.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Redocly CLI, pinned (it needs Node.js >= 20.19); npx fetches it on first use.
REDOCLY := @redocly/cli@2.77.0

.PHONY: run demo test lint lint-spec security audit bench bench-size soak vendor install clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

## Migrate, then run web (the page at http://127.0.0.1:8000/), worker and scheduler until Ctrl-C.
## No DATABASE_URL: SQLite under instance/. No REDIS_URL: an embedded Redis. Set them to use yours.
run: install
	$(BIN)/flask up

## The same, fetching from a local fake Deribit with random-walk prices every 5 s: no network.
demo: install
	$(BIN)/flask up --demo

## The test suite, against the PostgreSQL and Redis on localhost.
test: install
	$(BIN)/pytest

## The benchmark (docs/PERFORMANCE.md): seeds its own database tracker_bench, loads the API and
## its floors with wrk on loopback (installed from Debian's packages if missing), prints a table.
bench: install
	$(BIN)/python -m tests.benchmark

## The same at size (docs/SCALING.md): 20 tickers x 2 years, 21 million rows seeded on the server,
## beside 20 tickers x 3 days; about 15 minutes and 3 GB of disk, its database dropped at the end.
## The statement timeout is raised so that the two-year candle page is timed, not cancelled (503).
bench-size: install
	DB_STATEMENT_TIMEOUT_MS=60000 $(BIN)/python -m tests.benchmark --tickers=20 --days=3,730 --drop

## The soak (docs/RELIABILITY.md): the real processes at FETCH_INTERVAL=1 for 10 minutes under
## random faults (Redis, PostgreSQL, a worker, Deribit down or sending garbage), then a report.
## Its own database tracker_soak and redis-server; `python -m tests.soak --help` for options.
soak: install
	$(BIN)/python -m tests.soak

## Fetch the pinned third-party browser files into tracker/static/vendor/ (needs npm). They are
## committed: run it only after changing a pin in the script.
vendor:
	scripts/vendor.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## The OpenAPI spec as the app builds it, linted with Redocly's recommended rules (redocly.yaml).
lint-spec: install
	mkdir -p build
	FLASK_APP=wsgi $(BIN)/flask openapi write build/openapi.json
	npx --yes $(REDOCLY) lint build/openapi.json

## Static security analysis of tracker/ with bandit: fails on any finding of medium severity or
## more. Low ones are looked at and marked in the code with `# nosec BXXX` and why.
security: install
	$(BIN)/bandit --quiet --recursive tracker --severity-level medium

## Known vulnerabilities in the pinned runtime dependencies: fails on any. Needs internet (PyPI's
## vulnerability data), so CI cannot run it; --strict fails when a package cannot be audited at
## all instead of passing silently.
audit: install
	$(BIN)/pip-audit --requirement requirements.txt --strict

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build
