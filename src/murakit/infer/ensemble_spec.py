"""ensemble.json without the networks: what an ensemble folder says about its members.

An ensemble folder holds ``ensemble.json`` (written by :func:`murakit.train.ensemble.
write_ensemble`): the selection rule, the stored operating threshold and one row per member
(name, run_dir relative to the folder or absolute, its best epoch and losses, kept or not).
Torch-free, so the report can read it without loading a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENSEMBLE_FILE = "ensemble.json"


def read_ensemble_spec(path: Path) -> dict[str, Any]:
    """The JSON object of ``path`` (an ensemble folder, or its ensemble.json itself), with
    ``members`` always a list. Raises OSError when unreadable, ValueError when not an object."""
    path = Path(path)
    file = path / ENSEMBLE_FILE if path.is_dir() else path
    spec = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(spec, dict):
        raise ValueError("expected a JSON object")
    members = spec.setdefault("members", [])
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        raise ValueError("'members' must be a list of objects")
    return spec


def member_run_dir(ens_dir: Path, member: dict[str, Any]) -> Path:
    """A member's run folder: its ``run_dir`` taken relative to the ensemble folder unless
    absolute."""
    run_dir = Path(str(member.get("run_dir", "")))
    return run_dir if run_dir.is_absolute() else Path(ens_dir) / run_dir
