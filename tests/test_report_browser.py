"""Every report kind in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
it loads offline with no script errors and no injected markup running, the verdict is the first table,
every curated figure has titled axes, no figure holds a single point (the folded ones drawn by opening
them) and the page weighs at most 1.5 MB with plotly.js shared."""

from __future__ import annotations

import shutil
import time

import pytest

from _report_kinds import build_store
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
MAX_PAGE_BYTES = 1_500_000

# (figures drawn, figures on the page) and, per drawn figure: inside a fold?, untitled axes, points
_FIGURES_JS = """
var out = [];
document.querySelectorAll('.ld-figure').forEach(function (div) {
  if (!div._fullLayout) { out.push(null); return; }
  var folded = !!div.closest('details');
  var untitled = [];
  ['xaxis', 'yaxis'].forEach(function (kind) {
    (div._fullLayout._subplots[kind] || []).forEach(function (id) {
      var name = id.replace(/^([xy])/, '$1axis');
      var ax = div._fullLayout[name];
      if (ax && ax.visible !== false && !(ax.title && ax.title.text)) untitled.push(name);
    });
  });
  var points = 0;
  div._fullData.forEach(function (t) {
    if (t.visible === false) return;
    if (t._length != null) points += t._length;
    else if (t.z) points += t.z.length * (t.z[0] && t.z[0].length ? t.z[0].length : 1);
  });
  out.push([folded, untitled, points]);
});
return out;
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver; CI does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reports")
    store = RunStore(folder / "s.duckdb")
    return {
        kind: build_html_report(store, targets, folder / f"{kind}.html", plotlyjs="shared")
        for kind, targets in build_store(store).items()
    }


def _wait_drawn(driver, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while True:
        figures = driver.execute_script(_FIGURES_JS)
        if all(f is not None for f in figures) or time.monotonic() > deadline:
            return figures
        time.sleep(0.2)


@pytest.mark.parametrize("kind", ["run", "phenomena", "comparison", "sweep"])
def test_report_kind_in_chromium(driver, reports, kind):
    from selenium.common.exceptions import NoAlertPresentException

    path = reports[kind]
    assert path.stat().st_size <= MAX_PAGE_BYTES
    driver.get(path.as_uri())
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert driver.execute_script("return typeof Plotly") == "object"
    first = driver.execute_script("var t = document.querySelector('table'); return t && t.className;")
    assert first == "ld-verdict"
    # the open page: curated figures (and a sweep's phase diagrams) drawn, with every axis titled
    time.sleep(0.5)
    shown = [f for f in driver.execute_script(_FIGURES_JS) if f is not None]
    assert shown, "nothing drawn on opening the page"
    for folded, untitled, _ in shown:
        assert not folded and untitled == [], untitled
    # open every fold: each folded figure is drawn then
    driver.execute_script("document.querySelectorAll('details').forEach(function (d) { d.open = true; });")
    figures = _wait_drawn(driver)
    assert figures and all(f is not None for f in figures), "a folded figure was not drawn when opened"
    assert all(points > 1 for _, _, points in figures), [f[2] for f in figures]
    assert driver.execute_script("return window.__ldErrors") == []
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    with pytest.raises(NoAlertPresentException):  # <img src=x onerror=alert(1)> never ran
        driver.switch_to.alert.text  # noqa: B018
    assert driver.execute_script("return document.querySelectorAll('img').length") == 0
