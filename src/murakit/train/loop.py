"""Train one model into a run directory, resumably.

The run directory is the unit of record: config.json (the recipe asked), provenance.json
(what ran: versions, hardware, precision used, data and checkpoint hashes), metrics.csv (one
row per epoch), loss_curve.png, best.pt (lowest validation loss) and last.pt (the
:class:`TrainState`, everything needed to continue, including a mid-epoch position after a
stop), each written atomically. Progress and messages go to callbacks
(:mod:`murakit.train.callbacks`); the library prints nothing itself.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from murakit.config import TrainConfig
from murakit.data.index import DatasetInfo, ImageRecord
from murakit.evaluate.aggregate import study_table
from murakit.evaluate.metrics import study_accuracy_kappa
from murakit.evaluate.threshold import slice_threshold, split_threshold_slice, write_slice
from murakit.infer.batched import infer_logits, make_eval_loader, sigmoid
from murakit.infer.runtime import Runtime, make_runtime
from murakit.model.densenet import ARCHS, build_model, classifier_params, logits_and_cams
from murakit.train import distributed
from murakit.train.callbacks import (
    METRIC_COLUMNS,
    BatchEnd,
    Callback,
    CallbackList,
    EpochEnd,
    EpochStart,
    RunResult,
    StopRequest,
    TrainStart,
    record_callbacks,
)
from murakit.train.data import TrainData, build_data, load_records
from murakit.train.loss import box_guidance_loss, weighted_bce
from murakit.train.provenance import RunProvenance, precision_name
from murakit.train.state import (
    CHECKPOINT_FORMAT,
    RunDirError,
    TrainState,
    save_best,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRIC_COLUMNS",
    "RunDirError",
    "RunResult",
    "fit",
    "prepare_run_dir",
    "train_run",
    "train_step",
]


def fit(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    callbacks: Iterable[Callback] = (),
    stop_signals: bool = False,
) -> RunResult:
    """Train a model with `config` into the run folder `out`; quiet unless a callback
    prints (e.g. :class:`~murakit.train.callbacks.TextLog`).

    A new recipe is validated first (ValueError listing every problem, nothing written);
    a new run refuses a folder that already holds one. With ``resume=True`` the run in
    `out` continues from its last.pt with its saved config, trained up to
    ``config.epochs`` epochs (an unfinished run to its end, a finished one further).
    ``stop_signals=True`` makes Ctrl-C / SIGTERM stop after the current step, saving
    last.pt (only from the main thread)."""
    out = Path(out)
    if not resume:
        config.validate(ARCHS)  # every problem at once, before the run folder exists
    config = prepare_run_dir(out, config, resume, config.epochs if resume else None)
    return train_run(config, out, resume=resume, callbacks=callbacks, stop_signals=stop_signals)


def prepare_run_dir(
    out: Path, config: TrainConfig | None, resume: bool, epochs: int | None = None
) -> TrainConfig:
    """The config of the run at `out`: new (refuses to overwrite) or resumed (from its
    config.json; only `epochs` may change)."""
    if resume:
        if not (out / "config.json").exists():
            raise RunDirError(
                f"{out}: no config.json to resume from (start a run without --resume)"
            )
        saved = TrainConfig.load(out / "config.json")
        return saved.replace(epochs=epochs) if epochs else saved
    if (out / "last.pt").exists():
        raise RunDirError(
            f"{out} already holds a run (last.pt); pass --resume to continue it "
            "or choose another --out"
        )
    assert config is not None
    return config


@dataclass
class _Run:
    """What the epochs of one run work with."""

    config: TrainConfig
    out: Path
    ctx: distributed.DistContext
    runtime: Runtime
    state: TrainState
    model: torch.nn.Module  # the state's model, wrapped in DDP under torchrun
    data: TrainData
    events: CallbackList
    stop: StopRequest


def train_run(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    callbacks: Iterable[Callback] = (),
    stop_signals: bool = False,
    stop: StopRequest | None = None,
    records: tuple[list[ImageRecord], list[ImageRecord]] | None = None,
) -> RunResult:
    """Train (or continue, with `resume`) the run at `out` with `config`.

    `callbacks` receive progress and messages (after the run's record writers: metrics.csv,
    loss_curve.png, provenance.json); `stop` may be set to stop cleanly, and
    ``stop_signals=True`` sets it on Ctrl-C / SIGTERM. `records` = (train, valid) replaces
    the dataset's index."""
    out = Path(out)
    ctx = distributed.init_from_env(config.device)
    events = CallbackList([*record_callbacks(), RunProvenance(), *callbacks] if ctx.is_main else [])
    stop = stop or StopRequest()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)

    train, valid, skipped = records or load_records(config, events.on_log)
    train, held_out = split_threshold_slice(train, config.threshold_slice)
    if config.data:  # the class names and parts the model will report (murakit import)
        config.extra["dataset"] = DatasetInfo.read(Path(config.data)).to_json()
    runtime = make_runtime(
        config.device if not ctx.enabled or config.device != "auto" else _rank_device(ctx),
        config.bf16,
        config.channels_last,
    )
    state = _initial_state(config, runtime, out, resume)
    if runtime.threads is not None and not runtime.threads.train:
        runtime.threads.on_slowed = partial(_say_threads_are_fixed, events, runtime.threads)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.json")
    model = state.model
    if ctx.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.is_cuda else None
        )
    data = build_data(config, train, valid, held_out, ctx, runtime, events.on_log)
    run = _Run(config, out, ctx, runtime, state, model, data, events, stop)
    events.on_train_start(
        TrainStart(
            out=out,
            config=config,
            train_images=len(train),
            valid_images=len(valid),
            slice_images=len(held_out),
            device=runtime.describe(),
            world_size=ctx.world_size,
            epochs_done=state.epochs_done,
            step=state.step,
            stop=stop,
            precision=precision_name(runtime.amp_dtype),
        )
    )

    result = RunResult(out, skipped=skipped)
    with _stop_on_signals(stop, stop_signals):
        for epoch in range(state.epochs_done + 1, config.epochs + 1):
            data.sampler.set_epoch(epoch, skip=state.step * config.batch_size)
            if distributed.any_rank(ctx, stop.requested):  # asked during validation
                result.interrupted, result.stopped_epoch = True, epoch
                break
            epoch_sums = _train_epoch(run, epoch)
            if epoch_sums is None:  # stopped mid-epoch: last.pt keeps the position
                if ctx.is_main:
                    state.save(out / "last.pt")
                result.interrupted, result.stopped_epoch = True, epoch
                result.stopped_mid_epoch = True
                break
            _end_epoch(run, epoch, *epoch_sums)
    result.history = state.history
    result.best_epoch, result.best_val_loss = state.best_epoch, state.best_val_loss
    events.on_train_end(result)
    distributed.shutdown(ctx)
    return result


def _say_threads_are_fixed(events: CallbackList, governor, cores_taken: float) -> None:
    """Why an epoch crawls on a shared machine, and the way out (said once per run)."""
    events.on_log(
        f"slowed: other processes are using about {cores_taken:.1f} of this machine's "
        f"{os.cpu_count()} cores; training keeps its {governor.max_threads} threads, which wait "
        "for each other at every layer, so it may run several times slower while they run. "
        "MURAKIT_ADAPTIVE_THREADS=1 follows the cores left free instead (the run then no "
        "longer reproduces bit for bit).",
        warning=True,
    )


def _initial_state(config: TrainConfig, runtime: Runtime, out: Path, resume: bool) -> TrainState:
    """A new model (its initial weights loaded) with its optimizer, scheduler and scaler, or
    all of them as last.pt left them when resuming."""
    model = build_model(config.arch, config.dropout)
    continuing = resume and (out / "last.pt").exists()
    if not continuing:
        from murakit.model.weights import load_weights

        load_weights(model, config.weights, config.arch)
    model = runtime.prepare_model(model)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay
    )
    state = TrainState(
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=_make_scheduler(optimizer, config),
        scaler=runtime.grad_scaler(),
    )
    if continuing:
        state.restore(out / "last.pt")
    return state


def _train_epoch(run: _Run, epoch: int) -> tuple[float, float, int] | None:
    """One pass over this rank's share of the epoch: (mean loss, seconds, images) over all
    ranks, or None when a stop was asked (the position is then in `run.state`). Sums
    continue from ``state.partial`` after a mid-epoch resume."""
    state, ctx, config = run.state, run.ctx, run.config
    run.model.train()
    loss_sum, n_images, seconds = state.partial
    total = len(run.data.sampler.order())
    run.events.on_epoch_start(EpochStart(epoch, config.epochs, int(n_images), total))
    step = state.step
    tick = time.perf_counter()
    for images, labels, index in run.data.loader:
        # Dropout masks from (seed, epoch, step, rank): independent across DDP ranks and
        # exactly reproducible after a resume at any step.
        torch.manual_seed(
            int(np.random.SeedSequence([config.seed, epoch, step, ctx.rank]).generate_state(1)[0])
        )
        labels = labels.to(run.runtime.device, non_blocking=True)
        batch_weights = run.data.weights[index].to(run.runtime.device, non_blocking=True)
        loss_total = train_step(
            run.model,
            images,
            labels,
            batch_weights,
            state.optimizer,
            state.scaler,
            run.runtime,
            config.box_loss,
        )
        now = time.perf_counter()
        seconds += now - tick
        tick = now
        loss_sum += float(loss_total)
        n_images += len(labels)
        step += 1
        state.step, state.partial = step, [loss_sum, n_images, seconds]
        run.events.on_batch_end(
            BatchEnd(
                epoch=epoch,
                epochs=config.epochs,
                step=step,
                images=int(n_images),
                total=total,
                loss=loss_sum / n_images,
                img_per_s=n_images / seconds,
            )
        )
        if distributed.any_rank(ctx, run.stop.requested):
            return None
    total_loss, total_images, total_seconds = distributed.all_sum(
        ctx, [loss_sum, n_images, seconds]
    )
    per_rank_seconds = total_seconds / ctx.world_size
    return total_loss / max(total_images, 1), per_rank_seconds, total_images


def _end_epoch(run: _Run, epoch: int, train_loss: float, seconds: float, n_images) -> None:
    """Validate, step the lr schedule, record the epoch; on the main rank save best.pt (and
    choose the threshold on the held-out slice) when validation loss improved, then last.pt,
    then tell the callbacks (which write metrics.csv and the loss curve)."""
    state, config, ctx = run.state, run.config, run.ctx
    distributed.broadcast_buffers(ctx, state.model)  # every rank validates rank 0's model
    val = _validate(
        state.model,
        run.data.valid_set,
        run.data.valid_weights,
        run.runtime,
        config,
        ctx,
        run.events.on_validation_progress,
    )
    lr = state.optimizer.param_groups[0]["lr"]
    if isinstance(state.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        state.scheduler.step(val["val_loss"])
    elif state.scheduler is not None:
        state.scheduler.step()
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        **val,
        "lr": lr,
        "seconds": seconds,
        "img_per_s": n_images / max(seconds, 1e-9),
    }
    improved = state.end_epoch(row)
    if ctx.is_main:
        if improved:
            save_best(run.out / "best.pt", config, epoch, row, state.model)
            if len(run.data.slice_set):
                _choose_threshold(state.model, run.data.slice_set, run, run.out)
        state.save(run.out / "last.pt")
    run.events.on_epoch_end(EpochEnd(run.out, row, improved, state.history))


def _make_scheduler(optimizer, config: TrainConfig):
    """lr/10 when validation loss stalls (plateau_patience >= 0), a per-epoch cosine decay to
    zero over the run's epochs, or None (constant)."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.lr_schedule != "plateau":
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; use plateau or cosine")
    if config.plateau_patience < 0:
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.1, patience=config.plateau_patience
    )


def _rank_device(ctx: distributed.DistContext) -> str:
    return f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"


def train_step(
    model, images, labels, weights, optimizer, scaler, runtime: Runtime, box_loss: float = 0.0
):
    """One optimisation step on a loader batch (labels and weights already on the device);
    returns the batch's summed weighted loss, detached. With ``box_loss`` the squares carry a
    box-mask channel and the box-guidance loss on the CAMs joins, with that weight."""
    if box_loss:
        batch, masks = runtime.batch_with_masks(images)
        with runtime.autocast():
            logits, cams = logits_and_cams(model, batch)
        loss_total = weighted_bce(logits, labels, weights)
        bias = classifier_params(model)[1][0]
        loss_total = loss_total + box_loss * box_guidance_loss(cams, labels, masks, bias)
    else:
        batch = runtime.batch(images)  # (augmented outside autocast: full precision)
        with runtime.autocast():
            logits = model(batch)[:, 0]
        loss_total = weighted_bce(logits, labels, weights)
    optimizer.zero_grad(set_to_none=True)
    # DDP averages gradients over ranks; per-image mean over this rank's batch keeps the
    # global gradient equal to the mean over the global batch (equal shard sizes).
    loss = loss_total / len(labels)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss_total.detach()


def _validate(model, valid_set, valid_weights, runtime, config, ctx, on_progress=None) -> dict:
    """Validation image loss and accuracy, and study accuracy/kappa (study probability = mean
    of its images'). Each rank scores a disjoint share; the shares are gathered.
    `on_progress(phase, done, total)` follows this rank's share."""
    indices = list(range(ctx.rank, len(valid_set), ctx.world_size))
    loader = make_eval_loader(valid_set, config.batch_size, config.workers, runtime, indices)
    logits, idx = _score(model, loader, runtime, "validating", len(indices), on_progress)
    parts = distributed.gather_objects(ctx, (logits, idx))
    logits = np.concatenate([p[0] for p in parts])
    idx = np.concatenate([p[1] for p in parts])
    order = np.argsort(idx, kind="stable")
    logits, idx = logits[order], idx[order]
    records = [valid_set.records[i] for i in idx]
    labels = np.array([r.label for r in records], dtype=np.float32)
    loss = weighted_bce(
        torch.from_numpy(logits), torch.from_numpy(labels), valid_weights[torch.from_numpy(idx)]
    )
    probs = sigmoid(logits)
    _keys, _parts, study_labels, study_probs = study_table(records, probs)
    study_acc, study_kappa = study_accuracy_kappa(study_labels, study_probs)
    return {
        "val_loss": float(loss) / len(records),
        "val_image_accuracy": float(np.mean((probs >= 0.5) == labels)),
        "val_study_accuracy": float(study_acc),
        "val_study_kappa": float(study_kappa),
    }


def _choose_threshold(model, slice_set, run: _Run, out: Path) -> None:
    """Score the held-out slice with the best model so far; write threshold.json beside it."""
    config = run.config
    loader = make_eval_loader(slice_set, config.batch_size, config.workers, run.runtime)
    logits, idx = _score(
        model,
        loader,
        run.runtime,
        "threshold slice",
        len(slice_set),
        run.events.on_validation_progress,
    )
    records = [slice_set.records[i] for i in idx]
    probs = sigmoid(logits)
    write_slice(out, records, probs, slice_threshold(records, probs, config.threshold_sensitivity))


def _score(model, loader, runtime, phase: str, total: int, on_progress):
    """Logits of a loader's images, reporting (phase, done, total) as batches finish."""
    if on_progress is None:
        return infer_logits(model, loader, runtime)
    done = 0
    on_progress(phase, 0, total)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        on_progress(phase, done, total)

    return infer_logits(model, loader, runtime, on_batch=advance)


@contextmanager
def _stop_on_signals(stop: StopRequest, enabled: bool) -> Iterator[None]:
    """With `enabled`, the first Ctrl-C (or SIGTERM) sets `stop` -- the loop saves and stops
    at the next batch boundary -- and a second Ctrl-C aborts at once. Signals are left alone
    off the main thread and when not enabled (a library call)."""
    previous: dict[int, object] = {}

    def handle(signum, frame) -> None:
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.request()

    if enabled:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
