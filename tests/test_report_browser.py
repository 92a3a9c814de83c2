"""The HTML report in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
it loads offline with no console errors and every figure renders."""

from __future__ import annotations

import math
import shutil
import time

import numpy as np
import pytest

from learndyn.report import build_html_report
from learndyn.store import RunStore

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


@pytest.fixture
def driver(tmp_path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver; CI does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield drv
    finally:
        drv.quit()


def _report(tmp_path) -> tuple[str, int]:
    store = RunStore(tmp_path / "s.duckdb")
    ids = []
    for rate in (0.1, 0.3):
        with store.start_run("browser-demo", {"rate": rate}, sweep_id="b") as run:
            for t in range(50):
                run.log(
                    t,
                    {
                        "loss": math.exp(-rate * t),
                        "theory/decay": math.exp(-rate * t),
                        "sim/decay": math.exp(-rate * t) * 1.01,
                        "noise/gns": math.sin(t) ** 2,
                        "symmetry/balance": 1 + 1e-4 * t,
                    },
                )
                if t % 10 == 0:
                    run.log_array(t, "curvature/spectrum", np.linspace(1, 0.1, 8) * math.exp(-rate * t))
            run.set_summary({"final": math.exp(-rate * 50)})
        ids.append(run.id)
    out = build_html_report(store, "b", tmp_path / "report.html")
    html = out.read_text()
    return out.as_uri(), html.count('class="ld-figure"')


def test_report_renders_in_chromium_without_errors(driver, tmp_path):
    uri, expected = _report(tmp_path)
    # the sweep's line plot over rate; loss, theory-vs-sim, noise, symmetry; one spectrum heatmap per run
    assert expected == 1 + 4 + 2
    driver.get(uri)
    deadline = time.monotonic() + 30
    rendered = 0
    while time.monotonic() < deadline:
        rendered = driver.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot'))"
            ".filter(el => el.querySelector('svg.main-svg')).length;"
        )
        if rendered >= expected:
            break
        time.sleep(0.2)
    assert rendered == expected
    assert driver.execute_script("return typeof Plotly") == "object"
    # every figure drew something: scatter traces or heatmap images
    drawn = driver.execute_script(
        "return Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".map(el => el.querySelectorAll('.scatterlayer .trace, .heatmaplayer image').length);"
    )
    assert all(n > 0 for n in drawn), drawn
    assert driver.execute_script("return window.__ldErrors") == []
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe
    assert "browser-demo" in driver.title
