"""Where a model came from: ``provenance.json`` in every run and every ensemble.

It records what ran, not what was asked (config.json records that, and is the recipe; this
file is never read back as one): murakit, torch, MONAI, numpy and Python versions; the git
commit of murakit's checkout when it runs from one; the command line; the CPU model and its
ISA flags, the GPU; the precision actually used (``"fp32"`` when bf16 was asked on a CPU
without it); the seeds; a sha256 fingerprint of the dataset's CSVs; the sha256 of the initial
weights file and of each checkpoint written (best.pt, last.pt), updated, atomically, each
time one is written.

A run resumed in another session (another machine, another murakit) keeps the earlier
sessions' environments under ``earlier_sessions``; the top level describes the latest.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from murakit.fsutil import atomic_write_json
from murakit.train.callbacks import Callback, EpochEnd, RunResult, TrainStart

if TYPE_CHECKING:
    from murakit.config import TrainConfig

PROVENANCE_FILE = "provenance.json"
FORMAT = "murakit-provenance/1"
CHECKPOINTS = ("best.pt", "last.pt")

# The /proc/cpuinfo flags that decide which kernels (and which precisions) a CPU runs.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    # Arm (the "Features" line)
    "asimd",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
)
_SESSION_KEYS = ("started", "software", "git", "command", "hardware", "device", "precision")


# ---------------------------------------------------------------- what ran, where


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def software_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        murakit_version: str | None = version("murakit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        murakit_version = None
    versions: dict[str, str | None] = {
        "murakit": murakit_version,
        "python": platform.python_version(),
    }
    for name in ("torch", "monai", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


@cache
def git_commit(package: Path | None = None) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the git checkout murakit runs from (an editable install), or
    None when murakit is not a tracked file of a checkout (a wheel install, no git).
    `package`: the folder holding murakit's __init__.py (default: this murakit's)."""
    package = package or Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(package), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # not a checkout's site-packages
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model name and the ISA flags of ISA_FLAGS it has (from /proc/cpuinfo where
    there is one), the logical cores, and the kernel level PyTorch picked."""
    model, flags = None, set()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and model is None:
                    model = value.strip() or None
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    info: dict[str, Any] = {
        "model": model or platform.processor() or platform.machine() or None,
        "machine": platform.machine(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "logical_cores": os.cpu_count(),
    }
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError, RuntimeError):
        pass
    return info


def gpu_names() -> list[str]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except (ImportError, RuntimeError):
        return []


def precision_name(amp_dtype: Any) -> str:
    """A runtime's amp_dtype as a word: "bf16", "fp16", or "fp32" (None: no autocast)."""
    if amp_dtype is None:
        return "fp32"
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(amp_dtype), str(amp_dtype))


def environment(device: str | None = None, precision: str | None = None) -> dict[str, Any]:
    """This process's session: when, which software, which commit, the command, hardware."""
    env: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": software_versions(),
        "git": git_commit(),
        "command": list(sys.argv),
        "hardware": {"cpu": cpu_info(), "gpus": gpu_names()},
    }
    if device is not None:
        env["device"] = device
    if precision is not None:
        env["precision"] = precision
    return env


# ---------------------------------------------------------------- what it was made from


def dataset_fingerprint(root: str | os.PathLike | None) -> dict[str, Any] | None:
    """sha256 of each of the dataset's CSVs (and dataset.json), and one fingerprint over
    them all: the same files give the same fingerprint wherever the folder lies."""
    if not root:
        return None
    root = Path(root).expanduser()
    files = sorted(p for p in root.glob("*.csv") if p.is_file())
    if not files:  # CSVs one folder down (a folder holding MURA-v1.1/), as load_index allows
        files = sorted(p for p in root.glob("*/*_image_paths.csv") if p.is_file())
        files += sorted(p for p in root.glob("*/*_labeled_studies.csv") if p.is_file())
    if (root / "dataset.json").is_file():
        files.append(root / "dataset.json")
    hashes = {p.relative_to(root).as_posix(): sha256_file(p) for p in files}
    listing = "".join(f"{h}  {name}\n" for name, h in sorted(hashes.items()))
    return {
        "root": str(root.resolve()) if root.exists() else str(root),
        "synthetic": (root.parent / "synth_truth.csv").is_file(),
        "files": hashes,
        "fingerprint": hashlib.sha256(listing.encode()).hexdigest() if hashes else None,
    }


def initial_weights(spec: str, arch: str) -> dict[str, Any]:
    """The --weights value, and the file and sha256 it names: a path, or the ImageNet file
    in torch hub's cache (looked up only: nothing is downloaded here)."""
    out: dict[str, Any] = {"spec": spec, "file": None, "sha256": None}
    path: Path | None = None
    if spec.lower() == "imagenet":
        try:
            import torch

            from murakit.model.weights import OFFICIAL_FILES

            if arch in OFFICIAL_FILES:
                path = Path(torch.hub.get_dir()) / "checkpoints" / OFFICIAL_FILES[arch]
        except ImportError:
            path = None
    elif spec.lower() != "none":
        path = Path(spec).expanduser()
    if path is not None and path.is_file():
        out["file"], out["sha256"] = str(path.resolve()), sha256_file(path)
    return out


def checkpoint_record(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {
        "sha256": sha256_file(path),
        "bytes": stat.st_size,
        "written": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(
            timespec="seconds"
        ),
    }


def read_provenance(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A run's or an ensemble's provenance.json, or None when absent or unreadable."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- runs


class RunProvenance(Callback):
    """Writes the run's provenance.json when training starts and again after each epoch
    (best.pt/last.pt just written) and at the end (last.pt after a stop), atomically."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None
        self.out: Path | None = None

    def on_train_start(self, start: TrainStart) -> None:
        config = start.config
        self.out = start.out
        previous = read_provenance(start.out) if start.resumed else None
        session = environment(start.device, start.precision or None)
        session["world_size"] = start.world_size
        if start.resumed:
            session["resumed_at"] = {"epoch": start.epochs_done + 1, "batch": start.step + 1}
        doc: dict[str, Any] = {"format": FORMAT, "kind": "run", **session}
        doc["mixed_precision_asked"] = config.bf16
        doc["seeds"] = {"seed": config.seed}
        doc["dataset"] = dataset_fingerprint(config.data)
        if previous and previous.get("format") == FORMAT:
            doc["initial_weights"] = previous.get("initial_weights")
            earlier = list(previous.get("earlier_sessions", []))
            earlier.append({k: previous[k] for k in _SESSION_KEYS if k in previous})
            doc["earlier_sessions"] = earlier
        else:
            doc["initial_weights"] = initial_weights(config.weights, config.arch)
            doc["earlier_sessions"] = []
        doc["checkpoints"] = {}
        self.doc = doc
        self._update_checkpoints(CHECKPOINTS)  # a resumed run's files as they are

    def on_epoch_end(self, end: EpochEnd) -> None:
        if self.doc is None:
            return
        self._update_checkpoints(
            CHECKPOINTS if end.improved else ("last.pt",), int(end.row["epoch"])
        )

    def on_train_end(self, result: RunResult) -> None:
        if self.doc is not None and result.interrupted:
            self._update_checkpoints(("last.pt",))

    def _update_checkpoints(self, names: Iterable[str], epoch: int | None = None) -> None:
        assert self.doc is not None and self.out is not None
        for name in names:
            path = self.out / name
            if path.is_file():
                record = checkpoint_record(path)
                if epoch is not None:
                    record["epoch"] = epoch
                self.doc["checkpoints"][name] = record
        atomic_write_json(self.out / PROVENANCE_FILE, self.doc)


# ---------------------------------------------------------------- ensembles


def write_ensemble_provenance(
    ens_dir: Path, members: Sequence[Any], configs: Sequence[TrainConfig]
) -> Path:
    """The ensemble's provenance.json: this session's environment, and per member (rows of
    ensemble.json with their configs) its seed, whether it is kept, the precision it trained
    in (from its own provenance.json) and the sha256 of the best.pt the ensemble uses."""
    rows = []
    for member, config in zip(members, configs, strict=True):
        run_dir = Path(member.run_dir)
        own = read_provenance(run_dir) or {}
        best = run_dir / "best.pt"
        try:
            shown = str(run_dir.resolve().relative_to(ens_dir.resolve()))
        except ValueError:
            shown = str(run_dir.resolve())
        rows.append(
            {
                "name": member.name,
                "run_dir": shown,
                "kept": bool(member.kept),
                "seed": config.seed,
                "precision": own.get("precision"),
                "best.pt": checkpoint_record(best) if best.is_file() else None,
                "dataset_fingerprint": (own.get("dataset") or {}).get("fingerprint"),
            }
        )
    kept = [c for m, c in zip(members, configs, strict=True) if m.kept] or list(configs)
    doc = {
        "format": FORMAT,
        "kind": "ensemble",
        **environment(),
        "seeds": {"members": [c.seed for c in configs]},
        # what the kept members trained in ("bf16, fp32" when they differ)
        "precision": ", ".join(
            sorted({r["precision"] for r in rows if r["kept"] and r["precision"]})
        )
        or None,
        "dataset": dataset_fingerprint(kept[0].data) if kept else None,
        "initial_weights": initial_weights(kept[0].weights, kept[0].arch) if kept else None,
        "members": rows,
    }
    path = ens_dir / PROVENANCE_FILE
    atomic_write_json(path, doc)
    return path
