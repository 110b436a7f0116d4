"""What docker-compose.yml, the Dockerfile and .env.example say, checked without a Docker engine.

The services' commands themselves run for real in tests/test_e2e.py (compose_command).
"""

import os
import re
import shlex
import shutil
import subprocess

import pytest
import requests
import yaml

from tests.conftest import ROOT, command, compose_command, free_port, read_log, wait_for_http
from tests.test_e2e import wait_for
from tracker.config import DEFAULTS

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("migrate", "web", "worker", "scheduler")
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# Settings read outside tracker/config.py: gunicorn.conf.py, the metrics directory, and the
# compose file's own knobs.
GUNICORN_SETTINGS = set(
    re.findall(r'"(GUNICORN_[A-Z_]+)"', (ROOT / "gunicorn.conf.py").read_text())
)
COMPOSE_ONLY = {"POSTGRES_USER", "POSTGRES_PASSWORD", "WEB_PORT", "DATABASE_HOST"}
KNOWN = set(DEFAULTS) | GUNICORN_SETTINGS | {"PROMETHEUS_MULTIPROC_DIR"} | COMPOSE_ONLY


def env_example_names():
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))


def test_compose_declares_the_stack():
    assert set(SERVICES) == {"db", "redis", *APP_SERVICES, "pgbouncer"}
    # Everything but PgBouncer starts with a plain `docker compose up`.
    assert [name for name in SERVICES if "profiles" in SERVICES[name]] == ["pgbouncer"]
    assert {SERVICES[name]["command"] for name in APP_SERVICES} == {
        "flask db upgrade",
        "gunicorn wsgi:app",
        "flask worker",
        "flask scheduler",
    }
    for name in APP_SERVICES:
        assert SERVICES[name]["image"] == "deribit-price-tracker", name  # one image for all


def test_long_running_services_are_restarted_and_the_migration_is_not():
    """Docker starts a crashed or OOM-killed process again; the processes heal the rest."""
    for name in ("web", "worker", "scheduler", "db", "redis"):
        assert SERVICES[name]["restart"] == "unless-stopped", name
    assert SERVICES["migrate"]["restart"] == "no"  # a one-off: it must not loop


def test_app_services_wait_for_a_healthy_database_and_the_migration():
    assert SERVICES["migrate"]["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "pgbouncer": OPTIONAL_PGBOUNCER,
    }
    assert SERVICES["migrate"]["restart"] == "no"
    for name in ("web", "worker", "scheduler"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["db"] == {"condition": "service_healthy"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
        assert depends["pgbouncer"] == OPTIONAL_PGBOUNCER, name
    assert "pg_isready" in " ".join(SERVICES["db"]["healthcheck"]["test"])
    assert SERVICES["db"]["volumes"] == ["db-data:/var/lib/postgresql/data"]
    assert "db-data" in COMPOSE["volumes"]


# Waited for when its profile runs it; no requirement when it does not.
OPTIONAL_PGBOUNCER = {"condition": "service_started", "required": False}


def test_the_pgbouncer_profile_runs_docs_pgbouncer_ini_in_transaction_mode():
    """`--profile pgbouncer` plus DATABASE_HOST=pgbouncer puts PgBouncer between app and db;
    tests/test_scaling.py runs the same ini with a real pgbouncer."""
    pgbouncer = SERVICES["pgbouncer"]
    assert pgbouncer["profiles"] == ["pgbouncer"]
    assert re.fullmatch(r"edoburu/pgbouncer:v\d+\.\d+\.\d+-p\d+", pgbouncer["image"])  # pinned
    assert pgbouncer["volumes"] == ["./docs/pgbouncer.ini:/etc/pgbouncer/pgbouncer.ini:ro"]
    assert pgbouncer["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert pgbouncer["environment"]["DB_USER"] == SERVICES["db"]["environment"]["POSTGRES_USER"]
    ini = (ROOT / "docs" / "pgbouncer.ini").read_text()
    assert re.search(r"^pool_mode = transaction$", ini, re.MULTILINE)
    assert re.search(r"^listen_port = 5432$", ini, re.MULTILINE)
    assert re.search(r"^crypto_prices = host=db port=5432 dbname=crypto_prices ", ini, re.MULTILINE)
    database_url = SERVICES["web"]["environment"]["DATABASE_URL"]
    assert "@${DATABASE_HOST:-db}:5432/crypto_prices" in database_url
    # The timeout PgBouncer sets is the app's default one (compose does not change it).
    assert f"SET statement_timeout = {DEFAULTS['DB_STATEMENT_TIMEOUT_MS']};" in ini


def test_only_the_web_has_a_healthcheck_and_it_probes_healthz():
    assert "/healthz" in " ".join(SERVICES["web"]["healthcheck"]["test"])
    for name in ("migrate", "worker", "scheduler"):
        assert SERVICES[name]["healthcheck"] == {"disable": True}, name


def test_worker_can_be_scaled():
    # --scale needs no fixed container name and no published port.
    assert "container_name" not in SERVICES["worker"] and "ports" not in SERVICES["worker"]


def test_every_variable_compose_passes_is_a_setting_the_app_reads():
    for name in APP_SERVICES:
        unknown = set(SERVICES[name]["environment"]) - KNOWN
        assert not unknown, f"{name} sets {unknown}: a typo, or a setting nobody reads"


def test_env_example_documents_every_setting_and_nothing_else():
    names = env_example_names()
    assert set(DEFAULTS) <= names, set(DEFAULTS) - names
    assert names <= KNOWN, names - KNOWN


def test_dockerfile_runs_as_non_root_with_runtime_dependencies_only():
    assert re.search(r"^FROM python:3\.11-slim$", DOCKERFILE, re.MULTILINE)
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "pip install -r requirements.txt" in DOCKERFILE
    assert "requirements-dev" not in DOCKERFILE
    assert "HEALTHCHECK" in DOCKERFILE and "/healthz" in DOCKERFILE
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.MULTILINE)[1]
    assert yaml.safe_load(cmd) == shlex.split(SERVICES["web"]["command"])
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "tests", ".git"} <= set(ignored)


def test_the_web_healthcheck_command_passes_against_a_running_web(spawn):
    port = free_port()
    web = spawn(command("gunicorn", "wsgi:app"), GUNICORN_BIND=f"127.0.0.1:{port}")
    wait_for_http(f"http://127.0.0.1:{port}/healthz", process=web)
    probe = SERVICES["web"]["healthcheck"]["test"]
    assert probe[:2] == ["CMD", "python"]
    argv = [command("python")[0], *probe[2:]]
    argv[-1] = argv[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr + read_log(web)


def test_app_containers_are_read_only_with_no_capabilities_and_no_privilege_gain():
    for name in APP_SERVICES:
        service = SERVICES[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        # The one writable place: gunicorn.conf.py puts its files in the temporary directory.
        assert [entry.split(":")[0] for entry in service["tmpfs"]] == ["/tmp"], name
        assert "TMPDIR" not in service["environment"], name
    assert "gunicorn.conf.py" in DOCKERFILE and "PYTHONDONTWRITEBYTECODE=1" in DOCKERFILE


def read_only_root(argv, tmpfs):
    """argv run as compose runs it: every mount read-only, then compose's tmpfs mounts on top.

    A private mount namespace (unshare -m), so nothing changes outside the process.
    """
    mounts = []
    for entry in tmpfs:
        target, _, options = entry.partition(":")
        mounts.append(f"mount -t tmpfs -o {shlex.quote(options or 'mode=1777')} tmpfs {target}")
    root = shlex.quote(str(ROOT))
    script = "\n".join(
        [
            "set -e",
            # The checkout may live under a tmpfs target (a clone in /tmp): keep a handle on it.
            f"mount --bind {root} /mnt",
            "for target in $(awk '{print $2}' /proc/mounts | sort -u); do",
            '  mount -o remount,bind,ro "$target" 2>/dev/null || true',
            "done",
            *mounts,
            f"if [ ! -e {root}/wsgi.py ]; then",
            f"  mkdir -p {root} && mount --bind /mnt {root} && mount -o remount,bind,ro {root}",
            "fi",
            f"cd {root}",
            # The remount must have worked, or this test would prove nothing.
            'if touch "$PWD/.write-probe" 2>/dev/null; then echo root is writable; exit 97; fi',
            'exec "$@"',
        ]
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # no SQLite file in compose
def test_the_stack_runs_on_a_read_only_root_with_only_the_tmpfs_writable(
    app, deribit, redis_conn, spawn
):
    """migrate, web (2 workers), worker and scheduler, each with its compose command, fetch and
    serve prices and count requests with nothing writable but compose's tmpfs."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount namespace (CI has both)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = {
        "FETCH_INTERVAL": 2,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": 2,
        "PYTHONDONTWRITEBYTECODE": 1,  # as the Dockerfile sets it
        "TMPDIR": None,  # as in the container: /tmp
        "PROMETHEUS_MULTIPROC_DIR": None,  # gunicorn.conf.py makes it, on the tmpfs
    }

    def start(service):
        argv = read_only_root(compose_command(service), SERVICES[service]["tmpfs"])
        return spawn(argv, **settings)

    migrate = start("migrate")
    assert migrate.wait(timeout=60) == 0, read_log(migrate)
    processes = [start("web"), start("worker"), start("scheduler")]
    wait_for_http(f"{base}/healthz", process=processes[0])

    def latest():
        response = requests.get(f"{base}/api/v1/prices/latest?ticker=btc_usd", timeout=5)
        return response.status_code == 200 and response

    assert wait_for(latest, 20, processes, "a price fetched by the worker").json()["price"]
    for _ in range(10):  # spread over both gunicorn workers
        requests.get(f"{base}/healthz", timeout=5)
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    served = re.search(
        r'tracker_http_requests_total\{endpoint="/healthz",method="GET",status="200"\} (\S+)',
        metrics,
    )
    assert served and float(served[1]) >= 11, metrics  # the multiprocess files are writable
    for process in processes:
        assert "Read-only file system" not in read_log(process), read_log(process)
