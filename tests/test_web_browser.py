"""The browser client end to end: headless Debian Chromium driven by Playwright against a real server."""

from __future__ import annotations

import os
import shutil

import pytest

from controllers.serve import ServeConfig, ServerThread

CHROMIUM = os.environ.get("WORLDSIM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Exception as e:  # a broken install should skip with the reason, not error
            pytest.skip(f"chromium at {CHROMIUM} did not start: {e}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tiny_world):
    with ServerThread(tiny_world, ServeConfig(port=0, tick_hz=10.0)) as st:
        yield st


def canvas_pixels(page) -> list[int]:
    return page.evaluate("() => Array.from(document.getElementById('view').getContext('2d').getImageData(0, 0, 72, 72).data)")


def test_page_connects_streams_frames_and_keys_change_the_picture(browser, server, tmp_path):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(server.url)
        page.wait_for_function("() => document.getElementById('status').dataset.state === 'connected'", timeout=20_000)
        assert "session" in page.inner_text("#status")
        # frames arrive and are drawn
        page.wait_for_function("() => window.worldsim.framesDrawn >= 3", timeout=20_000)
        before = canvas_pixels(page)
        assert any(before), "the canvas is still blank"
        # a key press goes out as an input whose seq comes back as input_seq on a frame showing its action
        page.locator("#view").focus()
        page.keyboard.down("KeyD")
        page.wait_for_function("() => window.worldsim.inputSeq >= 1 && window.worldsim.lastInputSeq >= window.worldsim.inputSeq", timeout=20_000)
        page.wait_for_function("() => window.worldsim.action === 'move_right'", timeout=20_000)
        page.keyboard.up("KeyD")
        after = canvas_pixels(page)
        assert after != before, "the picture did not change after a key press"
        assert page.evaluate("() => window.worldsim.inputLatencyMs") is not None
        # the HUD shows fps and latency; H shows the key overlay with the server's bindings
        assert "fps" in page.inner_text("#fps") and "ms" in page.inner_text("#latency")
        page.keyboard.press("KeyH")
        assert page.is_visible("#help")
        assert "move left" in page.inner_text("#help") and "A, Left" in page.inner_text("#help")
        page.keyboard.press("KeyH")
        page.screenshot(path=str(tmp_path / "browser.png"))
        if os.environ.get("WORLDSIM_SCREENSHOT"):
            page.screenshot(path=os.environ["WORLDSIM_SCREENSHOT"])
        # crisp upscaling: the canvas keeps its native size and CSS scales it with pixelated rendering
        assert page.evaluate("() => getComputedStyle(document.getElementById('view')).imageRendering") in ("pixelated", "crisp-edges")
        assert errors == []
    finally:
        page.close()


def test_page_reconnects_after_the_connection_drops(browser, server):
    page = browser.new_page()
    try:
        page.goto(server.url)
        page.wait_for_function("() => window.worldsim.status === 'connected'", timeout=20_000)
        first = page.evaluate("() => window.worldsim.session")
        # drop every connection from the server side
        for conn in list(server.server.connections):
            server._aio.call_soon_threadsafe(conn.ws.transport.abort)
        page.wait_for_function(f"() => window.worldsim.status === 'connected' && window.worldsim.session !== '{first}'", timeout=20_000)
        page.wait_for_function("() => window.worldsim.framesDrawn >= 2", timeout=20_000)
    finally:
        page.close()
