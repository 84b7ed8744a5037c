"""The command line as a user meets it: fixed-choice options rejected while parsing (exit 2,
nothing written), the whole recipe checked before a run folder exists, recipes as files
(--config, --print-config, a run's config.json read back), --workers 0 meaning "no worker
processes" in every command, --version and shell completion."""

from __future__ import annotations

import json
import multiprocessing.process
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import murakit
from murakit.cli import app
from murakit.config import TrainConfig, make_config


def run(*args: str, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def flat(text: str) -> str:
    """Help text without the boxes and line breaks of typer's layout."""
    return re.sub(r"\s+", " ", text.replace("│", " "))


def test_version():
    result = subprocess.run(
        [sys.executable, "-m", "murakit", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"murakit {murakit.__version__}\n"


def test_shell_completion_script():
    # typer detects the shell from the parent processes, which a test run may not have (CI,
    # a detached job); with detection off, --show-completion takes the shell as its value.
    result = subprocess.run(
        [sys.executable, "-m", "murakit", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "complete" in result.stdout and "_MURAKIT_COMPLETE" in result.stdout.upper()
    assert "--install-completion" in flat(run("--help", env={"COLUMNS": "200"}).output)


EVALUATE = "evaluate --model {tmp}/m --out {out}"
TRAIN = "train --out {out} --data {tmp}"
ENSEMBLE = "ensemble train --out {out} --data {tmp}"
BAD_CHOICES = [  # a command line ending in the option and its bad value
    f"{EVALUATE} --split test",
    f"{EVALUATE} --aggregation mode",
    f"{EVALUATE} --device tpu",
    f"{EVALUATE} --workers -1",
    "audit {tmp} --out {out} --split test",
    "audit {tmp} --out {out} --workers -1",
    "synth {out} --workers -2",
    "cache {tmp} --out {out} --workers -1",
    "stats {tmp} --check-files --workers -1",
    "export --model {tmp}/m --out {out} --opset 11",
    f"{TRAIN} --device cuda:x",
    f"{TRAIN} --panels all",
    f"{TRAIN} --size 16",
    f"{TRAIN} --workers -1",
    f"{ENSEMBLE} --lr-schedule step",
    f"{ENSEMBLE} --device gpu",
    f"{ENSEMBLE} --models 0",
]


@pytest.mark.parametrize("line", BAD_CHOICES)
def test_a_bad_choice_is_rejected_while_parsing_and_nothing_is_written(line, tmp_path):
    out = tmp_path / "out"
    args = [a.format(tmp=tmp_path, out=out) for a in line.split()]
    option, value = args[-2:]
    before = files_under(tmp_path)
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert value in result.output or "greater than or equal to" in result.output
    assert files_under(tmp_path) == before


@pytest.mark.parametrize(
    "command, option, choices",
    [
        (["evaluate"], "--split", ["train", "valid"]),
        (["evaluate"], "--aggregation", ["mean", "max", "median"]),
        (["evaluate"], "--device", ["auto", "cpu", "cuda", "cuda:N"]),
        (["audit"], "--split", ["train", "valid"]),
        (["train"], "--device", ["auto", "cpu", "cuda", "cuda:N"]),
        (["train"], "--arch", ["densenet169", "densenet121", "densenet201", "densenet-mini"]),
        (["ensemble", "train"], "--loss", ["bce", "weighted-bce"]),
    ],
)
def test_the_choices_are_listed_in_help(command, option, choices):
    result = run(*command, "--help", env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if f" {option} " in line)
    for choice in choices:
        assert choice in line, (option, choice, line)


@pytest.mark.parametrize(
    "command",
    [["stats"], ["synth"], ["audit"], ["cache"], ["evaluate"], ["train"], ["ensemble", "train"]],
)
def test_every_workers_option_says_0_is_no_worker_process_and_its_default(command):
    text = flat(run(*command, "--help", env={"COLUMNS": "300"}).output)
    workers = text[text.index("--workers") :][:240]
    assert "0 = none" in workers, workers
    assert "default" in workers, workers


@pytest.mark.parametrize("command", [["train"], ["ensemble", "train"]])
def test_a_bad_recipe_is_rejected_with_every_problem_before_anything_is_written(
    command, tmp_path, synth_root
):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "preset: demo\narch: densenet-huge\nepochs: 0\nbatch_size: -4\nthreshold_slice: 0.7\n"
        f"weights: {tmp_path / 'missing.pt'}\ndevice: tpu\n"
    )
    out = tmp_path / "out"
    before = files_under(tmp_path)
    result = run(*command, "--out", out, "--data", synth_root, "--config", recipe)
    assert result.exit_code == 2, result.output
    for problem in (
        "arch 'densenet-huge' is not one of: densenet121, densenet169",
        "epochs must be >= 1, got 0",
        "batch_size must be >= 1, got -4",
        "threshold_slice must be <= 0.5, got 0.7",
        f"weights '{tmp_path / 'missing.pt'}' is neither imagenet, none nor an existing file",
        "device 'tpu' is not one of: auto | cpu | cuda | cuda:N",
    ):
        assert problem in flat(result.output), problem
    assert files_under(tmp_path) == before

    for args in (["--loss", "foo"], ["--arch", "resnet50"], ["--data", tmp_path / "nowhere"]):
        result = run(*command, "--out", out, "--data", synth_root, "--preset", "demo", *args)
        assert result.exit_code == 2, result.output
        assert not out.exists()
    no_data = run(*command, "--out", out, "--preset", "demo")
    assert no_data.exit_code == 2 and "--data is required" in no_data.output
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("command", [["train"], ["ensemble", "train"]])
def test_print_config_prints_the_resolved_recipe_and_writes_nothing(command, tmp_path):
    out = tmp_path / "out"
    data = tmp_path / "data"  # need not exist yet: --print-config checks no files
    result = run(*command, "--out", out, "--data", data, "--preset", "demo", "--size", "64")
    result = run(
        *command, "--out", out, "--data", data, "--preset", "demo", "--size", "64", "--print-config"
    )
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert printed == make_config("demo", size=64, data=str(data.resolve())).to_dict()
    assert list(tmp_path.iterdir()) == []

    recipe = tmp_path / "recipe.yaml"  # the printed recipe is a valid --config file
    recipe.write_text(result.stdout)
    again = run(*command, "--out", out, "--config", recipe, "--print-config")
    assert again.exit_code == 0, again.output
    assert again.stdout == result.stdout
    assert sorted(tmp_path.iterdir()) == [recipe]


def test_a_runs_config_json_is_a_config_file_and_flags_override_it(trained_run, tmp_path):
    saved = json.loads((trained_run / "config.json").read_text())
    out = tmp_path / "again"
    result = run("train", "--out", out, "--config", trained_run / "config.json", "--print-config")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == saved
    assert TrainConfig.load(trained_run / "config.json").to_yaml() == result.stdout

    args = ["train", "--out", out, "--config", trained_run / "config.json", "--print-config"]
    changed = run(*args, "--lr", "0.01", "--no-mixed-precision", "--panels", "largest")
    assert changed.exit_code == 0, changed.output
    assert yaml.safe_load(changed.stdout) == {
        **saved,
        "lr": 0.01,
        "bf16": False,
        "panels": "largest",
    }
    assert not out.exists()


def test_a_partial_recipe_file_takes_its_preset_and_preset_flag_fills_the_rest(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"preset: demo\ndata: {tmp_path}\nlr: 3e-4\n")
    args = ["train", "--out", tmp_path / "out", "--config", recipe, "--print-config"]
    demo = yaml.safe_load(run(*args).stdout)
    assert demo == make_config("demo", lr=3e-4, data=str(tmp_path)).to_dict()
    fracture = yaml.safe_load(run(*args, "--preset", "fracture-cpu", "--epochs", "3").stdout)
    assert fracture == make_config("fracture-cpu", lr=3e-4, epochs=3, data=str(tmp_path)).to_dict()


# ------------------------------------------------------------ --workers 0: no worker process


@pytest.fixture
def started_processes(monkeypatch):
    """Every process started through multiprocessing (pools included) while the test runs."""
    started = []
    original = multiprocessing.process.BaseProcess.start

    def start(self):
        started.append(self.name)
        return original(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    return started


def test_workers_0_works_in_this_process_in_every_command(synth_root, tmp_path, started_processes):
    steps = [
        ["stats", synth_root, "--check-files", "--workers", "0"],
        ["synth", tmp_path / "synth", "--studies", "6", "--workers", "0"],
        ["audit", synth_root, "--split", "valid", "--out", tmp_path / "audit", "--workers", "0"],
        ["cache", synth_root, "--out", tmp_path / "cache", "--size", "32", "--workers", "0"],
    ]
    for args in steps:
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert started_processes == [], args
    assert (tmp_path / "audit" / "audit.csv").exists()
    assert murakit.audit_dataset(synth_root, splits=("valid",), workers=0)
    assert started_processes == []

    # the same spy sees the worker processes of --workers 2
    result = run("stats", synth_root, "--check-files", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert len(started_processes) == 2
