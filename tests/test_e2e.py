"""End to end: the real web, worker and scheduler processes against the fake Deribit."""

import time

import requests

from tests.conftest import compose_command, free_port, read_log, wait_for_http


def wait_for(predicate, timeout, processes, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, read_log(process)
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    logs = "\n---\n".join(read_log(p) for p in processes)
    raise AssertionError(f"timed out waiting for {what}:\n{logs}")


def test_prices_flow_from_deribit_through_worker_to_the_api(app, deribit, redis_conn, spawn):
    """Each process is started with the command docker-compose.yml gives its service."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    settings = {"FETCH_INTERVAL": 2, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": 2}
    migrate = spawn(compose_command("migrate"), **settings)
    assert migrate.wait(timeout=60) == 0, read_log(migrate)  # already migrated: a no-op
    web = spawn(compose_command("web"), **settings)
    worker = spawn(compose_command("worker"), **settings)
    scheduler = spawn(compose_command("scheduler"), **settings)
    processes = [web, worker, scheduler]
    wait_for_http(f"{base}/prices/latest?ticker=btc_usd", process=web)

    def latest(ticker):
        response = requests.get(f"{base}/prices/latest", params={"ticker": ticker}, timeout=5)
        return response if response.status_code == 200 else None

    first = wait_for(lambda: latest("btc_usd"), 20, processes, "the first btc_usd price")
    assert '"price":86955.73,' in first.text
    eth = wait_for(lambda: latest("eth_usd"), 10, processes, "the first eth_usd price")
    assert eth.json()["price"] == 2950.12 and '"price":2950.12,' in eth.text

    deribit.prices["btc_usd"] = "87001.5"
    moved = wait_for(
        lambda: (r := latest("btc_usd")) and r.json()["price"] != 86955.73 and r,
        20,
        processes,
        "the new btc_usd price",
    )
    assert '"price":87001.5,' in moved.text
    assert moved.json()["timestamp"] > first.json()["timestamp"]

    items = requests.get(f"{base}/prices", params={"ticker": "btc_usd"}, timeout=5).json()["items"]
    stamps = [item["timestamp"] for item in items]
    assert stamps == sorted(set(stamps), reverse=True)  # newest first, no duplicates
    assert all(stamp % 2 == 0 for stamp in stamps)  # one row per 2 s slot, on the boundary
    assert {item["price"] for item in items} <= {86955.73, 87001.5}
    assert "fetch slot=" in read_log(worker)
