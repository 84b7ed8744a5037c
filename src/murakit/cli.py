"""The `murakit` command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

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
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

RootArg = Annotated[
    Path, typer.Argument(help="Dataset folder holding MURA's CSVs (e.g. MURA-v1.1/).")
]


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


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
    workers: Annotated[int, typer.Option(help="Processes for --check-files (0 = all cores).")] = 0,
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
            console.print(_stats_table(split, parts))
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


def _stats_table(split: str, parts: dict[str, dict[str, int]]) -> Table:
    from murakit.data.stats import percent

    table = Table(title=f"{split}: images and studies per body part")
    table.add_column("part", no_wrap=True)
    for col in (
        "normal images",
        "abnormal images",
        "abnormal %",
        "normal studies",
        "abnormal studies",
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
    workers: Annotated[int, typer.Option(help="Processes (0 = all cores).")] = 0,
) -> None:
    """Generate a synthetic dataset in MURA's exact format, with a ground-truth sidecar."""
    from murakit.data.synth import generate

    with progress_bar(console=err_console) as bar:
        task = bar.add_task("generating radiographs", total=None, status="")

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = generate(
            out, studies=studies, seed=seed, difficulty=difficulty, workers=workers, progress=update
        )
    console.print(
        f"wrote {summary.images} images in {summary.studies} studies of {summary.patients} "
        f"patients to {summary.root} in {summary.seconds:.1f} s "
        f"({summary.images / max(summary.seconds, 1e-9):.0f} images/s)"
    )


PresetOpt = Annotated[
    str, typer.Option(help="Recipe: reference (the report), mura-paper (Rajpurkar 2017), demo.")
]


def _train_options(preset: str, **overrides):
    """A TrainConfig from a preset plus the flags the user gave (None = keep the preset's)."""
    from murakit.train.config import make_config

    try:
        return make_config(preset, **overrides)
    except ValueError as err:
        fail(str(err))


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create/resume.")],
    data: Annotated[Path | None, typer.Option(help="Dataset folder (MURA-v1.1/).")] = None,
    preset: PresetOpt = "reference",
    arch: Annotated[
        str | None, typer.Option(help="densenet169 | densenet121 | densenet201 | densenet-mini.")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="imagenet (torch hub cache, downloaded if online) | none | PATH."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Total epochs (with --resume: train further up to this many)."),
    ] = None,
    size: Annotated[int | None, typer.Option(help="Input size in pixels (square).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch.")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    loss: Annotated[str | None, typer.Option(help="bce | weighted-bce.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for init, order, augmentation.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N.")] = None,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--mixed-precision/--no-mixed-precision",
            help="bf16 autocast on CPU (where supported) / AMP on CUDA.",
        ),
    ] = None,
    max_train_images: Annotated[
        int | None, typer.Option(help="Train on a random subset of this many images (0 = all).")
    ] = None,
    fix_inverted: Annotated[
        bool | None,
        typer.Option(
            "--fix-inverted/--no-fix-inverted", help="Invert images detected as inverted."
        ),
    ] = None,
    mask_markers: Annotated[
        bool | None,
        typer.Option("--mask-markers/--no-mask-markers", help="Mask detected letter markers."),
    ] = None,
    panels: Annotated[
        str | None, typer.Option(help="Multi-radiograph images: keep | largest.")
    ] = None,
    cache: Annotated[
        str | None, typer.Option(help="Decoded-image cache folder made by `murakit cache`.")
    ] = None,
    skip_bad: Annotated[
        bool | None,
        typer.Option(
            "--skip-bad/--no-skip-bad",
            help="Skip unreadable images and bad CSV rows, list them at the end.",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt.")] = False,
) -> None:
    """Train one DenseNet into a run directory (config, metrics.csv, loss curve, best.pt)."""
    from murakit.train.loop import RunDirError, prepare_run_dir, train_run

    config = None
    if not resume:
        if data is None:
            fail("--data is required for a new run (the folder holding MURA's CSVs)")
        config = _train_options(
            preset,
            data=str(data.expanduser().resolve()),
            arch=arch,
            weights=weights,
            epochs=epochs,
            size=size,
            batch_size=batch_size,
            lr=lr,
            loss=loss,
            seed=seed,
            workers=workers,
            device=device,
            bf16=bf16,
            max_train_images=max_train_images,
            fix_inverted=fix_inverted,
            mask_markers=mask_markers,
            panels=panels,
            cache=cache,
            skip_bad=skip_bad,
        )
    try:
        config = prepare_run_dir(out, config, resume, epochs)
        result = _run_training(lambda: train_run(config, out, resume=resume, console=err_console))
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


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data and runs.")] = Path("demo"),
    studies: Annotated[int, typer.Option(help="Synthetic studies to generate.")] = 400,
) -> None:
    """Run the whole pipeline on a synthetic sample (generate, then show its stats)."""
    start = time.time()
    root = out / "data" / "MURA-v1.1"
    if not (root / "train_image_paths.csv").exists():
        synth(out / "data", studies=studies, seed=0, difficulty=0.5, workers=0)
    stats(root, as_json=False, check_files=True, workers=0)
    console.print(f"demo finished in {time.time() - start:.0f} s; data in {root}")


def main() -> None:  # pragma: no cover - console-script entry point
    app(prog_name="murakit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
