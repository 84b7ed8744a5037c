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

    config = make_config("demo", data=str(tmp_path / "nowhere"), epochs=1, workers=0)
    lines = []
    with pytest.raises(RuntimeError, match="members failed") as failure:
        train_ensemble(config, tmp_path / "ens", 2, 1, parallel=2, log=lines.append)
    for name in ("member-00", "member-01"):
        log = tmp_path / "ens" / "members" / name / "train.log"
        assert f"{name} (exit 1; see {log})" in str(failure.value)
        assert f"error: {tmp_path / 'nowhere'}: dataset folder not found" in log.read_text()
    assert sum(line.startswith("starting member-0") for line in lines) == 2
