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
