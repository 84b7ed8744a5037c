"""A real 2-process DDP run on CPU (torchrun, gloo) against the same run in one process.

What can be equal, and what cannot:

- Validation of a given model is split across ranks and gathered, so it must equal a
  single-process validation of the saved model (no image dropped or counted twice).
- A DDP run resumed from its epoch-1 checkpoint must reproduce the uninterrupted DDP run.
- Each global batch of the DDP run holds exactly the images of the single-process batch
  (checked on the sampler, exactly).
- The losses of a 2 x 8 DDP run cannot equal a 1 x 16 run exactly, even with the same global
  batches and seed: BatchNorm normalises each rank's 8 images with their own statistics
  (SyncBatchNorm would fix that, but PyTorch 2.13 supports it on CUDA only), dropout draws
  differ (each rank draws a mask for its 8 images), and Adam amplifies float-level gradient
  differences (its first updates are about lr * sign(g)). So the trajectories are compared
  with a tolerance measured over seeds 0, 1, 2 and 5 at lr 3e-4: |train loss difference| up
  to 0.036 and |val loss difference| up to 0.007, at losses near 0.7 (at lr 2e-3 val loss
  differed by up to 0.27: the tiny run is chaotic there). The tolerances below allow about
  twice that. This catches divergence, NaNs or a rank that does not train, not subtle
  errors; the exact checks above are the ones that find those.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EPOCHS = 2
COMMON = [
    "--preset", "demo", "--size", "64", "--workers", "0", "--no-mixed-precision",
    "--max-train-images", "64", "--seed", "5", "--lr", "3e-4",
]  # fmt: skip
# |DDP - single| absolute loss differences allowed (measured maxima 0.036 and 0.007; see above).
TRAIN_LOSS_ATOL = 0.08
VAL_LOSS_ATOL = 0.02


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # what torchrun gives each rank; also keeps ranks off each other
    env.pop("WORLD_SIZE", None)
    return env


def _train(out: Path, data: Path | None, *extra: str, ddp: bool) -> Path:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        if ddp
        else [sys.executable]
    )
    args = ["-m", "murakit", "train", "--out", str(out), *extra]
    if data is not None:
        args += ["--data", str(data)]
    proc = subprocess.run(launcher + args, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"training failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _history(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def runs(synth_root, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ddp")
    ddp_args = [*COMMON, "--batch-size", "8"]
    out = {
        "ddp": _train(base / "ddp", synth_root, *ddp_args, "--epochs", str(EPOCHS), ddp=True),
        "single": _train(
            base / "single",
            synth_root,
            *COMMON,
            "--batch-size",
            "16",
            "--epochs",
            str(EPOCHS),
            ddp=False,
        ),
    }
    resumed = _train(base / "resumed", synth_root, *ddp_args, "--epochs", "1", ddp=True)
    out["resumed"] = _train(resumed, None, "--resume", "--epochs", str(EPOCHS), ddp=True)
    return out


@pytest.mark.parametrize("size", [64, 61])
def test_sampler_shards_make_up_the_single_process_batches(size):
    """Global batch k of a 2 x 8 run holds the images of batch k of a 1 x 16 run, so the DDP
    gradient (mean over ranks of per-rank means) is the single-process one. With an odd
    count the last shard is padded by wrapping (as DistributedSampler does): every image is
    still seen, one twice."""
    from murakit.data.dataset import EpochSampler

    def order(rank: int, world_size: int, epoch: int) -> list[int]:
        sampler = EpochSampler(size, seed=5, rank=rank, world_size=world_size)
        sampler.set_epoch(epoch)
        return [index for index, _epoch in sampler]

    for epoch in (1, 2):
        single, rank0, rank1 = order(0, 1, epoch), order(0, 2, epoch), order(1, 2, epoch)
        assert len(rank0) == len(rank1) == -(-size // 2)
        assert set(rank0) | set(rank1) == set(range(size))
        for k in range(0, size - size % 16, 16):
            ddp_batch = rank0[k // 2 : k // 2 + 8] + rank1[k // 2 : k // 2 + 8]
            assert sorted(ddp_batch) == sorted(single[k : k + 16])


def test_ddp_loss_trajectory_follows_single_process(runs):
    ddp, single = _history(runs["ddp"]), _history(runs["single"])
    assert [r["epoch"] for r in ddp] == [r["epoch"] for r in single] == [1, 2]
    for a, b in zip(ddp, single, strict=True):
        for key, atol in (("train_loss", TRAIN_LOSS_ATOL), ("val_loss", VAL_LOSS_ATOL)):
            assert np.isfinite(a[key])
            assert abs(a[key] - b[key]) <= atol, (key, a, b)


def test_ddp_validation_equals_single_process_validation_of_the_saved_model(runs, synth_root):
    """Every valid image scored once: the gathered metrics equal one process's."""
    from murakit.config import TrainConfig
    from murakit.data.dataset import RadiographDataset
    from murakit.infer.preprocess import Preprocessor
    from murakit.infer.runtime import make_runtime
    from murakit.model.densenet import build_model
    from murakit.train import distributed
    from murakit.train.data import load_records
    from murakit.train.loop import _validate
    from murakit.train.loss import sample_weights

    run = runs["ddp"]
    config = TrainConfig.load(run / "config.json")
    train, valid, _ = load_records(config, lambda *a, **k: None)
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    runtime = make_runtime("cpu", config.bf16, config.channels_last)
    model = runtime.prepare_model(build_model(config.arch, config.dropout))
    model.load_state_dict(ckpt["model"])
    preprocessor = Preprocessor.from_config(config)
    valid_set = RadiographDataset(valid, preprocessor.transform, load=preprocessor.load)
    val = _validate(
        model,
        valid_set,
        sample_weights(valid, train, config.loss),
        runtime,
        config,
        distributed.DistContext(),
    )
    logged = _history(run)[-1]  # metrics.csv keeps 6 significant digits
    for key in ("val_loss", "val_image_accuracy", "val_study_accuracy", "val_study_kappa"):
        assert logged[key] == pytest.approx(val[key], rel=1e-5, abs=1e-6), key


def test_ddp_resume_reproduces_the_uninterrupted_run(runs):
    full, resumed = _history(runs["ddp"]), _history(runs["resumed"])
    assert len(resumed) == len(full) == EPOCHS
    for a, b in zip(full, resumed, strict=True):
        for key in ("train_loss", "val_loss", "val_study_accuracy", "val_study_kappa"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a, b)
