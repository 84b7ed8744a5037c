"""Training configuration and presets: the reference report's recipe, the MURA paper's, a demo.

:class:`TrainConfig` is the one description of a training recipe. Each field carries, in its
metadata, the help text and (for fixed-choice fields) the choices that the command line shows
(`murakit train` and `murakit ensemble train` build their recipe options from it; see
:func:`recipe_options`), and the class reads and writes itself as JSON or YAML.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from murakit.fsutil import atomic_write_json, atomic_write_text

YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIXES = (".json",)

# The devices a recipe (and `murakit evaluate --device`) accepts; checked before anything runs.
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
DEVICE_HELP = "auto | cpu | cuda | cuda:N."
WEIGHTS_NAMES = ("imagenet", "none")


def check_device(device: str) -> str:
    """Return `device` if it is auto, cpu, cuda or cuda:N; else raise a ValueError."""
    if not re.fullmatch(DEVICE_PATTERN, device):
        raise ValueError(
            f"device must be auto, cpu, cuda or cuda:N (N a GPU index), not {device!r}"
        )
    return device


PRESETS: dict[str, dict[str, Any]] = {
    # The student report: DenseNet-169 from ImageNet, 224 px, rotation +-30 and flips, Adam.
    "reference": dict(
        arch="densenet169",
        weights="imagenet",
        size=224,
        batch_size=16,
        epochs=10,
        lr=1e-4,
        loss="bce",
        plateau_patience=-1,
    ),
    # Rajpurkar et al. 2017: 320 px, batch 8, lr 1e-4 divided by 10 on plateau, weighted BCE.
    "mura-paper": dict(
        arch="densenet169",
        weights="imagenet",
        size=320,
        batch_size=8,
        epochs=20,
        lr=1e-4,
        loss="weighted-bce",
        plateau_patience=1,
    ),
    # Small and fast for a CPU: a mini DenseNet from scratch at 128 px on synthetic data.
    # lr 1e-3 learns fast but its validation loss swings by 0.2 between epochs; dividing it
    # by 10 as soon as validation loss fails to improve (patience 0) settles it. It also lets
    # the CAM peaks drift about a cell off the findings; --lr 3e-4 keeps them on (README).
    "demo": dict(
        arch="densenet-mini",
        weights="none",
        size=128,
        batch_size=16,
        epochs=6,
        lr=1e-3,
        loss="bce",
        plateau_patience=0,
        rotation=15.0,
    ),
    # Fractures on real radiographs (FracAtlas imported by `murakit import fracatlas`) from
    # scratch on 2 CPU cores: the mini DenseNet at 128 px for 24 epochs with a cosine lr (at
    # 256 px it fits only ~8 epochs and reached a lower AUROC), CAMs nudged onto the fracture
    # boxes (box_loss 0.1; 1.0 hurt), and 10% of the training studies held out to set the
    # operating threshold at 90% sensitivity. Measured in README.md.
    "fracture-cpu": dict(
        arch="densenet-mini",
        weights="none",
        size=128,
        batch_size=16,
        epochs=24,
        lr=1e-3,
        loss="bce",
        lr_schedule="cosine",
        box_loss=0.1,
        threshold_slice=0.1,
        threshold_sensitivity=0.9,
        rotation=15.0,
    ),
}


def _recipe(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    min: float | None = None,
    max: float | None = None,
    pattern: str | None = None,
    cli: bool = True,
) -> Any:
    """A TrainConfig field with the description the command line shows.

    ``flag``: the option's name when it is not the field's (``bf16`` is --mixed-precision);
    ``min``/``max``: bounds the command line enforces; ``pattern``: a regular expression the
    whole value must match; ``cli=False``: a recipe field that has no command-line option (set
    it in a config file or from Python). :meth:`TrainConfig.validate` checks all of them."""
    meta = dict(help=help, choices=choices, flag=flag, min=min, max=max, pattern=pattern, cli=cli)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved as the run's config.json.

    ``TrainConfig.load(path)`` / ``config.save(path)`` read and write JSON or YAML by the
    file's suffix. Build one from a preset with :meth:`from_preset`."""

    data: str = _recipe("", "Dataset folder (MURA-v1.1/).", cli=False)
    preset: str = _recipe(
        "reference",
        "Recipe: reference (the report), mura-paper (Rajpurkar 2017), demo (synthetic data "
        "on a CPU), fracture-cpu (fractures on imported FracAtlas, 2 CPU cores). Default: "
        "reference, or the --config file's; with --config, it fills the fields the file "
        "does not set.",
        choices=tuple(PRESETS),
    )
    arch: str = _recipe(
        "densenet169", "densenet169 | densenet121 | densenet201 | densenet-mini."
    )  # not a fixed choice here: murakit.model.densenet.ARCHS owns the list (checked there)
    weights: str = _recipe(
        "imagenet", "imagenet (torch hub cache, downloaded if online) | none | PATH."
    )
    # a DenseNet divides the input by 32 before its last feature maps
    size: int = _recipe(224, "Input size in pixels (square).", min=32)
    batch_size: int = _recipe(16, "Images per batch.", min=1)
    epochs: int = _recipe(10, "Total epochs.", min=1)
    lr: float = _recipe(1e-4, "Adam learning rate (> 0).", min=0.0)
    weight_decay: float = _recipe(0.0, "Adam weight decay.", min=0.0, cli=False)
    dropout: float = _recipe(0.2, "Dropout before the classifier.", min=0.0, max=0.99, cli=False)
    rotation: float = _recipe(
        30.0, "Random rotation within +-this many degrees.", min=0.0, max=180.0, cli=False
    )
    hflip: bool = _recipe(True, "Random horizontal flips.", cli=False)
    loss: str = _recipe(
        "bce",
        "bce | weighted-bce (MURA paper: weights per body part).",
        choices=("bce", "weighted-bce"),
    )
    plateau_patience: int = _recipe(
        -1,
        "Epochs without val-loss improvement before lr/10 (-1 = off).",
        min=-1,
        cli=False,
    )
    lr_schedule: str = _recipe(
        "plateau",
        "plateau (lr/10 when validation loss stalls) | cosine (to 0 over epochs).",
        choices=("plateau", "cosine"),
    )
    box_loss: float = _recipe(
        0.0,
        "Weight of the box-guidance loss that puts CAMs on the dataset's truth boxes "
        "(FracAtlas's fracture boxes; 0 = off).",
        min=0.0,
    )
    seed: int = _recipe(0, "Seed for init, order, augmentation.", min=0)
    workers: int = _recipe(
        2,
        "DataLoader worker processes (0 = none: load images in the training process; default 2).",
        min=0,
    )
    bf16: bool = _recipe(
        True,
        "bf16 autocast on CPU (where supported) / AMP on CUDA.",
        flag="mixed-precision",
    )
    channels_last: bool = _recipe(True, "channels_last memory format.", cli=False)
    device: str = _recipe("auto", DEVICE_HELP, pattern=DEVICE_PATTERN)
    max_train_images: int = _recipe(
        0, "Train on a random subset of this many images (0 = all).", min=0
    )
    # data fixes of the quality checks (murakit.data.quality)
    fix_inverted: bool = _recipe(False, "Invert images detected as inverted.")
    mask_markers: bool = _recipe(False, "Mask detected letter markers.")
    panels: str = _recipe(
        "keep", "Multi-radiograph images: keep | largest.", choices=("keep", "largest")
    )
    cache: str = _recipe("", "Decoded-image cache folder made by `murakit cache`.")
    skip_bad: bool = _recipe(
        False, "Skip unreadable images and bad CSV rows, list them at the end."
    )
    # operating threshold (murakit.evaluate.threshold): share of training studies held out to
    # choose it, and the sensitivity it must reach there; 0 = no slice, threshold 0.5
    threshold_slice: float = _recipe(
        0.0,
        "Share of training studies held out to choose the operating threshold "
        "(0 = none: threshold 0.5).",
        min=0.0,
        max=0.5,
    )
    threshold_sensitivity: float = _recipe(
        0.9,
        "The threshold is the highest at which the held-out slice reaches this sensitivity.",
        min=0.0,
        max=1.0,
    )
    extra: dict[str, Any] = _recipe({}, "Free-form notes (the dataset's classes).", cli=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        """The recipe as YAML, every field in field order (what --print-config shows)."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write JSON (.json, as a run's config.json) or YAML (.yaml/.yml), atomically."""
        path = Path(path)
        suffix = _format_of(path)
        if suffix in JSON_SUFFIXES:
            atomic_write_json(path, self.to_dict())
        else:
            atomic_write_text(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path, *, preset: str | None = None) -> TrainConfig:
        """Read JSON or YAML by suffix. A file may give only some fields (a recipe file):
        the others take the value of its preset (reference when it names none), then
        TrainConfig's defaults. ``preset`` replaces the file's preset (`--preset` given with
        `--config`). Numbers are checked against the field types (YAML reads 1e-4 as text;
        it is accepted as a float)."""
        path = Path(path)
        suffix = _format_of(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"{path}: cannot read the config file ({err.strerror})") from None
        if suffix in JSON_SUFFIXES:
            try:
                values = json.loads(text)
            except ValueError as err:
                raise ValueError(f"{path}: not valid JSON: {err}") from None
        else:
            import yaml

            try:
                values = yaml.safe_load(text) or {}
            except yaml.YAMLError as err:
                raise ValueError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config keys, got {type(values)}")
        if preset is not None:
            values["preset"] = preset
        preset = values.get("preset", "reference")
        if preset in PRESETS and not set(_field_names()) <= set(values):
            values = {**PRESETS[preset], **values}
        try:
            return cls.from_dict({k: _coerce(k, v) for k, v in values.items()})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def from_preset(cls, preset: str = "reference", **overrides: Any) -> TrainConfig:
        """A preset's recipe (PRESETS) with the given fields overridden (None means keep
        the preset's value)."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(preset=preset, **values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = set(_field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def problems(self, archs: Sequence[str] | None = None, files: bool = True) -> list[str]:
        """Every reason this recipe cannot run, one line each (empty when it can): fixed
        choices, bounds and patterns from the fields' descriptions, types, a positive lr;
        ``archs``: the known architectures (murakit.model.densenet.ARCHS; not checked when
        None, as this layer does not import the models); ``files``: also check that the
        dataset folder and a weights file exist."""
        found = []
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            wanted = _TYPES.get(f.type)
            if wanted is not None and not _is_type(value, wanted):
                found.append(f"{f.name} must be {wanted.__name__}, got {value!r}")
                continue
            if meta.get("choices") and value not in meta["choices"]:
                found.append(f"{f.name} {value!r} is not one of: {', '.join(meta['choices'])}")
            if meta.get("min") is not None and value < meta["min"]:
                found.append(f"{f.name} must be >= {meta['min']}, got {value!r}")
            if meta.get("max") is not None and value > meta["max"]:
                found.append(f"{f.name} must be <= {meta['max']}, got {value!r}")
            if meta.get("pattern") and not re.fullmatch(meta["pattern"], str(value)):
                found.append(f"{f.name} {value!r} is not one of: {meta['help'].rstrip('.')}")
        if _is_type(self.lr, float) and self.lr <= 0:
            found.append(f"lr must be > 0, got {self.lr!r}")
        if archs is not None and self.arch not in archs:
            found.append(f"arch {self.arch!r} is not one of: {', '.join(archs)}")
        if files and self.weights not in WEIGHTS_NAMES and not Path(self.weights).is_file():
            found.append(f"weights {self.weights!r} is neither imagenet, none nor an existing file")
        if files and self.data and not Path(self.data).is_dir():
            found.append(f"data: dataset folder {self.data} not found")
        return found

    def validate(self, archs: Sequence[str] | None = None, files: bool = True) -> TrainConfig:
        """Raise one ValueError that lists every problem (:meth:`problems`); return self."""
        found = self.problems(archs, files)
        if found:
            raise ValueError("invalid recipe:\n  - " + "\n  - ".join(found))
        return self


def _is_type(value: Any, wanted: type) -> bool:
    if isinstance(value, bool) or wanted is bool:
        return isinstance(value, bool) and wanted is bool
    return isinstance(value, wanted) or (wanted is float and isinstance(value, int))


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in JSON_SUFFIXES + YAML_SUFFIXES:
        raise ValueError(f"{path}: a config file ends in .json, .yaml or .yml")
    return suffix


def _field_names() -> list[str]:
    return list(_FIELD_TYPES)


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_FIELD_TYPES: dict[str, str] = {f.name: f.type for f in fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """A value read from a file, checked against its field's type. Numeric text is read as
    a float for float fields (YAML takes 1e-4 for text); ints pass for floats unchanged."""
    wanted = _TYPES.get(_FIELD_TYPES.get(name, ""))
    if wanted is None or isinstance(value, wanted) and not isinstance(value, bool):
        return value
    if wanted is bool and isinstance(value, bool):
        return value
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return value
    if wanted is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be {wanted.__name__}, got {value!r}")


@dataclass(frozen=True)
class RecipeOption:
    """One command-line recipe option, as TrainConfig describes it."""

    name: str  # the TrainConfig field
    flag: str  # the option without dashes: "batch-size", "mixed-precision"
    type: type
    help: str
    choices: tuple[str, ...] | None
    min: float | None
    max: float | None
    pattern: str | None  # a regular expression the whole value must match
    default: Any  # TrainConfig's default (the command line's default is the preset's)


def recipe_options() -> Iterator[RecipeOption]:
    """The fields the command line exposes as options, in TrainConfig's order."""
    for f in fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli"):
            continue
        yield RecipeOption(
            name=f.name,
            flag=meta["flag"] or f.name.replace("_", "-"),
            type=_TYPES[f.type],
            help=meta["help"],
            choices=meta["choices"],
            min=meta["min"],
            max=meta["max"],
            pattern=meta["pattern"],
            default=f.default,
        )


def make_config(preset: str, **overrides: Any) -> TrainConfig:
    """A preset's config with the given fields overridden (None means keep the preset's);
    the same as ``TrainConfig.from_preset``."""
    return TrainConfig.from_preset(preset, **overrides)
