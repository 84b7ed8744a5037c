"""The `murakit` command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from murakit.progress import progress_bar

app = typer.Typer(
    help=(
        "murakit finds abnormal musculoskeletal radiographs.\n\n"
        "It trains, ensembles, evaluates and explains DenseNet classifiers on the Stanford "
        "MURA dataset (or any data in MURA's layout). ROOT / --data is the folder that holds "
        "MURA's CSVs (e.g. ~/data/MURA-v1.1). Start with `murakit demo` to see the whole "
        "pipeline on a small synthetic dataset."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class SplitName(str, Enum):
    """A dataset split, for options that take several (typer's lists take no Literal)."""

    train = "train"
    valid = "valid"


RootArg = Annotated[
    Path, typer.Argument(help="Dataset folder holding MURA's CSVs (e.g. MURA-v1.1/).")
]


def fail(message: str, code: int = 1) -> None:
    """Print `message` as an error and exit with `code` (2: the command line was wrong and
    nothing was done, as for an option click rejects)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _print_version(value: bool) -> None:
    if value:
        from murakit import __version__

        print(f"murakit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """murakit finds abnormal musculoskeletal radiographs."""


def _cores() -> int:
    return os.cpu_count() or 1


def _workers(what: str) -> typer.models.OptionInfo:
    """--workers of the commands that work in parallel processes: 0 = none (PyTorch's
    DataLoader meaning, as for `train` and `evaluate`); default (None) one per CPU core."""
    return typer.Option(
        min=0,
        show_default=False,
        help=f"Worker processes {what} (0 = none: work in this process; default: one per CPU "
        f"core, {_cores()} here).",
    )


def _check_device(value: str | None) -> str | None:
    """--device, checked while parsing: auto, cpu, cuda or cuda:N."""
    from murakit.config import check_device

    if value is None:
        return value
    try:
        return check_device(value)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@app.command()
def stats(
    root: RootArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the counts as JSON instead of a table.")
    ] = False,
    check_files: Annotated[
        bool,
        typer.Option(
            "--check-files", help="Open every listed image; list missing/undecodable ones."
        ),
    ] = False,
    workers: Annotated[int | None, _workers("for --check-files")] = None,
) -> None:
    """Per-body-part counts of normal/abnormal images, studies and patients, train and valid."""
    from murakit.data.index import DatasetError, load_index
    from murakit.data.stats import dataset_stats

    try:
        index = load_index(root)
    except DatasetError as err:
        fail(str(err))
    table = dataset_stats(index.images)
    if as_json:
        print(json.dumps(table, indent=2))
    else:
        for split, parts in table.items():
            console.print(_stats_table(split, parts, index.info))
    if check_files:
        from murakit.data.verify import find_bad_files

        paths = [r.path for r in index.images]
        with progress_bar(console=err_console) as bar:
            task = bar.add_task("checking images", total=len(paths), status="")
            problems = find_bad_files(paths, workers, lambda n: bar.advance(task, n))
        for message in problems:
            err_console.print(f"[red]bad file:[/] {message}", highlight=False)
        if problems:
            fail(f"{len(problems)} of {len(paths)} images are missing or undecodable")
        err_console.print(f"all {len(paths)} images decode")


def _stats_table(split: str, parts: dict[str, dict[str, int]], info) -> Table:
    from murakit.data.stats import percent

    negative, positive = info.classes
    table = Table(title=f"{info.name} {split}: images and studies per body part")
    table.add_column("part", no_wrap=True)
    for col in (
        f"{negative} images",
        f"{positive} images",
        f"{positive} %",
        f"{negative} studies",
        f"{positive} studies",
        "patients",
    ):
        table.add_column(col, justify="right")
    for part, c in parts.items():
        images = c["normal_images"] + c["abnormal_images"]
        row = [
            part,
            f"{c['normal_images']:,}",
            f"{c['abnormal_images']:,}",
            percent(c["abnormal_images"], images),
            f"{c['normal_studies']:,}",
            f"{c['abnormal_studies']:,}",
            f"{c['patients']:,}",
        ]
        table.add_row(*row, style="bold" if part == "TOTAL" else None)
    return table


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder; the dataset goes to OUT/MURA-v1.1.")],
    studies: Annotated[int, typer.Option(help="Number of studies to generate.")] = 400,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    difficulty: Annotated[
        float, typer.Option(help="0 = obvious findings, 1 = subtle ones.", min=0.0, max=1.0)
    ] = 0.5,
    workers: Annotated[int | None, _workers("drawing the radiographs")] = None,
    findings: Annotated[
        str,
        typer.Option(
            help="Comma-separated kinds abnormal studies may show: fracture, hardware, "
            "lytic_lesion, cast, degenerative (default: all)."
        ),
    ] = "all",
) -> None:
    """Generate a synthetic dataset in MURA's exact format, with a ground-truth sidecar."""
    from murakit.synth.generator import generate, parse_findings

    try:
        kinds = parse_findings(findings)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--findings") from None

    with progress_bar(console=err_console) as bar:
        task = bar.add_task("generating radiographs", total=None, status="")

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = generate(
            out,
            studies=studies,
            seed=seed,
            difficulty=difficulty,
            workers=workers,
            progress=update,
            findings=kinds,
        )
    console.print(
        f"wrote {summary.images} images in {summary.studies} studies of {summary.patients} "
        f"patients to {summary.root} in {summary.seconds:.1f} s "
        f"({summary.images / max(summary.seconds, 1e-9):.0f} images/s)"
    )


import_app = typer.Typer(
    help=(
        "Turn labelled radiographs into a murakit dataset (MURA's layout plus dataset.json, "
        "truth.csv and import_log.txt) that every command accepts."
    ),
    no_args_is_help=True,
)
app.add_typer(import_app, name="import")
ValidFractionOpt = Annotated[
    float,
    typer.Option(help="Share of studies (whole patients) that go to valid.", min=0.0, max=0.9),
]
SplitSeedOpt = Annotated[int, typer.Option(help="Seed of the train/valid split.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace OUT if it exists.")]


def _run_import(description: str, total: int, start) -> None:
    """Run an importer under a progress bar and print what it wrote."""
    from murakit.data.index import DatasetError

    with progress_bar(console=err_console) as bar:
        task = bar.add_task(description, total=total, status="")
        try:
            result = start(lambda n: bar.advance(task, n))
        except DatasetError as err:
            fail(str(err))
    table = Table(title=f"imported into {result.out}")
    table.add_column("split")
    table.add_column("part")
    table.add_column("images (label 0 / 1)", justify="right")
    for split, counts in result.counts.items():
        for part in sorted({p for p, _ in counts}):
            table.add_row(split, part, f"{counts[(part, 0)]:,} / {counts[(part, 1)]:,}")
    console.print(table)
    if result.notes:
        console.print(f"{len(result.notes)} image(s) touched by an import rule; see {result.log}")


@import_app.command("fracatlas")
def import_fracatlas_cmd(
    src: Annotated[Path, typer.Argument(help="The FracAtlas release folder (holds dataset.csv).")],
    out: Annotated[Path, typer.Argument(help="The dataset folder to create.")],
    valid_fraction: ValidFractionOpt = 0.2,
    seed: SplitSeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Import FracAtlas (Abedeen et al. 2023, CC BY 4.0): fractured vs not, 5 body parts.

    Each image is its own study and patient (the release has no patient ids, so views of one
    patient may land in both splits). Body part: the one region flagged among hand, leg, hip
    and shoulder; XR_MIXED when `mixed` is set or several regions are. The split is stratified
    by label and part, and images with identical pixels share a split (those with opposite
    labels are left out). Where the image's folder and dataset.csv disagree on the label, the
    COCO annotations decide (a fracture box means fractured). JPEGs cut short are decoded as
    far as their data goes and stored as PNG. Fracture boxes and the hardware, multiscan and
    view flags go to truth.csv; every rule applied is listed in import_log.txt; the authors'
    credit goes to ATTRIBUTION.md.
    """
    from murakit.data.importers import import_fracatlas

    total = sum(1 for _ in (src / "images").rglob("*.jp*g")) if (src / "images").is_dir() else 0
    _run_import(
        "importing FracAtlas",
        total or None,
        lambda progress: import_fracatlas(
            src,
            out,
            valid_fraction=valid_fraction,
            seed=seed,
            overwrite=overwrite,
            progress=progress,
        ),
    )


@import_app.command("csv")
def import_csv_cmd(
    table: Annotated[
        Path, typer.Argument(help="CSV with a header row; image paths relative to it.")
    ],
    out: Annotated[Path, typer.Argument(help="The dataset folder to create.")],
    image_col: Annotated[str, typer.Option(help="Column of image paths.")] = "image",
    label_col: Annotated[
        str,
        typer.Option(
            help="Column of labels: 1/0, true/false, yes/no, positive/negative, abnormal/normal."
        ),
    ] = "label",
    part_col: Annotated[
        str | None,
        typer.Option(help="Column of body parts ('hand' -> XR_HAND); default: all one part."),
    ] = None,
    patient_col: Annotated[
        str | None,
        typer.Option(help="Column of patient ids; default: every image its own patient."),
    ] = None,
    study_col: Annotated[
        str | None,
        typer.Option(help="Column of study ids (within a patient); default: one study per image."),
    ] = None,
    parts: Annotated[
        str | None,
        typer.Option(help="Comma-separated allowed body parts; other values are an error."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Dataset name (default: the CSV's).")] = None,
    classes: Annotated[
        str, typer.Option(help="Names of label 0 and label 1, comma-separated.")
    ] = "normal,abnormal",
    licence: Annotated[str, typer.Option(help="Licence or terms of the data.")] = "",
    valid_fraction: ValidFractionOpt = 0.2,
    seed: SplitSeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Import your own labelled radiographs (e.g. a hospital export) from a CSV table.

    Images of one patient and study form a study, which must have one label; a patient never
    lands in both splits. A missing file, a bad label or an unknown part stops the import with
    the row named.
    """
    from murakit.data.importers import import_csv

    class_names = [c.strip() for c in classes.split(",")]
    if len(class_names) != 2 or not all(class_names):
        raise typer.BadParameter("give two names, for label 0 and label 1", param_hint="--classes")
    total = max(0, sum(1 for _ in open(table, encoding="utf-8-sig")) - 1) if table.exists() else 0
    _run_import(
        "importing images",
        total or None,
        lambda progress: import_csv(
            table,
            out,
            name=name,
            classes=class_names,
            licence=licence,
            valid_fraction=valid_fraction,
            seed=seed,
            overwrite=overwrite,
            progress=progress,
            image_col=image_col,
            label_col=label_col,
            part_col=part_col,
            patient_col=patient_col,
            study_col=study_col,
            parts=None if parts is None else [p for p in parts.split(",") if p.strip()],
        ),
    )


def _recipe_parameters(help_overrides: dict[str, str]) -> list[inspect.Parameter]:
    """The recipe options of `train` and `ensemble train`, built from TrainConfig's own
    description of its fields (murakit.config.recipe_options): flag, help, choices, bounds,
    patterns (checked while parsing), then --config and --print-config. Every recipe option
    defaults to None: keep the --config file's value, else the preset's."""
    from murakit.config import recipe_options

    params = []
    for option in recipe_options():
        kind = Literal[option.choices] if option.choices else option.type
        decls = f"--{option.flag}/--no-{option.flag}" if option.type is bool else f"--{option.flag}"
        info = typer.Option(
            decls,
            help=help_overrides.get(option.name, option.help),
            min=option.min,
            max=option.max,
            callback=_pattern_check(option) if option.pattern else None,
        )
        params.append(
            inspect.Parameter(
                option.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kind | None, info],
            )
        )
    config_file = typer.Option(
        "--config",
        help="Recipe file (YAML or JSON, e.g. a run's config.json); the options given on the "
        "command line override it.",
        dir_okay=False,
    )
    print_config = typer.Option(
        "--print-config",
        help="Print the resolved recipe as YAML (a valid --config file) and exit; writes nothing.",
    )
    for name, annotation, default in (
        ("config_file", Annotated[Path | None, config_file], None),
        ("print_config", Annotated[bool, print_config], False),
    ):
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
        )
    return params


def _pattern_check(option):
    """A click callback that rejects a value not matching the option's pattern (exit 2,
    before anything runs), e.g. --device tpu."""
    import re

    def check(value):
        if value is not None and not re.fullmatch(option.pattern, str(value)):
            raise typer.BadParameter(f"{value!r} is not one of: {option.help.rstrip('.')}")
        return value

    return check


def _with_recipe_options(**help_overrides: str):
    """Give a command every recipe option after its own parameters; the command takes them
    as **recipe. `help_overrides`: a field's help as this command words it."""

    def decorate(command):
        own = [
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        recipe = _recipe_parameters(help_overrides)
        signature = inspect.Signature(own + recipe)

        @functools.wraps(command)
        def with_options(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return command(**bound.arguments)

        with_options.__signature__ = signature
        with_options.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return with_options

    return decorate


def _train_options(data: Path | None, recipe: dict):
    """The resolved recipe: the --config file (its missing fields from its preset, or from
    --preset when given), else --preset (default reference); then the recipe flags the user
    gave (None = keep). Validated as a whole (every problem listed, exit 2) before anything is
    written; with --print-config it is printed as YAML and the command exits."""
    from murakit.config import TrainConfig

    overrides = {k: v for k, v in recipe.items() if v is not None}
    config_file = overrides.pop("config_file", None)
    print_config = overrides.pop("print_config", False)
    preset = overrides.pop("preset", None)
    try:
        if config_file is not None:
            config = TrainConfig.load(config_file, preset=preset)
        else:
            config = TrainConfig.from_preset(preset or "reference")
        if data is not None:
            overrides["data"] = str(data)
        config = config.replace(**overrides)
        if config.data:
            config = config.replace(data=str(Path(config.data).expanduser().resolve()))
        for key in ("cache", "weights"):  # "~/..." in a recipe file, as the shell would
            if getattr(config, key).startswith("~"):
                config = config.replace(**{key: str(Path(getattr(config, key)).expanduser())})
    except ValueError as err:
        fail(str(err), code=2)
    if not print_config and not config.data:
        fail(
            "--data is required for a new run (the folder holding MURA's CSVs), "
            "or `data:` in the --config file",
            code=2,
        )
    _validate_recipe(config, files=not print_config)
    if print_config:
        _print_recipe(config)
    return config


def _validate_recipe(config, files: bool = True) -> None:
    """TrainConfig.validate against the model layer's architectures (torch is imported here,
    after parsing: `--help` stays fast); exit 2 listing every problem."""
    from murakit.model.densenet import ARCHS

    try:
        config.validate(ARCHS, files=files)
    except ValueError as err:
        fail(str(err), code=2)


def _print_recipe(config) -> None:
    """--print-config: the recipe as YAML on stdout, nothing written; the command ends."""
    sys.stdout.write(config.to_yaml())
    sys.stdout.flush()
    raise typer.Exit(0)


def _train_progress():
    """The trainer's callback for the terminal: bars and lines on stderr (rank 0 only)."""
    from murakit.progress import RichTrainProgress

    return RichTrainProgress(err_console, show_bars=os.environ.get("RANK", "0") == "0")


@app.command()
@_with_recipe_options(epochs="Total epochs (with --resume: train further up to this many).")
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create/resume.")],
    data: Annotated[Path | None, typer.Option(help="Dataset folder (MURA-v1.1/).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt.")] = False,
    **recipe,
) -> None:
    """Train one DenseNet into a run directory (config, metrics.csv, loss curve, best.pt).

    The recipe: --config FILE (YAML or JSON; a run's config.json works), else --preset; the
    options given override it. --print-config shows the result and exits."""
    from murakit.train.loop import RunDirError, prepare_run_dir, train_run

    config = None
    if not resume:
        config = _train_options(data, recipe)
    elif recipe["config_file"] is not None:
        fail("--resume continues with the run's own config.json; --config starts a new run", 2)
    try:
        config = prepare_run_dir(out, config, resume, recipe["epochs"])
        if recipe["print_config"]:
            _print_recipe(config)
        with _train_progress() as progress:
            result = _run_training(
                lambda: train_run(
                    config, out, resume=resume, callbacks=[progress], stop_signals=True
                )
            )
    except RunDirError as err:
        fail(str(err))
    _report_run(result)


def _run_training(start):
    """Run a training call, turning the errors a user can fix into one clear line."""
    from murakit.data.imageio import BadImageError
    from murakit.data.index import DatasetError
    from murakit.model.weights import WeightsError

    try:
        return start()
    except (DatasetError, WeightsError, BadImageError, ValueError) as err:
        fail(
            f"{err}\n(use --skip-bad to skip unreadable images)"
            if isinstance(err, BadImageError)
            else str(err)
        )


def _report_run(result) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    if result.history:
        console.print(
            f"best epoch {result.best_epoch} (val loss {result.best_val_loss:.4f}); "
            f"run directory: {result.out}"
        )
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} item(s) skipped[/]:")
        for message in result.skipped:
            console.print(f"  {message}", highlight=False)
    if result.interrupted:
        raise typer.Exit(130)


ensemble_app = typer.Typer(
    help="Train several models and keep those with the lowest validation loss.",
    no_args_is_help=True,
)
app.add_typer(ensemble_app, name="ensemble")


@ensemble_app.command("train")
@_with_recipe_options(epochs="Epochs per member.", seed="First member's seed.")
def ensemble_train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Ensemble directory.")],
    data: Annotated[
        Path | None, typer.Option(help="Dataset folder (MURA-v1.1/), or `data:` in --config.")
    ] = None,
    models: Annotated[
        int, typer.Option(help="Members to train (seeds seed..seed+N-1).", min=1)
    ] = 15,
    keep: Annotated[int, typer.Option(help="Members kept (lowest validation loss).", min=1)] = 4,
    parallel: Annotated[
        int,
        typer.Option(
            help="Members trained at once (one per GPU, or CPU processes sharing cores).", min=1
        ),
    ] = 1,
    member: Annotated[
        int | None,
        typer.Option(
            help="Train only member I (0-based, seed = seed + I; one cluster job per member, "
            "e.g. I = $SLURM_ARRAY_TASK_ID). It writes only OUT/members/member-II, not "
            "ensemble.json: when all are trained, run `ensemble select` or `ensemble train` "
            "without --member.",
            min=0,
        ),
    ] = None,
    **recipe,
) -> None:
    """Train N members (resumable: finished members are kept), then keep the K best.

    The recipe: --config FILE (YAML or JSON) else --preset, the options given overriding it;
    --print-config shows it and exits. With --member I only member I is trained."""
    from murakit.train.ensemble import train_ensemble, train_ensemble_member

    if member is None and keep > models:
        fail(f"--keep {keep} is more than --models {models}", code=2)
    if member is not None and member >= models:
        fail(f"--member {member} is not one of the {models} members (0..{models - 1})", code=2)
    config = _train_options(data, recipe)
    if member is not None:
        try:
            with _train_progress() as progress:
                summary = _run_training(
                    lambda: train_ensemble_member(
                        config,
                        out,
                        member,
                        log=progress.on_log,
                        callbacks=[progress],
                        stop_signals=True,
                    )
                )
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except RuntimeError as err:
            fail(str(err))
        console.print(
            f"{summary.name}: best epoch {summary.best_epoch} of {summary.epochs}, "
            f"val loss {summary.val_loss:.4f}, in {Path(summary.run_dir).parent}. "
            f"ensemble.json is written once every member is trained: `murakit ensemble train` "
            f"without --member, or `murakit ensemble select {out}/members/member-* --out {out}`"
        )
        return
    try:
        with _train_progress() as progress:
            members = _run_training(
                lambda: train_ensemble(
                    config,
                    out,
                    models,
                    keep,
                    parallel=parallel,
                    log=progress.on_log,
                    callbacks=[progress],
                    stop_signals=True,
                )
            )
    except RuntimeError as err:
        fail(str(err))
    _print_members(members, out)


@ensemble_app.command("select")
def ensemble_select(
    runs: Annotated[list[Path], typer.Argument(help="Finished run directories.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Ensemble directory to write.")],
    keep: Annotated[int, typer.Option(help="Members kept (lowest validation loss).")] = 4,
) -> None:
    """Make an ensemble from existing runs: keep the K with the lowest validation loss."""
    from murakit.infer.model import ModelDirError
    from murakit.train.ensemble import select_members, write_ensemble

    try:
        members = select_members(runs, keep)
    except (ModelDirError, ValueError) as err:
        fail(str(err))
    write_ensemble(out, members)
    _print_members(members, out)


def _print_members(members, out: Path) -> None:
    table = Table(title="ensemble members (sorted by validation loss)")
    for col in (
        "model",
        "epochs",
        "best epoch",
        "train loss",
        "val loss",
        "val accuracy",
        "val study acc",
        "kept",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in members:
        table.add_row(
            m.name,
            str(m.epochs),
            str(m.best_epoch),
            f"{m.train_loss:.4f}",
            f"{m.val_loss:.4f}",
            f"{m.val_accuracy:.3f}",
            f"{m.val_study_accuracy:.3f}",
            "[green]yes[/]" if m.kept else "",
        )
    console.print(table)
    console.print(f"wrote {out / 'ensemble.json'} and {out / 'members.csv'}")
    _write_model_card(out)


def _write_model_card(model_dir: Path) -> None:
    """Write or refresh MODEL_DIR/MODEL_CARD.md (after training an ensemble, evaluating, or
    writing the report); a card that cannot be written is a warning, not a failure."""
    from murakit.report.html import ReportError
    from murakit.report.model_card import write_model_card

    try:
        path = write_model_card(model_dir)
    except (ReportError, OSError, ValueError) as err:
        err_console.print(f"[yellow]model card not written:[/] {err}", highlight=False)
        return
    console.print(f"wrote {path}")


def part_table(metrics: dict, reference: dict | None = None, title: str | None = None) -> Table:
    """The per-part results table (:func:`murakit.evaluate.outputs.part_table`), a rule
    above TOTAL."""
    from murakit.evaluate.outputs import part_table as table_cells

    columns, rows = table_cells(metrics, reference)
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for i, cells in enumerate(rows):
        table.add_row(*cells, end_section=i == len(rows) - 2)
    return table


ModelOpt = Annotated[
    Path, typer.Option("--model", "-m", help="An ensemble directory or a run directory.")
]


@app.command()
def evaluate(
    model: ModelOpt,
    data: Annotated[
        Path | None,
        typer.Option(help="Dataset folder (default: the one the model was trained on)."),
    ] = None,
    split: Annotated[Literal["train", "valid"], typer.Option(help="The split to score.")] = "valid",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: MODEL/eval-SPLIT).")
    ] = None,
    aggregation: Annotated[
        Literal["mean", "max", "median"],
        typer.Option(help="Study probability from its images' probabilities."),
    ] = "mean",
    threshold: Annotated[
        float | None,
        typer.Option(help="Positive when probability >= this (default: the model's stored one)."),
    ] = None,
    tta: Annotated[bool, typer.Option(help="Average with the horizontally flipped image.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per batch.", min=1)] = 32,
    workers: Annotated[
        int,
        typer.Option(
            help="DataLoader worker processes (0 = none: load images in this process).", min=0
        ),
    ] = 2,
    device: Annotated[
        str, typer.Option(help="auto | cpu | cuda | cuda:N.", callback=_check_device)
    ] = "auto",
    skip_bad: Annotated[bool, typer.Option(help="Skip unreadable images, list them.")] = False,
    by_markers: Annotated[
        bool,
        typer.Option(
            help="Also split the figures by whether the marker detector finds a letter marker."
        ),
    ] = False,
) -> None:
    """Study-level accuracy, Cohen's kappa (95% CI), AUROC, sensitivity, specificity per part.

    On an imported dataset whose truth.csv flags orthopaedic hardware (FracAtlas), the figures
    are also given with and without hardware: a model can score by finding plates."""
    from murakit.evaluate.outputs import REFERENCE_STUDY_ACCURACY, looks_like_mura_valid
    from murakit.evaluation import evaluate_model
    from murakit.infer.model import ModelDirError

    with progress_bar(console=err_console) as bar:
        task = bar.add_task("predicting", total=None, status="")
        try:
            result = _run_training(
                lambda: evaluate_model(
                    model,
                    data,
                    split=split,
                    out_dir=out,
                    aggregation=aggregation,
                    threshold=threshold,
                    tta_flip=tta,
                    batch_size=batch_size,
                    workers=workers,
                    device=device,
                    skip_bad=skip_bad,
                    by_markers=by_markers,
                    on_start=lambda n: bar.update(task, total=n),
                    on_batch=lambda n: bar.advance(task, n),
                )
            )
        except ModelDirError as err:
            fail(str(err))
    reference = REFERENCE_STUDY_ACCURACY if looks_like_mura_valid(result.metrics) else None
    dataset = result.metrics["dataset"]
    console.print(
        part_table(
            result.metrics,
            reference,
            title=f"{dataset['name']} {split}: study-level results ({model}); positive = "
            f"{dataset['classes'][1]}, called at probability >= {result.metrics['threshold']:.3g}",
        )
    )
    for name, group in result.metrics.get("subgroups", {}).items():
        console.print(part_table(group, title=f"shortcut check: {name} only"))
    for message in result.skipped:
        console.print(f"[yellow]skipped:[/] {message}", highlight=False)
    console.print(
        f"wrote {result.out_dir}/metrics.json, study_predictions.csv, image_predictions.csv"
    )
    _write_model_card(model)


@app.command()
def cam(
    model: ModelOpt,
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Images and/or study folders (a study folder's images are explained each)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for the overlays and cams.csv (default: MODEL/cams)."
        ),
    ] = None,
    size: Annotated[
        int, typer.Option(help="Input size for the maps: 512 gives 16x16 maps (224 gives 7x7).")
    ] = 512,
    gallery: Annotated[
        int,
        typer.Option(
            help="Instead of INPUTS: this many studies per class from MODEL/eval-valid "
            "(most confident hits and worst misses), for the report."
        ),
    ] = 0,
) -> None:
    """Class activation maps (hot = evidence for abnormal) overlaid on the original images.

    With --gallery on a dataset whose truth.csv has boxes (FracAtlas's fractures), the boxes
    are drawn in magenta on the overlays."""
    from murakit.data.truth import truth_boxes
    from murakit.explain.cam import cam_paths
    from murakit.infer.model import Model, ModelDirError
    from murakit.infer.studies import PredictInputError

    out = out or model / "cams"
    boxes = None
    if gallery:
        from murakit.explain.gallery import gallery_study_folders

        eval_dir = model / "eval-valid"
        if not (eval_dir / "study_predictions.csv").exists():
            fail(
                f"{eval_dir} has no study_predictions.csv: run "
                f"`murakit evaluate --model {model}` first"
            )
        try:
            loaded = Model.load(model)
        except ModelDirError as err:
            fail(str(err))
        inputs = gallery_study_folders(eval_dir, Path(loaded.config.data), per_class=gallery)
        boxes = truth_boxes(Path(loaded.config.data))
        model = loaded
    if not inputs:
        fail("give images or study folders to explain, or --gallery N")
    with progress_bar(console=err_console) as bar:
        task = bar.add_task("class activation maps", total=None, status="")
        try:
            rows = cam_paths(
                model, inputs, out, size, progress=lambda n: bar.advance(task, n), boxes=boxes
            )
        except (ModelDirError, PredictInputError) as err:
            fail(str(err))
    bad = [r for r in rows if r["error"]]
    for row in bad:
        err_console.print(f"[red]unreadable:[/] {row['image']}: {row['error']}", highlight=False)
    console.print(f"wrote {len(rows) - len(bad)} overlays and cams.csv to {out}")


@app.command("augment-preview")
def augment_preview_cmd(
    image: Annotated[Path, typer.Argument(help="A radiograph.")],
    n: Annotated[int, typer.Option("-n", help="Augmented versions to show.")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path(
        "augment_preview.png"
    ),
    size: Annotated[int, typer.Option(help="Square size after padding.")] = 224,
    rotation: Annotated[float, typer.Option(help="Maximum rotation in degrees.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """One image through the training augmentation (pad, resize, rotate, flip) n times."""
    from murakit.data.imageio import BadImageError
    from murakit.report.augment_preview import augment_preview

    try:
        path = augment_preview(image, n=n, size=size, rotation=rotation, seed=seed, out=out)
    except BadImageError as err:
        fail(str(err))
    console.print(f"wrote {path}")


@app.command()
def report(
    model_dir: Annotated[Path, typer.Argument(help="An ensemble or run directory.")],
    data: Annotated[
        Path | None,
        typer.Option(help="Dataset folder for the dataset table (default: the model's)."),
    ] = None,
) -> None:
    """Write a self-contained report.html (opens from disk, no network) into MODEL_DIR, and
    refresh the model card it links to (MODEL_CARD.md)."""
    from murakit.report.html import ReportError, build_report
    from murakit.report.model_card import MODEL_CARD_FILE

    try:
        path = build_report(model_dir, data_root=data)
    except ReportError as err:
        fail(str(err))
    console.print(f"wrote {path} and {model_dir / MODEL_CARD_FILE}")


@app.command()
def audit(
    root: RootArg,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for audit.csv and audit.html (default: ROOT/../audit)."
        ),
    ] = None,
    split: Annotated[
        list[SplitName] | None,
        typer.Option(help="Split to audit (repeat the option; default: both)."),
    ] = None,
    workers: Annotated[int | None, _workers("checking images")] = None,
) -> None:
    """Flag inverted images, letter markers, multi-radiograph images and technical problems."""
    from murakit.data.index import SPLITS, DatasetError, load_index
    from murakit.data.quality import audit as run_audit
    from murakit.report.audit_page import AUDIT_PAGE, write_audit_page

    try:
        index = load_index(root, [s.value for s in split] if split else SPLITS, skip_bad=True)
    except DatasetError as err:
        fail(str(err))
    out = out or root.resolve().parent / "audit"
    with progress_bar(console=err_console) as bar:
        task = bar.add_task("auditing", total=len(index.images), status="")
        result = run_audit(
            index.images,
            out,
            workers,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    html_path = write_audit_page(out / AUDIT_PAGE, result.checks, result.summary)
    table = Table(title="flagged images per body part")
    columns = list(next(iter(result.summary.values())).keys()) if result.summary else []
    table.add_column("part", no_wrap=True)
    for col in columns:
        table.add_column(col, justify="right")
    for part, counts in result.summary.items():
        table.add_row(part, *[f"{counts[c]:,}" for c in columns])
    console.print(table)
    for message in index.skipped:
        console.print(f"[yellow]index problem:[/] {message}", highlight=False)
    console.print(f"wrote {result.csv_path} and {html_path}")


@app.command()
def predict(
    model: ModelOpt,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Images, study folders (their images form one study) or folders of studies.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write predictions here (default: print them)."),
    ] = None,
    mura_csv: Annotated[
        Path | None,
        typer.Option(
            "--mura-csv",
            help="MURA's submission convention, instead of PATHS: read a header-less CSV of "
            "image paths (relative to the current directory) and write one header-less "
            "study_path,label line per study (1 = abnormal at the threshold), in input order.",
            dir_okay=False,
        ),
    ] = None,
    fmt: Annotated[
        Literal["json", "csv"], typer.Option("--format", help="Output format.")
    ] = "json",
    backend: Annotated[
        Literal["auto", "torch", "onnx"],
        typer.Option(
            help="auto: ONNX Runtime where MODEL/model.onnx (from `murakit export`) is newer "
            "than the checkpoints (about twice as fast on a CPU), else torch."
        ),
    ] = "auto",
    onnx: Annotated[
        Path | None, typer.Option(help="ONNX file for --backend onnx (default: MODEL/model.onnx).")
    ] = None,
    cam_dir: Annotated[
        Path | None, typer.Option("--cam", help="Also write CAM overlays into this folder.")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Abnormal when probability >= this (default: the model's, else 0.5)."),
    ] = None,
    aggregation: Annotated[
        Literal["mean", "max", "median"], typer.Option(help="Study probability from its images'.")
    ] = "mean",
    batch_size: Annotated[int, typer.Option(help="Images per batch.", min=1)] = 16,
    device: Annotated[
        str, typer.Option(help="auto | cpu | cuda | cuda:N.", callback=_check_device)
    ] = "auto",
) -> None:
    """P(abnormal) per image and per study for new studies (PNG, JPEG, DICOM), with the
    class called at the threshold and a decision: positive, negative, or uncertain when the
    probability is within 0.1 of the threshold."""
    from murakit.infer.model import Model, ModelDirError
    from murakit.infer.studies import PredictInputError, collect_studies
    from murakit.predict import predict_studies, read_mura_csv, write_predictions

    if bool(paths) == (mura_csv is not None):
        fail("give either PATHS or --mura-csv FILE", 2)
    try:
        studies = read_mura_csv(mura_csv) if mura_csv else collect_studies(paths)
        loaded = Model.load(model, device=device)
        n_images = sum(len(s.paths) for s in studies)
        with progress_bar(console=err_console, transient=True) as bar:
            task = bar.add_task("predicting", total=n_images, status="")
            result = predict_studies(
                loaded,
                studies,
                backend=backend,
                onnx_path=onnx,
                cam_dir=cam_dir,
                threshold=threshold,
                aggregation=aggregation,
                batch_size=batch_size,
                on_image=lambda n: bar.advance(task, n),
            )
    except (PredictInputError, ModelDirError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    if mura_csv is not None:
        _write_mura(result, studies, out)
        return
    write_predictions(result, out, fmt)
    for error in result.errors:
        err_console.print(f"[red]unreadable:[/] {error.path}: {error.error}", highlight=False)
    if out:
        err_console.print(f"wrote {len(result.studies)} studies to {out}")
    if result.errors and not result.studies:
        raise typer.Exit(1)


def _write_mura(result, studies, out: Path | None) -> None:
    """predict --mura-csv's output; exit 1 when a study has no readable image (MURA's scorer
    needs a line for every study)."""
    from murakit.predict import write_mura_predictions

    missing = write_mura_predictions(result, studies, out)
    for error in result.errors:
        err_console.print(f"[red]unreadable:[/] {error.path}: {error.error}", highlight=False)
    if out:
        err_console.print(f"wrote {len(studies) - len(missing)} studies to {out}")
    if missing:
        fail(f"{len(missing)} studies left out (no readable image): {', '.join(missing)}")


@app.command()
def export(
    model: ModelOpt,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="ONNX file to write (default: MODEL/model.onnx)."),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (18 or newer).", min=18)] = 18,
    verify: Annotated[
        bool,
        typer.Option(help="Check ONNX Runtime against PyTorch on random batches (and CAMs)."),
    ] = True,
) -> None:
    """The run or ensemble as one ONNX graph (members averaged), preprocessing documented in
    a JSON file beside it. The graph gives probabilities and CAMs at any square size;
    predict, serve and cam then run through ONNX Runtime (--backend auto)."""
    from murakit.infer.model import Model, ModelDirError

    out = out or model / "model.onnx"
    try:
        path = Model.load(model).export_onnx(out, opset=opset, verify=verify)
    except (ModelDirError, ValueError) as err:
        fail(str(err))
    console.print(f"wrote {path} and {path}.json (the preprocessing it expects)")


@app.command()
def serve(
    model: ModelOpt,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    device: Annotated[
        str, typer.Option(help="auto | cpu | cuda | cuda:N.", callback=_check_device)
    ] = "auto",
    backend: Annotated[
        Literal["auto", "torch", "onnx"],
        typer.Option(help="auto: ONNX Runtime where MODEL/model.onnx is current, else torch."),
    ] = "auto",
    onnx: Annotated[Path | None, typer.Option(help="ONNX file for --backend onnx.")] = None,
    max_files: Annotated[int, typer.Option(help="Most images per request.")] = 11,
    max_mb: Annotated[float, typer.Option(help="Largest upload per file, MB.")] = 20.0,
    max_megapixels: Annotated[float, typer.Option(help="Largest image, megapixels.")] = 40.0,
    cam_size: Annotated[int, typer.Option(help="Input size for the heat maps.")] = 512,
) -> None:
    """A web page and JSON API: drop the images of a study, get its probability and heat maps."""
    from murakit.infer.model import ModelDirError
    from murakit.serve.app import VALIDATION_METRICS, run

    console.print(f"serving {model} on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops")
    if not (model / VALIDATION_METRICS).exists():
        console.print(
            f"no {VALIDATION_METRICS} yet: the page says 'not evaluated yet' for validation "
            f"sensitivity and specificity (run `murakit evaluate --model {model}`)"
        )
    try:
        run(
            model,
            host=host,
            port=port,
            device=device,
            backend=backend,
            onnx_path=onnx,
            max_files=max_files,
            max_bytes=int(max_mb * 2**20),
            max_pixels=int(max_megapixels * 1e6),
            cam_size=cam_size,
        )
    except ModelDirError as err:
        fail(str(err))


@app.command()
def cache(
    root: RootArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder.")],
    size: Annotated[int, typer.Option(help="Square size the images are stored at.")] = 224,
    workers: Annotated[int | None, _workers("decoding images")] = None,
    verify: Annotated[
        bool, typer.Option(help="Check every row of an existing cache against its checksum.")
    ] = False,
) -> None:
    """Decode, pad and resize every image once into a memory-mapped store; `train --cache`
    then reads it (stale or corrupt caches are detected and rebuilt)."""
    from murakit.data.cache import StaleCacheError, ensure_cache, verify_cache
    from murakit.data.index import DatasetError, load_index

    if verify:
        try:
            rows = verify_cache(out, size)
        except (StaleCacheError, FileNotFoundError) as err:
            fail(str(err))
        console.print(f"{out}: all {rows} rows match their checksums")
        return
    try:
        index = load_index(root)
    except DatasetError as err:
        fail(str(err))
    with progress_bar(console=err_console) as bar:
        task = bar.add_task("decoding into the cache", total=len(index.images), status="")
        ensure_cache(
            index.images,
            out,
            size,
            _cores() if workers is None else workers,
            progress=lambda done, total: bar.update(task, completed=done),
            log=lambda m: err_console.print(m, highlight=False),
        )
    console.print(f"cache ready in {out}; train with --cache {out} --size {size}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data and models.")] = Path(
        "demo"
    ),
    studies: Annotated[int, typer.Option(help="Synthetic studies to generate.")] = 1000,
    models: Annotated[int, typer.Option(help="Ensemble members to train.")] = 3,
    keep: Annotated[int, typer.Option(help="Members kept (lowest validation loss).")] = 2,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs per member (default: preset's).")
    ] = None,
) -> None:
    """The whole reference pipeline on a synthetic sample: generate, train an ensemble, evaluate,
    explain with CAMs, write the report. Re-running continues where it stopped. Ends with the
    time each stage took."""
    # The demo's members adapt their threads to the cores other processes leave free (on a
    # shared 2-core machine a fixed two-thread step slowed up to 10x; bench/contention.py),
    # at the cost of bit-identical reruns under changing load. MURAKIT_ADAPTIVE_THREADS=0
    # keeps them fixed.
    os.environ.setdefault("MURAKIT_ADAPTIVE_THREADS", "1")
    start = time.time()
    budget: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        budget[stage] = now - tick
        tick = now

    data_dir = out / "data"
    root = data_dir / "MURA-v1.1"
    ensemble_dir = out / "ensemble"
    if not (root / "valid_labeled_studies.csv").exists():
        synth(data_dir, studies=studies, seed=0, difficulty=0.5, workers=None)
    stats(root, as_json=False, check_files=False, workers=None)
    lap("data")
    ensemble_train(
        out=ensemble_dir,
        data=root,
        models=models,
        keep=keep,
        parallel=1,
        preset="demo",
        epochs=epochs,
    )
    lap("members")
    evaluate(
        model=ensemble_dir,
        data=root,
        split="valid",
        out=None,
        aggregation="mean",
        threshold=0.5,
        tta=False,
        batch_size=32,
        workers=2,
        device="auto",
        skip_bad=False,
    )
    lap("evaluation")
    cam(model=ensemble_dir, inputs=None, out=None, size=512, gallery=6)
    lap("CAMs")
    first_image = next((root / "train").rglob("image1.png"))
    augment_preview_cmd(
        image=first_image,
        n=5,
        out=ensemble_dir / "augment_preview.png",
        size=224,
        rotation=30.0,
        seed=0,
    )
    lap("augmentation preview")
    report(model_dir=ensemble_dir, data=root)
    lap("report")
    _print_demo_budget(budget, ensemble_dir / "members")
    console.print(
        f"[bold green]demo finished in {time.time() - start:.0f} s.[/] "
        f"Open {(ensemble_dir / 'report.html').resolve()} in a browser."
    )


def _print_demo_budget(budget: dict[str, float], members_dir: Path) -> None:
    """Where the demo's time went: one row per stage and per ensemble member (its training
    passes, from its metrics.csv; validating and selecting is the rest of the stage)."""
    import csv

    table = Table(title="demo time budget")
    for col in ("stage", "seconds", "share", "note"):
        table.add_column(col, justify="right" if col in ("seconds", "share") else "left")
    total = sum(budget.values()) or 1.0
    for stage, seconds in budget.items():
        table.add_row(stage, f"{seconds:.0f}", f"{seconds / total:.0%}", "")
        if stage != "members":
            continue
        trained = 0.0
        for member in sorted(members_dir.glob("member-*")):
            try:
                with open(member / "metrics.csv", newline="") as f:
                    rows = list(csv.DictReader(f))
                secs = [float(r["seconds"]) for r in rows]
                rates = [float(r["img_per_s"]) for r in rows]
            except (OSError, KeyError, ValueError):
                continue
            if not rows:
                continue
            trained += sum(secs)
            table.add_row(
                f"  {member.name}",
                f"{sum(secs):.0f}",
                f"{sum(secs) / total:.0%}",
                f"{len(rows)} epochs, {min(rates):.0f}-{max(rates):.0f} img/s",
            )
        if trained > seconds:
            table.add_row("", "", "", "members trained by an earlier run (resumed)")
        elif trained:
            rest = seconds - trained
            table.add_row("  validation, selection", f"{rest:.0f}", f"{rest / total:.0%}", "")
    table.add_row("total", f"{total:.0f}", "100%", "")
    console.print(table)


def main() -> None:  # pragma: no cover - console-script entry point
    app(prog_name="murakit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
