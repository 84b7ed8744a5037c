"""The page in a real browser (headless Debian Chromium) against a real server: choose a
study, predict, see the probability and the heat maps; the drop zone works from the keyboard;
errors are shown in words; the page breaks none of its own security policy."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_files import write_dicom

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_COPY = Path("/tmp/murakit_browser.png")

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium to run browser tests)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(trained_run):
    from murakit.serve.app import create_app, running_server

    with running_server(create_app(trained_run, device="cpu", cam_size=256)) as url:
        yield url


@pytest.fixture(scope="module")
def study_files(synth_root, tmp_path_factory) -> list[Path]:
    """Two PNG views of a synthetic study and a 16-bit DICOM view, as a user would have."""
    from murakit.data.index import load_index

    records = load_index(synth_root, ["valid"]).split("valid")
    abnormal = [r for r in records if r.label == 1] or records
    folder = abnormal[0].path.parent
    out = tmp_path_factory.mktemp("upload")
    pngs = sorted(folder.glob("image*.png"))[:2]
    files = [Path(shutil.copy(p, out / f"wrist_view{i + 1}.png")) for i, p in enumerate(pngs)]
    pytest.importorskip("pydicom")
    gray = np.asarray(Image.open(pngs[0]).convert("L"))
    files.append(write_dicom(out / "wrist_view3.dcm", gray.astype(np.uint16) * 257))
    return files


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    # Intercept file choosers from the start: Playwright turns interception on without
    # waiting, so enabling it only inside expect_file_chooser races a fast key press.
    page.on("filechooser", lambda chooser: None)
    page.goto(server)
    # Not page.wait_for_function: its string predicates need eval, which the page's CSP forbids.
    expect(page.locator("#model-info")).to_have_text(re.compile(r"^Model "))
    yield page
    context.close()


def test_predict_a_study_in_the_browser(page, study_files, tmp_path):
    page.set_input_files("#files", [str(p) for p in study_files])
    expect(page.locator("#file-list li")).to_have_count(3)
    expect(page.locator("#status")).to_have_text("3 images chosen.")
    page.select_option("#part", "XR_WRIST")
    page.get_by_role("button", name="Predict").click()

    expect(page.locator("#results")).to_be_visible(timeout=60_000)
    probability = page.locator("#study-probability").inner_text()
    assert re.fullmatch(r"0\.\d\d \(\d+%\)", probability), probability
    assert page.locator("#study-label").inner_text() in ("Abnormal", "Normal")
    expect(page.locator("#status")).to_contain_text("Done")
    cams = page.locator("img.cam")
    expect(cams).to_have_count(3)
    for i in range(3):  # decode() resolves once the image is loaded and decodable
        assert cams.nth(i).evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    assert "probability" in cams.first.get_attribute("alt")

    shot = tmp_path / "murakit_page.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copy(shot, SCREENSHOT_COPY)
    assert shot.stat().st_size > 10_000
    assert page.console_errors == []  # also: nothing blocked by the Content-Security-Policy


def test_keyboard_opens_the_file_chooser(page, study_files):
    dropzone = page.locator("#dropzone")
    dropzone.focus()
    assert page.evaluate("document.activeElement.id") == "dropzone"
    with page.expect_file_chooser() as chooser_info:
        page.keyboard.press("Enter")
    chooser_info.value.set_files(str(study_files[0]))
    expect(page.locator("#file-list li")).to_have_count(1)
    dropzone.focus()
    with page.expect_file_chooser():
        page.keyboard.press(" ")
    # The focus ring is visible on the drop zone (an outline, not just a colour change).
    outline = dropzone.evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline != "none"


def test_errors_are_shown_in_words(page, tmp_path):
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#error")).to_have_text("Choose at least one image of the study first.")
    fake = tmp_path / "scan.png"
    fake.write_text("not really a picture\n")
    page.set_input_files("#files", str(fake))
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#error")).to_contain_text("scan.png is not a PNG, JPEG or DICOM image")
    expect(page.locator("#results")).to_be_hidden()
