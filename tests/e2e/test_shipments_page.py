"""The shipments page (/shipments) in headless Chromium, against a real `origincast serve`
with a signing key, inside the loopback-only namespace (tests/e2e/harness.py):

- a producer sent to /console logs in and lands on /shipments (the console is for staff);
- they open a shipment (product, batch, origin, profile, first device), hand it over to
  a second device, upload an origin photo (its SHA-256 shown equals the file's), see the
  QR label and the link to the customer's page with the log's key, and close it; the API
  then says the same: closed, two segments, the photo logged;
- what is wrong is said, in the page: a missing field and a malformed device id before any
  request (nothing is created), an upload without a file;
- a logistics user sees the staff-only report links and the way back to the console;
- Chinese. Screenshots go to test-artifacts/shipments-*.png.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import segno
from playwright.sync_api import Browser, Page

from telemetry.evidence.keys import init_key
from telemetry.settings import StorageSettings
from telemetry.storage import open_store
from telemetry.storage.alerts import Device
from tests.e2e import harness
from tests.e2e.harness import HAS_TEXT, LiveServer, NetNs, serve_with_broker
from web.accounts import AccountService
from web.accounts_sql import open_account_repository

# Failures say what the page shows there.
wait_js = partial(harness.wait_js, show=("main", "#banner", "#new-error", "#detail-error"))

pytestmark = pytest.mark.timeout(240)

DESKTOP = {"width": 1440, "height": 1000}
PRODUCER, STAFF, PASSWORD = "mei", "lin", "shipments-e2e-password"
COLDROOM, REEFER, SITE = "coldroom-1", "reefer-7", "farm-7"


@pytest.fixture(scope="module")
def shipments_server(tmp_path_factory: pytest.TempPathFactory, netns: NetNs) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("e2e-shipments")

    def prepare(db: str, env: dict[str, str]) -> None:
        key_file = workdir / "log.key"
        init_key(key_file, "e2e.origincast.test/log")  # what `origincast keys init` does
        env["ORIGINCAST_EVIDENCE_KEY_FILE"] = str(key_file)
        accounts = open_account_repository(db)
        accounts.open()
        accounts.migrate()
        # (a thread of its own: Playwright's sync API already runs an event loop in this one)
        with ThreadPoolExecutor(1) as pool:
            service = AccountService(accounts)
            pool.submit(asyncio.run, service.create_user(PRODUCER, "producer", PASSWORD, "Mei")).result()
            pool.submit(asyncio.run, service.create_user(STAFF, "logistics", PASSWORD, "Lin")).result()
        accounts.close()
        store = open_store(StorageSettings(url=db))
        store.open()
        store.migrate()
        store.upsert_device(Device(COLDROOM, SITE, "frozen", "Cold room 1"))
        store.upsert_device(Device(REEFER, SITE, "frozen", "Reefer 7"))
        store.close()

    with serve_with_broker(workdir, netns, prepare) as srv:
        yield srv




VISIBLE = "(sel) => { const e = document.querySelector(sel); return !!e && !e.closest('[hidden]'); }"
QR_LOADED = "() => { const q = document.querySelector('#qr'); return q.complete && q.naturalWidth > 0; }"


def log_in(page: Page, srv: LiveServer, user: str, via: str, lands: str) -> None:
    page.goto(f"{srv.base_url}{via}")
    page.wait_for_url(re.compile(r".*/login\?next="), timeout=10_000)
    page.fill("#name", user)
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(f"{srv.base_url}{lands}", timeout=10_000)


def photo() -> bytes:
    out = io.BytesIO()
    segno.make_qr("origin photo stand-in").save(out, kind="png", scale=4)
    return out.getvalue()


def test_producer_opens_hands_over_uploads_and_closes(
    browser: Browser, shipments_server: LiveServer, artifacts: Path
) -> None:
    srv = shipments_server
    context = browser.new_context(viewport=DESKTOP, locale="en-US")
    try:
        page = context.new_page()
        log_in(page, srv, PRODUCER, "/console", "/shipments")
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        wait_js(page, HAS_TEXT, ["#user", "Mei"], 5, "the producer's name")
        assert page.locator("#to-console").is_hidden()  # the console is staff's

        # A missing field is said before anything is sent.
        page.click("#new-shipment")
        page.fill("#new-product", "Frozen cod loins")
        page.click("#new-submit")
        wait_js(page, HAS_TEXT, ["#new-error", "Product batch is required"], 5, "the missing batch")
        # The API's own refusal is shown as it says it.
        page.fill("#new-batch", "COD-2026-11")
        page.fill("#new-origin", SITE)
        page.select_option("#new-profile", "frozen")
        page.fill("#new-device", "not a device id")
        page.click("#new-submit")
        wait_js(page, HAS_TEXT, ["#new-error", "not a device id"], 5, "the refused device id")
        page.fill("#new-device", COLDROOM)
        page.click("#new-submit")
        wait_js(page, VISIBLE, "#detail", 5, "the new shipment's details")
        shipment_id = page.locator("#shipments-body tr.selected").get_attribute("data-shipment")
        assert shipment_id
        assert page.locator("#shipments-body tr").count() == 1  # the refused attempts made none
        wait_js(page, HAS_TEXT, ["#route-list", COLDROOM], 5, "the first device in the route")

        # Handed over to the reefer truck: two segments, the first one ended.
        page.fill("#handover-device", REEFER)
        page.fill("#handover-label", "Truck to Shanghai")
        page.click("#handover-form button[type=submit]")
        wait_js(page, "() => document.querySelectorAll('#route-list li[data-device]').length === 2", None, 5,
                "the second segment")  # fmt: skip
        assert "Truck to Shanghai" in page.locator("#route-list").inner_text()

        # An upload without a file is refused in the page; with one, it is listed with its hash.
        page.click("#upload-form button[type=submit]")
        wait_js(page, HAS_TEXT, ["#detail-error", "Choose a PDF, JPEG or PNG"], 5, "the missing file")
        data = photo()
        page.select_option("#upload-kind", "photo")
        page.set_input_files("#upload-file", {"name": "harbour.png", "mimeType": "image/png", "buffer": data})
        page.click("#upload-form button[type=submit]")
        wait_js(page, HAS_TEXT, ["#file-list", "harbour.png"], 10, "the uploaded photo")
        digest = hashlib.sha256(data).hexdigest()
        assert page.locator("#file-list li").get_attribute("data-sha256") == digest
        assert digest[:16] in page.locator("#file-list").inner_text()

        # The label: a QR image that loaded, and the customer's link carrying the log's key.
        wait_js(page, QR_LOADED, None, 10, "the QR label")
        href = page.locator("#trust-link").get_attribute("href") or ""
        assert href.startswith(f"/v/{shipment_id}#k=e2e.origincast.test/log+"), href
        assert page.locator("#report-pdf").is_hidden()  # staff only
        page.screenshot(path=str(artifacts / "shipments-en-producer.png"), full_page=True)

        page.click("#close-shipment")
        page.click("#close-submit")
        wait_js(page, "() => document.querySelector('#detail-state').dataset.state === 'closed'", None, 10,
                "the closed state")  # fmt: skip
        assert page.locator("#handover-form").is_hidden()
        assert page.locator("#close-shipment").is_hidden()
        assert errors == []
    finally:
        context.close()

    # The API agrees with what the page showed.
    status, body = srv.request("GET", f"/api/v1/shipments/{shipment_id}")
    assert status == 200
    assert isinstance(body, dict)
    assert body["state"] == "closed" and body["product"] == "Frozen cod loins"
    assert [s["device_id"] for s in body["segments"]] == [COLDROOM, REEFER]
    assert all(s["end"] is not None for s in body["segments"])
    status, files = srv.request("GET", "/api/v1/batches/COD-2026-11/files")
    assert status == 200 and isinstance(files, dict)
    (f,) = files["files"]
    assert f["sha256"] == digest and f["kind"] == "photo" and f["shipment_id"] == shipment_id
    assert f["evidence_leaf"] is not None


def test_staff_sees_reports_and_chinese(
    browser: Browser, shipments_server: LiveServer, artifacts: Path
) -> None:
    srv = shipments_server
    status, created = srv.request(
        "POST",
        "/api/v1/shipments",
        {"product": "速冻虾仁", "batch": "SHRIMP-7", "origin_site": SITE, "profile_id": "frozen",
         "opened_at": "2026-01-01T00:00:00Z",
         "segments": [{"device_id": REEFER, "start": "2026-01-01T00:00:00Z"}]},
    )  # fmt: skip
    assert status == 201 and isinstance(created, dict), created
    context = browser.new_context(viewport=DESKTOP, locale="zh-CN")
    try:
        page = context.new_page()
        log_in(page, srv, STAFF, "/shipments", "/shipments")
        wait_js(page, HAS_TEXT, ["#shipments-body", "速冻虾仁"], 10, "the shipment in the list")
        assert page.locator("#to-console").is_visible()
        assert page.locator("h2#list-heading").inner_text() == "运单"
        page.click(f"#shipments-body tr[data-shipment='{created['id']}']")
        wait_js(page, VISIBLE, "#report-pdf", 5, "the staff's report links")
        assert page.locator("#report-pdf").inner_text() == "温度报告（PDF）"
        assert (page.locator("#report-pdf").get_attribute("href") or "").endswith("report.pdf?lang=zh-CN")
        assert "交接" in page.locator("#handover-form").inner_text()
        assert "冷冻" in page.locator("#detail-facts").inner_text()  # the profile's name, in Chinese
        page.screenshot(path=str(artifacts / "shipments-zh-staff.png"), full_page=True)
        # The switch to English re-renders what the script wrote.
        page.click("[data-lang-switch='en']")
        wait_js(page, HAS_TEXT, ["#detail-heading", "Shipment "], 5, "the English heading")
    finally:
        context.close()
