"""Training runs: the run directory, resuming (after a clean stop, Ctrl-C or SIGKILL) gives
the same result as an uninterrupted run, and the loss weights and sampler behave."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from murakit.config import TrainConfig, make_config
from murakit.data.dataset import EpochSampler
from murakit.data.index import load_index
from murakit.train import fit
from murakit.train.callbacks import Callback, TextLog
from murakit.train.loop import METRIC_COLUMNS, RunDirError, prepare_run_dir, train_run
from murakit.train.loss import sample_weights


def tiny_config(root: Path, **overrides) -> TrainConfig:
    values = dict(data=str(root), epochs=3, size=64, batch_size=8, workers=0, max_train_images=48)
    values.update(overrides)
    return make_config("demo", **values)


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def assert_same_run(a: Path, b: Path) -> None:
    rows_a, rows_b = read_metrics(a), read_metrics(b)
    assert len(rows_a) == len(rows_b)
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        for key in ("train_loss", "val_loss", "val_study_accuracy", "val_study_kappa"):
            assert float(row_a[key]) == pytest.approx(float(row_b[key]), rel=1e-5, abs=1e-6), key
    weights_a = torch.load(a / "last.pt", weights_only=True)["model"]
    weights_b = torch.load(b / "last.pt", weights_only=True)["model"]
    for name, tensor in weights_a.items():
        assert torch.allclose(tensor.float(), weights_b[name].float(), atol=1e-5), name


@pytest.fixture(scope="module", autouse=True)
def one_fixed_thread():
    """These runs are compared number for number and line for line, in this process and in
    training subprocesses: all of them run on one fixed thread (the sums then do not depend on
    how many cores a machine has, and a run does not crawl when other processes take a core, as
    two threads waiting for each other do), with no thread adapting and no load message."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MURAKIT_ADAPTIVE_THREADS", "0")
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def uninterrupted(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "straight"
    train_run(tiny_config(synth_root), out)
    return out


def test_run_directory_holds_the_record(uninterrupted):
    names = {p.name for p in uninterrupted.iterdir()}
    assert {"config.json", "metrics.csv", "loss_curve.png", "best.pt", "last.pt"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    rows = read_metrics(uninterrupted)
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["img_per_s"]) > 0 for r in rows)
    best = torch.load(uninterrupted / "best.pt", weights_only=True)
    best_epoch = min(rows, key=lambda r: float(r["val_loss"]))["epoch"]
    assert best["epoch"] == int(best_epoch)
    config = TrainConfig.load(uninterrupted / "config.json")
    assert (config.arch, config.size, config.epochs) == ("densenet-mini", 64, 3)
    assert (uninterrupted / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_after_finished_epoch_matches(synth_root, uninterrupted, tmp_path):
    out = tmp_path / "resumed"
    train_run(tiny_config(synth_root, epochs=1), out)
    assert len(read_metrics(out)) == 1
    config = prepare_run_dir(out, None, resume=True, epochs=3)
    train_run(config, out, resume=True)
    assert_same_run(out, uninterrupted)


class StopAfter(Callback):
    """Asks the run to stop after `batches` batches of epoch `epoch`; notes the events it
    sees and the SIGINT handler in place while the run trains."""

    def __init__(self, epoch: int, batches: int) -> None:
        self.epoch, self.batches = epoch, batches
        self.events: list[str] = []
        self.sigint = None

    def on_train_start(self, start):
        self.stop, self.sigint = start.stop, signal.getsignal(signal.SIGINT)
        self.events.append("start")

    def on_epoch_start(self, epoch):
        self.events.append(f"epoch {epoch.epoch}")

    def on_batch_end(self, batch):
        self.events.append("batch")
        if (batch.epoch, batch.step) == (self.epoch, self.batches):
            self.stop.request()

    def on_validation_progress(self, phase, done, total):
        if done in (0, total):
            self.events.append(f"{phase} {'start' if done == 0 else 'end'}")

    def on_epoch_end(self, end):
        # the run's record comes first: metrics.csv already holds this epoch
        assert len(read_metrics(end.out)) == end.row["epoch"] == len(end.history)
        self.events.append("end")

    def on_train_end(self, result):
        self.events.append("finish")


def test_fit_stops_mid_epoch_and_resumes_to_the_same_result(
    synth_root, uninterrupted, tmp_path, capfd
):
    """A stop asked by a callback saves the mid-epoch position in last.pt (loadable with
    weights_only=True) and fit(resume=True) ends where an uninterrupted run ends. fit prints
    nothing by itself and, as a library call, leaves the signal handlers alone."""
    out = tmp_path / "stopped"
    before = signal.getsignal(signal.SIGINT)
    stopper, text = StopAfter(epoch=2, batches=3), io.StringIO()
    result = fit(tiny_config(synth_root), out, callbacks=[stopper, TextLog(text)])
    assert result.interrupted and result.stopped_mid_epoch and result.stopped_epoch == 2
    assert stopper.sigint is before
    assert signal.getsignal(signal.SIGINT) is before
    batches = ["batch"] * 6  # 48 images, batches of 8
    assert stopper.events == [
        "start", "epoch 1", *batches, "validating start", "validating end", "end",
        "epoch 2", "batch", "batch", "batch", "finish",
    ]  # fmt: skip
    saved = torch.load(out / "last.pt", weights_only=True)
    assert (saved["epochs_done"], saved["step"], saved["partial"][1]) == (1, 3, 24)
    assert len(read_metrics(out)) == 1
    lines = text.getvalue().splitlines()
    assert lines[0].startswith("training densenet-mini on 48 images")
    assert lines[1].startswith("epoch   1: train loss") and lines[1].endswith("* best")
    assert lines[2] == f"stopped during epoch 2; saved {out / 'last.pt'}."

    with pytest.raises(RunDirError, match="--resume"):
        fit(tiny_config(synth_root), out)
    text = io.StringIO()
    resumed = fit(tiny_config(synth_root), out, resume=True, callbacks=[TextLog(text)])
    assert text.getvalue().startswith(f"resuming {out} at epoch 2, batch 4\n")
    assert not resumed.interrupted and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert_same_run(out, uninterrupted)
    assert capfd.readouterr() == ("", "")


def test_existing_run_is_not_overwritten(synth_root, uninterrupted):
    with pytest.raises(RunDirError, match="--resume"):
        prepare_run_dir(uninterrupted, tiny_config(synth_root), resume=False)


def _train_process(root: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "murakit",
        "train",
        "--data",
        str(root),
        "--out",
        str(out),
        "--preset",
        "demo",
        "--epochs",
        "3",
        "--size",
        "64",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--max-train-images",
        "48",
        *extra,
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, COLUMNS="200"),  # one fixed thread: see one_fixed_thread
    )


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    seen = ""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if text in line:
            return seen
    proc.kill()
    raise AssertionError(f"never saw {text!r}; output:\n{seen}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_interrupted_process_resumes_to_the_same_result(synth_root, uninterrupted, tmp_path, sig):
    """Ctrl-C saves the mid-epoch position; SIGKILL loses at most the epoch in progress.
    Either way --resume ends where an uninterrupted run ends."""
    out = tmp_path / "killed"
    proc = _train_process(synth_root, out)
    _wait_for(proc, "epoch   1:")  # first epoch saved; now interrupt the second
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    if sig == signal.SIGINT:
        assert proc.returncode == 130, output
        assert "murakit train --out" in output and "--resume" in output
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    torch.load(out / "last.pt", weights_only=True)  # a whole, readable checkpoint
    resumed = _train_process(synth_root, out, "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert "resuming" in output
    assert_same_run(out, uninterrupted)


def test_training_says_why_it_crawls_when_a_core_is_taken(synth_root, tmp_path, monkeypatch):
    """Fixed training threads stay fixed under load, and the run says so once, with the way
    out (the load reading itself is tested in test_runtime)."""
    from murakit.infer import runtime as rt

    monkeypatch.delenv("MURAKIT_ADAPTIVE_THREADS")
    monkeypatch.setattr(rt, "_START_THREADS", 2)
    monkeypatch.setattr(rt.ThreadGovernor, "_wanted_threads", lambda self: 1)  # a core taken

    class Messages(Callback):
        def __init__(self):
            self.seen = []

        def on_log(self, message, warning=False):
            self.seen.append((message, warning))

    messages, threads = Messages(), torch.get_num_threads()
    try:
        train_run(tiny_config(synth_root, epochs=1), tmp_path / "run", callbacks=[messages])
    finally:
        torch.set_num_threads(threads)  # the governor trained at 2
    slowed = [m for m, warning in messages.seen if warning and m.startswith("slowed: ")]
    assert len(slowed) == 1 and "MURAKIT_ADAPTIVE_THREADS=1" in slowed[0]


def test_weighted_bce_balances_each_part(synth_root):
    records = load_index(synth_root, ["train"]).images
    weights = sample_weights(records, records, "weighted-bce")
    for part in {r.part for r in records}:
        idx = [i for i, r in enumerate(records) if r.part == part]
        normal = [i for i in idx if records[i].label == 0]
        abnormal = [i for i in idx if records[i].label == 1]
        assert weights[abnormal[0]] == pytest.approx(len(normal) / len(idx))
        assert weights[normal[0]] == pytest.approx(len(abnormal) / len(idx))
        # each class then carries the same total weight within the part
        assert float(weights[normal].sum()) == pytest.approx(float(weights[abnormal].sum()))
    assert torch.equal(sample_weights(records, records, "bce"), torch.ones(len(records)))


def test_epoch_sampler_shards_cover_each_epoch_once():
    shards = []
    for rank in range(3):
        sampler = EpochSampler(10, seed=1, rank=rank, world_size=3)
        sampler.set_epoch(4)
        shards.append([i for i, epoch in sampler if epoch == 4])
    assert {len(s) for s in shards} == {4}  # padded to equal length, as DDP needs
    assert set(np.concatenate(shards)) == set(range(10))
    single = EpochSampler(10, seed=1)
    single.set_epoch(4)
    order = [i for i, _ in single]
    single.set_epoch(4, skip=6)
    assert [i for i, _ in single] == order[6:]
    single.set_epoch(5)
    assert [i for i, _ in single] != order


def test_box_guidance_loss_supervises_the_right_cells():
    """Negatives: every cell pushed down; positives: only the cells a box touches pushed up."""
    from murakit.train.loss import box_guidance_loss

    cams = torch.zeros(2, 4, 4)
    masks = torch.zeros(2, 1, 32, 32)
    masks[1, 0, 0:4, 0:4] = 1.0  # a box in the first cell of the positive image
    labels = torch.tensor([0.0, 1.0])
    at_zero = box_guidance_loss(cams, labels, masks, torch.tensor(0.0))
    assert at_zero == pytest.approx(2 * np.log(2), rel=1e-5)  # one mean BCE per image
    better = cams.clone()
    better[0] -= 0.5  # the negative's cells go down
    better[1, 0, 0] += 0.5  # the positive's box cell goes up
    assert box_guidance_loss(better, labels, masks, torch.tensor(0.0)) < at_zero
    elsewhere = cams.clone()
    elsewhere[1, 3, 3] += 5.0  # a cell outside the box of a positive image is not supervised
    assert box_guidance_loss(elsewhere, labels, masks, torch.tensor(0.0)) == pytest.approx(
        float(at_zero)
    )


def test_box_guidance_cell_score_is_the_cells_evidence_times_the_cell_count():
    """h*w*(w . F_ij) + b, from the feature maps and the classifier, whatever its bias."""
    from murakit.model.densenet import (
        build_model,
        classifier_params,
        feature_maps,
        logits_and_cams,
    )
    from murakit.train.loss import single_cell_logits

    torch.manual_seed(0)
    model = build_model("densenet-mini").eval()
    with torch.no_grad():
        model.class_layers.out.bias.fill_(0.7)
        x = torch.randn(1, 3, 96, 96)
        _, cams = logits_and_cams(model, x)
        weight, bias = classifier_params(model)
        scores = single_cell_logits(cams, bias[0])
        maps = feature_maps(model, x)
        for i, j in [(0, 0), (1, 2), (2, 1)]:
            expected = 9 * float(weight[0] @ maps[0, :, i, j]) + 0.7
            assert float(scores[0, i, j]) == pytest.approx(expected, abs=1e-4)


def test_train_state_is_one_weights_only_checkpoint(tmp_path):
    """TrainState saves every field (objects as state dicts) to one file that loads with
    weights_only=True, and restores all of it; a pickled object is refused."""
    import dataclasses

    from murakit.train.state import TrainState

    def objects():
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        return dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)

    parts = objects()
    parts["scaler"].scale(parts["model"](torch.ones(2, 3)).sum()).backward()
    parts["scaler"].step(parts["optimizer"])
    parts["scaler"].update(2.0**7)
    parts["scheduler"].step(1.0)
    state = TrainState(
        config=make_config("demo"),
        **parts,
        epochs_done=2,
        step=5,
        partial=[1.5, 40, 2.0],
        best_val_loss=0.5,
        best_epoch=1,
        history=[{"epoch": 1, "val_loss": 0.5}],
    )
    state.save(tmp_path / "last.pt")
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(saved) == {"format"} | {f.name for f in dataclasses.fields(TrainState)}

    restored = TrainState(config=make_config("demo"), **objects())
    restored.restore(tmp_path / "last.pt")
    for name in ("epochs_done", "step", "partial", "best_val_loss", "best_epoch", "history"):
        assert getattr(restored, name) == getattr(state, name), name
    for a, b in zip(state.model.parameters(), restored.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert restored.optimizer.state_dict()["state"][0]["step"] == 1
    assert restored.scheduler.state_dict() == state.scheduler.state_dict()
    assert restored.scaler.get_scale() == 2.0**7

    torch.save({"format": "murakit-run/1", "code": RunDirError("x")}, tmp_path / "evil.pt")
    with pytest.raises(RunDirError, match="cannot read checkpoint"):
        restored.restore(tmp_path / "evil.pt")
