"""The web dashboard in a real browser (Debian's headless Chromium driven by Selenium): against a
mesh started by `gossamer up -d` under load, the topology shows the services and an edge, and a
displayed requests-per-second number moves. A screenshot is saved in the test's tmp_path.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshlib import SHOP_SERVICES, Load, Mesh, running_mesh, shop_yaml

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
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SERVICES = SHOP_SERVICES
BROWSER_DEADLINE = 60.0  # everything the browser waits for, in all


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("dashboard-mesh"), shop_yaml(sys.executable)) as m:
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
        const series = chart.getOption().series || [];
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

    load = Load(published, "frontend", "/api/products", workers=2, max_seconds=90).start()
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
            assert any(f"| {name}.default |" in row for row in proxies), (name, proxies)
        assert all("| ACK |" in row for row in proxies), proxies
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot)), "chromium took no screenshot"
        print(f"dashboard screenshot: {shot}")
        assert shot.stat().st_size > 10_000
    finally:
        load.stop()
    assert not load.failures, load.failures[:5]
