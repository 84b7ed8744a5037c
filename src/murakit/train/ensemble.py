"""Ensembles: train N members, keep the K with the lowest validation loss.

An ensemble directory holds members/member-NN/ (ordinary run directories), ensemble.json
(every member with its figures, `kept` marking the chosen ones), members.csv and
provenance.json (:mod:`murakit.train.provenance`).
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch

from murakit.config import TrainConfig
from murakit.evaluate.threshold import ensemble_threshold
from murakit.fsutil import atomic_write_json, atomic_write_text
from murakit.infer.model import ENSEMBLE_FILE, ModelDirError
from murakit.train.callbacks import Callback, RunResult
from murakit.train.state import RunDirError


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
    """ensemble.json, members.csv and provenance.json; run paths are stored relative to
    ens_dir when inside."""
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
    from murakit.train.provenance import write_ensemble_provenance

    configs = [TrainConfig.load(Path(m.run_dir) / "config.json") for m in members]
    write_ensemble_provenance(ens_dir, members, configs)


def member_dirs(ens_dir: Path, n_models: int) -> list[Path]:
    return [member_dir(ens_dir, i) for i in range(n_models)]


def member_dir(ens_dir: Path, index: int) -> Path:
    """Member `index` (0-based) of the ensemble at `ens_dir`: ens_dir/members/member-NN."""
    return Path(ens_dir) / "members" / f"member-{index:02d}"


def prepare_member(config: TrainConfig, ens_dir: Path, index: int) -> tuple[TrainConfig, Path]:
    """Member `index`'s config and folder: the ensemble's recipe with seed ``config.seed +
    index``, saved (atomically) as its config.json when the member is new; a member that has
    one already keeps it (it resumes as it started). A full `ensemble train` and
    `ensemble train --member index` make the same member; several processes may prepare
    different members of one ensemble at once (each writes only its own folder)."""
    run_dir = member_dir(ens_dir, index)
    if (run_dir / "config.json").exists():
        return TrainConfig.load(run_dir / "config.json"), run_dir
    member_config = config.replace(seed=config.seed + index)
    run_dir.mkdir(parents=True, exist_ok=True)
    member_config.save(run_dir / "config.json")
    return member_config, run_dir


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
    callbacks: Iterable[Callback] = (),
    stop_signals: bool = False,
) -> list[MemberSummary]:
    """Train members with seeds seed, seed+1, ... (finished ones are not retrained, unfinished
    ones resume), then keep the `keep` with the lowest validation loss.

    One at a time, members train in this process and report to `callbacks` (a stop, e.g.
    Ctrl-C with `stop_signals`, saves the member and raises KeyboardInterrupt). With
    ``parallel > 1`` they train in separate processes, each writing its member's train.log;
    `log` gets one line per member started and finished. The recipe is validated
    (:meth:`TrainConfig.validate`) before any folder is made."""
    from murakit.model.densenet import ARCHS

    config.validate(ARCHS)
    if n_models < 1 or not 1 <= keep <= n_models:
        raise ValueError(f"need 1 <= keep <= models, got models {n_models}, keep {keep}")
    dirs = member_dirs(ens_dir, n_models)
    todo = []
    for i, run_dir in enumerate(dirs):
        if run_is_finished(run_dir):
            log(f"{run_dir.name}: already trained, kept as is")
            continue
        todo.append(prepare_member(config, ens_dir, i))
    if parallel > 1 and len(todo) > 1:
        _train_parallel([d for _, d in todo], parallel, log)
    else:
        for member_config, run_dir in todo:
            log(f"training {run_dir.name} (seed {member_config.seed})")
            if train_one is not None:
                train_one(member_config, run_dir)
                continue
            result = train_member(run_dir, callbacks=callbacks, stop_signals=stop_signals)
            if result.interrupted:
                raise KeyboardInterrupt
    members = select_members(dirs, keep)
    write_ensemble(ens_dir, members)
    return members


def train_ensemble_member(
    config: TrainConfig,
    ens_dir: Path,
    index: int,
    *,
    log: Callable[[str], None] = print,
    callbacks: Iterable[Callback] = (),
    stop_signals: bool = False,
) -> MemberSummary:
    """Train only member `index` (0-based) of the ensemble at `ens_dir`: exactly the member a
    full :func:`train_ensemble` trains (seed ``config.seed + index``, members/member-NN),
    for one cluster job per member. Idempotent (a finished member is kept as is) and
    resumable; it writes only its member's folder, so jobs for different members may share
    `ens_dir`; a second process on the same member is refused (:class:`MemberBusyError`).
    ensemble.json is not written: `murakit ensemble select` (or :func:`train_ensemble`,
    which finds every member finished) chooses the members once all are trained."""
    from murakit.model.densenet import ARCHS

    config.validate(ARCHS)
    if index < 0:
        raise ValueError(f"member index must be >= 0, got {index}")
    run_dir = member_dir(ens_dir, index)
    if run_is_finished(run_dir):
        log(f"{run_dir.name}: already trained, kept as is")
    else:
        member_config, run_dir = prepare_member(config, ens_dir, index)
        log(f"training {run_dir.name} (seed {member_config.seed})")
        result = train_member(run_dir, callbacks=callbacks, stop_signals=stop_signals)
        if result.interrupted:
            raise KeyboardInterrupt
    return summarize_run(run_dir)


class MemberBusyError(RunDirError):
    """Another process is training this member (it holds the member's lock file)."""


LOCK_FILE = ".train.lock"


@contextmanager
def member_lock(run_dir: Path) -> Iterator[None]:
    """Hold run_dir/.train.lock (an advisory lock the system drops when the process ends,
    even killed) while a member trains, so two jobs given the same member, or a full
    `ensemble train` beside a `--member` job, never write one member's checkpoints at once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MemberBusyError(
                f"{run_dir.name} is being trained by another process (it holds "
                f"{run_dir / LOCK_FILE})"
            ) from None
        yield


def train_member(
    run_dir: Path, *, callbacks: Iterable[Callback] = (), stop_signals: bool = False
) -> RunResult:
    """Train (or continue) the member at `run_dir` from its config.json to its last epoch,
    holding its lock (:func:`member_lock`); a member another process finished meanwhile is
    left as it is."""
    from murakit.train.history import read_history
    from murakit.train.loop import prepare_run_dir, train_run

    run_dir = Path(run_dir)
    with member_lock(run_dir):
        if run_is_finished(run_dir):
            return RunResult(run_dir, history=read_history(run_dir))
        config = prepare_run_dir(run_dir, None, resume=True)
        return train_run(
            config, run_dir, resume=True, callbacks=callbacks, stop_signals=stop_signals
        )


def _member_process(run_dir: str) -> None:
    """What a member's own process runs (spawned by _train_parallel, which set its
    OMP_NUM_THREADS / CUDA_VISIBLE_DEVICES before the interpreter started): train the member
    with its output, tracebacks included, appended to its train.log. Exit status 0 when
    trained, 130 when stopped by Ctrl-C (last.pt saved), 1 on an error."""
    from murakit.data.imageio import BadImageError
    from murakit.data.index import DatasetError
    from murakit.model.weights import WeightsError
    from murakit.train.callbacks import TextLog
    from murakit.train.state import RunDirError

    with open(Path(run_dir) / "train.log", "a", encoding="utf-8") as log_file:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
    try:
        result = train_member(Path(run_dir), callbacks=[TextLog()], stop_signals=True)
    except (DatasetError, WeightsError, BadImageError, RunDirError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(130 if result.interrupted else 0)


def _train_parallel(run_dirs: Sequence[Path], parallel: int, log) -> None:
    """Train members in their own processes (multiprocessing, "spawn"), `parallel` at a time:
    one per GPU where there are GPUs, else CPU processes sharing the cores."""
    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // parallel)
    spawn = multiprocessing.get_context("spawn")
    pending = list(run_dirs)
    running: dict[BaseProcess, Path] = {}
    failed = []
    started = 0
    while pending or running:
        while pending and len(running) < parallel:
            run_dir = pending.pop(0)
            env = {"OMP_NUM_THREADS": str(threads)}
            where = f"{threads} CPU threads"
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(started % gpus)
                where = f"GPU {env['CUDA_VISIBLE_DEVICES']}"
            started += 1
            log(f"starting {run_dir.name} ({where}); log in {run_dir / 'train.log'}")
            proc = spawn.Process(target=_member_process, args=(str(run_dir),), name=run_dir.name)
            with _environment(env):  # the new interpreter starts with it: torch reads it there
                proc.start()
            running[proc] = run_dir
        wait([p.sentinel for p in running], timeout=0.5)
        for proc in [p for p in running if not p.is_alive()]:
            proc.join()
            run_dir = running.pop(proc)
            if proc.exitcode:
                failed.append(f"{run_dir.name} (exit {proc.exitcode}; see {run_dir / 'train.log'})")
            else:
                log(f"{run_dir.name}: finished")
    if failed:
        raise RuntimeError("members failed: " + ", ".join(failed))


@contextmanager
def _environment(changes: dict[str, str]) -> Iterator[None]:
    """os.environ with `changes` for the duration (a spawned process inherits it)."""
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
