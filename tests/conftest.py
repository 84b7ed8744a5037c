"""Shared fixtures: small synthetic MURA datasets written to disk once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_MURA = Path(__file__).resolve().parents[2] / "shared" / "MURA-v1.1"


@pytest.fixture(scope="session")
def shared_mura() -> Path:
    """The official MURA CSVs beside the checkout; absent on a user's fresh clone."""
    if not (SHARED_MURA / "train_image_paths.csv").exists():
        pytest.skip(f"official MURA CSVs not found at {SHARED_MURA}")
    return SHARED_MURA


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic dataset (OUT folder holding MURA-v1.1/ and synth_truth.csv)."""
    from murakit.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, studies=80, seed=3, difficulty=0.3, workers=2)
    return out


@pytest.fixture(scope="session")
def synth_root(synth_data) -> Path:
    return synth_data / "MURA-v1.1"


@pytest.fixture(scope="session")
def trained_run(synth_root, tmp_path_factory) -> Path:
    """A densenet-mini run trained briefly on `synth_root` (shared by evaluation, CAM,
    prediction and serving tests, which need a real checkpoint, not a good one)."""
    from murakit.train.config import make_config
    from murakit.train.loop import train_run

    out = tmp_path_factory.mktemp("runs") / "mini"
    config = make_config("demo", data=str(synth_root), epochs=2, size=96, workers=0)
    train_run(config, out, show_progress=False)
    return out
