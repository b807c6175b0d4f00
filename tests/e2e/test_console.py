"""The logistics console (/console) in headless Chromium, against a real `origincast serve`
(ingest, alert engine, live feed), a real mosquitto and SQLite, all inside the loopback-
only network namespace (tests/e2e/harness.py):

- /console without a session goes to the login page; a logistics user logs in there and
  comes back to the console, which names them;
- a reading published over MQTT shows in the fleet table; an excursion turns the device's
  state to "Alert" and puts the alert in the inbox;
- the alert is acknowledged with a comment (the user's name in its audit trail, which the
  page shows on click), then resolved with the corrective action (required): it leaves
  the inbox and the device is back to "OK";
- a device's history chart renders (uPlot's canvas, with points drawn on it);
- the streams table; Chinese; a tablet-sized viewport.

Screenshots go to test-artifacts/console-*.png.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from telemetry.readings import Reading
from telemetry.settings import StorageSettings
from telemetry.storage import open_store
from telemetry.storage.alerts import Device
from tests.e2e.harness import HAS_TEXT, ZERO_DELAY, LiveServer, NetNs, add_stream, serve_with_broker, wait_js
from web.accounts import AccountService
from web.accounts_sql import open_account_repository

pytestmark = pytest.mark.timeout(240)

DESKTOP = {"width": 1440, "height": 1000}
TABLET = {"width": 820, "height": 1180}  # an iPad Air's CSS viewport, upright
SLUG, SITE, OTHER_SITE = "depot-cam", "Depot 4", "Farm 2"
COLDROOM, FREEZER = "coldroom-4", "freezer-2"
USER, PASSWORD, DISPLAY_NAME = "lin", "cold-chain-e2e-password", "Lin Wei"
@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory, netns: NetNs) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("e2e-console")

    def prepare(db: str, env: dict[str, str]) -> None:
        add_stream(workdir, env, SLUG, "Depot 4 bay", SITE)
        # The logistics user, through the accounts service (as `origincast users add` does).
        accounts = open_account_repository(db)
        accounts.open()
        accounts.migrate()
        # (a thread of its own: Playwright's sync API already runs an event loop in this one)
        with ThreadPoolExecutor(1) as pool:
            create = AccountService(accounts).create_user(USER, "logistics", PASSWORD, DISPLAY_NAME)
            pool.submit(asyncio.run, create).result()
        accounts.close()
        # Devices, a zero-delay profile and six hours of the freezer's history.
        store = open_store(StorageSettings(url=db))
        store.open()
        store.migrate()
        store.save_profile("zero", {"id": "zero", **ZERO_DELAY})  # as the API stores it
        store.upsert_device(Device(COLDROOM, SITE, "zero", "Cold room 4"))
        store.upsert_device(Device(FREEZER, OTHER_SITE, "frozen", "Freezer 2"))
        now = datetime.now(UTC).replace(microsecond=0)
        store.write_batch(
            [Reading(FREEZER, now - timedelta(minutes=m), -21.0 + (m % 13) * 0.2) for m in range(360, 0, -2)],
            [],
        )
        store.close()

    with serve_with_broker(workdir, netns, prepare) as srv:
        yield srv




ROW = "#fleet-body tr[data-device='{}']"
# Opaque pixels of the mean's line colour (#38b66a) on uPlot's canvas: the line is drawn
# (the band between min and max has the same colour, but at 18 % opacity).
DRAWN_PIXELS = """(min) => {
  const c = document.querySelector('#chart canvas');
  if (!c || !c.width) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const near = Math.abs(d[i] - 56) < 40 && Math.abs(d[i + 1] - 182) < 40 && Math.abs(d[i + 2] - 106) < 40;
    if (near && d[i + 3] > 200) n++;
  }
  return n >= min;
}"""


def log_in(page: Page, srv: LiveServer) -> None:
    page.goto(f"{srv.base_url}/console")
    page.wait_for_url(re.compile(r".*/login\?next=(/|%2F)console$"), timeout=10_000)
    page.fill("#name", USER)
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(f"{srv.base_url}/console", timeout=10_000)


def test_console_fleet_alerts_history_streams(
    browser: Browser, console_server: LiveServer, artifacts: Path
) -> None:
    srv = console_server
    context = browser.new_context(viewport=DESKTOP, locale="en-US")
    try:
        page = context.new_page()
        log_in(page, srv)
        # From here on nothing may fail (the login page itself logs its "not logged in" 401).
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.reload()
        wait_js(page, HAS_TEXT, ["#user", DISPLAY_NAME], 5, "the user's name")
        assert "logistics" in page.locator("#user").inner_text()
        wait_js(page, "() => document.querySelector('#live-state').dataset.live === 'live'", None, 10,
                "the live feed")  # fmt: skip
        assert page.locator("#logout").is_visible()

        # A reading over MQTT shows in the fleet table, live.
        srv.reading(COLDROOM, 3.4, rh=82.0, battery_v=3.05, door_open=False)
        cold = ROW.format(COLDROOM)
        wait_js(page, HAS_TEXT, [cold, "3.4 °C"], 2, "the published reading")
        row = page.locator(cold).inner_text()
        assert "Cold room 4" in row and SITE in row and "82 %" in row and "3.05 V" in row and "closed" in row
        assert page.locator(f"{cold} .state-badge").inner_text() == "OK"
        assert re.fullmatch(r"\d+ s", page.locator(f"{cold} .col-age").inner_text()), "the age in seconds"
        # The freezer's last stored reading is two minutes old: stale.
        wait_js(page, HAS_TEXT, [f"{ROW.format(FREEZER)} .state-badge", "Stale"], 3, "the freezer as stale")

        # Sort by temperature, both ways.
        first = "() => document.querySelector('#fleet-body tr')?.dataset.device"
        page.click("th[data-sort='temp'] button")
        assert page.evaluate(first) == FREEZER
        assert page.locator("th[data-sort='temp']").get_attribute("aria-sort") == "ascending"
        page.click("th[data-sort='temp'] button")
        assert page.evaluate(first) == COLDROOM

        # Filter by site.
        page.select_option("#site-filter", SITE)
        assert page.locator("#fleet-body tr").count() == 1
        page.select_option("#site-filter", "")
        assert page.locator("#fleet-body tr").count() == 2

        # An excursion: the inbox gets it, the device's state says so.
        srv.reading(COLDROOM, 6.2)
        item = "#alert-list .alert-item"
        wait_js(page, HAS_TEXT, [item, "peak 6.2 °C"], 3, "the alert in the inbox")
        assert "severity-major" in (page.locator(item).get_attribute("class") or "")
        assert page.locator(f"{cold} .state-badge").inner_text() == "Alert"
        page.screenshot(path=str(artifacts / "console-en-alert.png"), full_page=True)

        # Acknowledge with a comment.
        page.click(f"{item} [data-act='acknowledge']")
        page.fill("#action-comment", "driver called, door was left open")
        page.screenshot(path=str(artifacts / "console-en-acknowledge-dialog.png"))
        page.click("#action-submit")
        wait_js(page, HAS_TEXT, [item, "driver called, door was left open"], 3, "the acknowledgement")
        assert page.locator(f"{item}").get_attribute("data-status") == "acknowledged"
        assert page.locator(f"{item} [data-act='acknowledge']").count() == 0

        # Its audit trail, on click: raised, then acknowledged by this user with the comment.
        page.click(f"{item} [data-act='audit']")
        wait_js(page, "() => document.querySelectorAll('#audit-list .audit-entry').length >= 2", None, 3,
                "the audit trail")  # fmt: skip
        actions = page.locator("#audit-list .audit-entry").evaluate_all(
            "els => els.map(e => e.dataset.action)"
        )
        assert actions == ["raised", "acknowledged"], actions
        assert USER in page.locator("#audit-list .audit-acknowledged").inner_text()
        page.screenshot(path=str(artifacts / "console-en-audit.png"))
        page.click("#audit-close")

        # Resolving needs the corrective action.
        page.click(f"{item} [data-act='resolve']")
        page.click("#action-submit")
        assert page.locator("#action-error").is_visible()
        assert "corrective action" in page.locator("#action-error").inner_text()
        page.fill("#action-comment", "goods moved to cold room 2, checked at 3.1 °C")
        page.click("#action-submit")
        wait_js(page, "() => !document.querySelector('#alert-list .alert-item')", None, 3, "the resolution")
        assert page.locator("#alerts-empty").is_visible()
        # The server has it, with this user as the one who acted.
        status, body = srv.request("GET", f"/api/v1/alerts?device={COLDROOM}&state=resolved")
        assert status == 200, body
        [alert] = body["alerts"]  # type: ignore[index]
        assert alert["acknowledged_by"] == USER and alert["resolved_by"] == USER
        assert alert["ack_comment"] == "driver called, door was left open"
        assert alert["resolution_comment"] == "goods moved to cold room 2, checked at 3.1 °C"
        # Back to OK once a reading within limits comes in (6.2 °C is still the latest).
        srv.reading(COLDROOM, 3.2)
        wait_js(page, HAS_TEXT, [f"{cold} .state-badge", "OK"], 3, "the cold room back to OK")

        # The freezer's history: six hours of stored readings, drawn.
        page.click(f"{ROW.format(FREEZER)} .device-link")
        page.click("[data-range='6h']")
        wait_js(page, "(dev) => Number(document.querySelector('#chart').dataset.points) > 100 &&"
                " document.querySelector('#chart').dataset.device === dev", FREEZER, 5,
                "the history chart")  # fmt: skip
        assert page.locator("#chart canvas").count() == 1
        wait_js(page, DRAWN_PIXELS, 500, 3, "lines on the chart")
        legend = page.locator("#chart .u-legend").inner_text()
        assert "Mean" in legend and "Limit upper (-18 °C)" in legend, legend
        # Six hours → 30-second buckets (≤ 1,000 points); one reading every 2 minutes.
        assert "one per 30 s" in page.locator("#history-note").inner_text()

        # A custom period: the last three hours (minute precision, the browser's local time).
        page.click("[data-range='custom']")
        assert page.locator("#custom-range").is_visible()
        page.evaluate(
            """() => {
              const pad = (n) => String(n).padStart(2, '0');
              const f = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`
                + `T${pad(d.getHours())}:${pad(d.getMinutes())}`;
              const now = new Date();
              document.querySelector('#range-from').value = f(new Date(now - 3 * 3600e3));
              document.querySelector('#range-to').value = f(now);
            }"""
        )
        page.click("#custom-range button[type='submit']")
        wait_js(page, "() => { const n = Number(document.querySelector('#chart').dataset.points);"
                " return n >= 85 && n <= 92; }", None, 5, "the custom period (~90 readings)")  # fmt: skip

        # The streams: the one made with the CLI, offline, with its pages.
        stream = f"#streams-body tr[data-stream='{SLUG}']"
        wait_js(page, HAS_TEXT, [stream, "Offline"], 7, "the streams table")
        assert page.locator(f"{stream} a", has_text="Watch").get_attribute("href") == f"/watch/{SLUG}"
        assert page.locator(f"{stream} a", has_text="Publish").get_attribute("href") == f"/publish/{SLUG}"
        # Link the stream to a sensor from the console: its page will show that device.
        page.click(f"{stream} button.links-edit")
        page.wait_for_selector("#links-dialog[open]")
        page.fill("#links-devices", "coldroom-e2e, truck-e2e")
        page.fill("#links-sites", "")
        page.click("#links-submit")
        wait_js(page, "() => !document.querySelector('#links-dialog').open", None, 5,
                "the links dialog to close: " + page.locator("#links-error").inner_text())  # fmt: skip
        links = page.evaluate(
            "async (slug) => (await fetch(`/api/v1/streams/${slug}/links`)).json()", SLUG
        )
        assert (links["sites"], links["devices"]) == ([], ["coldroom-e2e", "truck-e2e"]), links
        page.screenshot(path=str(artifacts / "console-en-desktop.png"), full_page=True)

        # Chinese, without a reload.
        page.click("[data-lang-switch='zh-CN']")
        wait_js(page, HAS_TEXT, ["#fleet-heading", "设备总览"], 2, "the console in Chinese")
        assert page.locator(f"{cold} .state-badge").inner_text() == "正常"
        assert "最高" in page.locator("#chart .u-legend").inner_text()
        assert "离线" in page.locator(stream).inner_text()
        page.screenshot(path=str(artifacts / "console-zh-desktop.png"), full_page=True)
        assert not errors, errors
    finally:
        context.close()


def test_console_tablet_in_chinese(browser: Browser, console_server: LiveServer, artifacts: Path) -> None:
    """A tablet: one column, the inbox first; the page rendered in Chinese from the start."""
    srv = console_server
    context = browser.new_context(viewport=TABLET, locale="zh-CN", has_touch=True, device_scale_factor=2)
    try:
        page = context.new_page()
        log_in(page, srv)
        wait_js(page, HAS_TEXT, [f"{ROW.format(FREEZER)} .col-temp", "°C"], 5, "the fleet table")
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        assert page.locator("#inbox-heading").inner_text() == "告警"
        inbox = page.locator(".panel-inbox").bounding_box()
        fleet = page.locator(".panel-fleet").bounding_box()
        assert inbox is not None and fleet is not None
        assert inbox["y"] < fleet["y"] and abs(inbox["x"] - fleet["x"]) < 2, (inbox, fleet)
        assert fleet["width"] <= TABLET["width"]
        page.screenshot(path=str(artifacts / "console-zh-tablet.png"), full_page=True)
    finally:
        context.close()
