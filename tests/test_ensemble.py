"""`murakit ensemble train` / `select`: members in parallel processes, each with the recipe
flags `train` takes; the K with the lowest validation loss kept; a re-run retrains nothing."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from murakit.cli import app
from murakit.config import TrainConfig
from murakit.train.history import read_history


@pytest.fixture(scope="module")
def ensemble(synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    args = [
        "ensemble", "train", "--out", str(root / "ens"), "--data", str(synth_root),
        "--models", "2", "--keep", "1", "--parallel", "2", "--preset", "demo",
        "--epochs", "1", "--size", "64", "--workers", "0",
        "--cache", str(root / "cache"), "--fix-inverted", "--skip-bad",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root / "ens", args, result.output


def test_members_carry_every_recipe_flag_and_their_own_seed(ensemble):
    ens, _, _ = ensemble
    configs = [TrainConfig.load(ens / "members" / f"member-0{i}" / "config.json") for i in (0, 1)]
    assert [c.seed for c in configs] == [0, 1]
    for c in configs:
        assert (c.preset, c.arch, c.size, c.epochs) == ("demo", "densenet-mini", 64, 1)
        assert c.cache == str(ens.parent / "cache") and c.fix_inverted and c.skip_bad
    assert list((ens.parent / "cache").iterdir()), "members trained without building the cache"


def test_the_member_with_the_lowest_validation_loss_is_kept(ensemble):
    ens, _, _ = ensemble
    losses = {
        f"member-0{i}": min(r["val_loss"] for r in read_history(ens / "members" / f"member-0{i}"))
        for i in (0, 1)
    }
    members = json.loads((ens / "ensemble.json").read_text())["members"]
    kept = [m["name"] for m in members if m["kept"]]
    assert kept == [min(losses, key=losses.get)]
    assert {m["name"]: m["val_loss"] for m in members} == pytest.approx(losses)
    with open(ens / "members.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["name"] for r in rows) == sorted(losses)
    assert [r["kept"] for r in rows if r["name"] == kept[0]] == ["True"]


def test_rerun_retrains_nothing_and_select_agrees(ensemble):
    ens, args, _ = ensemble
    checkpoints = sorted((ens / "members").glob("*/last.pt"))
    before = [p.stat().st_mtime_ns for p in checkpoints]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("already trained, kept as is") == 2
    assert [p.stat().st_mtime_ns for p in checkpoints] == before

    selected = CliRunner().invoke(
        app,
        ["ensemble", "select", *map(str, sorted((ens / "members").iterdir()))]
        + ["--out", str(ens.parent / "selected"), "--keep", "1"],
    )
    assert selected.exit_code == 0, selected.output
    chosen = json.loads((ens.parent / "selected" / "ensemble.json").read_text())["members"]
    original = json.loads((ens / "ensemble.json").read_text())["members"]
    assert [(m["name"], m["kept"]) for m in chosen] == [(m["name"], m["kept"]) for m in original]


def test_a_failed_member_process_is_named_with_its_log(tmp_path):
    """Members in parallel run in their own (spawned) processes; one that fails is named in
    the error with its train.log, which holds the reason."""
    from murakit.config import make_config
    from murakit.train.ensemble import train_ensemble

    (tmp_path / "empty").mkdir()  # a folder (the recipe is valid) without a dataset in it
    config = make_config("demo", data=str(tmp_path / "empty"), epochs=1, workers=0)
    lines = []
    with pytest.raises(RuntimeError, match="members failed") as failure:
        train_ensemble(config, tmp_path / "ens", 2, 1, parallel=2, log=lines.append)
    for name in ("member-00", "member-01"):
        log = tmp_path / "ens" / "members" / name / "train.log"
        assert f"{name} (exit 1; see {log})" in str(failure.value)
        assert f"error: {tmp_path / 'empty'}: no images found" in log.read_text()
    assert sum(line.startswith("starting member-0") for line in lines) == 2


# ---------------------------------------------------------------- one member per cluster job


def _member_args(args: list[str], out, member: int) -> list[str]:
    """The fixture's `ensemble train` command line for another ensemble folder, member only."""
    at = args.index("--out") + 1
    return [*args[:at], str(out), *args[at + 1 :], "--member", str(member)]


@pytest.fixture
def member_threads():
    """Train in this process with the threads a member of `--parallel 2` had (its losses
    then match the fixture's to the last bit)."""
    import os

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    yield
    torch.set_num_threads(before)


def test_member_trains_exactly_that_member_of_a_full_run(ensemble, tmp_path, member_threads):
    """`--member 1` trains members/member-01 only (seed = base seed + 1), the same member as
    the full run's (same config.json, same losses), writes no ensemble.json, and a second
    call changes nothing."""
    ens, args, _ = ensemble
    out = tmp_path / "ens"
    result = CliRunner().invoke(app, _member_args(args, out, 1))
    assert result.exit_code == 0, result.output
    assert [p.name for p in (out / "members").iterdir()] == ["member-01"]
    assert sorted(p.name for p in out.iterdir()) == ["members"]  # no ensemble.json, members.csv
    mine = TrainConfig.load(out / "members" / "member-01" / "config.json")
    full = TrainConfig.load(ens / "members" / "member-01" / "config.json")
    assert mine.seed == 0 + 1 and mine == full
    losses = [r["val_loss"] for r in read_history(out / "members" / "member-01")]
    assert losses == pytest.approx([r["val_loss"] for r in read_history(full_dir(ens, 1))])
    assert "ensemble select" in result.output  # says how to finish the ensemble

    last = out / "members" / "member-01" / "last.pt"
    before = last.stat().st_mtime_ns
    again = CliRunner().invoke(app, _member_args(args, out, 1))
    assert again.exit_code == 0, again.output
    assert "member-01: already trained, kept as is" in again.output
    assert last.stat().st_mtime_ns == before


def full_dir(ens, index: int):
    return ens / "members" / f"member-{index:02d}"


def test_a_member_another_process_trains_is_refused(synth_root, tmp_path):
    """Two jobs given the same member: the second is refused while the first holds the
    member's lock (here this test holds it), before it writes a checkpoint."""
    import fcntl

    out = tmp_path / "ens"
    lock_path = out / "members" / "member-00" / ".train.lock"
    lock_path.parent.mkdir(parents=True)
    args = ["ensemble", "train", "--out", str(out), "--data", str(synth_root), "--models", "2"]
    args += ["--preset", "demo", "--epochs", "1", "--size", "64", "--workers", "0", "--member", "0"]
    with open(lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "member-00 is being trained by another process" in result.output
    assert sorted(p.name for p in lock_path.parent.iterdir()) == [".train.lock", "config.json"]


def test_a_member_outside_the_ensemble_is_rejected(synth_root, tmp_path):
    args = ["ensemble", "train", "--out", str(tmp_path / "ens"), "--data", str(synth_root)]
    result = CliRunner().invoke(app, [*args, "--models", "2", "--member", "2"])
    assert result.exit_code == 2, result.output
    assert "--member 2 is not one of the 2 members" in result.output
    negative = CliRunner().invoke(app, [*args, "--models", "2", "--member", "-1"])
    assert negative.exit_code == 2, negative.output
    assert not (tmp_path / "ens").exists()


@pytest.mark.slow
def test_members_trained_by_separate_jobs_then_select_give_the_full_ensemble(ensemble, tmp_path):
    """What a SLURM array does: `--member 0` and `--member 1` in two processes at once, in
    one ensemble folder; then `ensemble select` keeps the members a full `ensemble train`
    keeps, and a final `ensemble train` without --member retrains nothing and agrees."""
    import os
    import subprocess
    import sys

    ens, args, _ = ensemble
    out = tmp_path / "ens"
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2))}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "murakit", *_member_args(args, out, i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (0, 1)
    ]
    for job in jobs:
        output, _ = job.communicate(timeout=600)
        assert job.returncode == 0, output
    assert not (out / "ensemble.json").exists()
    for i in (0, 1):
        mine = TrainConfig.load(full_dir(out, i) / "config.json")
        assert mine == TrainConfig.load(full_dir(ens, i) / "config.json") and mine.seed == i

    members = sorted(map(str, (out / "members").iterdir()))
    selected = CliRunner().invoke(
        app, ["ensemble", "select", *members, "--out", str(out), "--keep", "1"]
    )
    assert selected.exit_code == 0, selected.output
    chosen = json.loads((out / "ensemble.json").read_text())["members"]
    original = json.loads((ens / "ensemble.json").read_text())["members"]
    assert [(m["name"], m["kept"]) for m in chosen] == [(m["name"], m["kept"]) for m in original]
    assert [m["val_loss"] for m in chosen] == pytest.approx([m["val_loss"] for m in original])

    at = args.index("--out") + 1
    final = CliRunner().invoke(app, [*args[:at], str(out), *args[at + 1 :]])
    assert final.exit_code == 0, final.output
    assert final.output.count("already trained, kept as is") == 2
    again = json.loads((out / "ensemble.json").read_text())["members"]
    assert [(m["name"], m["kept"]) for m in again] == [(m["name"], m["kept"]) for m in chosen]
