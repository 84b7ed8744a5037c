"""murakit: find abnormal musculoskeletal radiographs (MURA) with DenseNet ensembles.

The Python API, in five names::

    import murakit

    config = murakit.TrainConfig.load("recipe.yaml")        # or murakit.TrainConfig(...)
    murakit.fit(config, "runs/r1")                           # a run folder, resumable
    model = murakit.Model.load("runs/r1")                    # a run or an ensemble folder
    result = model.predict("new/study1/")                    # probabilities and the call
    model.cam("new/study1/image1.png").overlay().save("cam.png")
    index = murakit.load_dataset("MURA-v1.1")                # images, studies, parts
    rows = murakit.audit_dataset("MURA-v1.1")                # data-quality checks per image

Names load on first use, so ``import murakit`` stays light (no torch until it is needed).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Model", "TrainConfig", "fit", "load_dataset", "audit_dataset", "__version__"]

_LAZY = {
    "Model": ("murakit.infer.model", "Model"),
    "TrainConfig": ("murakit.config", "TrainConfig"),
    "fit": ("murakit.train", "fit"),
    "load_dataset": ("murakit.data.index", "load_index"),
}

if TYPE_CHECKING:
    from murakit.config import TrainConfig
    from murakit.data.index import load_index as load_dataset
    from murakit.data.quality import ImageCheck
    from murakit.infer.model import Model
    from murakit.train import fit


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'murakit' has no attribute {name!r}")


def audit_dataset(
    root: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "valid"),
    out_dir: str | Path | None = None,
    workers: int | None = None,
) -> list[ImageCheck]:
    """Run the data-quality checks (inverted polarity, letter markers, several radiographs in
    one image, technical problems, duplicates) on every image of the dataset at ``root``.

    Returns one :class:`~murakit.data.quality.ImageCheck` per image (``.row()`` is its
    audit.csv row). Writes nothing unless ``out_dir`` is given: then audit.csv and the
    audit.html page a person opens. ``workers``: worker processes, 0 = none (check in
    this process), None (the default) = one per CPU core.
    """
    from murakit.data.index import load_index
    from murakit.data.quality import audit

    index = load_index(root, splits)
    result = audit(index.images, None if out_dir is None else Path(out_dir), workers)
    if out_dir is not None:
        from murakit.report.audit_page import AUDIT_PAGE, write_audit_page

        write_audit_page(Path(out_dir) / AUDIT_PAGE, result.checks, result.summary)
    return result.checks
