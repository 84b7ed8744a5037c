"""Export a run or an ensemble as ONE ONNX graph, for deployment without PyTorch.

The graph takes a float32 batch (N, 3, S, S), already preprocessed, and returns N
probabilities: the mean over members of each member's sigmoid output, exactly what
:meth:`murakit.infer.model.Model.probabilities` computes, and the ensemble's class
activation maps (N, S/32, S/32), exactly what :func:`murakit.infer.cam.compute_cam` computes.
S is the training size for predictions and any other square size for CAMs (512 in the
reference): DenseNet is convolutional up to its global pooling, and ONNX Runtime ran a 512 px
CAM in about half torch's time on a 2-core CPU (bench/predict_latency.py). Preprocessing stays
outside the graph (decoding PNG/DICOM is no job for ONNX) and is written out step by step in
``model.onnx.json`` beside it, so another language can reproduce it without reading our code.

torch 2.13's exporter is the torch.export-based one (``dynamo=True``; the TorchScript exporter
is deprecated and warns). It implements opset 18 and up; asking it for 17 fails to convert.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from murakit.data.transforms import EvalTransform
from murakit.fsutil import atomic_write_json
from murakit.infer.cam import CAM_SIZE, CamResult
from murakit.model.densenet import logits_and_cams

if TYPE_CHECKING:
    from murakit.infer.model import Model
    from murakit.infer.preprocess import Preprocessor

DEFAULT_OPSET = 18
MIN_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "probability"
CAM_OUTPUT_NAME = "cam"
SIDECAR_FORMAT = "murakit-onnx/1"


class EnsembleProbability(nn.Module):
    """Members' sigmoid probabilities averaged, and their CAMs averaged:
    (N, 3, S, S) -> ((N,), (N, h, w)); one forward pass per member gives both."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs, cams = [], []
        for member in self.members:
            logit, cam = logits_and_cams(member, image)
            probs.append(torch.sigmoid(logit.float()))
            cams.append(cam.float())
        return torch.stack(probs).mean(dim=0), torch.stack(cams).mean(dim=0)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs about missing torchvision ops and warns about its own internals;
    neither concerns the user."""
    names = ["torch.onnx", "torch.export", "torch._export", "onnxscript"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|copyreg)")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch")
            # height and width are one square dim; the exporter notes it keeps one name
            warnings.filterwarnings("ignore", message=r"# The axis name", category=UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    loaded: Model,
    out: Path,
    opset: int = DEFAULT_OPSET,
    *,
    verify: bool = True,
) -> Path:
    """Write the ensemble as one ONNX graph at `out` (e.g. ``model.onnx``) and its contract as
    ``out + ".json"``. Batch size is dynamic. With `verify`, ONNX Runtime is run against
    PyTorch on a random batch and the largest difference is recorded in the sidecar.
    Returns `out`."""

    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is not supported: torch's ONNX exporter implements opset "
            f"{MIN_OPSET} and up"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = int(loaded.config.size)
    device = next(loaded.models[0].parameters()).device
    wrapper = EnsembleProbability([m.float().eval() for m in loaded.models]).eval()
    example = torch.randn(2, 3, size, size, device=device)  # 2, not 1: 1 would specialise
    batch = torch.export.Dim("batch", min=1, max=4096)
    side = torch.export.Dim("side", min=32, max=4096)  # square: height and width are one dim
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                (example,),
                tmp,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME, CAM_OUTPUT_NAME],
                dynamic_shapes={"image": {0: batch, 2: side, 3: side}},
                opset_version=opset,
                external_data=False,
                verbose=False,
                report=False,
            )
        del program
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

    import onnx

    model_proto = onnx.load(str(out), load_external_data=False)
    actual_opset = next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))
    meta: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "model": str(loaded.source),
        "arch": loaded.config.arch,
        "members": list(loaded.names),
        "threshold": loaded.threshold,
        "opset": int(actual_opset),
        "torch": torch.__version__,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["N", 3, "S", "S"],
            "sizes": f"S = {size} (the training size) for predictions; any S >= 32 for CAMs",
            **loaded.preprocessor.spec(),
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["N"],
            "meaning": "P(abnormal) per image: mean over members of sigmoid(logit); a study's "
            "probability is the mean over its images; abnormal if >= threshold",
        },
        "cam_output": {
            "name": CAM_OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["N", "ceil(S/32)", "ceil(S/32)"],
            "meaning": "class activation map in logit units, mean over members: per cell, the "
            "classifier (weights and bias) applied to that cell's last feature maps, so its "
            "mean is the mean logit at S; positive cells are evidence for abnormal",
        },
    }
    if verify:
        meta["check"] = verify_onnx(wrapper, out, size, device)
    atomic_write_json(out.with_name(out.name + ".json"), meta)
    return out


def verify_onnx(wrapper: nn.Module, path: Path, size: int, device, n: int = 3) -> dict[str, Any]:
    """Largest |ONNX Runtime - PyTorch| on random fp32 batches of `n`: the probability at the
    training size, the CAM (logit units) at the CAM size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check: dict[str, Any] = {"inputs": f"{n} random N(0,1) images"}
    for key, side, output in (
        ("max_abs_diff_vs_torch_fp32", size, 0),
        (f"cam_{CAM_SIZE}px_max_abs_diff_vs_torch_fp32", CAM_SIZE, 1),
    ):
        x = torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = wrapper(x.to(device))[output].cpu().numpy()
        got = session.run(None, {INPUT_NAME: x.numpy()})[output]
        check[key] = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    return check


def onnx_file(loaded: Model, onnx_path: Path | None) -> Path:
    """The ONNX graph to use: the one given, else model.onnx in the model folder."""
    path = Path(onnx_path) if onnx_path else Path(loaded.source) / "model.onnx"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no ONNX model; write one with `murakit export {loaded.source}`"
        )
    return path


_sessions: dict[tuple[str, int], Any] = {}
_sessions_lock = threading.Lock()


def onnx_session(path: Path) -> tuple[Any, dict[str, Any]]:
    """(onnxruntime session, sidecar metadata), cached per file version: building a session
    costs far more than running one study."""
    path = Path(path).resolve()
    key = (str(path), path.stat().st_mtime_ns)
    with _sessions_lock:
        if key not in _sessions:
            import onnxruntime as ort

            meta_file = path.with_name(path.name + ".json")
            if not meta_file.exists():
                raise FileNotFoundError(f"{meta_file}: missing (it says how to preprocess)")
            meta = json.loads(meta_file.read_text())
            options = ort.SessionOptions()
            options.log_severity_level = 3
            # Idle threads sleep instead of spinning: a server shares its cores with decoding,
            # CAMs and other requests (measured faster on a busy 2-core machine, too).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            _sessions[key] = (session, meta)
        return _sessions[key]


def onnx_probabilities(
    path: Path, images: Sequence[np.ndarray], *, batch_size: int = 16
) -> np.ndarray:
    """P(abnormal) per image from the exported graph, preprocessed as its sidecar says."""
    session, meta = onnx_session(path)
    transform = EvalTransform(int(meta["input"]["size"]))
    input_name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([transform(img).numpy() for img in images[start : start + batch_size]])
        out.append(session.run([OUTPUT_NAME], {input_name: batch})[0].reshape(-1))
    return np.concatenate(out).astype(np.float64)


def graph_has_cam(path: Path) -> bool:
    """Whether the graph gives CAMs at any size (earlier exports did not: one output, the
    input fixed at the training size; re-export them with `murakit export`)."""
    session, _ = onnx_session(path)
    return CAM_OUTPUT_NAME in {o.name for o in session.get_outputs()}


def onnx_cam(
    path: Path, preprocessor: Preprocessor, image: np.ndarray, size: int, predict_size: int
) -> CamResult:
    """:func:`murakit.infer.cam.compute_cam` through the exported graph: the members' mean
    CAM at ``size`` and their mean probability at ``predict_size``."""
    session, _ = onnx_session(path)
    x = preprocessor.tensor(image, size)[None].numpy()
    probability, cam = session.run([OUTPUT_NAME, CAM_OUTPUT_NAME], {INPUT_NAME: x})
    if predict_size != size:
        x = preprocessor.tensor(image, predict_size)[None].numpy()
        probability = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    cam = np.ascontiguousarray(cam[0], dtype=np.float32)
    return CamResult(cam, float(cam.mean()), float(probability[0]), size, predict_size)
