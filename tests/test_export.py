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
CAM_TOL = 1e-4  # logit units, per cell; measured ~3e-6 on DenseNet-169 at 512 px


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
    assert meta["input"]["shape"] == ["N", 3, "S", "S"] and meta["input"]["size"] == size
    assert meta["cam_output"]["name"] == "cam" and "logit units" in meta["cam_output"]["meaning"]
    assert meta["members"] == loaded.names and meta["threshold"] == 0.5
    assert meta["opset"] >= 18
    steps = " ".join(meta["input"]["steps"]).lower()
    for words in ("8-bit grayscale", "bilinear", "zero-pad", "centred", "3 channels", "255"):
        assert words in steps
    assert meta["input"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["input"]["std"] == [0.229, 0.224, 0.225]
    assert meta["check"]["max_abs_diff_vs_torch_fp32"] <= TOL
    assert meta["check"]["cam_512px_max_abs_diff_vs_torch_fp32"] <= CAM_TOL
    session, _ = onnx_session(exported)
    batch, _, height, width = session.get_inputs()[0].shape
    assert isinstance(batch, str) and isinstance(height, str)  # dynamic batch and size
    assert height == width  # one dim: square inputs only


def test_onnx_runtime_matches_pytorch_on_real_images(loaded, exported, real_batch):
    transform = EvalTransform(loaded.config.size)
    x = torch.stack([transform(read_grayscale(r.path)) for r in real_batch])
    with torch.no_grad():
        expected = EnsembleProbability(loaded.models).eval()(x)[0].numpy()
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


@pytest.mark.parametrize("size,predict_size", [(512, None), (160, 96), (96, 96)])
def test_cam_through_onnx_runtime_is_the_torch_cam(
    loaded, exported, real_batch, size, predict_size
):
    """One graph gives the probability at the training size and the CAM at any square size;
    both agree with the torch path's, and the map's mean is still the logit at its size."""
    image = read_grayscale(real_batch[0].path)
    kwargs = {"size": size, "predict_size": predict_size}
    by_torch = loaded.cam(image, backend="torch", **kwargs).result
    by_onnx = loaded.cam(image, backend="onnx", onnx_path=exported, **kwargs).result
    assert by_onnx.cam.shape == by_torch.cam.shape == (-(-size // 32),) * 2
    assert np.abs(by_onnx.cam - by_torch.cam).max() <= CAM_TOL
    assert by_onnx.logit == pytest.approx(by_torch.logit, abs=CAM_TOL)
    assert by_onnx.logit == pytest.approx(float(by_onnx.cam.mean()), abs=1e-6)
    assert by_onnx.probability == pytest.approx(by_torch.probability, abs=TOL)
    assert by_onnx.predict_size == by_torch.predict_size == (predict_size or loaded.config.size)


def test_graph_without_cam_output_leaves_cams_to_torch(loaded, real_batch, tmp_path):
    """A graph exported before graphs carried CAMs (one output, input fixed at the training
    size) still serves probabilities; CAMs then come from the torch models."""
    from murakit.infer.onnx import graph_has_cam

    size = loaded.config.size
    old = tmp_path / "model.onnx"
    probability_only = _FirstOutput(EnsembleProbability(loaded.models).eval())
    with torch.no_grad():
        torch.onnx.export(
            probability_only,
            (torch.randn(2, 3, size, size),),
            str(old),
            dynamo=True,
            input_names=["image"],
            output_names=["probability"],
            dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=64)}},
            external_data=False,
            report=False,
        )
    (tmp_path / "model.onnx.json").write_text(json.dumps({"input": {"size": size}}))
    assert not graph_has_cam(old)
    image = read_grayscale(real_batch[0].path)
    via_old = loaded.cam(image, backend="onnx", onnx_path=old).result
    by_torch = loaded.cam(image, backend="torch").result
    np.testing.assert_array_equal(via_old.cam, by_torch.cam)
    probs = loaded.image_probabilities([image], backend="onnx", onnx_path=old)
    assert probs[0] == pytest.approx(by_torch.probability, abs=TOL)


class _FirstOutput(torch.nn.Module):
    def __init__(self, ensemble: torch.nn.Module) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.ensemble(image)[0]


def test_web_app_draws_cams_through_the_exported_graph(loaded, exported, real_batch, monkeypatch):
    """A server on the onnx backend runs its CAMs through the graph too (one graph call per
    image), and returns the probabilities torch gives."""
    import httpx

    import murakit.infer.onnx as onnx_module
    from murakit.serve.app import create_app, running_server

    calls = []
    real_onnx_cam = onnx_module.onnx_cam

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real_onnx_cam(*args, **kwargs)

    monkeypatch.setattr(onnx_module, "onnx_cam", counting)
    record = real_batch[0]
    app = create_app(loaded.source, model=loaded, backend="onnx", onnx_path=exported, cam_size=128)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        files = [("files", (record.path.name, record.path.read_bytes(), "image/png"))]
        response = client.post("/api/predict", files=files, data={"cam": "true"})
    assert response.status_code == 200, response.text
    image = response.json()["images"][0]
    assert image["cam_png_base64"] and image["heat_png_base64"]
    assert calls == [exported]
    expected = loaded.image_probabilities([loaded.preprocessor.read(record.path)], backend="torch")[
        0
    ]
    assert image["probability"] == pytest.approx(expected, abs=TOL)
