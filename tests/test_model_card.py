"""MODEL_CARD.md: written with each ensemble (not evaluated yet), refreshed by `murakit
evaluate` and `murakit report` (which links it), with the sections a colleague needs."""

from __future__ import annotations

import json
import shutil
from html import escape
from pathlib import Path

import pytest
from typer.testing import CliRunner

from murakit.cli import app
from murakit.evaluate.formatting import fmt_pct
from murakit.report.model_card import MODEL_CARD_FILE, render_model_card, write_model_card

SECTIONS = (
    "## Intended use",
    "## Training data",
    "## Recipe",
    "## Operating threshold",
    "## Evaluation",
    "## Known limitations",
    "## Provenance",
)


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory) -> Path:
    """A copy of the session's trained run, evaluated on valid by the command line."""
    run = tmp_path_factory.mktemp("card") / "run"
    shutil.copytree(trained_run, run)
    for stale in [*run.glob("eval-*"), run / MODEL_CARD_FILE, run / "report.html"]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    result = invoke("evaluate", "--model", str(run), "--workers", "0", "--device", "cpu")
    assert str(run / MODEL_CARD_FILE) in result.output.replace("\n", "")
    return run


def test_a_new_ensemble_gets_a_card_not_evaluated_yet(trained_run, tmp_path):
    ens = tmp_path / "ens"
    result = invoke("ensemble", "select", str(trained_run), "--out", str(ens), "--keep", "1")
    assert MODEL_CARD_FILE in result.output
    card = (ens / MODEL_CARD_FILE).read_text()
    assert card.startswith("# Model card: ens")
    for section in SECTIONS:
        assert section in card, section
    assert "not a medical device" in card
    assert "Ensemble of densenet-mini (1 kept of 1 trained" in card
    assert "**Not evaluated yet.**" in card
    assert "sensitivity and specificity: **not evaluated yet**" in card
    assert f"murakit evaluate --model {ens}" in card
    assert "ensemble.json" in card and "`provenance.json`" in card


def test_evaluate_writes_the_figures(evaluated):
    card = (evaluated / MODEL_CARD_FILE).read_text()
    metrics = json.loads((evaluated / "eval-valid" / "metrics.json").read_text())
    overall = metrics["overall"]
    for section in SECTIONS:
        assert section in card, section
    assert "Not evaluated yet" not in card
    # per-part table with intervals, TOTAL last
    table = [line for line in card.splitlines() if line.startswith("| ")]
    header = next(line for line in table if "kappa [95% CI]" in line)
    assert "AUROC [95% CI]" in header and "sensitivity" in header
    parts = [line.split(" | ")[0].lstrip("| ") for line in table[table.index(header) + 1 :]]
    assert parts == [*metrics["by_part"], "TOTAL"]
    assert f"{overall['kappa']:.3f} [" in card
    # the operating threshold with the validation sensitivity / specificity at it
    assert f"**{metrics['threshold']:.4g}**" in card
    assert (
        f"**sensitivity {fmt_pct(overall['sensitivity'])}, "
        f"specificity {fmt_pct(overall['specificity'])}**" in card
    )
    # synthetic training data said as such, with what follows
    assert "**Synthetic radiographs**" in card
    assert "behaviour on real radiographs is unknown" in card
    assert "| precision used |" in card


def test_report_links_the_card(evaluated):
    (evaluated / MODEL_CARD_FILE).unlink()
    result = invoke("report", str(evaluated))
    assert MODEL_CARD_FILE in result.output
    assert (evaluated / MODEL_CARD_FILE).exists()
    html = (evaluated / "report.html").read_text()
    assert f'<a href="{MODEL_CARD_FILE}">' in html
    # and inline, so the page stays self-contained when mailed alone
    card = (evaluated / MODEL_CARD_FILE).read_text()
    assert escape(card.splitlines()[-1]) in html and "## Known limitations" in html


def _variant(evaluated: Path, tmp_path: Path, dataset: dict) -> Path:
    """The evaluated run as if trained on another (real) dataset: no provenance, so the
    card goes by the dataset the config declares."""
    run = tmp_path / "variant"
    shutil.copytree(evaluated, run)
    (run / "provenance.json").unlink()
    config = json.loads((run / "config.json").read_text())
    config["data"] = str(tmp_path / "elsewhere" / "data")
    config.setdefault("extra", {})["dataset"] = dataset
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_the_licence_is_the_datasets(evaluated, tmp_path):
    fracatlas = {
        "name": "FracAtlas",
        "classes": ["no fracture", "fracture"],
        "parts": ["XR_HAND"],
        "licence": "CC BY 4.0",
        "is_mura": False,
        "credit": "Abedeen et al., Scientific Data 10, 521 (2023)",
    }
    card = render_model_card(_variant(evaluated, tmp_path, fracatlas))
    assert "**FracAtlas**" in card
    assert "**CC BY 4.0**" in card
    assert "Credit / citation: Abedeen et al., Scientific Data 10, 521 (2023)" in card
    assert "probability that the study is **fracture**" in card
    assert "views of one patient may fall in" in card
    assert "Synthetic" not in card

    shutil.rmtree(tmp_path / "variant")
    own = {**fracatlas, "name": "mine", "licence": "", "credit": ""}
    card = render_model_card(_variant(evaluated, tmp_path, own))
    assert "Licence: **not stated**" in card

    shutil.rmtree(tmp_path / "variant")
    mura = {**fracatlas, "name": "MURA", "licence": "", "is_mura": True, "credit": ""}
    card = render_model_card(_variant(evaluated, tmp_path, mura))
    assert "Research Use Agreement" in card and "non-commercial" in card


def test_hardware_subgroups_become_a_limitation(evaluated, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    path = run / "eval-valid" / "metrics.json"
    metrics = json.loads(path.read_text())
    with_hw = {**metrics["overall"], "auroc": 0.91, "n_studies": 7}
    without = {**metrics["overall"], "auroc": 0.62, "n_studies": 30}
    metrics["subgroups"] = {"hardware": {"overall": with_hw}, "no hardware": {"overall": without}}
    path.write_text(json.dumps(metrics))
    card = write_model_card(run).read_text()
    assert "With hardware: AUROC 0.910" in card
    assert "AUROC 0.620 on 30 studies" in card
