"""The dashboard's static files: served by the control plane without a token, the API still not."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from api_peers import ActAsProxy

from gossamer.cli.dashboard import dashboard_url
from gossamer.control.api import create_app
from gossamer.control.server import ControlPlane
from gossamer.dashboard import STATIC_DIR

SCRIPTS = {"vendor/echarts.min.js", "routes.js", "tap.js", "app.js"}


def assert_security_headers(resp: httpx.Response, cache_control: str) -> None:
    """The strict CSP and the other security headers every dashboard response carries."""
    csp = {
        d.split(" ", 1)[0]: d.split(" ", 1)[1]
        for d in (p.strip() for p in resp.headers["content-security-policy"].split(";"))
    }
    assert csp == {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "connect-src": "'self'",
        "frame-ancestors": "'none'",
        "base-uri": "'none'",
        "form-action": "'none'",
    }, csp
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["cache-control"] == cache_control


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    cp = await ControlPlane.open(tmp_path, clock=lambda: 1_700_000_000.0, debounce=0.01)
    await cp.start()
    transport = httpx.ASGITransport(app=ActAsProxy(create_app(cp), cp))
    async with httpx.AsyncClient(transport=transport, base_url="http://cp") as c:
        yield c
    await cp.close()


async def test_index_and_assets_need_no_token(client: httpx.AsyncClient) -> None:
    index = await client.get("/dashboard/")
    assert index.status_code == 200, index.text
    assert index.headers["content-type"].startswith("text/html")
    # Every file the page loads is served, with a type the browser will run.
    refs = re.findall(r'(?:src|href)="([^"#:]+)"', index.text)
    assert set(refs) == {"style.css", *SCRIPTS}
    for ref in refs:
        resp = await client.get("/dashboard/" + ref)
        assert resp.status_code == 200, ref
        assert resp.content == (STATIC_DIR / ref).read_bytes()
        kind = "text/css" if ref.endswith(".css") else "javascript"
        assert kind in resp.headers["content-type"], (ref, resp.headers["content-type"])
    assert b"Apache License" in (STATIC_DIR / "vendor" / "ECHARTS-LICENSE").read_bytes()


async def test_bare_prefix_redirects_to_the_directory(client: httpx.AsyncClient) -> None:
    resp = await client.get("/dashboard")
    assert resp.status_code == 307
    assert resp.headers["location"] == "/dashboard/"
    assert_security_headers(resp, "no-store")


async def test_every_file_carries_the_security_headers(client: httpx.AsyncClient) -> None:
    for path in ("/dashboard/", "/dashboard/index.html", "/dashboard/app.js", "/dashboard/tap.js"):
        resp = await client.get(path)
        assert resp.status_code == 200, path
        assert_security_headers(resp, "no-cache")
    # A revalidation answered 304 says the same (the browser keeps the headers it gets).
    first = await client.get("/dashboard/vendor/echarts.min.js")
    again = await client.get(
        "/dashboard/vendor/echarts.min.js", headers={"if-none-match": first.headers["etag"]}
    )
    assert again.status_code == 304
    assert_security_headers(again, "no-cache")


def test_the_page_has_no_inline_script_or_style() -> None:
    """What the CSP would refuse: inline <script>/<style>, style= and on*= attributes."""
    html = (STATIC_DIR / "index.html").read_text()
    assert set(re.findall(r'<script src="([^"]+)"></script>', html)) == SCRIPTS
    assert len(re.findall(r"<script", html)) == len(SCRIPTS)
    assert "<style" not in html
    assert not re.search(r"\s(style|on[a-z]+)=", html)
    for script in ("app.js", "routes.js", "tap.js"):
        text = (STATIC_DIR / script).read_text()
        for banned in ("eval(", "new Function", "innerHTML", 'setAttribute("style'):
            assert banned not in text, (script, banned)


async def test_the_api_still_needs_a_token(client: httpx.AsyncClient) -> None:
    for path in ("/v1/stats", "/v1/proxies", "/dashboardx", "/v1/resources"):
        resp = await client.get(path)
        assert resp.status_code == 401, (path, resp.text)
    # Only reads are public under /dashboard/.
    resp = await client.post("/dashboard/", content=b"x")
    assert resp.status_code == 401
    missing = await client.get("/dashboard/nope.js")
    assert missing.status_code == 404


def test_dashboard_url_carries_the_token_in_the_fragment() -> None:
    url = dashboard_url("https://127.0.0.1:7443/", "gsm_a+b/c")
    assert url == "https://127.0.0.1:7443/dashboard/#token=gsm_a%2Bb%2Fc"
    assert dashboard_url("https://127.0.0.1:7443", None) == "https://127.0.0.1:7443/dashboard/"
