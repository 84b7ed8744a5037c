"""How long a person waits for one study: latency of a 3-image study on CPU.

Measures, after warm-up, p50/p95 over repetitions of the same study (the paths take turns,
rep by rep, so load changes on a shared machine hit all alike) through:
  - predict_studies, torch backend, the runtime murakit picks (bf16 autocast where the CPU
    has it) and in plain fp32;
  - predict_studies, ONNX Runtime backend (the graph murakit export writes, fp32);
  - the HTTP API (real uvicorn server on 127.0.0.1), without and with CAM overlays.
Every path includes decoding the files. Without --model, a DenseNet-169 (random weights, the
real architecture) is saved as a run at 224 px, so the numbers are those of the reference
model, not of a toy.

    python bench/predict_latency.py [--model DIR] [--reps 20] [--cam-reps 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image


def make_run(folder: Path, arch: str, size: int) -> Path:
    """A run folder holding an untrained network: what Model.load needs (best.pt)."""
    import torch

    from murakit.config import TrainConfig
    from murakit.fsutil import atomic_torch_save
    from murakit.model.densenet import build_model

    torch.manual_seed(0)
    config = TrainConfig(arch=arch, weights="none", size=size, preset="bench")
    model = build_model(arch, config.dropout).eval()
    run = folder / f"{arch}-{size}"
    run.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(
        run / "best.pt",
        {"format": "murakit-run/1", "config": asdict(config), "model": model.state_dict()},
    )
    config.save(run / "config.json")
    return run


def make_study(folder: Path, n: int = 3) -> list[Path]:
    """n radiograph-sized PNGs (longest side 512, like MURA's) with some structure."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = 512, 380 + 40 * i
        yy, xx = np.mgrid[0:h, 0:w]
        bone = np.exp(-(((xx - w / 2) / (w / 8)) ** 2)) * 160
        img = np.clip(40 + bone + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)
        path = folder / f"image{i + 1}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def interleaved(paths: dict[str, tuple[Callable[[], object], int]], warmup: int) -> dict:
    """Seconds per call of each path, the paths taking turns rep by rep, so that a load change
    on a shared machine hits all of them alike instead of whichever ran at the time."""
    for name, (fn, _) in paths.items():
        print(f"  warming up: {name}", file=sys.stderr, flush=True)
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for rep in range(max(reps for _, reps in paths.values())):
        for name, (fn, reps) in paths.items():
            if rep < reps:
                time.sleep(0.3)  # let the previous path's worker threads stop spinning
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        print(f"  rep {rep + 1} done", file=sys.stderr, flush=True)
    return times


def summary(name: str, times: list[float]) -> dict:
    ms = np.array(times) * 1000
    return {
        "path": name,
        "reps": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(statistics.fmean(ms)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="run or ensemble folder (default: build one)")
    parser.add_argument("--arch", default="densenet169", help="when building (no --model)")
    parser.add_argument("--size", type=int, default=224, help="when building (no --model)")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--cam-reps", type=int, default=5, help="HTTP with CAM (slow); 0 = skip")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 reps, 1 warm-up, 2 with CAM")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.warmup, args.cam_reps = 5, 1, 2

    from dataclasses import replace

    import httpx

    from murakit.infer.model import Model
    from murakit.infer.runtime import make_runtime
    from murakit.infer.studies import collect_studies
    from murakit.serve.app import create_app, running_server

    with tempfile.TemporaryDirectory(prefix="murakit-latency-") as tmp:
        tmp = Path(tmp)
        model_dir = args.model or make_run(tmp, args.arch, args.size)
        loaded = Model.load(model_dir, device="cpu")
        studies = collect_studies(make_study(tmp / "study1", args.images))
        auto = make_runtime("cpu")
        fp32 = make_runtime("cpu", mixed_precision=False)
        as_fp32 = replace(loaded, runtime=fp32)
        start = time.perf_counter()
        onnx_path = loaded.export_onnx(tmp / "model.onnx")
        export_s = time.perf_counter() - start

        files = [p.read_bytes() for p in studies[0].paths]

        def post(client, cam):
            parts = [
                ("files", (f"image{i}.png", data, "image/png")) for i, data in enumerate(files)
            ]
            response = client.post("/api/predict", files=parts, data={"cam": cam})
            response.raise_for_status()

        app = create_app(model_dir, device="cpu", model=loaded)
        with running_server(app) as url, httpx.Client(base_url=url, timeout=600) as client:
            paths = {
                f"predict_studies torch ({auto.describe()})": (
                    lambda: loaded.predict_studies(studies),
                    args.reps,
                ),
                f"predict_studies torch ({fp32.describe()})": (
                    lambda: as_fp32.predict_studies(studies),
                    args.reps,
                ),
                "predict_studies onnxruntime (fp32)": (
                    lambda: loaded.predict_studies(studies, backend="onnx", onnx_path=onnx_path),
                    args.reps,
                ),
                "HTTP /api/predict, no CAM (torch, auto runtime)": (
                    lambda: post(client, "false"),
                    args.reps,
                ),
            }
            if args.cam_reps:
                paths["HTTP /api/predict with CAM at 512 px"] = (
                    lambda: post(client, "true"),
                    args.cam_reps,
                )
            rows = [summary(k, v) for k, v in interleaved(paths, args.warmup).items()]

    print(
        f"\nStudy of {args.images} images, model {loaded.config.arch} at "
        f"{loaded.config.size} px, {len(loaded.models)} member(s); CPU threads "
        f"{os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; ONNX export took "
        f"{export_s:.1f} s\n"
    )
    width = max(len(r["path"]) for r in rows)
    print(f"{'path':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}  {'reps':>4}")
    for r in rows:
        print(f"{r['path']:<{width}}  {r['p50_ms']:>8.0f}  {r['p95_ms']:>8.0f}  {r['reps']:>4}")
    torch_auto, torch_fp32, onnx = (r["p50_ms"] for r in rows[:3])
    print(
        f"\nonnx / torch p50: {onnx / torch_auto:.2f} vs the auto runtime, "
        f"{onnx / torch_fp32:.2f} vs fp32"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "export_s": export_s}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
