"""The operating threshold: chosen on a held-out slice of the training split by one rule,
stored with the model, and the one that evaluate, predict and serve use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from murakit.data.index import load_index
from murakit.evaluate.threshold import (
    SLICE_PREDICTIONS,
    THRESHOLD_FILE,
    choose_threshold,
    split_threshold_slice,
)
from murakit.infer.model import Model
from murakit.train.ensemble import select_members, write_ensemble


def test_rule_is_the_highest_threshold_reaching_the_sensitivity():
    labels = np.array([1, 1, 1, 1, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.4, 0.2, 0.5, 0.3, 0.1])
    assert choose_threshold(labels, probs, 0.5) == 0.8  # 2 of 4 positives at >= 0.8
    assert choose_threshold(labels, probs, 0.75) == 0.4
    assert choose_threshold(labels, probs, 1.0) == 0.2
    with pytest.raises(ValueError, match="no positive"):
        choose_threshold(np.zeros(3), np.ones(3), 0.9)


def test_slice_is_the_same_for_every_seed_and_keeps_the_label_mix(synth_root):
    records = load_index(synth_root, ["train"]).images
    train, held = split_threshold_slice(records, 0.2)
    again, held_again = split_threshold_slice(list(reversed(records)), 0.2)
    assert {r.rel for r in held} == {r.rel for r in held_again}
    assert not {r.rel for r in train} & {r.rel for r in held}
    assert len(train) + len(held) == len(records)
    train_keys = {(r.part, r.patient) for r in train}
    assert train_keys.isdisjoint((r.part, r.patient) for r in held)
    for label in (0, 1):
        n_all = len({(r.part, r.patient) for r in records if r.label == label})
        n_held = len({(r.part, r.patient) for r in held if r.label == label})
        assert n_held == round(0.2 * n_all)


def test_threshold_travels_with_runs_and_ensembles(trained_run, tmp_path):
    """A run's threshold.json is what Model.load reports; an ensemble's comes from its kept
    members' averaged slice probabilities, by the same rule."""
    import shutil

    runs = []
    for i, shift in enumerate((0.0, 0.2)):
        run = tmp_path / f"m{i}"
        shutil.copytree(trained_run, run)
        rows = ["image,study,part,label,probability"]
        rows += [f"i{k}.png,s{k},XR_HAND,{k % 2},{(k / 10 + shift) % 1:.2f}" for k in range(10)]
        (run / SLICE_PREDICTIONS).write_text("\n".join(rows) + "\n")
        (run / THRESHOLD_FILE).write_text(json.dumps({"threshold": 0.33, "rule": "test"}))
        runs.append(run)
    assert Model.load(runs[0]).threshold == 0.33
    members = select_members(runs, keep=2)
    write_ensemble(tmp_path / "ens", members)
    spec = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    probs = np.array([[(k / 10 + s) % 1 for k in range(10)] for s in (0.0, 0.2)]).mean(0)
    labels = np.arange(10) % 2
    expected = choose_threshold(labels, np.round(probs, 6), 0.9)
    assert spec["threshold"] == pytest.approx(expected, abs=1e-6)
    assert Model.load(tmp_path / "ens").threshold == pytest.approx(expected, abs=1e-6)
