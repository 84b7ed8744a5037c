"""The page in a real browser (headless Debian Chromium) against a real server: choose a
study, predict, see the probability, the uncertain band, the validation figures and the heat
maps; open the full-size viewer (zoom, heat map opacity, window/level on a DICOM); the drop
zone works from the keyboard; errors are shown in words; the page breaks none of its own
security policy; /docs renders with every request off this machine blocked."""

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
VIEWER_COPY = Path("/tmp/murakit_viewer.png")
DOCS_COPY = Path("/tmp/murakit_docs.png")
PATIENT = "DOE^JANE"

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
def evaluated_run(trained_run, tmp_path_factory) -> Path:
    """The test run with its validation figures (eval-valid/metrics.json), as after
    `murakit evaluate`."""
    from murakit.evaluation import evaluate_model

    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("evaluated") / "run"))
    evaluate_model(run, workers=0, device="cpu")
    return run


@pytest.fixture(scope="module")
def server(evaluated_run):
    from murakit.serve.app import create_app, running_server

    with running_server(create_app(evaluated_run, device="cpu", cam_size=256)) as url:
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
    pixels = gray.astype(np.uint16) * 257  # 16-bit, no stored window: full range by default
    files.append(write_dicom(out / "wrist_view3.dcm", pixels, PatientName=PATIENT))
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
    assert page.locator("#study-label").inner_text() in ("Abnormal", "Normal", "Uncertain")
    expect(page.locator("#status")).to_contain_text("Done")
    expect(page.locator("#band-detail")).to_contain_text("Uncertain band: 0.40 to 0.60")
    point = page.locator("#operating-point")
    expect(point).to_contain_text(re.compile(r"sensitivity \d+\.\d%, specificity \d+\.\d%"))
    expect(point).to_contain_text("wrist")
    assert PATIENT not in page.content() and "DOE" not in page.locator("body").inner_text()
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


def _zoom(page) -> int:
    return int(page.locator("#zoom-level").inner_text().rstrip("%"))


def _canvas_mean(page) -> float:
    """Mean gray of the viewer's original (a canvas for a DICOM)."""
    return page.locator("#layers-original canvas").evaluate(
        """c => { const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                  let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i];
                  return s / (d.length / 4); }"""
    )


def test_full_size_viewer(page, study_files):
    page.set_input_files("#files", [str(p) for p in study_files])
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("img.cam")).to_have_count(3, timeout=60_000)

    # A PNG: original and heat map side by side, no window/level.
    page.get_by_role("button", name="Open wrist_view1.png full size").click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-title")).to_have_text("wrist_view1.png")
    original = page.locator("#layers-original img.base")
    heat = page.locator("#layers-heat img.heat")
    assert original.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    assert heat.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    expect(page.locator("#wl-controls")).to_be_hidden()

    # Zoom with the buttons and the wheel; both panes share one transform.
    fitted = _zoom(page)
    page.locator("#zoom-in").click()
    assert _zoom(page) > fitted
    box = page.locator("#stage-heat").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    before = _zoom(page)
    page.mouse.wheel(0, -400)
    expect(page.locator("#zoom-level")).not_to_have_text(f"{before}%")
    assert _zoom(page) > before
    transforms = page.locator(".layers").evaluate_all("els => els.map(e => e.style.transform)")
    assert len(set(transforms)) == 1 and "scale" in transforms[0]
    page.locator("#zoom-fit").click()
    assert _zoom(page) == fitted

    # Heat map opacity.
    assert heat.evaluate("img => img.style.opacity") == "0.4"
    page.locator("#opacity").fill("85")
    expect(page.locator("#opacity-value")).to_have_text("85%")
    assert heat.evaluate("img => img.style.opacity") == "0.85"
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    # A DICOM: its 16-bit values windowed in the browser.
    page.get_by_role("button", name="Open wrist_view3.dcm full size").click()
    expect(page.locator("#wl-controls")).to_be_visible()
    expect(page.locator("#wl-note")).to_contain_text("DICOM window centre")
    full = _canvas_mean(page)
    center = float(page.locator("#wl-center").input_value())
    width = float(page.locator("#wl-width").input_value())
    assert width > 60_000  # no window in the file: the full 16-bit range
    page.locator("#wl-width").fill(str(round(width / 8)))  # narrower and lower: brighter bone
    page.locator("#wl-center").fill(str(round(center / 2)))
    narrow = _canvas_mean(page)
    assert narrow > full + 10
    page.get_by_role("button", name="Full range").click()
    assert abs(_canvas_mean(page) - full) < 1
    assert page.locator("#layers-heat canvas").count() == 1  # the heat pane is windowed too
    page.locator("#wl-width").fill(str(round(width / 3)))
    page.screenshot(path=str(VIEWER_COPY))
    assert VIEWER_COPY.stat().st_size > 10_000
    assert PATIENT not in page.content()
    page.locator("#viewer-close").click()
    expect(viewer).to_be_hidden()
    assert page.console_errors == []


def test_docs_render_offline(browser, server):
    """/docs with every request that leaves 127.0.0.1 refused: all its content still shows."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    refused, requested = [], []

    def only_local(route):
        url = route.request.url
        requested.append(url)
        if url.startswith(("http://127.0.0.1", "data:")):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(server + "/docs")
    expect(page.locator("h1")).to_contain_text("murakit API")
    expect(page.locator("h2", has_text="POST /api/predict")).to_be_visible()
    expect(page.locator("body")).to_contain_text("study_probability")
    expect(page.locator("body")).to_contain_text("uncertain_band")
    expect(page.locator("pre.example").first).to_contain_text("curl")
    # The stylesheet loaded from this server and applied.
    assert any(u.endswith("/static/docs.css") for u in requested)
    background = page.locator("pre.example").first.evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    assert background == "rgb(13, 17, 23)"
    page.screenshot(path=str(DOCS_COPY))
    assert refused == [] and errors == []
    context.close()
