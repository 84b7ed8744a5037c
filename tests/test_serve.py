"""The web app against a real uvicorn server on 127.0.0.1: good studies (PNG and DICOM), every
kind of bad upload refused with the right status and a message naming the file, the server
still healthy afterwards, and concurrent requests answered as sequential ones are; the
uncertain band, the validation figures at the operating point, the viewer's pictures and DICOM
values, DICOM patient identifiers kept out of responses and logs, and the offline /docs."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")

from bad_files import png_bomb_bytes, write_dicom  # noqa: E402
from murakit.data.index import load_index  # noqa: E402
from murakit.evaluate.outputs import read_metrics_json  # noqa: E402
from murakit.infer.results import decision_of  # noqa: E402
from murakit.serve.app import create_app, running_server  # noqa: E402


@pytest.fixture(scope="module")
def server(trained_run):
    app = create_app(trained_run, device="cpu", cam_size=256)  # 4x cheaper than 512
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def study_pngs(synth_root) -> list[tuple[str, bytes]]:
    """The images of a multi-view study of the synthetic valid split."""
    records = load_index(synth_root, ["valid"]).split("valid")
    folders: dict[Path, list[Path]] = {}
    for r in records:
        folders.setdefault(r.path.parent, []).append(r.path)
    paths = max(folders.values(), key=len)[:3]
    return [(p.name, p.read_bytes()) for p in paths]


def _dicom_bytes(gray: np.ndarray, **elements) -> bytes:
    """A 12-bit MONOCHROME2 DICOM file (the range detectors give), made in memory."""
    pytest.importorskip("pydicom")
    pixels = gray.astype(np.uint16) * 16
    return write_dicom(io.BytesIO(), pixels, bits_stored=12, **elements).getvalue()


def _png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def _post(client, files, **fields):
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/api/predict", files=parts, data=fields)


def test_health_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["members"] == 1 and health["size"] == 96
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        response = client.get(asset)
        assert response.status_code == 200 and "http://" not in response.text
    assert "https://" not in page.text and "http://" not in page.text  # no CDN, no fonts
    assert health["uncertain_band"] == [0.4, 0.6] and health["uncertain_margin"] == 0.1
    assert health["validation"] is None and health["validation_by_part"] == {}  # not evaluated


def test_predict_png_and_dicom_study(client, study_pngs):
    gray = np.asarray(Image.open(io.BytesIO(study_pngs[0][1])).convert("L"))
    files = [*study_pngs, ("view.dcm", _dicom_bytes(gray))]
    response = _post(client, files, part="XR_WRIST")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["part"] == "XR_WRIST" and body["threshold"] == 0.5
    assert [i["name"] for i in body["images"]] == [name for name, _ in files]
    probs = [i["probability"] for i in body["images"]]
    assert all(0 < p < 1 for p in probs)
    assert body["study_probability"] == pytest.approx(np.mean(probs), abs=1e-9)
    assert body["label"] == ("abnormal" if body["study_probability"] >= 0.5 else "normal")
    widths = [Image.open(io.BytesIO(data)).width for _, data in study_pngs] + [gray.shape[1]]
    for image, width in zip(body["images"], widths, strict=True):
        with Image.open(io.BytesIO(base64.b64decode(image["cam_png_base64"]))) as overlay:
            assert overlay.format == "PNG" and overlay.mode == "RGB"
            assert overlay.width == width  # drawn over the original, not the padded square
    without_cam = _post(client, files[:1], cam="false").json()
    assert without_cam["images"][0]["cam_png_base64"] is None
    assert without_cam["images"][0]["probability"] == pytest.approx(probs[0], abs=1e-6)
    # The uncertain band, from murakit.infer.results, for the study and every image.
    assert body["uncertain_band"] == [0.4, 0.6] and body["uncertain_margin"] == 0.1
    assert body["decision"] == decision_of(body["study_probability"], 0.5)
    assert [i["decision"] for i in body["images"]] == [decision_of(p, 0.5) for p in probs]
    assert body["validation"] is None  # this run was never evaluated


def test_viewer_pictures_and_dicom_values(client, study_pngs):
    """The original and the heat map alone, aligned; a DICOM's values for window/level."""
    gray = np.asarray(Image.open(io.BytesIO(study_pngs[0][1])).convert("L"))
    dicom = _dicom_bytes(gray, WindowCenter=1000, WindowWidth=1500)
    body = _post(client, [study_pngs[0], ("view.dcm", dicom)]).json()
    png, dcm = body["images"]
    for image in (png, dcm):
        original, heat = _png(image["original_png_base64"]), _png(image["heat_png_base64"])
        assert original.mode == "L" and heat.mode == "RGBA"
        assert original.size == heat.size == (gray.shape[1], gray.shape[0])
        if image is png:  # what the model saw: the PNG as is (no fixes in this run)
            assert np.array_equal(np.asarray(original), gray)
    assert png["dicom"] is None
    pixels = dcm["dicom"]
    assert (pixels["width"], pixels["height"]) == (gray.shape[1], gray.shape[0])
    assert pixels["window_from_file"] and pixels["window_center"] == 1000
    assert pixels["window_width"] == 1500 and not pixels["invert"]
    raw = np.frombuffer(zlib.decompress(base64.b64decode(pixels["data_zlib_base64"])), "<u2")
    values = pixels["offset"] + pixels["scale"] * raw.reshape(gray.shape).astype(np.float64)
    assert np.array_equal(values, gray.astype(np.float64) * 16)  # 12-bit values, exactly
    assert pixels["minimum"] == 16 * int(gray.min()) and pixels["maximum"] == 16 * int(gray.max())


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("empty", 400, ["empty.png", "empty"]),
        ("text", 415, ["notes.png", "not a PNG, JPEG or DICOM", "text"]),
        ("bomb", 413, ["huge.png", "20000x20000", "decompression bomb"]),
        ("truncated", 422, ["cut.png", "truncated or corrupt"]),
        ("twelve", 413, ["12 files", "at most 11"]),
        ("none", 400, ["no files"]),
        ("part", 400, ["unknown body part", "XR_KNEE"]),
    ],
)
def test_bad_uploads_refused_clearly(client, study_pngs, case, status, words):
    good = study_pngs[0]
    files = {
        "empty": [good, ("empty.png", b"")],
        "text": [("notes.png", b"Patient notes: left wrist, fall on outstretched hand.\n")],
        "bomb": [("huge.png", png_bomb_bytes())],
        "truncated": [("cut.png", good[1][: len(good[1]) // 2])],
        "twelve": [good] * 12,
        "none": [],
        "part": [good],
    }[case]
    fields = {"part": "XR_KNEE"} if case == "part" else {}
    if case == "none":
        response = client.post("/api/predict", data={"part": "XR_HAND"})
    else:
        response = _post(client, files, **fields)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail


def test_oversized_file_and_body(trained_run, study_pngs):
    """Per-file and whole-body limits, on a server with small limits (not 20 MB uploads)."""
    app = create_app(trained_run, device="cpu", max_bytes=100_000, max_files=2)
    big = ("big.png", study_pngs[0][1] + b"\x00" * 100_000)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        response = _post(c, [big])
        assert response.status_code == 413 and "big.png is larger than" in response.json()["detail"]
        response = _post(
            c, [("a.png", bytes(150_000)), ("b.png", bytes(150_000)), ("c.png", bytes(150_000))]
        )
        assert response.status_code == 413 and "request body" in response.json()["detail"]
        assert c.get("/health").status_code == 200


def test_still_serves_after_bad_requests_and_writes_nothing(client, study_pngs, trained_run):
    before = sorted(p.name for p in trained_run.iterdir())
    for files in ([("x.png", b"")], [("y.png", b"hello")], [("z.png", png_bomb_bytes())]):
        assert _post(client, files).status_code >= 400
    response = _post(client, study_pngs, cam="false")
    assert response.status_code == 200 and len(response.json()["images"]) == len(study_pngs)
    assert sorted(p.name for p in trained_run.iterdir()) == before


def test_concurrent_requests_agree_with_sequential(client, study_pngs):
    sequential = _post(client, study_pngs, cam="false").json()

    def one(_):
        return _post(client, study_pngs, cam="false")

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(one, range(6)))
    assert [r.status_code for r in responses] == [200] * 6
    for r in responses:
        body = r.json()
        assert body["study_probability"] == pytest.approx(sequential["study_probability"], abs=1e-6)
        assert [i["probability"] for i in body["images"]] == pytest.approx(
            [i["probability"] for i in sequential["images"]], abs=1e-6
        )


def test_validation_figures_follow_the_body_part(trained_run, study_pngs, tmp_path):
    """Sensitivity and specificity at the operating point come from the model's
    eval-valid/metrics.json: all parts, or the part named; the probability does not move."""
    from murakit.evaluation import evaluate_model

    run = shutil.copytree(trained_run, tmp_path / "run")
    evaluate_model(run, workers=0, device="cpu")
    metrics = read_metrics_json(run / "eval-valid" / "metrics.json")
    part = sorted(metrics["by_part"])[0]
    app = create_app(run, device="cpu", cam_size=64)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        health = c.get("/health").json()
        overall = health["validation"]
        assert overall["scope"] == "all parts" and overall["same_threshold"]
        assert overall["sensitivity"] == metrics["overall"]["sensitivity"]
        assert overall["specificity"] == metrics["overall"]["specificity"]
        assert overall["n_studies"] == metrics["overall"]["n_studies"]
        assert set(health["validation_by_part"]) == set(metrics["by_part"])
        plain = _post(c, study_pngs[:1], cam="false").json()
        assert plain["validation"] == overall
        by_part = _post(c, study_pngs[:1], cam="false", part=part).json()
        assert by_part["validation"]["scope"] == part
        assert by_part["validation"]["specificity"] == metrics["by_part"][part]["specificity"]
        assert by_part["study_probability"] == plain["study_probability"]
        assert by_part["decision"] == plain["decision"]


IDENTIFIERS = {
    "PatientName": "DOE^JANE^Q",
    "PatientID": "MRN-5550123",
    "PatientBirthDate": "19420317",
    "OtherPatientIDs": "ALT-77-42",
    "InstitutionName": "St-Elsewhere-General",
    "AccessionNumber": "ACC-99-0001",
}


def test_dicom_identifiers_are_never_echoed_or_logged(trained_run, study_pngs, caplog, capfd):
    gray = np.asarray(Image.open(io.BytesIO(study_pngs[0][1])).convert("L"))
    good = _dicom_bytes(gray, **IDENTIFIERS)
    broken = good[: len(good) - len(gray.tobytes())]  # header intact, pixel data cut short
    caplog.set_level(logging.DEBUG)
    app = create_app(trained_run, device="cpu", cam_size=64)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        ok = _post(c, [("scan.dcm", good)])
        bad = _post(c, [("scan.dcm", broken)])
        bad_alone = _post(c, [("scan.dcm", broken), ("x.dcm", good[:200])])
    assert ok.status_code == 200 and bad.status_code == 422 and bad_alone.status_code >= 400
    texts = [ok.text, bad.text, bad_alone.text, json.dumps(ok.json()), bad.json()["detail"]]
    texts += [caplog.text, *capfd.readouterr()]
    for value in IDENTIFIERS.values():
        for text in texts:
            assert value not in text
            assert value.replace("^", " ") not in text


def test_docs_page_needs_no_network(client):
    """/docs is rendered from the OpenAPI schema on the server: no CDN script or style."""
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    text = page.text
    for needed in ("/api/predict", "/health", "study_probability", "decision", "uncertain_band"):
        assert needed in text
    assert "<script" not in text and 'src="http' not in text and 'href="http' not in text
    assert "cdn" not in text.lower()
    assert client.get("/static/docs.css").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc also loads from a CDN: off


def test_openapi_documents_predict(client):
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/api/predict"]["post"]
    assert op["summary"] == "Predict one study" and "1 to 11" in op["description"]
    assert "multipart/form-data" in op["requestBody"]["content"]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/PredictResponse")
    assert {"400", "413", "415", "422"} <= set(op["responses"])
    props = schema["components"]["schemas"]["PredictResponse"]["properties"]
    assert {"study_probability", "label", "threshold", "part", "images"} <= set(props)
    assert {"decision", "uncertain_band", "uncertain_margin", "validation"} <= set(props)
    image = schema["components"]["schemas"]["ImageResult"]["properties"]
    assert {"decision", "original_png_base64", "heat_png_base64", "dicom"} <= set(image)
    assert "/health" in schema["paths"]
