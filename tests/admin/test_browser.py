"""The admin console in a real browser: Debian's chromium driven by selenium, against the
app served on a real local port, on the seeded shop (scored by the real scoring code).

Logs in through the form (a wrong token first), opens every page, checks that the
charts and the key numbers are there, presses the replay and retry buttons and checks
the database, and saves a full-page screenshot of each page to ``artifacts/screenshots``
(gitignored). Skipped, saying why, only where chromium or chromedriver is not
installed; ``.ci/run`` installs both, so CI runs it.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from cx_connector import db
from cx_connector.models import deliveries, kpi_snapshots, outbox
from tests.admin.conftest import TOKEN

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


def _binaries() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    return browser, driver


@pytest.fixture
def server(app: Any) -> Iterator[str]:
    """The app on a free local port, in a thread (werkzeug's threaded server)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    binary, driver_path = _binaries()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def shot(driver: Any, name: str) -> Path:
    """A full-page screenshot (the window is made as tall as the page first)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height), 800), 8000))
    path = SHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


def go(driver: Any, element: Any) -> None:
    """Click a link or a form's button and wait for the next page to load."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def gone(_driver: Any) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # mid-navigation Chrome may say this instead of "stale" (seen once in CI): the old
            # page's node is not in the current document, which is what we wait for
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(driver, 20).until(gone)
    # the old page is gone, the new one may still be parsing: a lookup now could miss a
    # table further down (seen once: the Operations page's failed deliveries)
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def charts(driver: Any, css: str = "svg.chart") -> list[Any]:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    for svg in found:  # every chart is labelled for screen readers
        assert svg.get_attribute("role") == "img"
        assert svg.find_element(By.TAG_NAME, "title").get_attribute("textContent").strip()
    return found


def test_the_console_in_chromium(shop, server, browser, rt):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server + "/admin/")
    assert "/admin/login" in d.current_url

    # a wrong token is refused, and says so
    d.find_element(By.ID, "token").send_keys("not-the-admin-token-at-all")
    go(d, d.find_element(By.CSS_SELECTOR, "form button[type=submit]"))
    assert "That is not the admin token" in d.find_element(By.ID, "login-error").text
    assert "/admin/login" in d.current_url
    shot(d, "0-login-refused")

    d.find_element(By.ID, "token").send_keys(TOKEN)
    go(d, d.find_element(By.CSS_SELECTOR, "form button[type=submit]"))
    assert d.current_url.rstrip("/").endswith("/admin")
    cookie = d.get_cookie("cx_admin")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    # overview: seven KPI tiles with sparklines, the funnel, the distribution, who is at risk
    with db.read(rt.engine) as conn:
        latest = conn.execute(select(kpi_snapshots.c.kpi_values).order_by(kpi_snapshots.c.day.desc())
                              .limit(1)).scalar_one()
    tiles = d.find_elements(By.CSS_SELECTOR, ".tile")
    assert len(tiles) == 7
    nps = d.find_element(By.CSS_SELECTOR, '.tile[data-kpi="nps"] .value').text
    assert nps == f"{latest['nps']:,.{0 if float(latest['nps']).is_integer() else 1}f}"
    cx = d.find_element(By.CSS_SELECTOR, '.tile[data-kpi="avg_cx_score"] .value').text
    assert float(cx) == latest["avg_cx_score"]
    assert len(charts(d, ".tile svg.sparkline")) == 7
    assert charts(d, "#funnel-head ~ svg.hbars") and charts(d, "svg.histogram") and charts(d, "svg.stacked")
    funnel = d.find_element(By.CSS_SELECTOR, "svg.hbars").get_attribute("textContent")
    assert f"{sum(latest['customers_per_stage'].values()):,}" in funnel  # everyone reached awareness
    risky = d.find_elements(By.CSS_SELECTOR, "#at-risk tbody tr")
    assert risky, "the seeded shop has red customers"
    shot(d, "1-overview")

    # pain points: the costliest experiences, the drag per channel
    go(d, d.find_element(By.LINK_TEXT, "Pain points"))
    page = d.find_element(By.TAG_NAME, "main").text
    lost = latest["pain_points"]["losses"]
    assert f"{lost['mean_cx']:.1f}" in page and "points short of 100" in page
    assert charts(d) and d.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=stage-head] tbody tr")
    shot(d, "2-pain-points")

    # customers, filtered by health, and one customer's page
    go(d, d.find_element(By.LINK_TEXT, "Customers"))
    assert len(d.find_elements(By.CSS_SELECTOR, "#customers tbody tr")) == shop.customers
    go(d, d.find_element(By.LINK_TEXT, "red"))
    badges = {b.text for b in d.find_elements(By.CSS_SELECTOR, "#customers tbody .badge")}
    assert "red" in badges and "green" not in badges
    shot(d, "3-customers-red")
    go(d, d.find_element(By.CSS_SELECTOR, "#customers tbody tr td:nth-child(2) a"))
    links = [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#identities a")]
    assert any(h.startswith(("https://admin.shopify.com/", "https://acme.zendesk.com/")) for h in links) \
        or d.find_elements(By.CSS_SELECTOR, "#identities td.mono, #identities span.mono")
    explanations = d.find_elements(By.CSS_SELECTOR, "#scores td.explanation")
    assert len(explanations) == 13 and "CX pyramid" in d.find_element(By.ID, "scores").text
    assert d.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
    shot(d, "4-customer")

    # operations: replay the failed delivery, retry the dead write
    go(d, d.find_element(By.LINK_TEXT, "Operations"))
    assert d.find_elements(By.CSS_SELECTOR, f'#failed-deliveries tr[data-delivery="{shop.failed_delivery}"]')
    assert charts(d, "#job-runs svg.sparkline")
    shot(d, "5-operations")
    go(d, d.find_element(By.CSS_SELECTOR, f'tr[data-delivery="{shop.failed_delivery}"] button'))
    flash = d.find_element(By.CSS_SELECTOR, ".flash").text
    assert f"Replayed delivery {shop.failed_delivery}: failed" in flash
    go(d, d.find_element(By.CSS_SELECTOR, f'tr[data-write="{shop.dead_write}"] button'))
    assert f"Write {shop.dead_write} is queued again" in d.find_element(By.CSS_SELECTOR, ".flash").text
    with db.read(rt.engine) as conn:
        attempts = conn.execute(select(deliveries.c.attempts).where(
            deliveries.c.id == shop.failed_delivery)).scalar_one()
        status = conn.execute(select(outbox.c.status).where(outbox.c.id == shop.dead_write)).scalar_one()
    assert attempts == 2 and status == "pending"
    shot(d, "6-operations-after-actions")

    go(d, d.find_element(By.CSS_SELECTOR, ".topbar button"))
    assert "/admin/login" in d.current_url and "logged out" in d.page_source
    d.get(server + "/admin/operations")
    assert "/admin/login" in d.current_url
