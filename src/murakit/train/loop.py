"""Train one model into a run directory, resumably.

The run directory is the unit of record: config.json, metrics.csv (one row per epoch),
loss_curve.png, best.pt (lowest validation loss) and last.pt (everything needed to continue,
including a mid-epoch position after Ctrl-C), each written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from murakit.config import TrainConfig
from murakit.data.dataset import EpochSampler, RadiographDataset
from murakit.data.index import DatasetInfo, ImageRecord
from murakit.evaluate.aggregate import study_table
from murakit.evaluate.metrics import study_accuracy_kappa
from murakit.evaluate.threshold import slice_threshold, split_threshold_slice, write_slice
from murakit.fsutil import atomic_torch_save, atomic_write_text
from murakit.infer.batched import infer_logits, make_eval_loader, sigmoid
from murakit.infer.runtime import Runtime, make_runtime
from murakit.model.densenet import build_model, logits_and_cams, unwrap
from murakit.progress import progress_bar
from murakit.train import distributed
from murakit.train.loss import box_guidance_loss, sample_weights, weighted_bce

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_image_accuracy",
    "val_study_accuracy",
    "val_study_kappa",
    "lr",
    "seconds",
    "img_per_s",
)
CHECKPOINT_FORMAT = "murakit-run/1"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists without --resume, or is incomplete)."""


@dataclass
class RunResult:
    out: Path
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    interrupted: bool = False
    skipped: list[str] = field(default_factory=list)


class _StopFlag:
    """First Ctrl-C (or SIGTERM) asks the loop to save and stop at the next batch boundary;
    a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves before stopping."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


def train_run(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    records: tuple[list[ImageRecord], list[ImageRecord]] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> RunResult:
    """Train (or continue) the run at `out`. `records` = (train, valid) overrides the index."""
    out = Path(out)
    ctx = distributed.init_from_env(config.device)
    console = console or Console(stderr=True)
    log = console.print if ctx.is_main else (lambda *a, **k: None)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)

    train_records, valid_records, skipped = records or _load_records(config, log)
    train_records, slice_records = split_threshold_slice(train_records, config.threshold_slice)
    if config.data:  # the class names and parts the model will report (murakit import)
        config.extra["dataset"] = DatasetInfo.read(Path(config.data)).to_json()
    runtime = make_runtime(
        config.device if not ctx.enabled or config.device != "auto" else _rank_device(ctx),
        config.bf16,
        config.channels_last,
    )
    model = build_model(config.arch, config.dropout)
    continuing = resume and (out / "last.pt").exists()
    if not continuing:
        from murakit.model.weights import load_weights

        load_weights(model, config.weights, config.arch)
    model = runtime.prepare_model(model)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay
    )
    scheduler = _make_scheduler(optimizer, config)
    scaler = runtime.grad_scaler()

    result = RunResult(out, skipped=skipped)
    state = {"epochs_done": 0, "step": 0, "partial": [0.0, 0.0, 0.0]}
    if continuing:
        state = _restore(out / "last.pt", model, optimizer, scheduler, scaler, result)
        log(
            f"resuming {out} at epoch {state['epochs_done'] + 1}"
            + (f", batch {state['step'] + 1}" if state["step"] else "")
        )
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.json")

    train_model = model
    if ctx.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.is_cuda else None
        )

    weights = sample_weights(train_records, train_records, config.loss)
    valid_weights = sample_weights(valid_records, train_records, config.loss)
    load, train_tf, eval_tf = _data_pipeline(config, train_records + valid_records, ctx, log)
    train_load = _box_mask_loader(load, config, ctx) if config.box_loss else load
    train_set = RadiographDataset(
        train_records, train_tf, seed=config.seed, train=True, load=train_load
    )
    valid_set = RadiographDataset(valid_records, eval_tf, load=load)
    slice_set = RadiographDataset(slice_records, eval_tf, load=load)
    sampler = EpochSampler(len(train_set), config.seed, rank=ctx.rank, world_size=ctx.world_size)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=runtime.is_cuda,
        worker_init_fn=_ignore_sigint,
        generator=torch.Generator(),
        persistent_workers=False,
    )
    log(
        f"training {config.arch} on {len(train_records)} images "
        f"(validating on {len(valid_records)}"
        + (f"; {len(slice_records)} held out to choose the threshold" if slice_records else "")
        + f") on {runtime.describe()}"
        + (f" x {ctx.world_size} processes" if ctx.enabled else "")
    )

    show = ctx.is_main and show_progress
    with _StopFlag() as stop, progress_bar(console=console, disable=not show) as bar:
        for epoch in range(state["epochs_done"] + 1, config.epochs + 1):
            sampler.set_epoch(epoch, skip=state["step"] * config.batch_size)
            if distributed.any_rank(ctx, stop.requested):  # asked during validation
                log(
                    f"[yellow]stopped before epoch {epoch}; {out / 'last.pt'} is current. "
                    f"Continue with: murakit train --out {out} --resume"
                )
                result.interrupted = True
                break
            train_loss, seconds, n_images, stopped = _train_epoch(
                train_model,
                loader,
                optimizer,
                scaler,
                runtime,
                weights,
                state,
                stop,
                ctx,
                bar,
                f"epoch {epoch}/{config.epochs}",
                len(sampler.order()),
                seed=config.seed,
                epoch=epoch,
                box_loss=config.box_loss,
            )
            if stopped:
                if ctx.is_main:
                    _save_last(
                        out, model, optimizer, scheduler, scaler, config, result, epoch - 1, state
                    )
                log(
                    f"[yellow]stopped during epoch {epoch}; saved {out / 'last.pt'}. "
                    f"Continue with: murakit train --out {out} --resume"
                )
                result.interrupted = True
                break
            distributed.broadcast_buffers(ctx, model)  # every rank validates rank 0's model
            val = _validate(model, valid_set, valid_weights, runtime, config, ctx, bar)
            lr = optimizer.param_groups[0]["lr"]
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val["val_loss"])
            elif scheduler is not None:
                scheduler.step()
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                **val,
                "lr": lr,
                "seconds": seconds,
                "img_per_s": n_images / max(seconds, 1e-9),
            }
            result.history.append(row)
            state = {"epochs_done": epoch, "step": 0, "partial": [0.0, 0.0, 0.0]}
            improved = row["val_loss"] < result.best_val_loss
            if improved:
                result.best_val_loss, result.best_epoch = row["val_loss"], epoch
            if ctx.is_main:
                if improved:
                    atomic_torch_save(
                        out / "best.pt",
                        {
                            "format": CHECKPOINT_FORMAT,
                            "config": asdict(config),
                            "epoch": epoch,
                            "metrics": row,
                            "model": unwrap(model).state_dict(),
                        },
                    )
                    if slice_records:
                        _choose_threshold(model, slice_set, runtime, config, out, bar)
                _save_last(out, model, optimizer, scheduler, scaler, config, result, epoch, state)
                _write_history(out, result.history)
            log(_epoch_line(row, improved))
            if on_epoch:
                on_epoch(row)
    distributed.shutdown(ctx)
    return result


def _box_mask_loader(load, config: TrainConfig, ctx):
    """The training loader for box guidance: images with a mask of their truth boxes."""
    from murakit.data.dataset import BoxMaskLoader
    from murakit.data.truth import truth_boxes

    if config.cache or config.panels != "keep" or ctx.enabled:
        raise RunDirError(
            "--box-loss works on decoded images in one process: not with --cache, "
            "--panels largest (it moves the boxes) or several processes"
        )
    boxes = truth_boxes(Path(config.data))
    if not boxes:
        raise RunDirError(
            f"{config.data}: --box-loss needs boxes in truth.csv (as `murakit import fracatlas` "
            "writes); this dataset has none"
        )
    return BoxMaskLoader(load, boxes)


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


def _load_records(config: TrainConfig, log) -> tuple[list, list, list[str]]:
    from murakit.data.index import load_index

    index = load_index(config.data, skip_bad=config.skip_bad)
    train, valid = index.split("train"), index.split("valid")
    skipped = list(index.skipped)
    if not train or not valid:
        raise RunDirError(
            f"{config.data}: training needs both a train and a valid split "
            f"(found {len(train)} train and {len(valid)} valid images)"
        )
    if config.max_train_images and len(train) > config.max_train_images:
        keep = np.random.default_rng(config.seed).choice(
            len(train), config.max_train_images, replace=False
        )
        train = [train[i] for i in sorted(keep)]
    if config.skip_bad:
        from murakit.data.verify import find_bad_files

        bad = find_bad_files([r.path for r in train + valid], config.workers or 0)
        bad_paths = {m.split(": ", 1)[0] for m in bad}
        train = [r for r in train if str(r.path) not in bad_paths]
        valid = [r for r in valid if str(r.path) not in bad_paths]
        skipped += bad
    for message in skipped:
        log(f"[yellow]skipped:[/] {message}", highlight=False)
    return train, valid, skipped


def _train_transform(config: TrainConfig):
    from murakit.data.transforms import TrainTransform

    return TrainTransform(config.size, rotation=config.rotation, hflip=config.hflip)


def _eval_transform(config: TrainConfig):
    from murakit.data.transforms import EvalTransform

    return EvalTransform(config.size)


def _data_pipeline(config: TrainConfig, records, ctx, log):
    """(image loader, train transform, eval transform). With a cache, images come from the
    decoded squares (built or rebuilt by rank 0 when absent or stale) and the transforms skip
    the pad-and-resize step they already went through."""
    from murakit.data.dataset import RecordLoader

    load = RecordLoader(config)
    train_tf, eval_tf = _train_transform(config), _eval_transform(config)
    if not config.cache:
        return load, train_tf, eval_tf
    from murakit.data.cache import ensure_cache, fixes_tag, open_cache

    tag = fixes_tag(config)
    if ctx.is_main:
        ensure_cache(
            records,
            Path(config.cache),
            config.size,
            workers=config.workers,
            loader=load,
            tag=tag,
            log=log,
        )
    distributed.barrier(ctx)
    cached = open_cache(config.cache, records, config.size, tag=tag)
    return cached, train_tf.from_square, eval_tf.from_square


def _train_epoch(
    model,
    loader,
    optimizer,
    scaler,
    runtime: Runtime,
    weights,
    state,
    stop,
    ctx,
    bar,
    description: str,
    total: int,
    *,
    seed: int,
    epoch: int,
    box_loss: float,
):
    """One pass over this rank's share of the epoch; returns (mean loss, seconds, images,
    stopped). Sums continue from `state["partial"]` after a mid-epoch resume."""
    model.train()
    loss_sum, n_images, seconds = state["partial"]
    task = bar.add_task(
        description, total=total, completed=state["step"] * loader.batch_size, status=""
    )
    step = state["step"]
    tick = time.perf_counter()
    for images, labels, index in loader:
        # Dropout masks from (seed, epoch, step, rank): independent across DDP ranks and
        # exactly reproducible after a resume at any step.
        torch.manual_seed(
            int(np.random.SeedSequence([seed, epoch, step, ctx.rank]).generate_state(1)[0])
        )
        labels = labels.to(runtime.device, non_blocking=True)
        batch_weights = weights[index].to(runtime.device, non_blocking=True)
        loss_total = train_step(
            model, images, labels, batch_weights, optimizer, scaler, runtime, box_loss
        )
        now = time.perf_counter()
        seconds += now - tick
        tick = now
        loss_sum += float(loss_total)
        n_images += len(labels)
        step += 1
        state.update(step=step, partial=[loss_sum, n_images, seconds])
        bar.update(
            task,
            advance=len(labels),
            status=f"loss {loss_sum / n_images:.4f}  {n_images / seconds:.1f} img/s",
        )
        if distributed.any_rank(ctx, stop.requested):
            bar.remove_task(task)
            return math.nan, seconds, n_images, True
    bar.remove_task(task)
    total_loss, total_images, total_seconds = distributed.all_sum(
        ctx, [loss_sum, n_images, seconds]
    )
    per_rank_seconds = total_seconds / ctx.world_size
    return total_loss / max(total_images, 1), per_rank_seconds, total_images, False


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
        loss_total = loss_total + box_loss * box_guidance_loss(cams, labels, masks)
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


def _validate(model, valid_set, valid_weights, runtime, config, ctx, bar) -> dict:
    """Validation image loss and accuracy, and study accuracy/kappa (study probability = mean
    of its images'). Each rank scores a disjoint share; the shares are gathered."""
    indices = list(range(ctx.rank, len(valid_set), ctx.world_size))
    loader = make_eval_loader(valid_set, config.batch_size, config.workers, runtime, indices)
    task = bar.add_task("validating", total=len(indices), status="")
    logits, idx = infer_logits(model, loader, runtime, on_batch=lambda n: bar.advance(task, n))
    bar.remove_task(task)
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


def _choose_threshold(model, slice_set, runtime, config: TrainConfig, out: Path, bar) -> None:
    """Score the held-out slice with the best model so far; write threshold.json beside it."""
    loader = make_eval_loader(slice_set, config.batch_size, config.workers, runtime)
    task = bar.add_task("threshold slice", total=len(slice_set), status="")
    logits, idx = infer_logits(model, loader, runtime, on_batch=lambda n: bar.advance(task, n))
    bar.remove_task(task)
    records = [slice_set.records[i] for i in idx]
    probs = sigmoid(logits)
    write_slice(out, records, probs, slice_threshold(records, probs, config.threshold_sensitivity))


def _save_last(out, model, optimizer, scheduler, scaler, config, result, epochs_done, state):
    atomic_torch_save(
        out / "last.pt",
        {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(config),
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler else None,
            "scaler": scaler.state_dict() if scaler else None,
            "epochs_done": epochs_done,
            "step": state["step"],
            "partial": state["partial"],
            "best_val_loss": result.best_val_loss,
            "best_epoch": result.best_epoch,
            "history": result.history,
        },
    )


def _restore(path: Path, model, optimizer, scheduler, scaler, result: RunResult) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same message
        raise RunDirError(f"{path}: cannot read checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path}: not a murakit training checkpoint")
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt["scheduler"]:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    result.history = list(ckpt["history"])
    result.best_val_loss = ckpt["best_val_loss"]
    result.best_epoch = ckpt["best_epoch"]
    return {
        "epochs_done": ckpt["epochs_done"],
        "step": ckpt["step"],
        "partial": list(ckpt["partial"]),
    }


def _write_history(out: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(out / "metrics.csv", buffer.getvalue())
    from murakit.evaluate.plots import plot_loss_curve

    plot_loss_curve(history, out / "loss_curve.png", title=out.name)


def _epoch_line(row: dict, improved: bool) -> str:
    mark = " [green]* best[/]" if improved else ""
    return (
        f"epoch {row['epoch']:>3}: train loss {row['train_loss']:.4f}  "
        f"val loss {row['val_loss']:.4f}  val acc {row['val_image_accuracy']:.3f} (image) "
        f"{row['val_study_accuracy']:.3f} (study)  kappa {row['val_study_kappa']:.3f}  "
        f"{row['img_per_s']:.1f} img/s{mark}"
    )
