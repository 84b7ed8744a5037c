"""The web app against a real uvicorn server on 127.0.0.1: good studies (PNG and DICOM), every
kind of bad upload refused with the right status and a message naming the file, the server
still healthy afterwards, and concurrent requests answered as sequential ones are."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")

from bad_files import png_bomb_bytes, write_dicom  # noqa: E402
from murakit.data.index import load_index  # noqa: E402
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


def _dicom_bytes(gray: np.ndarray) -> bytes:
    """A 12-bit MONOCHROME2 DICOM file (the range detectors give), made in memory."""
    pytest.importorskip("pydicom")
    return write_dicom(io.BytesIO(), gray.astype(np.uint16) * 16, bits_stored=12).getvalue()


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
    assert "/health" in schema["paths"]
