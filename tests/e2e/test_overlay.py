"""The watch page's live overlay in headless Chromium, against a real `origincast serve`
(ingest, alert engine, live feed), a real mosquitto and SQLite, all inside the loopback-
only network namespace (tests/e2e/harness.py):

- a reading published over MQTT shows in the overlay within 1 s;
- an alert raises the banner; resolving it through the API (admin token) removes it;
- stale readings say so; the trend arrow; English and Chinese; a phone-sized viewport.

Screenshots go to test-artifacts/overlay-*.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from telemetry.settings import StorageSettings
from telemetry.storage import open_store
from telemetry.storage.alerts import Device
from tests.e2e import harness
from tests.e2e.harness import HAS_TEXT, PHONE, ZERO_DELAY, LiveServer, NetNs, add_stream, serve_with_broker

# Failures say what the page shows there.
wait_js = partial(harness.wait_js, show=("#telemetry-overlay",))

pytestmark = pytest.mark.timeout(180)

SLUG, SITE = "dairy-cam", "Dairy 3"
COLDROOM, TRUCK = "coldroom-3", "truck-12"
@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, netns: NetNs) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("e2e-live")

    def prepare(db: str, env: dict[str, str]) -> None:
        add_stream(workdir, env, SLUG, "Dairy", SITE)
        # The sensors linked to the stream (same site) and a zero-delay profile.
        store = open_store(StorageSettings(url=db))
        store.open()
        store.migrate()
        store.save_profile("zero", {"id": "zero", **ZERO_DELAY})  # as the API stores it
        store.upsert_device(Device(COLDROOM, SITE, "zero", "Cold room"))
        store.upsert_device(Device(TRUCK, SITE, None, "Truck 12"))
        store.close()

    with serve_with_broker(workdir, netns, prepare) as srv:
        yield srv




NO_ALERTS = "() => !document.querySelector('#telemetry-overlay .live-alerts')"


ACK_ZH = '处理中'  # watch.live_alert_ack in zh-CN


def test_overlay_readings_alert_banner_languages_phone(
    browser: Browser, live_server: LiveServer, artifacts: Path
) -> None:
    srv = live_server
    now = datetime.now(UTC)
    srv.reading(TRUCK, 5.1, now - timedelta(minutes=3))  # stale by the time the page opens
    srv.reading(COLDROOM, 3.0, now - timedelta(seconds=70))  # the trend's reference
    context = browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True, locale="en-US"
    )
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{srv.base_url}/watch/{SLUG}")
        wait_js(page, "() => document.querySelector('#telemetry-overlay')?.dataset.live === 'live'", None, 10,
                "live feed connected")  # fmt: skip
        truck = f"#telemetry-overlay [data-device='{TRUCK}']"
        wait_js(page, HAS_TEXT, [truck, "5.1 °C"], 5, "the truck's stored reading")
        assert "stale" in page.locator(truck).inner_text()
        assert "is-stale" in (page.locator(truck).get_attribute("class") or "")

        # A reading over MQTT shows within 1 s (timed from the publish's acknowledgement).
        cold = f"#telemetry-overlay [data-device='{COLDROOM}']"
        srv.reading(COLDROOM, 3.6)
        wait_js(page, HAS_TEXT, [cold, "3.6 °C"], 1.0, "a published reading")
        text = page.locator(cold).inner_text()
        assert "Cold room" in text and "↑" in text and "s ago" in text and "stale" not in text
        page.screenshot(path=str(artifacts / "overlay-en-phone.png"))

        # An alert raises the banner (device name, rule, peak, since when) ...
        srv.reading(COLDROOM, 6.2)
        wait_js(page, HAS_TEXT, ["#telemetry-overlay .live-alerts", "peak 6.2 °C"], 3, "the alert banner")
        banner = page.locator("#telemetry-overlay .live-alerts").inner_text()
        assert "Cold room" in banner and "upper" in banner and "since" in banner
        page.screenshot(path=str(artifacts / "overlay-en-alert-phone.png"))

        # ... in Chinese too (the switch, no reload) ...
        page.click("[data-lang-switch='zh-CN']")
        banner_sel = "#telemetry-overlay .live-alerts"
        wait_js(page, HAS_TEXT, [banner_sel, "峰值 6.2 °C"], 2, "the banner in Chinese")
        assert "秒前" in page.locator(cold).inner_text()
        assert "已过时" in page.locator(truck).inner_text()
        page.screenshot(path=str(artifacts / "overlay-zh-alert-phone.png"))

        # ... and resolving it (the API, admin token) removes it.
        status, body = srv.request("GET", f"/api/v1/alerts?device={COLDROOM}&state=active")
        assert status == 200, body
        [alert] = body["alerts"]  # type: ignore[index]
        # Staff acknowledging it (what the console's button sends) shows on the banner at once.
        status, body = srv.request("POST", f"/api/v1/alerts/{alert['id']}/acknowledge", {"comment": "on it"})
        assert status == 200, body
        wait_js(page, HAS_TEXT, [banner_sel, ACK_ZH], 1.0, "the acknowledgement on the banner")
        page.screenshot(path=str(artifacts / "overlay-zh-acknowledged-phone.png"))
        status, body = srv.request("POST", f"/api/v1/alerts/{alert['id']}/resolve", {"comment": "door shut"})
        assert status == 200, body
        wait_js(page, NO_ALERTS, None, 1.0, "the banner's removal")
        page.screenshot(path=str(artifacts / "overlay-zh-resolved-phone.png"))

        # A phone: the overlay stays in the lower part of the picture, within the screen.
        box = page.locator("#telemetry-overlay").bounding_box()
        video = page.locator("#player-box").bounding_box()
        assert box is not None and video is not None
        assert box["width"] <= PHONE["width"] and box["height"] <= video["height"] / 2, (box, video)
        assert not errors, errors
    finally:
        context.close()


def test_overlay_reconnects_with_a_fresh_snapshot(browser: Browser, live_server: LiveServer) -> None:
    """The page resumes after the socket drops: a new snapshot, then changes."""
    srv = live_server
    context = browser.new_context(viewport=PHONE, locale="zh-CN")
    try:
        page = context.new_page()
        # Count the sockets the page opens; close the first one from the page's side.
        page.add_init_script(
            "window.__sockets = []; const W = window.WebSocket;"
            "window.WebSocket = function (u, p) {"
            " const s = new W(u, p); window.__sockets.push(s); return s; };"
            "window.WebSocket.prototype = W.prototype;"
        )
        page.goto(f"{srv.base_url}/watch/{SLUG}")
        wait_js(page, "() => document.querySelector('#telemetry-overlay')?.dataset.live === 'live'", None, 10,
                "live feed connected")  # fmt: skip
        page.evaluate("window.__sockets[0].close()")
        wait_js(page, HAS_TEXT, ["#telemetry-overlay", "重新连接"], 2, "the reconnecting notice")
        wait_js(page, "() => window.__sockets.length === 2 &&"
                " document.querySelector('#telemetry-overlay').dataset.live === 'live'", None, 5,
                "the reconnection")  # fmt: skip
        srv.reading(TRUCK, 4.4)
        wait_js(page, HAS_TEXT, [f"#telemetry-overlay [data-device='{TRUCK}']", "4.4 °C"], 1.0, "a reading")
    finally:
        context.close()
