"""Training configuration and presets: the reference report's recipe, the MURA paper's, a demo.

:class:`TrainConfig` is the one description of a training recipe. Each field carries, in its
metadata, the help text and (for fixed-choice fields) the choices that the command line shows
(`murakit train` and `murakit ensemble train` build their recipe options from it; see
:func:`recipe_options`), and the class reads and writes itself as JSON or YAML.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from murakit.fsutil import atomic_write_json, atomic_write_text

YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIXES = (".json",)

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
    cli: bool = True,
) -> Any:
    """A TrainConfig field with the description the command line shows.

    ``flag``: the option's name when it is not the field's (``bf16`` is --mixed-precision);
    ``min``/``max``: bounds the command line enforces; ``cli=False``: a recipe field that has
    no command-line option (set it in a config file or from Python)."""
    meta = dict(help=help, choices=choices, flag=flag, min=min, max=max, cli=cli)
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
        "on a CPU), fracture-cpu (fractures on imported FracAtlas, 2 CPU cores).",
        choices=tuple(PRESETS),
    )
    arch: str = _recipe(
        "densenet169", "densenet169 | densenet121 | densenet201 | densenet-mini."
    )  # not a fixed choice here: murakit.model.densenet.ARCHS owns the list (checked there)
    weights: str = _recipe(
        "imagenet", "imagenet (torch hub cache, downloaded if online) | none | PATH."
    )
    size: int = _recipe(224, "Input size in pixels (square).")
    batch_size: int = _recipe(16, "Images per batch.")
    epochs: int = _recipe(10, "Total epochs.")
    lr: float = _recipe(1e-4, "Adam learning rate.")
    weight_decay: float = _recipe(0.0, "Adam weight decay.", cli=False)
    dropout: float = _recipe(0.2, "Dropout before the classifier.", cli=False)
    rotation: float = _recipe(30.0, "Random rotation within +-this many degrees.", cli=False)
    hflip: bool = _recipe(True, "Random horizontal flips.", cli=False)
    loss: str = _recipe(
        "bce",
        "bce | weighted-bce (MURA paper: weights per body part).",
        choices=("bce", "weighted-bce"),
    )
    plateau_patience: int = _recipe(
        -1,
        "Epochs without val-loss improvement before lr/10 (-1 = off).",
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
    seed: int = _recipe(0, "Seed for init, order, augmentation.")
    workers: int = _recipe(2, "DataLoader worker processes.")
    bf16: bool = _recipe(
        True,
        "bf16 autocast on CPU (where supported) / AMP on CUDA.",
        flag="mixed-precision",
    )
    channels_last: bool = _recipe(True, "channels_last memory format.", cli=False)
    device: str = _recipe("auto", "auto | cpu | cuda | cuda:N.")
    max_train_images: int = _recipe(0, "Train on a random subset of this many images (0 = all).")
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

    def save(self, path: str | Path) -> None:
        """Write JSON (.json, as a run's config.json) or YAML (.yaml/.yml), atomically."""
        path = Path(path)
        suffix = _format_of(path)
        if suffix in JSON_SUFFIXES:
            atomic_write_json(path, self.to_dict())
        else:
            import yaml

            atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read JSON or YAML by suffix. A file may give only some fields (a recipe file):
        the others take the value of its preset (reference when it names none), then
        TrainConfig's defaults. Numbers are checked against the field types (YAML reads
        1e-4 as text; it is accepted as a float)."""
        path = Path(path)
        suffix = _format_of(path)
        text = path.read_text(encoding="utf-8")
        if suffix in JSON_SUFFIXES:
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config keys, got {type(values)}")
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
            default=f.default,
        )


def make_config(preset: str, **overrides: Any) -> TrainConfig:
    """A preset's config with the given fields overridden (None means keep the preset's);
    the same as ``TrainConfig.from_preset``."""
    return TrainConfig.from_preset(preset, **overrides)
