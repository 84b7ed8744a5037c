"""Ensembles: train N members, keep the K with the lowest validation loss.

An ensemble directory holds members/member-NN/ (ordinary run directories), ensemble.json
(every member with its figures, `kept` marking the chosen ones) and members.csv.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from murakit.config import TrainConfig
from murakit.evaluate.threshold import ensemble_threshold
from murakit.fsutil import atomic_write_json, atomic_write_text
from murakit.infer.model import ENSEMBLE_FILE, ModelDirError


@dataclass
class MemberSummary:
    """One member's row of the reference report's table."""

    name: str
    run_dir: str
    epochs: int
    best_epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_study_accuracy: float
    kept: bool = False


def summarize_run(run_dir: Path) -> MemberSummary:
    """The figures of a run at its best (lowest validation loss) epoch."""
    from murakit.train.history import read_history

    if not (run_dir / "metrics.csv").exists() or not (run_dir / "best.pt").exists():
        raise ModelDirError(f"{run_dir}: not a finished run (no metrics.csv/best.pt)")
    history = read_history(run_dir)
    best = min(history, key=lambda row: row["val_loss"])
    return MemberSummary(
        name=run_dir.name,
        run_dir=str(run_dir),
        epochs=len(history),
        best_epoch=int(best["epoch"]),
        train_loss=best["train_loss"],
        val_loss=best["val_loss"],
        val_accuracy=best["val_image_accuracy"],
        val_study_accuracy=best["val_study_accuracy"],
    )


def select_members(run_dirs: Sequence[Path], keep: int) -> list[MemberSummary]:
    """All runs, sorted by validation loss, the `keep` lowest marked kept."""
    if keep < 1:
        raise ValueError(f"--keep must be at least 1, got {keep}")
    members = sorted((summarize_run(Path(d)) for d in run_dirs), key=lambda m: m.val_loss)
    if keep > len(members):
        raise ValueError(f"cannot keep {keep} of {len(members)} finished runs")
    for member in members[:keep]:
        member.kept = True
    return members


def write_ensemble(ens_dir: Path, members: Sequence[MemberSummary]) -> None:
    """ensemble.json and members.csv; run paths are stored relative to ens_dir when inside."""
    ens_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for member in members:
        row = asdict(member)
        path = Path(member.run_dir).resolve()
        try:
            row["run_dir"] = str(path.relative_to(ens_dir.resolve()))
        except ValueError:
            row["run_dir"] = str(path)
        rows.append(row)
    kept_dirs = [Path(m.run_dir) for m in members if m.kept]
    sensitivity = TrainConfig.load(kept_dirs[0] / "config.json").threshold_sensitivity
    threshold = ensemble_threshold(kept_dirs, sensitivity)
    atomic_write_json(
        ens_dir / ENSEMBLE_FILE,
        {
            "selection": "lowest validation loss",
            "kept": sum(m.kept for m in members),
            "members": rows,
            **(
                {"threshold": threshold["threshold"], "threshold_rule": threshold}
                if threshold
                else {}
            ),
        },
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(ens_dir / "members.csv", buffer.getvalue())


def member_dirs(ens_dir: Path, n_models: int) -> list[Path]:
    return [ens_dir / "members" / f"member-{i:02d}" for i in range(n_models)]


def run_is_finished(run_dir: Path) -> bool:
    """True when the run has trained all the epochs its config asks for."""
    if not (run_dir / "metrics.csv").exists() or not (run_dir / "config.json").exists():
        return False
    from murakit.train.history import read_history

    return len(read_history(run_dir)) >= TrainConfig.load(run_dir / "config.json").epochs


def train_ensemble(
    config: TrainConfig,
    ens_dir: Path,
    n_models: int,
    keep: int,
    *,
    parallel: int = 1,
    train_one: Callable[[TrainConfig, Path], object] | None = None,
    log: Callable[[str], None] = print,
) -> list[MemberSummary]:
    """Train members with seeds seed, seed+1, ... (finished ones are not retrained, unfinished
    ones resume), then keep the `keep` with the lowest validation loss."""
    dirs = member_dirs(ens_dir, n_models)
    todo = []
    for i, run_dir in enumerate(dirs):
        if run_is_finished(run_dir):
            log(f"{run_dir.name}: already trained, kept as is")
            continue
        member_config = config.replace(seed=config.seed + i)
        if (run_dir / "config.json").exists():
            member_config = TrainConfig.load(run_dir / "config.json")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            member_config.save(run_dir / "config.json")
        todo.append((member_config, run_dir))
    if parallel > 1 and len(todo) > 1:
        _train_parallel([d for _, d in todo], parallel, log)
    else:
        for member_config, run_dir in todo:
            log(f"training {run_dir.name} (seed {member_config.seed})")
            (train_one or _train_in_process)(member_config, run_dir)
    members = select_members(dirs, keep)
    write_ensemble(ens_dir, members)
    return members


def _train_in_process(config: TrainConfig, run_dir: Path) -> None:
    from murakit.train.loop import train_run

    result = train_run(config, run_dir, resume=True)
    if result.interrupted:
        raise KeyboardInterrupt


def _train_parallel(run_dirs: Sequence[Path], parallel: int, log) -> None:
    """Run members as separate `murakit train --resume` processes, `parallel` at a time: one
    per GPU where there are GPUs, else CPU processes sharing the cores."""
    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // parallel)
    pending = list(run_dirs)
    running: dict[subprocess.Popen, Path] = {}
    failed = []
    started = 0
    while pending or running:
        while pending and len(running) < parallel:
            run_dir = pending.pop(0)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            where = f"{threads} CPU threads"
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(started % gpus)
                where = f"GPU {env['CUDA_VISIBLE_DEVICES']}"
            started += 1
            log(f"starting {run_dir.name} ({where}); log in {run_dir / 'train.log'}")
            with open(run_dir / "train.log", "a") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "murakit", "train", "--out", str(run_dir), "--resume"],
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            running[proc] = run_dir
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            run_dir = running.pop(proc)
            if proc.returncode:
                failed.append(
                    f"{run_dir.name} (exit {proc.returncode}; see {run_dir / 'train.log'})"
                )
            else:
                log(f"{run_dir.name}: finished")
    if failed:
        raise RuntimeError("members failed: " + ", ".join(failed))
