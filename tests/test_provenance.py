"""provenance.json: every run and every ensemble records what ran (versions, commit, command
line, hardware, the precision actually used, seeds, data and checkpoint hashes)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from murakit.config import TrainConfig, make_config
from murakit.train import provenance
from murakit.train.callbacks import Callback
from murakit.train.ensemble import select_members, write_ensemble
from murakit.train.loop import prepare_run_dir, train_run
from murakit.train.provenance import PROVENANCE_FILE


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read(folder: Path) -> dict:
    return json.loads((folder / PROVENANCE_FILE).read_text())


def tiny(root: Path, **overrides) -> TrainConfig:
    values = dict(data=str(root), epochs=1, size=64, batch_size=8, workers=0, max_train_images=32)
    values.update(overrides)
    return make_config("demo", **values)


@pytest.fixture(scope="module")
def no_bf16_run(synth_root, tmp_path_factory) -> Path:
    """bf16 asked (the default) on a CPU that lacks it: the run trains in fp32."""
    from murakit.infer import runtime

    out = tmp_path_factory.mktemp("prov") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "cpu_supports_bf16", lambda: False)
        train_run(tiny(synth_root, device="cpu", bf16=True), out)
    return out


def test_run_records_what_ran(no_bf16_run, synth_root):
    doc = read(no_bf16_run)
    for key in (
        "software",
        "git",
        "command",
        "hardware",
        "device",
        "precision",
        "seeds",
        "dataset",
        "initial_weights",
        "checkpoints",
    ):
        assert key in doc, key
    assert doc["kind"] == "run"
    software = doc["software"]
    assert {"murakit", "torch", "monai", "python"} <= set(software)
    assert software["python"] == ".".join(map(str, sys.version_info[:3]))
    assert all(software[k] for k in ("murakit", "torch", "monai"))
    assert doc["command"] == sys.argv
    cpu = doc["hardware"]["cpu"]
    assert cpu["model"] and isinstance(cpu["isa_flags"], list)
    if Path("/proc/cpuinfo").exists() and "avx2" in Path("/proc/cpuinfo").read_text():
        assert "avx2" in cpu["isa_flags"]
    assert doc["hardware"]["gpus"] == []  # CPU-only test machine
    # what ran, beside what was asked (config.json keeps the request)
    assert doc["precision"] == "fp32"
    assert doc["mixed_precision_asked"] is True
    assert TrainConfig.load(no_bf16_run / "config.json").bf16 is True
    assert doc["seeds"] == {"seed": 0}
    # the dataset's CSVs, each hashed, and one fingerprint over them
    files = doc["dataset"]["files"]
    assert "train_image_paths.csv" in files and "valid_labeled_studies.csv" in files
    assert files["train_image_paths.csv"] == sha256(synth_root / "train_image_paths.csv")
    assert len(doc["dataset"]["fingerprint"]) == 64
    assert doc["dataset"]["synthetic"] is True
    assert doc["initial_weights"] == {"spec": "none", "file": None, "sha256": None}


def test_checkpoint_hashes_match_the_files(no_bf16_run):
    checkpoints = read(no_bf16_run)["checkpoints"]
    assert set(checkpoints) == {"best.pt", "last.pt"}
    for name, record in checkpoints.items():
        assert record["sha256"] == sha256(no_bf16_run / name), name
        assert record["bytes"] == (no_bf16_run / name).stat().st_size
    assert checkpoints["best.pt"]["epoch"] == 1
    assert not [p for p in no_bf16_run.iterdir() if p.name.endswith(".tmp")]


def test_the_used_precision_follows_the_cpu(synth_root, tmp_path, monkeypatch):
    """With bf16 on the CPU (patched in), the same request runs bf16; asked off, fp32."""
    from murakit.infer import runtime

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    seen = {}

    class Note(Callback):
        def on_train_start(self, start):
            seen["precision"] = start.precision
            start.stop.request()  # provenance is written at the start: no need to train

    train_run(tiny(synth_root, device="cpu"), tmp_path / "bf16", callbacks=[Note()])
    assert seen["precision"] == read(tmp_path / "bf16")["precision"] == "bf16"
    train_run(tiny(synth_root, device="cpu", bf16=False), tmp_path / "off", callbacks=[Note()])
    assert read(tmp_path / "off")["precision"] == "fp32"


def test_initial_weights_file_is_hashed(no_bf16_run, synth_root, tmp_path):
    """--weights PATH: the file's sha256 (here a run's best.pt used as the starting point is
    not a backbone file, so the record is checked directly)."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not really weights")
    record = provenance.initial_weights(str(weights), "densenet-mini")
    assert record == {
        "spec": str(weights),
        "file": str(weights.resolve()),
        "sha256": sha256(weights),
    }
    hub = tmp_path / "hub"
    cached = hub / "checkpoints" / "densenet169-b2777c0a.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"imagenet")
    import torch

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        record = provenance.initial_weights("imagenet", "densenet169")
    finally:
        torch.hub.set_dir(previous)
    assert record["sha256"] == sha256(cached)


def test_resume_keeps_the_earlier_session(no_bf16_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(no_bf16_run, out)
    first = read(out)
    config = prepare_run_dir(out, None, resume=True, epochs=2)
    train_run(config, out, resume=True)
    doc = read(out)
    assert len(doc["earlier_sessions"]) == 1
    assert doc["earlier_sessions"][0]["precision"] == first["precision"]
    assert doc["resumed_at"] == {"epoch": 2, "batch": 1}
    assert doc["initial_weights"] == first["initial_weights"]
    for name in ("best.pt", "last.pt"):
        assert doc["checkpoints"][name]["sha256"] == sha256(out / name)
    assert doc["checkpoints"]["last.pt"]["sha256"] != first["checkpoints"]["last.pt"]["sha256"]


def test_git_commit_only_in_a_checkout(tmp_path):
    here = provenance.git_commit()
    if shutil.which("git") and (Path(__file__).resolve().parents[1] / ".git").exists():
        assert here is not None and len(here["commit"]) == 40
    assert provenance.git_commit(tmp_path) is None  # not a checkout: no failure, no commit


def test_cpu_flags_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Example CPU 9000\n"
        "flags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16 amx_tile amx_bf16 foo\n"
    )
    info = provenance.cpu_info(cpuinfo)
    assert info["model"] == "Example CPU 9000"
    assert info["isa_flags"] == [
        "sse4_2",
        "avx",
        "avx2",
        "avx512f",
        "avx512_bf16",
        "amx_tile",
        "amx_bf16",
    ]
    assert provenance.cpu_info(tmp_path / "absent")["isa_flags"] == []  # no /proc: no failure


def test_ensemble_records_its_members(no_bf16_run, tmp_path):
    ens = tmp_path / "ens"
    members = select_members([no_bf16_run], keep=1)
    write_ensemble(ens, members)
    doc = read(ens)
    assert doc["kind"] == "ensemble"
    assert {"software", "git", "command", "hardware", "seeds", "dataset"} <= set(doc)
    assert doc["precision"] == "fp32"
    assert doc["seeds"] == {"members": [0]}
    (member,) = doc["members"]
    assert member["kept"] and member["seed"] == 0 and member["precision"] == "fp32"
    assert member["best.pt"]["sha256"] == sha256(no_bf16_run / "best.pt")
    assert doc["dataset"]["fingerprint"] == read(no_bf16_run)["dataset"]["fingerprint"]
