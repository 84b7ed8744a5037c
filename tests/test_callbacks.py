"""Training callbacks beyond the run's record: TensorBoard event files (optional extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from murakit.config import make_config
from murakit.train import fit
from murakit.train.callbacks import METRIC_COLUMNS, StopRequest, TensorBoard, TrainStart


def test_tensorboard_writes_every_epoch_metric(synth_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_config(
        "demo", data=str(synth_root), epochs=2, size=64, batch_size=8, workers=0
    ).replace(max_train_images=16)
    result = fit(config, tmp_path / "run", callbacks=[TensorBoard()])
    log_dir = tmp_path / "run" / "tensorboard"
    assert list(log_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert set(METRIC_COLUMNS[1:]) <= set(events.Tags()["scalars"])
    for key in ("train_loss", "val_loss", "val_study_kappa"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in result.history])
    assert [s.step for s in events.Scalars("batch/train_loss")] == [1, 2, 3, 4]


def test_tensorboard_without_the_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    start = TrainStart(
        out=Path(tmp_path),
        config=make_config("demo"),
        train_images=16,
        valid_images=8,
        slice_images=0,
        device="cpu",
        world_size=1,
        epochs_done=0,
        step=0,
        stop=StopRequest(),
    )
    with pytest.raises(ImportError, match=r"murakit\[tensorboard\]"):
        TensorBoard().on_train_start(start)
