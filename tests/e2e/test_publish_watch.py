"""End to end in headless Chromium, as a producer and a customer would use it, on phone-sized
screens: a fake camera publishes from /publish/<slug> over WHIP, a second page plays it
on /watch/<slug> over WHEP; the demo's test pattern plays; both languages render; wrong
keys, unknown streams and insecure pages are told in plain words.

Screenshots go to test-artifacts/ (not committed) for a person to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.e2e.harness import PHONE, SITE, SLUG, TITLE, Server

pytestmark = pytest.mark.timeout(120)


# -- helpers -------------------------------------------------------------------------------


class Tab:
    """A page, the JavaScript errors it raised, and how to say where it stands."""

    def __init__(self, page: Page, server: Server) -> None:
        self.page = page
        self.server = server
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def state(self) -> str:
        return str(self.page.evaluate("document.body.dataset.state"))

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text().strip()

    def describe(self) -> str:
        error = self.page.locator("#error")
        error_text = error.inner_text() if error.count() else ""
        return (
            f"{self.page.url}: state {self.state()!r}, status {self.text('#status')!r},"
            f" error {error_text!r}, page errors {self.errors}\nserver log:\n{self.server.log_tail()}"
        )

    def wait_state(self, *states: str, timeout_s: float) -> str:
        try:
            self.page.wait_for_function(
                "states => states.includes(document.body.dataset.state)",
                arg=list(states),
                timeout=timeout_s * 1000,
                polling=100,
            )
        except PlaywrightTimeout:
            raise AssertionError(
                f"not {' or '.join(states)} after {timeout_s:.0f} s: {self.describe()}"
            ) from None
        return self.state()

    def wait_text(self, selector: str, needle: str, timeout_s: float) -> None:
        try:
            self.page.wait_for_function(
                "([sel, needle]) => (document.querySelector(sel)?.textContent || '').includes(needle)",
                arg=[selector, needle],
                timeout=timeout_s * 1000,
                polling=100,
            )
        except PlaywrightTimeout:
            raise AssertionError(
                f"{selector} never said {needle!r} (says {self.text(selector)!r}): {self.describe()}"
            ) from None

    def shot(self, artifacts: Path, name: str) -> Path:
        path = artifacts / name
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_no_script_errors(self) -> None:
        assert not self.errors, f"JavaScript errors on {self.page.url}: {self.errors}"


def video_sample(page: Page) -> dict[str, float]:
    return dict(
        page.evaluate(
            """() => {
                const v = document.getElementById('player');
                const q = v.getVideoPlaybackQuality();
                return {width: v.videoWidth, height: v.videoHeight, time: v.currentTime,
                        frames: q.totalVideoFrames, paused: v.paused ? 1 : 0};
            }"""
        )
    )


def assert_plays(tab: Tab, seconds: float = 2.0) -> dict[str, float]:
    """The <video> has a size and its time and frame count move over ``seconds``."""
    before = video_sample(tab.page)
    tab.page.wait_for_timeout(seconds * 1000)
    after = video_sample(tab.page)
    assert after["width"] > 0 and after["height"] > 0, f"no picture size: {after}; {tab.describe()}"
    assert after["time"] - before["time"] >= seconds * 0.6, f"currentTime stuck: {before} → {after}"
    assert after["frames"] > before["frames"], f"no new frames: {before} → {after}"
    assert not after["paused"], after
    return after


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    """Phone contexts made by a test (closed after it)."""
    made: list[BrowserContext] = []
    yield made
    for context in made:
        context.close()


def phone(browser: Browser, contexts: list[BrowserContext], locale: str) -> BrowserContext:
    # locale sets both Accept-Language and navigator.languages, as a phone set to it would.
    context = browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True, locale=locale
    )
    contexts.append(context)
    return context


def open_tab(
    context: BrowserContext, server: Server, path: str, *, base: str | None = None, status: int | None = None
) -> Tab:
    page = context.new_page()
    tab = Tab(page, server)
    response = page.goto((base or server.base_url) + path)
    assert response is not None, path
    assert response.ok if status is None else response.status == status, f"{path}: {response.status}"
    return tab


# -- tests ---------------------------------------------------------------------------------


def test_publish_goes_live_and_watch_page_plays(browser, contexts, server, artifacts):
    producer = open_tab(phone(browser, contexts, "en-US"), server, f"/publish/{SLUG}")
    producer.wait_text("#stream-title", TITLE, 10)  # the API answered: the page is ready
    producer.page.fill("#key", server.publish_key)
    producer.page.select_option("#resolution", "360")  # light on two shared cores
    started = time.monotonic()
    producer.page.click("#start")
    producer.wait_state("live", timeout_s=30)
    went_live_s = time.monotonic() - started
    assert producer.text("#status").startswith("Live · "), producer.describe()
    producer.wait_text("#stats", "bit/s", 10)  # bitrate and size from getStats()
    assert server.api(f"/api/v1/streams/{SLUG}")["state"]["status"] == "live"  # type: ignore[index]

    viewer = open_tab(phone(browser, contexts, "zh-CN"), server, f"/watch/{SLUG}")
    viewer.wait_state("live", timeout_s=30)
    sample = assert_plays(viewer)
    # The heading from the stream API, the rest in Chinese (the viewer's phone language).
    assert viewer.text("#title") == TITLE
    assert viewer.text("#site") == f"地点：{SITE}"
    assert viewer.text("#status") == "直播中"
    viewer.shot(artifacts, "watch-live-zh.png")

    producer.wait_text("#viewers", "1 watching", 12)

    # Turning to the front lens while live swaps the camera in place (replaceTrack): no
    # new session, the viewer keeps playing, the preview becomes a mirror.
    producer.page.check("input[name='facing'][value='user']")
    producer.page.wait_for_function(
        "() => document.getElementById('preview').classList.contains('mirrored')", timeout=10_000
    )
    assert producer.state() == "live", producer.describe()
    assert_plays(viewer)
    assert viewer.state() == "live"
    producer.shot(artifacts, "publish-live-en.png")

    # Tap to unmute: the sound comes on and the button goes.
    viewer.page.click("#unmute")
    assert viewer.page.evaluate("document.getElementById('player').muted") is False
    assert viewer.page.locator("#unmute").is_hidden()

    # Stop: the producer's page says so, the viewer's player goes from live to offline
    # (and keeps checking by itself: the countdown is its retry).
    producer.page.click("#stop")
    producer.wait_state("stopped", timeout_s=10)
    viewer.wait_state("offline", timeout_s=30)
    assert "秒后自动重试" in viewer.text("#status"), viewer.describe()
    viewer.shot(artifacts, "watch-offline-zh.png")
    assert server.api(f"/api/v1/streams/{SLUG}")["state"]["status"] == "offline"  # type: ignore[index]

    producer.assert_no_script_errors()
    viewer.assert_no_script_errors()
    print(f"went live in {went_live_s:.1f} s; viewer saw {sample['width']:.0f}×{sample['height']:.0f}")


def test_demo_test_pattern_plays(browser, contexts, server, artifacts):
    viewer = open_tab(phone(browser, contexts, "en-US"), server, "/watch/demo")
    viewer.wait_state("live", timeout_s=30)
    sample = assert_plays(viewer)
    assert (sample["width"], sample["height"]) == (640, 360)  # the size the server was given
    assert viewer.text("#status") == "Live"
    assert viewer.page.locator("#unmute").is_visible()  # muted autoplay, offering sound
    # The empty container the live telemetry overlay (next issue) will fill.
    assert viewer.page.locator("#telemetry-overlay").count() == 1
    # How the player reads the TURN/STUN servers of a WHEP Link header (RFC 9725 4.6).
    servers = viewer.page.evaluate(
        r"""async () => (await import('/static/common.js')).parseIceServers(
            '<stun:127.0.0.1:3478>; rel="ice-server", ' +
            '<turn:127.0.0.1:3478?transport=udp>; rel="ice-server"; username="u\\"1";' +
            ' credential="p,w"; credential-type="password"')"""
    )
    assert servers == [
        {"urls": "stun:127.0.0.1:3478"},
        {"urls": "turn:127.0.0.1:3478?transport=udp", "username": 'u"1', "credential": "p,w"},
    ]
    viewer.shot(artifacts, "watch-demo-en.png")
    viewer.assert_no_script_errors()


def test_wrong_key_is_told_plainly(browser, contexts, server, artifacts):
    producer = open_tab(phone(browser, contexts, "en-US"), server, f"/publish/{SLUG}")
    producer.wait_text("#stream-title", TITLE, 10)
    producer.page.fill("#key", "not-the-publish-key")
    producer.page.click("#start")
    producer.wait_state("error", timeout_s=20)
    assert "Wrong publish key" in producer.text("#error"), producer.describe()
    assert producer.page.locator("#start").is_visible()  # ready to try again
    producer.shot(artifacts, "publish-wrong-key-en.png")
    # The switch re-renders what the script wrote too, not only the static labels.
    producer.page.click("[data-lang-switch='zh-CN']")
    assert "推流密钥不正确" in producer.text("#error")
    producer.shot(artifacts, "publish-wrong-key-zh.png")
    producer.assert_no_script_errors()


def test_both_languages_render_and_the_choice_is_remembered(browser, contexts, server, artifacts):
    zh = open_tab(phone(browser, contexts, "zh-CN"), server, f"/publish/{SLUG}")
    assert zh.text("h1") == "用这部手机直播"
    assert zh.page.evaluate("document.documentElement.lang") == "zh-CN"
    assert zh.text("#start") == "开始直播"
    zh.wait_text("#stream-title", TITLE, 10)
    zh.shot(artifacts, "publish-idle-zh.png")

    en = open_tab(phone(browser, contexts, "en-US"), server, f"/publish/{SLUG}")
    assert en.text("h1") == "Go live from this phone"
    assert en.text("#start") == "Start broadcast"
    en.wait_text("#stream-title", TITLE, 10)
    en.shot(artifacts, "publish-idle-en.png")

    # A Chinese phone whose reader picks EN: at once, and still after a reload (the server
    # renders it from the cookie the switch set).
    zh.page.click("[data-lang-switch='en']")
    assert zh.text("h1") == "Go live from this phone"
    assert zh.page.get_attribute("[data-lang-switch='en']", "aria-pressed") == "true"
    zh.page.reload()
    assert zh.text("h1") == "Go live from this phone"
    assert zh.page.evaluate("document.documentElement.lang") == "en"
    zh.page.click("[data-lang-switch='zh-CN']")  # and back
    zh.page.reload()
    assert zh.text("h1") == "用这部手机直播"

    # The watch page too, in each language (the demo stream, live).
    for locale, live in (("zh-CN", "直播中"), ("en-US", "Live")):
        viewer = open_tab(phone(browser, contexts, locale), server, "/watch/demo")
        viewer.wait_state("live", timeout_s=30)
        assert viewer.text("#status") == live
        if locale == "zh-CN":
            assert viewer.text(".intro") == "来自源头的实时画面：您看到的正在此刻发生。"
            viewer.shot(artifacts, "watch-demo-zh.png")
        viewer.assert_no_script_errors()
    zh.assert_no_script_errors()
    en.assert_no_script_errors()


def test_unknown_stream_is_said(browser, contexts, server, artifacts):
    # A 404 for crawlers and monitors (the same page as an unlisted stream without its share
    # link); the page itself says what is wrong, in the reader's language.
    viewer = open_tab(phone(browser, contexts, "zh-CN"), server, "/watch/no-such-stream", status=404)
    viewer.wait_state("unknown", timeout_s=15)
    assert viewer.text("#status") == "没有名为“no-such-stream”的直播。请检查链接。"
    viewer.shot(artifacts, "watch-unknown-zh.png")

    producer = open_tab(phone(browser, contexts, "en-US"), server, "/publish/no-such-stream")
    producer.wait_state("error", timeout_s=15)
    assert "There is no stream named “no-such-stream”" in producer.text("#error")
    assert producer.page.locator("#start").is_disabled()
    viewer.assert_no_script_errors()
    producer.assert_no_script_errors()


def test_insecure_page_explains_that_https_is_needed(browser, contexts, server, artifacts):
    # phone.test maps to 127.0.0.1 (CHROMIUM_ARGS) but, unlike localhost, is not a secure
    # context over http: what a phone sees on http://<server's address>.
    base = f"http://phone.test:{server.port}"
    producer = open_tab(phone(browser, contexts, "en-US"), server, f"/publish/{SLUG}", base=base)
    assert producer.page.evaluate("window.isSecureContext") is False
    producer.wait_state("error", timeout_s=10)
    assert "without HTTPS" in producer.text("#error"), producer.describe()
    assert producer.page.locator("#start").is_disabled()
    producer.shot(artifacts, "publish-insecure-en.png")
    producer.assert_no_script_errors()
