"""Export a run or an ensemble as ONE ONNX graph, for deployment without PyTorch.

The graph takes a float32 batch (N, 3, S, S), already preprocessed, and returns N
probabilities: the mean over members of each member's sigmoid output, exactly what
:func:`murakit.infer.batched.ensemble_probabilities` computes. Preprocessing stays outside
the graph (decoding PNG/DICOM is no job for ONNX) and is written out step by step in
``model.onnx.json`` beside it, so another language can reproduce it without reading our code.

torch 2.13's exporter is the torch.export-based one (``dynamo=True``; the TorchScript exporter
is deprecated and warns). It implements opset 18 and up; asking it for 17 fails to convert.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from murakit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from murakit.fsutil import atomic_write_json
from murakit.infer.model import LoadedModels

DEFAULT_OPSET = 18
MIN_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "probability"
SIDECAR_FORMAT = "murakit-onnx/1"


class EnsembleProbability(nn.Module):
    """Members' sigmoid probabilities averaged: (N, 3, S, S) -> (N,)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        probs = [torch.sigmoid(member(image)[:, 0].float()) for member in self.members]
        return torch.stack(probs).mean(dim=0)


def preprocessing_spec(loaded: LoadedModels) -> dict[str, Any]:
    """The input contract, in words and numbers (what murakit.data.transforms.EvalTransform
    and the model's quality fixes do)."""
    config = loaded.config
    size = int(config.size)
    fixes = {
        "fix_inverted": bool(config.fix_inverted),
        "mask_markers": bool(config.mask_markers),
        "panels": config.panels,
    }
    steps = [
        "decode to 8-bit grayscale (H, W) uint8: RGB by ITU-R 601 luma; 16-bit gray narrowed "
        "to 8 bits by its min-max range (or exactly, if it is widened 8-bit); DICOM through the "
        "modality LUT, then its VOI LUT/window (else min-max), MONOCHROME1 inverted",
    ]
    if any((fixes["fix_inverted"], fixes["mask_markers"], fixes["panels"] != "keep")):
        steps.append(
            f"apply murakit's data-quality fixes {fixes} (murakit.data.quality.apply_fixes)"
        )
    steps += [
        f"scale the longer side to {size} px with bilinear filtering (PIL Image.BILINEAR, "
        "antialiased when shrinking), the shorter side to round(side * scale), at least 1",
        f"zero-pad (black) to {size} x {size}, the image centred: offset "
        f"(({size} - new_w) // 2, ({size} - new_h) // 2)",
        "repeat the gray channel to 3 channels (R = G = B)",
        "divide by 255",
        f"subtract mean {list(IMAGENET_MEAN)} and divide by std {list(IMAGENET_STD)}, "
        "per channel (ImageNet)",
        f"stack as float32 NCHW: (N, 3, {size}, {size})",
    ]
    return {
        "size": size,
        "steps": steps,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "fixes": fixes,
    }


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
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    loaded: LoadedModels,
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
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"image": {0: batch}},
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
            "shape": ["N", 3, size, size],
            **preprocessing_spec(loaded),
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["N"],
            "meaning": "P(abnormal) per image: mean over members of sigmoid(logit); a study's "
            "probability is the mean over its images; abnormal if >= threshold",
        },
    }
    if verify:
        meta["check"] = verify_onnx(wrapper, out, size, device)
    atomic_write_json(out.with_name(out.name + ".json"), meta)
    return out


def verify_onnx(wrapper: nn.Module, path: Path, size: int, device, n: int = 3) -> dict[str, Any]:
    """Largest |ONNX Runtime - PyTorch| probability on a random fp32 batch of `n`."""
    import onnxruntime as ort

    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = wrapper(x.to(device)).cpu().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    return {"inputs": f"{n} random N(0,1) images", "max_abs_diff_vs_torch_fp32": diff}
