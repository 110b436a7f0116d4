"""Security headers on every response, CSP per page, and Swagger UI under it in Chromium."""

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import requests

from tests.conftest import ADMIN_DATABASE_URL, command, free_port, read_log, wait_for_http
from tracker.security import HSTS, STRICT, redoc_policy, render

FORWARDED_HTTPS = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "example.com"}


def directives(response):
    """{directive: [sources]} of the response's Content-Security-Policy."""
    policy = response.headers["Content-Security-Policy"]
    return {d.split()[0]: d.split()[1:] for d in policy.split("; ")}


def assert_security_headers(response):
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert directives(response)["frame-ancestors"] == ["'none'"]


@pytest.mark.parametrize(
    "method, url, status",
    [
        ("GET", "/api/v1/tickers", 200),
        ("GET", "/healthz", 200),
        ("GET", "/metrics", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/no/such/path", 404),
        ("POST", "/healthz", 405),
        ("GET", "/api/v1/prices?ticker=btc_usd&limt=5", 422),
    ],
)
def test_every_response_has_the_security_headers_and_the_strict_policy(client, method, url, status):
    response = client.open(url, method=method)
    assert response.status_code == status
    assert_security_headers(response)
    assert response.headers["Content-Security-Policy"] == render(STRICT)
    assert "Strict-Transport-Security" not in response.headers  # plain http


def test_server_errors_have_the_security_headers_too(make_app):
    # The admin database has no price_records table: a 500; nothing listens on port 1: a 503.
    for database_url, status in [
        (ADMIN_DATABASE_URL, 500),
        ("postgresql://postgres@127.0.0.1:1/nowhere", 503),
    ]:
        client = make_app(DATABASE_URL=database_url).test_client()
        response = client.get("/api/v1/prices/latest?ticker=btc_usd")
        assert response.status_code == status
        assert_security_headers(response)
        assert response.headers["Content-Security-Policy"] == render(STRICT)


def test_strict_policy_allows_nothing_inline_and_nothing_foreign():
    policy = render(STRICT)
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert re.findall(r"https?://", policy) == []
    assert STRICT["default-src"] == STRICT["script-src"] == "'self'"


def test_hsts_only_when_the_request_came_over_https(make_app):
    client = make_app().test_client()
    assert "Strict-Transport-Security" not in client.get("/healthz").headers
    response = client.get("/healthz", base_url="https://localhost")
    assert response.headers["Strict-Transport-Security"] == HSTS
    # A client cannot claim https by itself: X-Forwarded-Proto counts only from a trusted proxy.
    response = client.get("/healthz", headers=FORWARDED_HTTPS)
    assert "Strict-Transport-Security" not in response.headers


def test_hsts_behind_a_trusted_proxy_follows_x_forwarded_proto(make_app):
    client = make_app(TRUSTED_PROXIES="1").test_client()
    response = client.get("/healthz", headers=FORWARDED_HTTPS)
    assert response.headers["Strict-Transport-Security"] == HSTS
    response = client.get("/no/such/path", headers=FORWARDED_HTTPS)  # errors too
    assert response.status_code == 404
    assert response.headers["Strict-Transport-Security"] == HSTS
    response = client.get("/healthz", headers={**FORWARDED_HTTPS, "X-Forwarded-Proto": "http"})
    assert "Strict-Transport-Security" not in response.headers


class ScriptsAndStyles(HTMLParser):
    """Collects a page's <script> tags (attributes and body) and <style> elements."""

    def __init__(self):
        super().__init__()
        self.scripts, self.styles, self._in = [], 0, None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append([dict(attrs), ""])
            self._in = "script"
        elif tag == "style":
            self.styles += 1
        assert not any(name.startswith("on") for name, _ in attrs), attrs  # no inline handlers

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "script":
            self.scripts[-1][1] += data


def parse(html):
    parser = ScriptsAndStyles()
    parser.feed(html)
    return parser


def test_swagger_ui_page_has_no_inline_script_and_gets_the_strict_policy(client):
    response = client.get("/docs")
    assert_security_headers(response)
    assert response.headers["Content-Security-Policy"] == render(STRICT)
    page = parse(response.get_data(as_text=True))
    assert len(page.scripts) == 3 and page.styles == 0
    for attrs, body in page.scripts:
        assert attrs.get("src") and not body.strip(), (attrs, body)


def test_redoc_page_gets_only_the_relaxations_redoc_needs(client, app):
    response = client.get("/redoc")
    assert_security_headers(response)
    policy = directives(response)
    assert policy["style-src"] == ["'self'", "'unsafe-inline'"]  # styled-components
    assert policy["worker-src"] == ["'self'", "blob:"]  # its search worker
    assert policy["script-src"][0] == "'self'" and "'unsafe-inline'" not in policy["script-src"]
    for attrs, body in parse(response.get_data(as_text=True)).scripts:
        assert attrs.get("src") and not body.strip(), (attrs, body)
    script_url = app.config["OPENAPI_REDOC_URL"]
    if script_url.startswith("https://"):  # served from a CDN: that origin, and only it
        assert policy["script-src"][1:] == ["/".join(script_url.split("/")[:3])]


def test_redoc_served_by_the_app_needs_no_foreign_origin():
    assert redoc_policy({"OPENAPI_REDOC_URL": "redoc/redoc.standalone.js"})["script-src"] == (
        "'self'"
    )
    cdn = redoc_policy({"OPENAPI_REDOC_URL": "https://cdn.example.com/redoc@2/redoc.js"})
    assert cdn["script-src"] == "'self' https://cdn.example.com"


# --- In a real browser ---------------------------------------------------------------------


def test_swagger_ui_renders_every_operation_in_chromium_with_no_csp_violation(spawn, tmp_path):
    """Headless Chromium loads /docs from gunicorn; its console would report any blocked item."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (bash .ci/run installs Debian's chromium)")
    port = free_port()
    web = spawn(command("gunicorn", "wsgi:app"), GUNICORN_BIND=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", process=web)
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        + ["--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
        + ["--virtual-time-budget=20000", "--dump-dom", f"{base}/docs"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Content Security Policy" in line], console
    rendered = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', result.stdout))
    spec = requests.get(f"{base}/openapi.json", timeout=5).json()
    assert rendered == set(spec["paths"]), (rendered, result.stderr, read_log(web))
