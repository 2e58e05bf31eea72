"""The web dashboard in a real browser (Debian's headless Chromium driven by Selenium): against a
mesh started by `gossamer up -d` under load (the shop with the demo's HTTPRoutes and pricing's two
subsets), the topology shows the services and an edge, a displayed requests-per-second number
moves, the routes show their weights and traffic, and a live tap shows requests; the browser logs
no Content-Security-Policy violation. A screenshot is saved in the test's tmp_path.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshlib import SHOP, SHOP_SERVICES, Load, Mesh, running_mesh, shop_yaml

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("chromium") is None or shutil.which("chromedriver") is None,
        reason="chromium and chromium-driver are not installed (scripts/install-system-deps)",
    ),
]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SERVICES = SHOP_SERVICES
BROWSER_DEADLINE = 90.0  # everything the browser waits for, in all
# pricing as the demo runs it: two subsets, which the demo's route splits 90/10.
PRICING_SUBSETS = """  subsets:
    - {name: v1, labels: {version: v1}, env: {PRICING_VERSION: v1}}
    - {name: v2, labels: {version: v2}, env: {PRICING_VERSION: v2}}
"""


def demo_routes() -> str:
    """The HTTPRoutes of the demo shop's mesh.yaml (pricing 90/10, inventory, catalog)."""
    docs = (SHOP / "mesh.yaml").read_text().split("\n---\n")
    routes = [d for d in docs if "\nkind: HTTPRoute\n" in d]
    assert len(routes) == 3, "examples/shop/mesh.yaml changed: update this test's expectations"
    return "\n---\n".join(routes)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yaml = shop_yaml(sys.executable, extra={"pricing": PRICING_SUBSETS})
    yaml += "---\n" + demo_routes() + "\n"
    with running_mesh(tmp_path_factory.mktemp("dashboard-mesh"), yaml) as m:
        yield m


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1600")
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    # The control plane's certificate is signed by the mesh's own CA, not one Chromium knows.
    options.accept_insecure_certs = True
    options.binary_location = shutil.which("chromium") or "chromium"
    # The console (CSP violations among it), read back with driver.get_log("browser").
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:
        pytest.skip(f"headless chromium does not start on this machine: {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()


def graph(driver: Any) -> dict[str, Any] | None:
    """The topology chart's nodes and edges, as ECharts holds them (it draws on a canvas)."""
    result: dict[str, Any] | None = driver.execute_script(
        """
        const chart = echarts.getInstanceByDom(document.getElementById("topology"));
        if (!chart) return null;
        const option = chart.getOption();  // undefined until the first poll drew it
        const series = (option && option.series) || [];
        if (!series.length) return null;
        return {
          nodes: series[0].data.map((n) => n.name),
          links: series[0].links.map((l) => [l.source, l.target, l.label.formatter]),
        };
        """
    )
    return result


def test_dashboard_shows_the_mesh_under_load(mesh: Mesh, browser: Any, tmp_path: Path) -> None:
    status = mesh.status()
    published = status["published"]["frontend"].removeprefix("http://")
    token = (mesh.state_dir / "control-plane" / "admin.token").read_text().strip()
    url = mesh.run("dashboard", "--state-dir", str(mesh.state_dir)).stdout.splitlines()[0]
    assert url == f"{status['controlPlane']}/dashboard/#token={token}"

    load = Load(published, "frontend", "/api/products", workers=2, max_seconds=150).start()
    end = time.monotonic() + BROWSER_DEADLINE

    def wait(what: str, check: Any) -> Any:
        try:
            return WebDriverWait(browser, max(0.1, end - time.monotonic()), 0.25).until(check)
        except TimeoutException:
            shot = tmp_path / "dashboard-timeout.png"
            browser.save_screenshot(str(shot))
            state = graph(browser)
            status_line = browser.find_element(By.ID, "status").text
            raise AssertionError(
                f"dashboard: timed out waiting for {what}; graph {state}; status {status_line!r}; "
                f"screenshot {shot}; load answers {load.count()}, failures {load.failures[:3]}"
            ) from None

    try:
        browser.get(url)
        # The token left the address bar once the page took it.
        wait("the token to leave the URL", lambda d: "token=" not in d.current_url)
        names = {f"{s}.default" for s in SERVICES}

        def topology(d: Any) -> dict[str, Any] | None:
            g = graph(d)
            if not g or not names <= set(g["nodes"]):
                return None
            edges = {(src, dst) for src, dst, _ in g["links"]}
            return g if ("frontend.default", "catalog.default") in edges else None

        g = wait("the topology to show every service and the frontend -> catalog edge", topology)
        label = next(
            lab for s, t, lab in g["links"] if (s, t) == ("frontend.default", "catalog.default")
        )
        assert "rps" in label, label
        assert "%" in label, label

        def frontend_rps(d: Any) -> str | None:
            text: str = d.execute_script(
                "const c = document.querySelector("
                "'#services tr[data-service=\"frontend.default\"] td.rps');"
                "return c ? c.textContent : '';"
            )
            # The page shows an en dash for "no value yet"; anything else is a number.
            return text if text[:1].isdigit() and float(text) > 0 else None

        first = wait("a requests-per-second number for frontend", frontend_rps)
        wait(
            f"frontend's requests per second to move from {first}",
            lambda d: (now := frontend_rps(d)) is not None and now != first,
        )
        # Read in one script: the page replaces the table's rows on every poll.
        proxies: list[str] = browser.execute_script(
            "return [...document.querySelectorAll('#proxies tbody tr')]"
            ".map((r) => [...r.cells].map((c) => c.textContent).join(' | '))"
        )
        for name in SERVICES:
            # pricing's proxies show their subset: "pricing.default (v1)".
            assert any(
                f"| {name}.default |" in row or f"| {name}.default (" in row for row in proxies
            ), (name, proxies)
        assert all("| ACK |" in row for row in proxies), proxies

        # Routes: the demo's weights as shares of each rule, and the rules' own traffic.
        def routes(d: Any) -> dict[str, Any] | None:
            shown: dict[str, Any] = d.execute_script(
                """
                const out = {};
                for (const tr of document.querySelectorAll("#routes tr[data-rule]")) {
                  const rps = tr.querySelector("td.rps");
                  out[tr.dataset.rule] = {
                    backends: Object.fromEntries([...tr.querySelectorAll(".backend")]
                      .map((b) => [b.dataset.backend, b.querySelector(".pct").textContent])),
                    rps: rps ? rps.textContent : "",
                  };
                }
                return out;
                """
            )
            pricing = shown.get("default/pricing#0")
            # The rps cell proves the page names rules as the stats do ("<ns>/<route>#<i>").
            if not pricing or not pricing["rps"][:1].isdigit():
                return None
            return shown

        shown = wait("the pricing route's rule to show its weights and traffic", routes)
        assert shown["default/pricing#0"]["backends"] == {
            "pricing.default/v1": "90%",
            "pricing.default/v2": "10%",
        }, shown
        assert shown["default/inventory#0"]["backends"] == {"inventory.default": "100%"}, shown
        assert shown["default/catalog#0"]["backends"] == {"catalog.default": "100%"}, shown
        # frontend has no HTTPRoute: its one rule sends everything to it.
        assert shown["default|frontend.default"]["backends"] == {"frontend.default": "100%"}
        titles = browser.execute_script(
            "return [...document.querySelectorAll('#routes h3')].map((h) => h.textContent)"
        )
        assert any(t.startswith("HTTPRoute default/pricing → pricing.default") for t in titles)

        # Tap: a bad filter is refused in the API's words; then frontend's requests stream in.
        tap_state = browser.find_element(By.ID, "tap-state")
        wait(
            "frontend in the tap's service list",
            lambda d: "frontend.default" in d.find_element(By.ID, "tap-service").text,
        )
        Select(browser.find_element(By.ID, "tap-service")).select_by_value("frontend.default")
        browser.find_element(By.ID, "tap-status").send_keys("9zz")
        browser.find_element(By.ID, "tap-start").click()
        wait("the tap's refusal of status 9zz", lambda d: "filter is invalid" in tap_state.text)
        assert "cannot tap frontend.default" in tap_state.text, tap_state.text
        browser.find_element(By.ID, "tap-status").clear()
        browser.find_element(By.ID, "tap-start").click()
        # Read in one script: the page may drop its oldest rows as new ones come.
        cells = wait(
            "a tapped request of frontend answered 200",
            lambda d: d.execute_script(
                "const r = document.querySelector('#tap tbody tr[data-status=\"200\"]');"
                "return r ? [...r.cells].map((c) => c.textContent) : null;"
            ),
        )
        assert cells[1].startswith("frontend-"), cells  # the proxy that saw it
        assert cells[2] in ("in", "out"), cells
        assert cells[5] == "200", cells
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot)), "chromium took no screenshot"
        print(f"dashboard screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        rows = len(browser.find_elements(By.CSS_SELECTOR, "#tap tbody tr"))
        assert 0 < rows <= 200, rows
        browser.find_element(By.ID, "tap-stop").click()
        wait("the tap to stop", lambda d: tap_state.text.startswith("stopped after"))
        # Show the charts' tooltips: they must need nothing the CSP refuses (inline styles).
        browser.execute_script(
            """
            for (const id of ["chart-rps", "topology"]) {
              echarts.getInstanceByDom(document.getElementById(id))
                .dispatchAction({type: "showTip", seriesIndex: 0, dataIndex: 0});
            }
            """
        )
    finally:
        load.stop()
    console = browser.get_log("browser")
    for entry in console:
        print(f"browser console: {entry['level']} {entry['message']}")
    violations = [e["message"] for e in console if "Content Security Policy" in e["message"]]
    assert not violations, violations
    assert not load.failures, load.failures[:5]
