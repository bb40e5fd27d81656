"""The web demo's page, driven as a person would in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, through selenium), against the tiny random-weight model of test_serve_api.py.

The set-up installs the two packages with apt-get when they are missing (as root, with `apt-get update`
first if the plain install fails); the test skips only when they cannot be installed, and says why. Rules:
the boxes drawn on the page (SVG rectangles, in the upload's pixels) and the rows of the detections table
are exactly the API's answer for the same file, filtered by the page's score threshold and parent switch
(the page draws the API's numbers as they are); flip TTA off asks the API again; a file that is not an image
shows the API's 415 message; a file dropped on the page is sent like a chosen one. The screenshot goes to
test_output/serve_page.png (ignored by git; OID_SERVE_SCREENSHOT overrides it), not into demo_output/: `make demo`
refuses to replace a folder that holds no demo run.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_serve_api import ServerThread, detect, make_photo, make_service

from oid_retinanet.serve.app import Limits, create_app

pytestmark = [pytest.mark.slow,  # drives a browser
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]

PACKAGES = ("chromium", "chromium-driver")
SCREENSHOT = Path(os.environ.get("OID_SERVE_SCREENSHOT", REPO / "test_output" / "serve_page.png"))
WAIT_S = 90


def _browser_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _install_chromium() -> str | None:
    """Install Debian's chromium and chromium-driver when missing: None once they are there, else why not."""
    if _browser_paths():
        return None
    if not shutil.which("apt-get"):
        return "chromium and chromedriver are not installed and this machine has no apt-get"
    if os.geteuid() != 0:
        return "chromium and chromedriver are not installed and apt-get needs root"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    log = []
    for commands in ([install], [["apt-get", "update", "-q"], install]):
        for cmd in commands:
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired:
                log.append(f"{' '.join(cmd)}: timed out")
                break
            log.append(f"{' '.join(cmd)}: exit {proc.returncode} {proc.stderr.strip()[-300:]}")
            if proc.returncode != 0:
                break
        if _browser_paths():
            return None
    return "apt-get could not install " + " ".join(PACKAGES) + ": " + " | ".join(log)


@pytest.fixture(scope="module")
def browser():
    reason = _install_chromium()
    if reason:
        pytest.skip(f"Chromium could not be installed: {reason}")
    chromium, chromedriver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1100", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server():
    service = make_service()
    service.start()
    with ServerThread(create_app(service, Limits())) as srv:
        yield srv
    service.stop()


# what the page shows, read from its DOM: SVG boxes (with their rectangles) and table rows
_READ_PAGE = """
const num = (el, name) => Number(el.getAttribute(name));
const boxes = [...document.querySelectorAll('#overlay g.det')].map((g) => {
  const r = g.querySelector('rect');
  return [g.dataset.kind, g.dataset.mid, Number(g.dataset.score), num(r, 'x'), num(r, 'y'), num(r, 'width'),
          num(r, 'height'), g.querySelector('text').textContent];
});
const rows = [...document.querySelectorAll('#detections tbody tr')].map((tr) =>
  [tr.dataset.kind, tr.dataset.mid, Number(tr.dataset.score), [...tr.cells].map((c) => c.textContent)]);
return [boxes, rows];
"""


def _expected(answer: dict, threshold: float, parents: bool) -> list[tuple]:
    """What the page should draw: the API's boxes at or above the threshold, highest score first."""
    entries = [("leaf", e) for e in answer["detections"]]
    if parents:
        entries += [("parent", e) for e in answer["parents"]]
    shown = sorted((x for x in entries if x[1]["score"] >= threshold), key=lambda x: -x[1]["score"])
    return [(kind, e["mid"], e["score"], e["box_px"][0], e["box_px"][1], e["box_px"][2] - e["box_px"][0],
             e["box_px"][3] - e["box_px"][1], e["name"]) for kind, e in shown]


def _check_page(driver, answer: dict, threshold: float, parents: bool) -> int:
    boxes, rows = driver.execute_script(_READ_PAGE)
    expected = _expected(answer, threshold, parents)
    assert [tuple(b[:7]) for b in boxes] == [e[:7] for e in expected]
    assert [tuple(r[:3]) for r in rows] == [e[:3] for e in expected]
    # captions: the name and the score rounded (JavaScript's toFixed; ties may round unlike Python's format)
    for box, row, e in zip(boxes, rows, expected):
        name, score = box[7].rsplit(" ", 1)
        assert name == e[7] and abs(float(score) - e[2]) <= 0.005 + 1e-9
        assert row[3][1] == e[7] + (" (parent)" if e[0] == "parent" else "")
        assert abs(float(row[3][2]) - e[2]) <= 0.0005 + 1e-9
    return len(expected)


def _wait_done(driver, words: str = "") -> None:
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error")
        and words in d.find_element(By.ID, "timing").text)


def test_page_draws_the_api_answer(browser, server, tmp_path):
    photo = tmp_path / "street_400x300.jpg"
    data = make_photo(photo)
    browser.get(server.url + "/")
    WebDriverWait(browser, WAIT_S).until(lambda d: "tiny-random.keras" in d.find_element(By.ID, "model-info").text)
    assert "3 classes" in browser.find_element(By.ID, "model-info").text

    browser.find_element(By.ID, "file").send_keys(str(photo))
    _wait_done(browser, "flip TTA on")
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
    status, answer = detect(server.port, data)
    assert status == 200
    threshold = float(browser.find_element(By.ID, "threshold").get_attribute("value"))
    assert threshold == 0.3
    shown = _check_page(browser, answer, threshold, parents=True)
    total = len(answer["detections"]) + len(answer["parents"])
    assert 0 < shown < total, "the default threshold should keep some boxes and hide others"
    assert re.match(r"Model \d+(\.\d+)? ms \(flip TTA on\)", browser.find_element(By.ID, "timing").text)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the slider to 0: every box; parents off: the model's own boxes only
    browser.execute_script("const t = document.getElementById('threshold'); t.value = '0';"
                           "t.dispatchEvent(new Event('input'));")
    assert _check_page(browser, answer, 0.0, parents=True) == total
    browser.find_element(By.ID, "parents").click()
    assert _check_page(browser, answer, 0.0, parents=False) == len(answer["detections"])

    # flip TTA off asks again
    browser.find_element(By.ID, "flip").click()
    _wait_done(browser, "flip TTA off")
    status, answer_no_flip = detect(server.port, data, "?flip=false")
    assert status == 200 and answer_no_flip["detections"] != answer["detections"]
    _check_page(browser, answer_no_flip, 0.0, parents=False)

    # a file that is not an image: the API's message on the page
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error")
    assert browser.find_element(By.ID, "status").text.startswith("Error 415: not an image")

    # dropping the photo on the drop zone (a drop event carrying the file, as the browser sends it)
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
        document.getElementById('drop').dispatchEvent(
            new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
    """, base64.b64encode(data).decode())
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
    _check_page(browser, answer_no_flip, 0.0, parents=False)
