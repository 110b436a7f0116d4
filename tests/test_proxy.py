"""Behind a reverse proxy: ProxyFix, and the real nginx of docs/nginx.conf in front of gunicorn."""

import re
import runpy
import time
from decimal import Decimal
from urllib.parse import urljoin

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import console_errors, requested_urls
from tests.conftest import ROOT, read_log
from tracker.models import insert_prices

T0 = 1795176000  # 2026-11-20T12:00:00Z
FORWARDED = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "example.com",
    "X-Forwarded-Prefix": "/tracker",
}


def seed(app, count):
    rows = [
        {"ticker": "btc_usd", "price": Decimal("80000.5") + i, "timestamp": T0 + 60 * i}
        for i in range(count)
    ]
    with app.app_context():
        insert_prices(rows)


def link_url(response):
    link = response.headers["Link"]
    assert link.endswith('>; rel="next"'), link
    return link[1 : link.index(">")]


# --- ProxyFix, in-process ----------------------------------------------------------------------


def test_forwarded_headers_are_ignored_by_default(app, client):
    seed(app, 3)
    response = client.get("/api/v1/prices?ticker=btc_usd&limit=1", headers=FORWARDED)
    assert link_url(response).startswith("http://localhost/api/v1/prices?")
    assert client.get("/openapi.json", headers=FORWARDED).json["servers"] == [{"url": "/"}]


def test_trusted_proxy_headers_set_scheme_host_and_prefix(make_app, deribit):
    app = make_app(TRUSTED_PROXIES="1")
    seed(app, 3)
    client = app.test_client()
    response = client.get("/api/v1/prices?ticker=btc_usd&limit=1", headers=FORWARDED)
    assert link_url(response).startswith("https://example.com/tracker/api/v1/prices?")
    assert client.get("/openapi.json", headers=FORWARDED).json["servers"] == [{"url": "/tracker"}]
    assert 'data-spec-url="/tracker/openapi.json"' in client.get("/docs", headers=FORWARDED).text


def test_only_the_trusted_hop_counts(make_app, deribit):
    """A client's own X-Forwarded-* values come first in the list; one hop trusts only the last."""
    app = make_app(TRUSTED_PROXIES="1")
    seed(app, 3)
    forged = {
        "X-Forwarded-Proto": "https, http",
        "X-Forwarded-Host": "evil.example, example.com",
        "X-Forwarded-Prefix": "/evil, /tracker",
    }
    response = app.test_client().get("/api/v1/prices?ticker=btc_usd&limit=1", headers=forged)
    assert link_url(response).startswith("http://example.com/tracker/api/v1/prices?")


def test_gunicorn_settings_come_from_the_environment(monkeypatch):
    def settings(**env):
        for name in [
            "GUNICORN_ACCESS_LOG",
            "GUNICORN_FORWARDED_ALLOW_IPS",
            "GUNICORN_BIND",
            "GUNICORN_THREADS",
        ]:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(ROOT / "gunicorn.conf.py"))

    defaults = settings()
    assert defaults["accesslog"] is None  # the app logs each request already
    assert defaults["forwarded_allow_ips"] == "127.0.0.1,::1"
    assert defaults["preload_app"] is True and defaults["control_socket_disable"] is True
    # Threads, so a connection a browser opens and leaves idle does not stall a whole worker:
    # gunicorn runs its gthread worker when threads > 1 (GUNICORN_THREADS=1: sync).
    assert defaults["threads"] == 2 and "worker_class" not in defaults
    assert "%({x-request-id}i)s" in defaults["access_log_format"]
    assert "%(M)s" in defaults["access_log_format"]
    # Explicit request line and header limits, not whatever gunicorn's defaults become.
    assert defaults["limit_request_line"] == 4094
    assert defaults["limit_request_fields"] == 50
    assert defaults["limit_request_field_size"] == 8190
    custom = settings(
        GUNICORN_ACCESS_LOG="-", GUNICORN_FORWARDED_ALLOW_IPS="10.0.0.2", GUNICORN_BIND="[::]:9000"
    )
    assert custom["accesslog"] == "-"
    assert custom["forwarded_allow_ips"] == "10.0.0.2"
    assert custom["bind"] == "[::]:9000"


# --- The real thing: nginx (docs/nginx.conf) -> gunicorn ---------------------------------------


@pytest.fixture
def proxy(app, start_proxy):
    """gunicorn (TRUSTED_PROXIES=1) behind nginx under /tracker/; yields nginx's origin URL."""
    return start_proxy()


def test_swagger_ui_loads_its_assets_and_spec_through_the_proxy(proxy):
    page = requests.get(f"{proxy.origin}/tracker/docs", timeout=5)
    assert page.status_code == 200, page.text
    assets = re.findall(r'(?:href|src)="([^"]+\.(?:css|js))"', page.text)
    # swagger-ui.css, -bundle.js, -standalone-preset.js, and our static/swagger-ui-init.js
    assert len(assets) >= 4, page.text
    for asset in assets:
        url = urljoin(page.url, asset)  # as the browser resolves it
        assert url.startswith(
            (f"{proxy.origin}/tracker/swagger-ui/", f"{proxy.origin}/tracker/static/")
        ), url
        response = requests.get(url, timeout=5)
        assert response.status_code == 200 and response.content, url
        if "/swagger-ui/" in url:
            assert len(response.content) > 10_000, url
    spec_url = urljoin(page.url, re.search(r'data-spec-url="([^"]+)"', page.text).group(1))
    assert spec_url == f"{proxy.origin}/tracker/openapi.json"
    assert requests.get(spec_url, timeout=5).json()["info"]["title"] == "Deribit price tracker"


def test_try_it_out_calls_the_api_through_the_proxy(app, proxy):
    """Swagger UI resolves the spec's server URL against the spec's own URL, then adds the path."""
    seed(app, 1)
    spec_url = f"{proxy.origin}/tracker/openapi.json"
    servers = requests.get(spec_url, timeout=5).json()["servers"]
    assert servers == [{"url": "/tracker"}]
    base = urljoin(spec_url, servers[0]["url"]).rstrip("/")
    response = requests.get(f"{base}/api/v1/prices/latest?ticker=btc_usd", timeout=5)
    assert response.status_code == 200 and response.json()["timestamp"] == T0


def test_link_header_points_through_the_proxy_and_walks_every_page(app, proxy):
    seed(app, 5)
    url = f"{proxy.origin}/tracker/api/v1/prices?ticker=btc_usd&limit=2"
    # What a client sends itself is overwritten by nginx: the links still go through the proxy.
    forged = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    forged["X-Forwarded-Prefix"] = "/evil"
    stamps = []
    while url:
        response = requests.get(url, headers=forged, timeout=5)
        assert response.status_code == 200, response.text
        stamps += [item["timestamp"] for item in response.json()["items"]]
        url = None
        if "Link" in response.headers:
            url = link_url(response)
            assert url.startswith(f"{proxy.origin}/tracker/api/v1/prices?"), url
    assert stamps == [T0 + 60 * i for i in reversed(range(5))]


def test_cors_preflight_passes_through_the_proxy(proxy):
    response = requests.options(
        f"{proxy.origin}/tracker/api/v1/prices?ticker=btc_usd",
        headers={
            "Origin": "https://dashboard.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-request-id",
        },
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Headers"].lower() == "x-request-id"


def test_request_id_and_duration_reach_the_gunicorn_access_log(proxy):
    requests.get(
        f"{proxy.origin}/tracker/openapi.json", headers={"X-Request-ID": "rid-4711"}, timeout=5
    )
    requests.get(f"{proxy.origin}/tracker/docs", timeout=5)
    line = r'"GET {} HTTP/1\.[01]" 200 \d+ \d+ms request_id={} '
    given = line.format("/openapi.json", "rid-4711")
    # Without one, nginx makes an id (32 hex digits), so every line can be correlated.
    made = line.format("/docs", "[0-9a-f]{32}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # gunicorn writes its access line after the response
        log = read_log(proxy.web)
        if re.search(given, log) and re.search(made, log):
            break
        time.sleep(0.1)
    assert re.search(given, log), log
    assert re.search(made, log), log


def test_chart_page_works_under_the_prefix_in_a_browser(app, proxy, browser):
    """The page, its files and its API calls all go through nginx under /tracker/ (Chromium)."""
    seed(app, 3)
    latest = requests.get(f"{proxy.origin}/tracker/api/v1/prices/latest?ticker=btc_usd", timeout=5)
    browser.get(f"{proxy.origin}/tracker/")
    price = (By.CSS_SELECTOR, '[data-ticker="btc_usd"] .price')
    WebDriverWait(browser, 15).until(lambda d: d.find_element(*price).text == "80002.5")
    assert latest.json()["price"] == 80002.5
    urls = [url for url in requested_urls(browser) if not url.startswith("data:")]
    assert all(url.startswith(f"{proxy.origin}/tracker/") for url in urls), urls
    for path in ["static/chart.js", "static/page.css", "api/v1/tickers", "api/v1/candles?"]:
        assert any(url.startswith(f"{proxy.origin}/tracker/{path}") for url in urls), path
    assert console_errors(browser) == []
