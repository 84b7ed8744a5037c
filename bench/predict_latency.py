"""How long a person waits for one study: latency of a 3-image study on CPU.

Measures, after warm-up, p50/p95 over repetitions of the same study (the paths take turns,
rep by rep, so load changes on a shared machine hit all alike) through:
  - predict_studies, torch backend, the runtime murakit picks (bf16 autocast where the CPU
    has it) and in plain fp32;
  - predict_studies, ONNX Runtime backend (the graph murakit export writes, fp32);
  - predict_studies with its default backend ("auto": ONNX Runtime where model.onnx sits in
    the model folder, as it does here, and onnxruntime is installed);
  - the HTTP API (real uvicorn server on 127.0.0.1), without and with CAM overlays at 512
    px, the CAMs through the server's default backend (ONNX Runtime here: the exported graph
    gives CAMs at any size) and through torch (a second server with --backend torch).
Every path includes decoding the files. Without --model, a DenseNet-169 (random weights, the
real architecture) is saved as a run at 224 px, so the numbers are those of the reference
model, not of a toy.

Also printed: the study probabilities' largest difference between the paths (the default
may be ONNX Runtime only where it agrees with torch within 0.01), the peak RSS of a
fresh process per backend (load + the study), the CPU's ISA and fp32 matmul peak, and each p50
against its compute floor: images x 6.72 GFLOP (DenseNet-169 forward at 224 px) per member
at that peak; a CAM row against the CAM floor (the same at 512 px: (512/224)^2 as much per
image; the prediction pass at the training size comes on top of it).

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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import DENSENET169_FWD_GFLOP, isa_line, matmul_peak, peak_line  # noqa: E402

AGREE = 0.01


def fresh_peak_rss(model_dir: Path, study: Path, backend: str, onnx_path: Path) -> float:
    """Peak RSS (MB) of a new process that loads the model and predicts the study twice."""
    import subprocess

    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from murakit.infer.model import Model\n"
        "m = Model.load(Path(sys.argv[1]), device='cpu')\n"
        "for _ in range(2):\n"
        "    m.predict(Path(sys.argv[2]), backend=sys.argv[3], onnx_path=Path(sys.argv[4]))\n"
        # VmHWM, not ru_maxrss: that one keeps the parent's peak across fork + exec
        "hwm = [x for x in Path('/proc/self/status').read_text().splitlines() if 'VmHWM' in x]\n"
        "print(int(hwm[0].split()[1]) / 1024)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(model_dir), str(study), backend, str(onnx_path)],
        capture_output=True,
        text=True,
    )
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(proc.stderr, file=sys.stderr)
        return float("nan")


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


def batched_rates(loaded, paths: list[Path], onnx_path: Path, n: int) -> dict[str, float]:
    """Images per second through Model.image_probabilities, n decoded images (the study's,
    repeated) in batches of 16, per backend: best of 3 runs after one warm-up."""
    images = [loaded.preprocessor.read(p) for p in paths]
    images = (images * (n // len(images) + 1))[:n]
    rates = {}
    for name, backend in (("torch", "torch"), ("onnxruntime", "onnx")):
        loaded.image_probabilities(images[:16], backend=backend, onnx_path=onnx_path)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            loaded.image_probabilities(images, backend=backend, onnx_path=onnx_path)
            times.append(time.perf_counter() - start)
        rates[name] = n / min(times)
    return rates


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
    parser.add_argument("--batch-images", type=int, default=64, help="batched phase")
    parser.add_argument("--quick", action="store_true", help="5 reps, 1 warm-up, 2 with CAM")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.warmup, args.cam_reps, args.batch_images = 5, 1, 2, 32

    from dataclasses import replace

    import httpx

    from murakit.infer.cam import CAM_SIZE
    from murakit.infer.model import Model
    from murakit.infer.runtime import make_runtime
    from murakit.infer.studies import collect_studies
    from murakit.serve.app import create_app, running_server

    with tempfile.TemporaryDirectory(prefix="murakit-latency-") as tmp:
        tmp = Path(tmp)
        built = args.model is None
        model_dir = args.model or make_run(tmp, args.arch, args.size)
        peak = matmul_peak()
        loaded = Model.load(model_dir, device="cpu")
        studies = collect_studies(make_study(tmp / "study1", args.images))
        auto = make_runtime("cpu")
        fp32 = make_runtime("cpu", mixed_precision=False)
        as_fp32 = replace(loaded, runtime=fp32)
        start = time.perf_counter()
        # in the model folder when the bench built it (so the default finds it), else aside
        onnx_path = loaded.export_onnx((model_dir if built else tmp) / "model.onnx")
        export_s = time.perf_counter() - start

        files = [p.read_bytes() for p in studies[0].paths]
        default = loaded.predict_studies(studies, onnx_path=None if built else onnx_path)
        by_path = {
            "torch auto runtime": loaded.predict_studies(studies, backend="torch"),
            "torch fp32": as_fp32.predict_studies(studies, backend="torch"),
            "onnxruntime": loaded.predict_studies(studies, backend="onnx", onnx_path=onnx_path),
        }
        study_p = {k: np.array([s.probability for s in r.studies]) for k, r in by_path.items()}

        def post(client, cam):
            parts = [
                ("files", (f"image{i}.png", data, "image/png")) for i, data in enumerate(files)
            ]
            response = client.post("/api/predict", files=parts, data={"cam": cam})
            response.raise_for_status()

        app = create_app(model_dir, device="cpu", model=loaded)
        torch_app = create_app(model_dir, device="cpu", model=loaded, backend="torch")
        with (
            running_server(app) as url,
            httpx.Client(base_url=url, timeout=600) as client,
            running_server(torch_app) as torch_url,
            httpx.Client(base_url=torch_url, timeout=600) as torch_client,
        ):
            torch_auto = f"predict_studies torch ({auto.describe()})"
            torch_fp32 = f"predict_studies torch ({fp32.describe()})"
            onnx_name = "predict_studies onnxruntime (fp32)"
            paths = {
                torch_auto: (lambda: loaded.predict_studies(studies, backend="torch"), args.reps),
                # (the same path, and row, where the auto runtime is fp32)
                torch_fp32: (
                    lambda: as_fp32.predict_studies(studies, backend="torch"),
                    args.reps,
                ),
                onnx_name: (
                    lambda: loaded.predict_studies(studies, backend="onnx", onnx_path=onnx_path),
                    args.reps,
                ),
                f"predict_studies default (auto: {default.backend})": (
                    lambda: loaded.predict_studies(studies, onnx_path=None if built else onnx_path),
                    args.reps,
                ),
                "HTTP /api/predict, no CAM (server's default backend)": (
                    lambda: post(client, "false"),
                    args.reps,
                ),
            }
            if args.cam_reps:
                paths[f"HTTP /api/predict with CAM at 512 px ({default.backend})"] = (
                    lambda: post(client, "true"),
                    args.cam_reps,
                )
                paths["HTTP /api/predict with CAM at 512 px (torch)"] = (
                    lambda: post(torch_client, "true"),
                    args.cam_reps,
                )
            times = interleaved(paths, args.warmup)
            rows = [summary(k, v) for k, v in times.items()]
        batched = batched_rates(loaded, studies[0].paths, onnx_path, args.batch_images)
        # peak RSS of a fresh process loading the model and predicting the study, per backend
        study_dir = studies[0].paths[0].parent
        rss = {b: fresh_peak_rss(model_dir, study_dir, b, onnx_path) for b in ("torch", "onnx")}
        for r in rows:
            backend = "onnx" if "onnx" in r["path"] else "torch"
            r["peak_rss_mb"] = rss[backend] if r["path"].startswith("predict") else float("nan")

    print(
        f"\nStudy of {args.images} images, model {loaded.config.arch} at "
        f"{loaded.config.size} px, {len(loaded.models)} member(s); CPU threads "
        f"{os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; ONNX export took "
        f"{export_s:.1f} s\n"
    )
    print(isa_line())

    def floor(size: int) -> float:
        gflop = args.images * len(loaded.models) * DENSENET169_FWD_GFLOP * (size / 224) ** 2
        return gflop / peak["fp32"] * 1000

    floor_ms, cam_floor_ms = floor(loaded.config.size), floor(CAM_SIZE)
    print(
        f"{peak_line(peak)}; compute floor of the study: {args.images} x "
        f"{DENSENET169_FWD_GFLOP} GFLOP x {len(loaded.models)} member(s) at the fp32 peak = "
        f"{floor_ms:.0f} ms, {cam_floor_ms:.0f} ms at {CAM_SIZE} px for the CAM rows "
        "(DenseNet-169; other archs: read the ratio as rough)\n"
    )
    width = max(len(r["path"]) for r in rows)
    print(
        f"{'path':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}  {'p50/floor':>9}  {'peak RSS MB':>11}"
        f"  {'reps':>4}"
    )
    for r in rows:
        print(
            f"{r['path']:<{width}}  {r['p50_ms']:>8.0f}  {r['p95_ms']:>8.0f}  "
            f"{r['p50_ms'] / (cam_floor_ms if 'CAM at' in r['path'] else floor_ms):>8.2f}x  "
            f"{r['peak_rss_mb']:>11.0f}  {r['reps']:>4}"
        )
    base = study_p["torch fp32"]
    for name, probs in study_p.items():
        if name != "torch fp32":
            diff = float(np.max(np.abs(probs - base)))
            verdict = "agree" if diff <= AGREE else "DISAGREE"
            print(f"study probability, {name} vs torch fp32: max |diff| {diff:.2e} ({verdict})")
    print(
        f"\nbatched predict, {args.batch_images} images in batches of 16 (decoded; the "
        "network part of `murakit predict` on many studies and of `evaluate`), best of 3:"
    )
    gflop = DENSENET169_FWD_GFLOP * (loaded.config.size / 224) ** 2 * len(loaded.models)
    for backend, rate in batched.items():
        print(
            f"  {backend:12s} {rate:7.1f} img/s = {rate * gflop:5.0f} GFLOP/s = "
            f"{rate * gflop / peak['fp32']:.0%} of the fp32 roofline (target 70%)"
        )
    p50 = {r["path"]: r["p50_ms"] for r in rows}
    print(
        f"\nonnx / torch p50: {p50[onnx_name] / p50[torch_auto]:.2f} vs the auto runtime, "
        f"{p50[onnx_name] / p50[torch_fp32]:.2f} vs fp32; peak RSS of a fresh process "
        "(load + one study; HTTP rows: see the server's): "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items())
    )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "export_s": export_s, "peak": peak}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
