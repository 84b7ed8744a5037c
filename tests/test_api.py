"""The Python API: `murakit.Model` and the public names, against the command line's output for
the same files, on real image files and real checkpoints."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import murakit
from murakit.data.imageio import read_grayscale
from murakit.infer.model import Model, ModelDirError

ROOT = Path(__file__).resolve().parents[1]


def _study(synth_root: Path) -> Path:
    """A valid study folder with more than one image."""
    folders = sorted({p.parent for p in (synth_root / "valid").rglob("image2.png")})
    return folders[0]


def test_public_names_and_a_light_import():
    assert set(murakit.__all__) >= {"Model", "TrainConfig", "fit", "load_dataset", "audit_dataset"}
    assert murakit.Model is Model
    from murakit.config import TrainConfig

    assert murakit.TrainConfig is TrainConfig and callable(murakit.fit)
    assert (ROOT / "src" / "murakit" / "py.typed").exists()
    code = "import sys, murakit; assert 'torch' not in sys.modules, 'import murakit loads torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_model_predict_equals_the_cli(trained_run, synth_root):
    study = _study(synth_root)
    cli = subprocess.run(
        [sys.executable, "-m", "murakit", "predict", "--model", str(trained_run), str(study)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    printed = json.loads(cli.stdout)
    result = Model.load(trained_run).predict(study)
    assert result.to_dict() == printed
    (only,) = result.studies
    assert only.n_images >= 2 and only.label in ("normal", "abnormal")
    assert only.label == ("abnormal" if only.probability >= result.threshold else "normal")


def test_arrays_are_one_study_and_16_bit_reads_like_its_file(trained_run, synth_root):
    model = Model.load(trained_run, device="cpu")
    study = _study(synth_root)
    paths = sorted(study.glob("image*.png"))
    from_files = model.predict(paths)
    arrays = [read_grayscale(p) for p in paths]
    from_arrays = model.predict(arrays)
    widened = model.predict([a.astype(np.uint16) * 257 for a in arrays])
    files_probs = [i.probability for i in from_files.images]
    assert [i.probability for i in from_arrays.images] == pytest.approx(files_probs, abs=1e-6)
    assert [i.probability for i in widened.images] == pytest.approx(files_probs, abs=1e-6)
    assert len(from_arrays.studies) == 1
    assert from_arrays.studies[0].probability == pytest.approx(np.mean(files_probs), abs=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        model.predict(np.zeros((4, 4, 3), np.uint8))


def test_cam_of_a_file(trained_run, synth_root):
    model = Model.load(trained_run, device="cpu", mixed_precision=False)  # CAMs run in fp32
    path = sorted(_study(synth_root).glob("image*.png"))[0]
    cam = model.cam(path)
    assert cam.heat.shape == read_grayscale(path).shape
    predicted = model.predict(path).images[0].probability
    assert cam.probability == pytest.approx(predicted, abs=1e-5)  # both at the training size
    picture = cam.overlay()
    assert picture.mode == "RGB" and picture.width == cam.image.shape[1]


def _copy_run(trained_run: Path, dest: Path, **config_changes) -> Path:
    shutil.copytree(trained_run, dest)
    saved = torch.load(dest / "best.pt", map_location="cpu", weights_only=True)
    saved["config"].update(config_changes)
    torch.save(saved, dest / "best.pt")
    return dest


def _ensemble(folder: Path, runs: list[Path]) -> Path:
    folder.mkdir()
    members = [{"name": r.name, "run_dir": str(r), "kept": True} for r in runs]
    (folder / "ensemble.json").write_text(json.dumps({"members": members}))
    return folder


def test_members_that_preprocess_differently_are_refused(trained_run, tmp_path):
    same = _copy_run(trained_run, tmp_path / "same")
    fixed = _copy_run(trained_run, tmp_path / "fixed", fix_inverted=True)
    bigger = _copy_run(trained_run, tmp_path / "bigger", size=128)
    assert len(Model.load(_ensemble(tmp_path / "ok", [trained_run, same])).models) == 2
    with pytest.raises(ModelDirError, match="fix_inverted False vs True"):
        Model.load(_ensemble(tmp_path / "e1", [trained_run, fixed]))
    with pytest.raises(ModelDirError, match="size 96 vs 128"):
        Model.load(_ensemble(tmp_path / "e2", [trained_run, bigger]))


class _WritesAFile:
    """Unpickling this would create `target`: what a malicious checkpoint does."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "code ran"))


def test_a_checkpoint_that_runs_code_is_refused(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    target = tmp_path / "pwned.txt"
    saved = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    saved["extra"] = _WritesAFile(target)
    torch.save(saved, run / "best.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ModelDirError, match="best.pt: refused"):
        Model.load(run)
    assert not target.exists()


def test_load_dataset_and_audit_dataset_write_nothing_unless_asked(synth_root, tmp_path):
    index = murakit.load_dataset(synth_root, ["valid"])
    assert index.images and {r.split for r in index.images} == {"valid"}
    before = sorted(p.name for p in synth_root.parent.iterdir())
    rows = murakit.audit_dataset(synth_root, splits=("valid",), workers=1)
    assert len(rows) == len(index.images)
    assert sorted(p.name for p in synth_root.parent.iterdir()) == before
    murakit.audit_dataset(synth_root, splits=("valid",), workers=1, out_dir=tmp_path / "audit")
    assert sorted(p.name for p in (tmp_path / "audit").iterdir()) == ["audit.csv", "audit.html"]


def test_fit_checks_the_whole_recipe_before_writing(tmp_path):
    config = murakit.TrainConfig.from_preset(
        "demo", data=str(tmp_path / "missing"), arch="densenet-huge", epochs=0
    )
    with pytest.raises(ValueError) as err:
        murakit.fit(config, tmp_path / "run")
    assert "densenet-huge" in str(err.value) and "epochs" in str(err.value)
    assert not (tmp_path / "run").exists()
