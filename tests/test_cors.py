"""CORS: browsers on allowed origins may read the API and its spec, with the Link header."""

from decimal import Decimal

import pytest

from tracker.models import insert_prices

DASHBOARD = "https://dashboard.example"


def preflight(client, url, origin, method="GET"):
    """The OPTIONS request a browser sends before a cross-origin GET with a custom header."""
    return client.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "X-Request-ID",
        },
    )


@pytest.mark.parametrize("url", ["/api/v1/prices?ticker=btc_usd", "/openapi.json"])
def test_preflight_from_any_origin_is_allowed_by_default(client, url):
    response = preflight(client, url, DASHBOARD)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == {
        "GET",
        "HEAD",
        "OPTIONS",
    }
    assert response.headers["Access-Control-Allow-Headers"] == "X-Request-ID"
    assert "Access-Control-Allow-Credentials" not in response.headers  # no cookies, ever


def test_preflight_for_a_write_method_is_refused(client):
    response = preflight(client, "/api/v1/prices?ticker=btc_usd", DASHBOARD, method="DELETE")
    assert "Access-Control-Allow-Methods" not in response.headers


def test_simple_get_exposes_the_link_header(app, client):
    rows = [{"ticker": "btc_usd", "price": Decimal("86955.73"), "timestamp": t} for t in (60, 120)]
    with app.app_context():
        insert_prices(rows)
    response = client.get("/api/v1/prices?ticker=btc_usd&limit=1", headers={"Origin": DASHBOARD})
    assert response.status_code == 200 and "Link" in response.headers
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    exposed = response.headers["Access-Control-Expose-Headers"].split(", ")
    assert "Link" in exposed and "Retry-After" in exposed


def test_errors_are_readable_cross_origin_too(client):
    response = client.get("/api/v1/prices/latest", headers={"Origin": DASHBOARD})
    assert response.status_code == 422
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_pages_outside_the_api_are_not_cors_enabled(client):
    response = client.get("/docs", headers={"Origin": DASHBOARD})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_configured_origin_list_allows_only_those(make_app, deribit):
    client = make_app(CORS_ORIGINS=f"{DASHBOARD}, http://localhost:8888").test_client()
    url = "/api/v1/prices?ticker=btc_usd"
    allowed = preflight(client, url, "http://localhost:8888")
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:8888"
    assert allowed.headers["Vary"] == "Origin"  # caches must not mix up the origins
    refused = preflight(client, url, "https://evil.example")
    assert not [name for name in refused.headers.keys() if name.startswith("Access-Control-")]
    get = client.get(url, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in get.headers


def test_a_configured_origin_list_makes_every_answer_vary_by_origin(make_app, deribit):
    """Allowed, refused or no Origin: each gets another answer, so a cache must keep them apart
    (tracker/cors.py says Vary: Origin on each of them)."""
    client = make_app(CORS_ORIGINS=DASHBOARD).test_client()
    url = "/api/v1/tickers"
    for headers in ({"Origin": DASHBOARD}, {"Origin": "https://evil.example"}, {}):
        response = client.get(url, headers=headers)
        assert response.status_code == 200
        assert "Origin" in response.headers["Vary"], headers
    # "*": the same answer for every origin, one cached copy.
    anyone = make_app().test_client().get(url, headers={"Origin": DASHBOARD})
    assert anyone.headers["Access-Control-Allow-Origin"] == "*"
    assert "Origin" not in anyone.headers["Vary"]


def test_the_spec_and_preflights_say_how_long_and_for_whom(make_app, deribit):
    client = make_app(CORS_ORIGINS=DASHBOARD).test_client()
    spec = client.get("/openapi.json", headers={"Origin": DASHBOARD})
    assert spec.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "Origin" in spec.headers["Vary"]  # another origin gets no ACAO: keep them apart
    allowed = preflight(client, "/api/v1/tickers", DASHBOARD)
    assert allowed.headers["Access-Control-Max-Age"] == "86400"
    assert "Access-Control-Expose-Headers" not in allowed.headers  # for the GET that follows
    refused = client.get("/openapi.json", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in refused.headers
