"""The demo page in a real browser: headless Chromium driven by Selenium.

Skips (with the reason) only when selenium, chromium or chromedriver is absent; CI installs
them (apt-get install chromium chromium-driver; pip install selenium) and sets
MINICNN_REQUIRE_BROWSER=1, which turns that skip into an error. The driver and the browser
are named explicitly, so Selenium Manager never looks for them on the network.
"""
import base64
import json
import os
import shutil

import numpy as np
import pytest

from test_serve import predict, trousers_png, model_path, model  # noqa: F401  (fixtures)


def _find(names):
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


CHROMIUM = _find(["/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"])
CHROMEDRIVER = _find(["/usr/bin/chromedriver", "chromedriver"])
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    _MISSING = None
except ImportError as error:
    _MISSING = f"selenium is not installed (pip install selenium): {error}"
if _MISSING is None and (CHROMIUM is None or CHROMEDRIVER is None):
    _MISSING = (f"needs chromium and chromedriver (apt-get install chromium chromium-driver); found "
                f"chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}")
if _MISSING is not None:
    if os.environ.get("MINICNN_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"MINICNN_REQUIRE_BROWSER=1 but the browser test cannot run: {_MISSING}")
    pytest.skip(_MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")          # Selenium Manager: never download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1180,760", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def settled(driver, answers_before):
    """Wait for a new answer and for no request in flight, waiting or still being encoded (a
    stroke's PNG comes from canvas.toBlob's callback: without `encoding` the answer to an earlier
    stroke could look settled and the last stroke's answer replace the bars mid-read, a stale
    element in CI); returns the answer count."""
    def done(d):
        state = d.execute_script(
            "return [document.body.dataset.state, Number(document.body.dataset.answers), inFlight, "
            "waiting === null, encoding];")
        return (state[1] if state[0] == "answered" and state[1] > answers_before and not state[2] and state[3]
                and state[4] == 0 else False)
    return WebDriverWait(driver, 30).until(done)


def read_answer(driver):
    top = driver.find_element(By.ID, "top-label").text
    rows = driver.find_elements(By.CSS_SELECTOR, "#bars li")
    bars = [(row.get_attribute("data-label"), float(row.get_attribute("data-probability")),
             row.find_element(By.CLASS_NAME, "percent").text) for row in rows]
    return top, bars


def assert_bars(top, bars, api_answer):
    assert len(bars) == 10
    probabilities = [p for _, p, _ in bars]
    assert probabilities == sorted(probabilities, reverse=True)
    shown = [float(text.rstrip("%")) for _, _, text in bars]
    assert abs(sum(shown) - 100) <= 0.5 + 1e-9          # ten values each rounded to 0.1
    assert top == bars[0][0] == api_answer["predictions"][0]["label"]
    assert [label for label, _, _ in bars] == [p["label"] for p in api_answer["predictions"]]
    np.testing.assert_allclose(probabilities, [p["probability"] for p in api_answer["predictions"]], rtol=0, atol=1e-12)


def canvas_ink(driver, canvas_id):
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return s;", canvas_id)


def draw_trousers(driver):
    canvas = driver.find_element(By.ID, "draw")
    for x_offset in (-40, 40):                             # two legs, then the waistband
        ActionChains(driver).move_to_element_with_offset(canvas, x_offset, -100).click_and_hold() \
            .move_by_offset(0, 60).move_by_offset(0, 60).move_by_offset(0, 70).release().perform()
    ActionChains(driver).move_to_element_with_offset(canvas, -45, -100).click_and_hold() \
        .move_by_offset(45, 0).move_by_offset(45, 0).release().perform()


def test_draw_then_choose_a_photo_and_read_the_answer(server, browser, tmp_path):
    browser.get(server.url)
    assert browser.find_element(By.ID, "top-label").text == "Draw an item or drop a photo"
    assert browser.find_elements(By.CSS_SELECTOR, "#bars li") == []

    # 1. A drawing: pointer strokes on the canvas.
    draw_trousers(browser)
    answers = settled(browser, 0)
    top, bars = read_answer(browser)
    canvas_png = browser.execute_script(
        "return document.getElementById('draw').toDataURL('image/png').split(',')[1];")
    status, api_answer = predict(server, base64.b64decode(canvas_png))
    assert status == 200
    assert_bars(top, bars, api_answer)
    assert canvas_ink(browser, "prepared") > 0 and canvas_ink(browser, "heat") > 0
    drawing_ms = float(browser.find_element(By.ID, "status").get_attribute("data-round-trip-ms"))
    browser.save_screenshot(str(tmp_path / "serve-drawing.png"))

    # 2. A photo, chosen with the file input.
    photo = tmp_path / "trousers.png"
    photo.write_bytes(trousers_png())
    browser.find_element(By.ID, "file").send_keys(str(photo))
    answers = settled(browser, answers)
    top, bars = read_answer(browser)
    status, api_answer = predict(server, photo.read_bytes())
    assert status == 200
    assert_bars(top, bars, api_answer)
    photo_ms = float(browser.find_element(By.ID, "status").get_attribute("data-round-trip-ms"))
    browser.save_screenshot(str(tmp_path / "serve-photo.png"))
    print(f"\nbrowser round trip: drawing {drawing_ms:.1f} ms, photo {photo_ms:.1f} ms")

    # 3. Clear.
    browser.find_element(By.ID, "clear").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#bars li") == []
    assert browser.find_element(By.ID, "top-label").text == "Draw an item or drop a photo"
    assert canvas_ink(browser, "draw") == 0

    # 4. Nothing went wrong on the way (a blocked asset or a script error is logged as SEVERE).
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], json.dumps(severe, indent=1)


def test_a_file_the_server_refuses_shows_its_error(server, browser, tmp_path):
    browser.get(server.url)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not a picture at all")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.state") == "error")
    status = browser.find_element(By.ID, "status")
    assert "not an image file" in status.text and "error" in status.get_attribute("class")
    assert browser.find_elements(By.CSS_SELECTOR, "#bars li") == []
    browser.get_log("browser")        # the 400 is logged by Chromium as a failed resource: expected



@pytest.mark.parametrize("kind", ["touch", "pen"])
def test_a_finger_or_a_pen_draws_too(server, browser, kind):
    browser.get(server.url)
    canvas = browser.find_element(By.ID, "draw")
    pointer = PointerInput(kind, kind)
    for x_offset in (-35, 35):
        actions = ActionBuilder(browser, mouse=pointer)
        actions.pointer_action.move_to(canvas, x_offset, -100).pointer_down() \
            .move_by(0, 70).move_by(0, 70).move_by(0, 60).pointer_up()
        actions.perform()
    settled(browser, 0)
    top, bars = read_answer(browser)
    canvas_png = browser.execute_script(
        "return document.getElementById('draw').toDataURL('image/png').split(',')[1];")
    status, api_answer = predict(server, base64.b64decode(canvas_png))
    assert status == 200 and canvas_ink(browser, "draw") > 0
    assert_bars(top, bars, api_answer)


def test_a_dropped_photo_is_answered(server, browser):
    browser.get(server.url)
    body = trousers_png()
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "trousers.png", {type: "image/png"}));
        for (const type of ["dragenter", "dragover", "drop"]) {
          document.getElementById("draw").dispatchEvent(
            new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer}));
        }
    """, base64.b64encode(body).decode())
    settled(browser, 0)
    top, bars = read_answer(browser)
    status, api_answer = predict(server, body)
    assert status == 200
    assert_bars(top, bars, api_answer)
    assert "dragging" not in browser.find_element(By.TAG_NAME, "body").get_attribute("class")
