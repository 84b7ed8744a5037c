"""The web app: upload the images of one study, get its probability and a heat map per image.

Uploads are untrusted, so every limit is checked before work is spent on a file: the body size
(before parsing), the number of files, each file's size, its type by content (PNG, JPEG or
DICOM magic bytes; the name proves nothing), and its pixel count from the header (a 50 kB PNG
can claim 20000 x 20000 pixels). Files are processed in memory; the multipart parser spools
large parts to anonymous temporary files that vanish when the request ends. Every error is JSON
``{"detail": "<plain words naming the file>"}``.

The models are loaded once and shared read-only by all requests; inference runs under a lock
because torch already uses every core for one batch, and decoding happens outside it.

For the page's viewer each image also comes back as the picture the model saw and its heat
map alone (RGBA), and a DICOM as its pixel values after the modality LUT (16-bit, zlib) with
the window stored in the file, for window/level in the browser. Nothing else of a DICOM
header is read into a response or a log: no patient name, id, date or institution.

The decision has three values, "uncertain" within ``UNCERTAIN_MARGIN`` of the threshold
(:mod:`murakit.infer.results`). The validation sensitivity and specificity at the operating
threshold come from the model folder's ``eval-valid/metrics.json`` (``murakit evaluate``),
per body part when the request names one; the body part changes nothing else, since the model
stores one threshold for all parts.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from murakit.data.imageio import (
    BadImageError,
    describe_content,
    read_dicom_values,
    sniff_format,
)
from murakit.evaluate.outputs import read_metrics_json
from murakit.infer.cam import CAM_SIZE
from murakit.infer.model import Model
from murakit.infer.results import UNCERTAIN_MARGIN, decision_of, label_of, uncertain_band
from murakit.infer.runtime import choose_backend

STATIC_DIR = Path(__file__).parent / "static"
MAX_FILES = 11  # MURA's largest study
MAX_BYTES = 20 * 2**20
MAX_PIXELS = 40_000_000  # a large digital radiograph is ~4300 x 3500 = 15 MP
MAX_OVERLAY_SIDE = 1024  # heat maps are sent as PNG in JSON; bigger adds bytes, not insight
VALIDATION_METRICS = Path("eval-valid") / "metrics.json"  # written by `murakit evaluate`
_NAME_LIMIT = 80
# The page's own policy: nothing from outside this server (no CDN, no external fonts).
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


# ------------------------------------------------------------------------------ schema


DecisionField = Literal["negative", "uncertain", "positive"]
_DECISION_HELP = (
    '"uncertain" when |probability - threshold| < uncertain_margin (inside uncertain_band), '
    'else "positive" (probability >= threshold) or "negative".'
)


class DicomPixels(BaseModel):
    """A DICOM's pixel values for window/level in the viewer (no header fields)."""

    width: int = Field(description="Columns of `data` (the image, shrunk to at most 1024 px).")
    height: int = Field(description="Rows of `data`.")
    data_zlib_base64: str = Field(
        description="zlib-compressed little-endian uint16 values u, row by row; the value after "
        "the modality LUT (rescale slope/intercept) is offset + scale * u."
    )
    offset: float = Field(description="Value of u = 0 (the smallest value).")
    scale: float = Field(description="Value step per unit of u (1 for integer values).")
    window_center: float = Field(description="The file's window centre, else mid-range.")
    window_width: float = Field(description="The file's window width, else the full range.")
    window_from_file: bool = Field(description="Whether the file stored a window.")
    minimum: float = Field(description="Smallest value (after the modality LUT).")
    maximum: float = Field(description="Largest value.")
    invert: bool = Field(description="MONOCHROME1: low values are shown white.")


class ImageResult(BaseModel):
    name: str = Field(description="The uploaded file's name.")
    probability: float = Field(description="P(abnormal) of this image, mean over members.")
    label: str = Field(
        description="The class called: the model's positive class name "
        '("abnormal" for MURA) when probability >= threshold, else its negative one.'
    )
    decision: DecisionField = Field(description=_DECISION_HELP)
    cam_png_base64: str | None = Field(
        None,
        description="The radiograph with its class activation map and a caption, as a base64 "
        "PNG (viridis colours, yellow: strongest evidence for abnormal); null when cam=false.",
    )
    original_png_base64: str | None = Field(
        None,
        description="The image as the model saw it (8-bit gray, after its quality fixes), at "
        "the heat map's size, base64 PNG; null when cam=false.",
    )
    heat_png_base64: str | None = Field(
        None,
        description="The heat map alone, RGBA base64 PNG aligned with original_png_base64 "
        "(alpha grows with the evidence); null when cam=false.",
    )
    dicom: DicomPixels | None = Field(
        None, description="For a DICOM upload with cam=true: its values for window/level."
    )


class OperatingPoint(BaseModel):
    """Validation figures of the model at a threshold, from `murakit evaluate`."""

    scope: str = Field(description='"all parts" or the body part, e.g. XR_WRIST.')
    sensitivity: float | None = Field(description="Share of abnormal studies called abnormal.")
    specificity: float | None = Field(description="Share of normal studies called normal.")
    n_studies: int
    n_abnormal_studies: int | None = None
    threshold: float = Field(description="The threshold the evaluation called studies at.")
    same_threshold: bool = Field(
        description="Whether that is the model's operating threshold (else re-run evaluate)."
    )
    split: str = Field(description="The split evaluated (valid).")
    source: str = Field(description="The file the figures come from, relative to the model.")


class PredictResponse(BaseModel):
    study_probability: float = Field(
        description="P(abnormal) of the study: the mean of its images' probabilities."
    )
    label: str = Field(description="The class called for the study (see the image's label).")
    positive: bool = Field(description="study_probability >= threshold")
    decision: DecisionField = Field(description=_DECISION_HELP)
    threshold: float = Field(description="The operating threshold stored with the model.")
    uncertain_margin: float = Field(
        description=f"Half-width of the uncertain band ({UNCERTAIN_MARGIN}, fixed)."
    )
    uncertain_band: tuple[float, float] = Field(
        description="(low, high) = threshold -/+ uncertain_margin, clipped to [0, 1]."
    )
    part: str | None = Field(
        description="Body part as given, or null. It selects which validation figures are "
        "returned; it does not change the probability, the threshold or the decision."
    )
    validation: OperatingPoint | None = Field(
        description="Validation sensitivity/specificity at the operating point, for `part` "
        "when the evaluation has it, else for all parts; null: not evaluated yet."
    )
    images: list[ImageResult]


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: str = Field(description="Name of the model folder (a run or an ensemble).")
    members: int = Field(description="Number of networks averaged.")
    size: int = Field(description="Input size the networks were trained at, in pixels.")
    arch: str
    threshold: float
    uncertain_margin: float
    uncertain_band: tuple[float, float]
    classes: list[str] = Field(description="Names of the negative and positive class.")
    backend: str
    max_files: int
    max_bytes: int
    parts: list[str] = Field(description="Accepted values of the `part` field.")
    validation: OperatingPoint | None = Field(
        description="All parts' validation figures; null: not evaluated yet."
    )
    validation_by_part: dict[str, OperatingPoint] = Field(
        description="The same per body part (empty when not evaluated)."
    )


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong, in plain words, naming the file.")


# ------------------------------------------------------------------------------ state


@dataclass
class _Service:
    model: Model
    threshold: float
    backend: str
    onnx_path: Path | None
    cam_size: int
    max_files: int
    max_bytes: int
    max_pixels: int
    lock: threading.Lock
    validation: OperatingPoint | None = None
    validation_by_part: dict[str, OperatingPoint] | None = None

    def operating_point(self, part: str | None) -> OperatingPoint | None:
        by_part = self.validation_by_part or {}
        return by_part.get(part, self.validation) if part else self.validation


def read_validation(
    model_dir: Path, threshold: float
) -> tuple[OperatingPoint | None, dict[str, OperatingPoint]]:
    """(all parts, per part) sensitivity and specificity from the model's evaluation on its
    valid split (``eval-valid/metrics.json``); (None, {}) when it has not been evaluated or the
    file cannot be read."""
    path = Path(model_dir) / VALIDATION_METRICS
    try:
        metrics = read_metrics_json(path)
        at = float(metrics.get("threshold", math.nan))
        common = {
            "threshold": at,
            "same_threshold": math.isclose(at, threshold, abs_tol=1e-9),
            "split": str(metrics.get("split", "valid")),
            "source": VALIDATION_METRICS.as_posix(),
        }

        def point(scope: str, group: dict) -> OperatingPoint:
            return OperatingPoint(
                scope=scope,
                sensitivity=group.get("sensitivity"),
                specificity=group.get("specificity"),
                n_studies=int(group["n_studies"]),
                n_abnormal_studies=group.get("n_abnormal_studies"),
                **common,
            )

        overall = point("all parts", metrics["overall"])
        by_part = {p: point(p, g) for p, g in (metrics.get("by_part") or {}).items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None, {}
    return overall, by_part


class _BodyLimit:
    """Refuse an upload whose body exceeds `limit` bytes before it is parsed or spooled: by its
    Content-Length when sent, else by counting as it streams in."""

    def __init__(self, app: ASGIApp, limit: int, paths: tuple[str, ...]) -> None:
        self.app = app
        self.limit = limit
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        message = (
            f"request body is larger than {_mb(self.limit)} "
            f"(at most {_mb(self.limit)} in all per request)"
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, message)
            return msg

        await self.app(scope, counting_receive, send)


def _mb(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.3g} MB"
    return f"{n / 2**10:.3g} kB" if n >= 2**10 else f"{n} bytes"


# ------------------------------------------------------------------------------ app


def create_app(
    model_dir: Path,
    *,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    device: str = "auto",
    backend: str = "auto",
    onnx_path: Path | None = None,
    cam_size: int = 0,
    model: Model | None = None,
) -> FastAPI:
    """The FastAPI app serving the model in `model_dir` (a run or an ensemble folder).

    `max_files`, `max_bytes` (per file) and `max_pixels` (per image, checked from the header)
    bound what one request may cost. `backend` "onnx" runs the exported graph (see
    :mod:`murakit.infer.onnx`), "auto" does where a current model.onnx is at hand, for the
    probabilities and the CAM overlays alike (a graph exported before graphs carried CAMs
    leaves the overlays to torch).
    """
    model = model or Model.load(Path(model_dir), device=device)
    backend = choose_backend(backend, model.source, onnx_path)
    service = _Service(
        model=model,
        threshold=model.threshold,
        backend=backend,
        onnx_path=onnx_path,
        cam_size=cam_size,
        max_files=max_files,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        lock=threading.Lock(),
    )
    service.validation, service.validation_by_part = read_validation(model.source, model.threshold)
    if backend == "onnx":  # fail at start-up, not at the first request
        from murakit.infer.onnx import onnx_file, onnx_session

        onnx_session(onnx_file(model, onnx_path))

    app = FastAPI(
        title="murakit",
        summary="Abnormality of musculoskeletal radiograph studies (MURA-trained DenseNets).",
        description=(
            "Upload the images of one study (1 to 11 PNG, JPEG or DICOM files) to get the "
            "probability that the study is abnormal and a class activation map per image. "
            "Research software, not a medical device."
        ),
        version="1",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: /docs is our own page instead
        redoc_url=None,
    )
    app.state.service = service
    # Multipart framing and the small form fields need a little room beyond the files.
    app.add_middleware(_BodyLimit, limit=max_files * max_bytes + 2**16, paths=("/api/predict",))
    _install_error_handlers(app)

    @app.middleware("http")
    async def page_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.url.path in ("/", "/docs") or request.url.path.startswith("/static/"):
            response.headers["Content-Security-Policy"] = _PAGE_CSP
            response.headers["Referrer-Policy"] = "no-referrer"
        return response

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        from murakit.serve.docs import render_docs

        base = str(request.base_url).rstrip("/")
        return HTMLResponse(render_docs(app.openapi(), base))

    @app.get("/health", response_model=HealthResponse, summary="Model and limits")
    def health() -> HealthResponse:
        """Whether the server is up, which model it serves, its operating threshold, uncertain
        band and validation figures, and the upload limits."""
        return HealthResponse(
            status="ok",
            model=Path(model.source).name,
            members=len(model.models),
            size=int(model.config.size),
            arch=model.config.arch,
            threshold=service.threshold,
            uncertain_margin=UNCERTAIN_MARGIN,
            uncertain_band=uncertain_band(service.threshold),
            classes=list(model.classes),
            backend=service.backend,
            max_files=max_files,
            max_bytes=max_bytes,
            parts=list(model.parts),
            validation=service.validation,
            validation_by_part=service.validation_by_part or {},
        )

    error_responses = {
        code: {"model": ErrorResponse, "description": text}
        for code, text in {
            400: "No files, an empty file, or an unknown body part.",
            413: "Too many files, a file too large, or an image with too many pixels.",
            415: "A file that is not a PNG, JPEG or DICOM image (judged by content).",
            422: "A damaged image file, or malformed form fields.",
        }.items()
    }

    @app.post(
        "/api/predict",
        response_model=PredictResponse,
        summary="Predict one study",
        description=(
            f"Multipart form: `files`, 1 to {max_files} images of ONE study (PNG, JPEG or "
            f"DICOM, judged by content, at most {_mb(max_bytes)} and "
            f"{max_pixels / 1e6:g} megapixels each); optional `part` (one of "
            f"{', '.join(model.parts)}: selects which validation figures come back, nothing "
            "else); optional `cam` (default true) for heat maps and the viewer's pictures. "
            "The study probability is the mean of the images' probabilities, each the mean "
            'over the ensemble\'s members. `decision` is "uncertain" within '
            f"{UNCERTAIN_MARGIN:g} of the threshold. DICOM header fields (patient name, id, "
            "dates) are never returned or logged."
        ),
        responses=error_responses,
    )
    async def predict(
        files: list[UploadFile] | None = File(
            None, description="The study's images (repeat the field for each file)."
        ),
        part: str | None = Form(
            None,
            description="Body part, e.g. XR_WRIST (optional): selects the validation figures "
            "returned; the probability and the decision do not depend on it.",
        ),
        cam: bool = Form(
            True,
            description="Also return a CAM overlay per image, and the viewer's pictures "
            "(original, heat map alone, DICOM values).",
        ),
    ) -> PredictResponse:
        files = files or []
        if not files:
            raise HTTPException(
                400, f"no files uploaded: send 1 to {max_files} images of one study as 'files'"
            )
        if len(files) > max_files:
            raise HTTPException(
                413,
                f"{len(files)} files uploaded; at most {max_files} images of one study are "
                "accepted per request",
            )
        part = _check_part(part, service.model.parts)
        uploads = [
            (_display_name(f.filename, i), await _read_limited(f, i, max_bytes))
            for i, f in enumerate(files)
        ]
        return await run_in_threadpool(_predict_uploads, service, uploads, part, cam)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is {"detail": "<text>"}, also validation errors and crashes."""

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg"))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); see the server log"},
            status_code=500,
        )


def _display_name(filename: str | None, index: int) -> str:
    """The base name of an upload, for messages (browsers send names only, curl may not)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(ch for ch in name if ch.isprintable()) or f"file {index + 1}"
    return name if len(name) <= _NAME_LIMIT else name[: _NAME_LIMIT - 3] + "..."


def _check_part(part: str | None, parts: Sequence[str]) -> str | None:
    if part is None or not part.strip():
        return None
    value = part.strip().upper()
    if not value.startswith("XR_"):
        value = "XR_" + value
    if value not in parts:
        raise HTTPException(400, f"unknown body part {part!r}; choose one of: {', '.join(parts)}")
    return value


async def _read_limited(upload: UploadFile, index: int, max_bytes: int) -> bytes:
    name = _display_name(upload.filename, index)
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"{name} is larger than the {_mb(max_bytes)} limit per file")
    if not data:
        raise HTTPException(400, f"{name} is empty (0 bytes)")
    return data


ACCEPTED_FORMATS = ("PNG", "JPEG", "DICOM")


def _decode(service: _Service, name: str, data: bytes) -> np.ndarray:
    """The upload as the model sees it (its Preprocessor), or an HTTP error naming the file."""
    if sniff_format(data[:132]) not in ACCEPTED_FORMATS:
        raise HTTPException(
            415, f"{name} is not a PNG, JPEG or DICOM image ({describe_content(data[:132])})"
        )
    try:
        return service.model.preprocessor.decode(data, name, max_pixels=service.max_pixels)
    except BadImageError as err:
        status = 413 if "decompression bomb" in err.problem else 422
        raise HTTPException(status, str(err)) from None


def _predict_uploads(
    service: _Service, uploads: list[tuple[str, bytes]], part: str | None, cam: bool
) -> PredictResponse:
    images = [_decode(service, name, data) for name, data in uploads]
    threshold = service.threshold
    with service.lock:
        probs = service.model.image_probabilities(
            images, backend=service.backend, onnx_path=service.onnx_path
        )
        size = service.cam_size or CAM_SIZE
        cams = [
            service.model.cam(
                img,
                size=size,
                predict_size=size,
                fixed=True,
                backend=service.backend,
                onnx_path=service.onnx_path,
            )
            if cam
            else None
            for img in images
        ]
    results = []
    for (name, data), img, p, image_cam in zip(uploads, images, probs, cams, strict=True):
        result = ImageResult(
            name=name,
            probability=float(p),
            label=label_of(float(p), threshold, service.model.classes),
            decision=decision_of(float(p), threshold),
        )
        if image_cam is not None:
            shown = _display_size(img.shape[1], img.shape[0])
            result.cam_png_base64 = _png_base64(
                image_cam.overlay(caption=name, probability=float(p))
            )
            result.original_png_base64 = _png_base64(Image.fromarray(img, "L"), shown)
            result.heat_png_base64 = _png_base64(image_cam.heat_layer(), shown)
            if sniff_format(data[:132]) == "DICOM":
                result.dicom = _dicom_pixels(data, img.shape, shown)
        results.append(result)
    study = float(np.mean(probs))
    return PredictResponse(
        study_probability=study,
        label=label_of(study, threshold, service.model.classes),
        positive=study >= threshold,
        decision=decision_of(study, threshold),
        threshold=threshold,
        uncertain_margin=UNCERTAIN_MARGIN,
        uncertain_band=uncertain_band(threshold),
        part=part,
        validation=service.operating_point(part),
        images=results,
    )


def _display_size(width: int, height: int) -> tuple[int, int]:
    """The viewer's pictures: the image's own size, the longer side at most MAX_OVERLAY_SIDE."""
    scale = min(1.0, MAX_OVERLAY_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _dicom_pixels(data: bytes, shape: tuple[int, ...], size: tuple[int, int]) -> DicomPixels | None:
    """The first frame's values after the modality LUT (:func:`read_dicom_values`), shrunk to
    ``size``, and the file's window, for window/level in the browser; None when the file is
    not plain grayscale or its geometry differs from what the model saw (a fix cropped it).
    Only pixel and display attributes are read: no header field reaches the response."""
    try:
        dicom = read_dicom_values(data)
    except BadImageError:  # the image already decoded for the model; W/L is a bonus
        return None
    values = dicom.values
    if values.shape != tuple(shape[:2]):
        return None
    center, width = dicom.window_center, dicom.window_width
    if values.shape[::-1] != size:
        values = np.asarray(Image.fromarray(values, "F").resize(size, Image.Resampling.BOX))
    lo, hi = float(values.min()), float(values.max())
    whole = np.array_equal(values, np.rint(values)) and hi - lo <= 65535
    scale = 1.0 if whole or hi == lo else (hi - lo) / 65535
    quantized = np.rint((values - lo) / scale).clip(0, 65535).astype("<u2")
    from_file = center is not None and width is not None and width >= 1
    return DicomPixels(
        width=size[0],
        height=size[1],
        data_zlib_base64=base64.b64encode(zlib.compress(quantized.tobytes(), 6)).decode("ascii"),
        offset=lo,
        scale=scale,
        window_center=center if from_file else (lo + hi) / 2,
        window_width=width if from_file else max(1.0, hi - lo),
        window_from_file=from_file,
        minimum=lo,
        maximum=hi,
        invert=dicom.invert,
    )


def _png_base64(picture, size: tuple[int, int] | None = None) -> str:
    if size is not None and picture.size != size:
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    elif max(picture.size) > MAX_OVERLAY_SIDE:
        picture = picture.copy()
        picture.thumbnail((MAX_OVERLAY_SIDE, MAX_OVERLAY_SIDE))
    buffer = io.BytesIO()
    # level 1: a third faster than 3 on a CAM overlay, about the same size (photographic
    # content barely compresses); the viewer's pictures are on every request's path
    picture.save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------ running


def run(
    model_dir: Path, host: str = "127.0.0.1", port: int = 8000, **options
) -> None:  # pragma: no cover - blocks until interrupted
    """Serve `model_dir` with uvicorn until interrupted; `options` go to :func:`create_app`."""
    import uvicorn

    uvicorn.run(create_app(Path(model_dir), **options), host=host, port=port, log_level="info")


@contextlib.contextmanager
def running_server(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0
) -> Iterator[str]:
    """Run `app` with a real uvicorn server in a background thread; yields its base URL.

    Port 0 takes a free port (the socket is bound here, so there is no race for it). Used by
    the tests and the latency benchmark.
    """
    import uvicorn

    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every response waited ~40 ms for a delayed ACK (as `murakit serve` never did)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
