"""A trained model as inference sees it: a run's best.pt or an ensemble's kept members, with
the configuration they were trained with and the operating threshold stored beside them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from murakit.config import TrainConfig
from murakit.data.index import DatasetInfo
from murakit.evaluate.threshold import DEFAULT_THRESHOLD, read_threshold
from murakit.model.densenet import build_model

ENSEMBLE_FILE = "ensemble.json"


class ModelDirError(RuntimeError):
    """A model folder that is neither a finished run nor an ensemble."""


@dataclass
class LoadedModels:
    """The networks of a run or an ensemble's kept members, ready for inference."""

    models: list[torch.nn.Module]
    names: list[str]
    config: TrainConfig  # the first member's (size and fixes are shared by all members)
    source: Path
    threshold: float = DEFAULT_THRESHOLD  # the operating threshold stored with the model
    threshold_rule: str = ""  # how it was chosen ("" = the default 0.5 or a fixed value)

    @property
    def classes(self) -> tuple[str, str]:
        """Names of label 0 and label 1, as the training data named them."""
        return tuple(self.dataset.get("classes", DatasetInfo.classes))

    @property
    def parts(self) -> tuple[str, ...]:
        """The body parts of the training data."""
        return tuple(self.dataset.get("parts", DatasetInfo.parts))

    @property
    def dataset(self) -> dict:
        """What the training data declared (murakit.data.index.DatasetInfo.to_json)."""
        return (self.config.extra or {}).get("dataset", {})


def load_models(path: Path, device: torch.device | str = "cpu") -> LoadedModels:
    """Load `path`: an ensemble directory (its kept members) or a run directory (best.pt).

    The threshold is ensemble.json's, else the run's threshold.json (chosen on its held-out
    training slice), else the config's ``extra.threshold``, else 0.5."""
    path = Path(path)
    threshold, rule = None, ""
    if (path / ENSEMBLE_FILE).exists():
        spec = json.loads((path / ENSEMBLE_FILE).read_text())
        threshold = spec.get("threshold")
        rule = spec.get("threshold_rule", {}).get("rule", "")
        run_dirs = [
            path / m["run_dir"] if not Path(m["run_dir"]).is_absolute() else Path(m["run_dir"])
            for m in spec["members"]
            if m["kept"]
        ]
    elif (path / "best.pt").exists():
        run_dirs = [path]
        stored = read_threshold(path) or {}
        threshold, rule = stored.get("threshold"), stored.get("rule", "")
    else:
        raise ModelDirError(f"{path}: neither an ensemble ({ENSEMBLE_FILE}) nor a run (best.pt)")
    models, configs = [], []
    for run_dir in run_dirs:
        checkpoint = run_dir / "best.pt"
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
            config = TrainConfig.from_dict(saved["config"])
            model = build_model(config.arch, config.dropout)
            model.load_state_dict(saved["model"])
        except (OSError, KeyError, RuntimeError, ValueError) as err:
            raise ModelDirError(f"{checkpoint}: cannot load model ({err})") from err
        models.append(model.to(device).eval())
        configs.append(config)
    sizes = {c.size for c in configs}
    if len(sizes) > 1:
        raise ModelDirError(f"{path}: members use different input sizes {sorted(sizes)}")
    if threshold is None:
        threshold = (configs[0].extra or {}).get("threshold", DEFAULT_THRESHOLD)
    names = [d.name for d in run_dirs]
    return LoadedModels(models, names, configs[0], path, float(threshold), rule)
