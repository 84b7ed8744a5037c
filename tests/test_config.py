"""TrainConfig: its files (JSON as a run's config.json, YAML recipes) and the one description
of its fields from which `murakit train` and `murakit ensemble train` build their options."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from murakit.cli import app
from murakit.config import PRESETS, TrainConfig, make_config, recipe_options


def test_json_and_yaml_round_trip(tmp_path):
    config = make_config("fracture-cpu", data="/data/fa", lr=3e-4, fix_inverted=True)
    config.extra["dataset"] = {"name": "FracAtlas", "classes": ["no fracture", "fracture"]}
    for name in ("config.json", "recipe.yaml", "recipe.yml"):
        config.save(tmp_path / name)
        assert TrainConfig.load(tmp_path / name) == config
    # config.json stays plain JSON with every field, in field order, and reads back unchanged
    saved = (tmp_path / "config.json").read_text()
    assert list(json.loads(saved)) == [f.name for f in recipe_fields()]
    TrainConfig.load(tmp_path / "config.json").save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == saved
    with pytest.raises(ValueError, match=r"\.json, \.yaml or \.yml"):
        config.save(tmp_path / "config.toml")


def test_from_preset_is_make_config():
    config = TrainConfig.from_preset("demo", size=64, lr=None)
    assert config == make_config("demo", size=64) and (config.size, config.lr) == (64, 1e-3)
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        TrainConfig.from_preset("fast")


def recipe_fields():
    import dataclasses

    return dataclasses.fields(TrainConfig)


def test_a_partial_yaml_recipe_takes_its_presets_values(tmp_path):
    (tmp_path / "recipe.yaml").write_text("preset: demo\nlr: 3e-4\nsize: 96\n")
    config = TrainConfig.load(tmp_path / "recipe.yaml")
    assert config == make_config("demo", lr=3e-4, size=96)
    assert isinstance(config.lr, float)  # YAML reads 3e-4 as text
    (tmp_path / "bad.yaml").write_text("preset: demo\nsize: large\n")
    with pytest.raises(ValueError, match="size must be int"):
        TrainConfig.load(tmp_path / "bad.yaml")
    (tmp_path / "unknown.yaml").write_text("preset: demo\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown config keys: learning_rate"):
        TrainConfig.load(tmp_path / "unknown.yaml")


def test_the_descriptions_name_what_the_code_accepts():
    from murakit.model.densenet import ARCHS

    options = {o.name: o for o in recipe_options()}
    assert options["preset"].choices == tuple(PRESETS)
    # arch is free text (the model layer owns the list); its help must list every name
    assert set(re.findall(r"densenet[\w-]+", options["arch"].help)) == set(ARCHS)
    assert options["bf16"].flag == "mixed-precision"
    assert all(o.help for o in options.values())


@pytest.mark.parametrize("command", [["train"], ["ensemble", "train"]])
def test_both_commands_offer_every_recipe_option(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    text = re.sub(r"\s+", " ", result.output.replace("│", " "))
    for option in recipe_options():
        flag = f"--{option.flag}"
        assert flag in text, flag
        if option.type is bool:
            assert f"--no-{option.flag}" in text
        if option.name not in ("epochs", "seed"):  # worded per command
            assert option.help[:30] in text, option.name
        for choice in option.choices or ():
            assert choice in text


@pytest.mark.parametrize("command", [["train"], ["ensemble", "train"]])
def test_a_bad_choice_stops_before_anything_is_written(command, tmp_path):
    out = tmp_path / "run"
    args = [*command, "--out", str(out), "--data", str(tmp_path), "--loss", "focal"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "focal" in result.output
    assert not out.exists()


def test_validate_lists_every_problem_at_once(tmp_path):
    from murakit.model.densenet import ARCHS

    assert make_config("demo", data=str(tmp_path)).validate(ARCHS).arch == "densenet-mini"
    bad = make_config(
        "demo",
        data=str(tmp_path / "nowhere"),
        arch="densenet-huge",
        epochs=0,
        size=8,
        lr=0.0,
        workers=-1,
        device="cuda:first",
        threshold_slice=0.9,
        weights=str(tmp_path / "missing.pt"),
        loss="focal",
    )
    with pytest.raises(ValueError) as raised:
        bad.validate(ARCHS)
    problems = str(raised.value).splitlines()[1:]
    named = [p.split()[1].rstrip(":") for p in problems]
    assert sorted(named) == sorted(
        ["size", "epochs", "loss", "workers", "device", "threshold_slice", "lr", "arch",
         "weights", "data"]
    ), problems  # fmt: skip
    # without files=True the paths are not looked at (--print-config of a recipe for elsewhere)
    assert len(bad.problems(ARCHS, files=False)) == len(problems) - 2
    assert TrainConfig.from_preset("demo", device="cuda:1").problems() == []


def test_train_ensemble_checks_the_recipe_before_making_a_folder(tmp_path):
    from murakit.train.ensemble import train_ensemble, train_ensemble_member

    config = make_config("demo", data=str(tmp_path), arch="resnet50", epochs=1)
    with pytest.raises(ValueError, match="arch 'resnet50' is not one of"):
        train_ensemble(config, tmp_path / "ens", 2, 1)
    with pytest.raises(ValueError, match="arch 'resnet50' is not one of"):
        train_ensemble_member(config, tmp_path / "ens", 1)
    assert not (tmp_path / "ens").exists()
