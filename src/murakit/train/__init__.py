"""The trainer: one run (:func:`fit`, :func:`~murakit.train.loop.train_run`), its state
(:class:`~murakit.train.state.TrainState`, last.pt), callbacks
(:mod:`murakit.train.callbacks`) and ensembles (:mod:`murakit.train.ensemble`).

    from murakit.config import make_config
    from murakit.train import fit
    from murakit.train.callbacks import TextLog

    result = fit(make_config("demo", data="demo/data/MURA-v1.1"), "runs/demo",
                 callbacks=[TextLog()])

Names are imported on first use, so ``murakit.train.history`` stays free of torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "fit": "murakit.train.loop",
    "train_run": "murakit.train.loop",
    "prepare_run_dir": "murakit.train.loop",
    "RunDirError": "murakit.train.state",
    "TrainState": "murakit.train.state",
    "RunResult": "murakit.train.callbacks",
    "Callback": "murakit.train.callbacks",
    "StopRequest": "murakit.train.callbacks",
    "TextLog": "murakit.train.callbacks",
    "TensorBoard": "murakit.train.callbacks",
    "train_ensemble": "murakit.train.ensemble",
    "train_member": "murakit.train.ensemble",
}

__all__ = [
    "Callback",
    "RunDirError",
    "RunResult",
    "StopRequest",
    "TensorBoard",
    "TextLog",
    "TrainState",
    "fit",
    "prepare_run_dir",
    "train_ensemble",
    "train_member",
    "train_run",
]

if TYPE_CHECKING:
    from murakit.train.callbacks import Callback, RunResult, StopRequest, TensorBoard, TextLog
    from murakit.train.ensemble import train_ensemble, train_member
    from murakit.train.loop import fit, prepare_run_dir, train_run
    from murakit.train.state import RunDirError, TrainState


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'murakit.train' has no attribute {name!r}")
