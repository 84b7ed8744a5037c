"""murakit.infer.onnx: one ONNX graph for the ensemble that ONNX Runtime runs to PyTorch's numbers.

Measured on the test model (densenet-mini, 96 px, fp32): max |ORT - torch| ~ 1e-7 on
probabilities; the tests allow 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from murakit.data.imageio import read_grayscale  # noqa: E402
from murakit.data.index import load_index  # noqa: E402
from murakit.data.transforms import EvalTransform  # noqa: E402
from murakit.infer.model import Model  # noqa: E402
from murakit.infer.onnx import EnsembleProbability, onnx_session  # noqa: E402
from murakit.infer.studies import collect_studies  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def loaded(trained_run):
    return Model.load(trained_run, device="cpu", mixed_precision=False, channels_last=False)


@pytest.fixture(scope="module")
def exported(loaded, tmp_path_factory):
    # Not into the run folder: other tests share it.
    return loaded.export_onnx(tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def real_batch(synth_root):
    """Nine real images of the synthetic valid split."""
    return load_index(synth_root, ["valid"]).split("valid")[:9]


def test_sidecar_documents_the_contract(loaded, exported):
    import onnx

    onnx.checker.check_model(str(exported))
    meta = json.loads(exported.with_name("model.onnx.json").read_text())
    size = loaded.config.size
    assert meta["input"]["name"] == "image" and meta["output"]["name"] == "probability"
    assert meta["input"]["shape"] == ["N", 3, size, size] and meta["input"]["size"] == size
    assert meta["members"] == loaded.names and meta["threshold"] == 0.5
    assert meta["opset"] >= 18
    steps = " ".join(meta["input"]["steps"]).lower()
    for words in ("8-bit grayscale", "bilinear", "zero-pad", "centred", "3 channels", "255"):
        assert words in steps
    assert meta["input"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["input"]["std"] == [0.229, 0.224, 0.225]
    assert meta["check"]["max_abs_diff_vs_torch_fp32"] <= TOL
    session, _ = onnx_session(exported)
    batch_dim = session.get_inputs()[0].shape[0]
    assert isinstance(batch_dim, str)  # dynamic batch


def test_onnx_runtime_matches_pytorch_on_real_images(loaded, exported, real_batch):
    transform = EvalTransform(loaded.config.size)
    x = torch.stack([transform(read_grayscale(r.path)) for r in real_batch])
    with torch.no_grad():
        expected = EnsembleProbability(loaded.models).eval()(x).numpy()
    session, _ = onnx_session(exported)
    for part in (slice(0, 1), slice(1, 8), slice(None)):  # batch sizes 1, 7, 9: one graph
        got = session.run(None, {"image": x[part].numpy()})[0]
        assert got.shape == expected[part].shape
        diff = np.abs(got - expected[part]).max()
        assert diff <= TOL, f"ONNX Runtime differs from PyTorch by {diff:.3g}"


def test_predict_with_onnx_backend(loaded, exported, synth_root):
    studies = collect_studies([synth_root / "valid" / "XR_WRIST"])[:4]
    by_torch = loaded.predict_studies(studies)
    by_onnx = loaded.predict_studies(studies, backend="onnx", onnx_path=exported)
    assert by_onnx.backend == "onnx"
    torch_probs = [i.probability for i in by_torch.images]
    onnx_probs = [i.probability for i in by_onnx.images]
    assert onnx_probs == pytest.approx(torch_probs, abs=TOL)
    assert [s.probability for s in by_onnx.studies] == pytest.approx(
        [s.probability for s in by_torch.studies], abs=TOL
    )


def test_missing_onnx_file_and_old_opset(loaded, synth_root, tmp_path):
    studies = collect_studies([synth_root / "valid" / "XR_WRIST"])[:1]
    with pytest.raises(FileNotFoundError, match="murakit export"):
        loaded.predict_studies(studies, backend="onnx", onnx_path=tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset 17"):
        loaded.export_onnx(tmp_path / "m.onnx", opset=17)
