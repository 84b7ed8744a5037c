"""Steady under contention: training and inference throughput with one core taken by another
busy process, against the same workload on the cores as found, for four thread policies:
  today     torch's threads fixed (2 on 2 cores), OpenMP spin-waiting at barriers
  murakit   the default: murakit.infer.runtime.ThreadGovernor makes threads follow the cores
            left free while inferring; training keeps its threads (bit-reproducible)
  adaptive  MURAKIT_ADAPTIVE_THREADS=1: training adapts too (what `murakit demo` sets)
  passive   threads fixed, OMP_WAIT_POLICY=PASSIVE (idle threads sleep)

Workloads, each through murakit's runtime (make_runtime, the training step of
murakit.train.loop):
  train  the demo's step: densenet-mini, 128 px, batch 16, augmentation on the device,
         forward + backward + Adam
  infer  a 3-image study: DenseNet-169 forward at 224 px
  infer-onnx  the same study through ONNX Runtime (the exported graph, what `predict` and
         `serve` run by default where model.onnx is current); its threads are ONNX Runtime's
         own (they sleep when idle), so only the default policy is run for it

Each (workload, policy) runs in its own subprocess (libgomp reads OMP_WAIT_POLICY once,
when torch loads): a window on the cores as found, two windows beside a bounded busy loop
(another process, started detached as another user's job would be, spinning on one core),
and a window as found again. "quiet" is the mean of the unloaded windows, "loaded" of both
loaded ones, "2nd half" the second loaded window alone: murakit's threads adapt only after
the step during which the loop started, which can take seconds, so the first window pays
for it. On a shared machine "quiet" means "with whatever else runs": the load average is
printed with it. Targets: loaded >= 45% of quiet, murakit's quiet figure not below today's.

    python bench/contention.py [--seconds 8] [--workloads train infer] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import busy_loop, child_env, isa_line  # noqa: E402

TARGET = 0.45
# name -> (OpenMP passive wait, MURAKIT_ADAPTIVE_THREADS or None for unset, label)
POLICIES = {
    "today": (False, "0", "fixed, spin (today)"),
    "murakit": (False, None, "murakit default"),
    "adaptive": (False, "1", "adaptive (opt-in =1)"),
    "passive": (True, "0", "fixed, passive wait"),
}
QUICK = ("today", "murakit", "adaptive")


def export_study_graph(folder: Path) -> Path:
    """The DenseNet-169 of the infer workload (random weights, seed 0) exported to ONNX."""
    import torch

    from murakit.config import TrainConfig
    from murakit.infer.model import Model
    from murakit.model.densenet import build_model

    torch.manual_seed(0)
    config = TrainConfig(arch="densenet169", weights="none", size=224)
    model = Model([build_model("densenet169", dropout=0.2).eval()], ["bench"], config, folder)
    return model.export_onnx(folder / "model.onnx", verify=False)


def workload(name: str, onnx_path: Path | None = None):
    """(step function, images per step) through murakit's runtime."""
    import torch

    from murakit.infer.runtime import make_runtime
    from murakit.model.densenet import build_model

    torch.manual_seed(0)
    runtime = make_runtime("cpu")
    if name == "infer-onnx":
        from murakit.infer.onnx import INPUT_NAME, OUTPUT_NAME, onnx_session

        session, _ = onnx_session(onnx_path)
        study = torch.randn(3, 3, 224, 224).numpy()
        return lambda: session.run([OUTPUT_NAME], {INPUT_NAME: study}), 3, runtime
    if name == "train":
        from murakit.train.loop import train_step

        model = runtime.prepare_model(build_model("densenet-mini", dropout=0.2).train())
        # a loader's training batch: uint8 squares and [angle, flip] per image, augmented by
        # the runtime as in training
        squares = torch.randint(0, 256, (16, 128, 128), dtype=torch.uint8)
        params = torch.stack([torch.rand(16) * 30 - 15, (torch.rand(16) > 0.5).float()], 1)
        batch = (squares, params)
        labels, weights = torch.randint(0, 2, (16,)).float(), torch.ones(16)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            train_step(model, batch, labels, weights, optimizer, None, runtime)

        return step, 16, runtime
    model = runtime.prepare_model(build_model("densenet169", dropout=0.2).eval())
    batch = torch.randn(3, 3, 224, 224)

    def step() -> None:
        with torch.inference_mode(), runtime.autocast():
            model(runtime.batch(batch))  # runtime.batch, as batched inference calls it

    return step, 3, runtime


def rate(step, images: int, seconds: float) -> float:
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or done == 0:
        step()
        done += images
    return done / (time.perf_counter() - start)


def run_worker(args: argparse.Namespace) -> dict:
    step, images, runtime = workload(args.worker, args.onnx)
    for _ in range(2):
        step()
    quiet1 = rate(step, images, args.seconds)
    busy = busy_loop(3 * args.seconds + 60)
    try:
        time.sleep(0.2)
        # two windows beside the loop: murakit's threads adapt after the step during which
        # the loop started (it can take seconds); the second window shows where they settle
        start, half, done, done_half = time.perf_counter(), None, 0, 0
        while time.perf_counter() - start < 2 * args.seconds or done == 0:
            step()
            done += images
            if half is None and time.perf_counter() - start >= args.seconds:
                half, done_half = time.perf_counter(), done
        end = time.perf_counter()
        loaded = done / (end - start)
        steady = (done - done_half) / (end - half) if half and end > half else loaded
    finally:
        busy.stop()
    quiet2 = rate(step, images, args.seconds)
    return {
        "quiet": (quiet1 + quiet2) / 2,
        "quiet_windows": [quiet1, quiet2],
        "loaded": loaded,  # both loaded windows
        "steady": steady,  # its second half
        "runtime": "onnxruntime (fp32)" if args.onnx else runtime.describe(),
        "thread_changes": runtime.threads.changes if runtime.threads else 0,
        "isa": isa_line(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each window")
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=["train", "infer", "infer-onnx"],
        default=["train", "infer", "infer-onnx"],
    )
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES))
    parser.add_argument("--quick", action="store_true", help="4-second windows")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 4.0
    args.policies = args.policies or list(QUICK if args.quick else POLICIES)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0

    print(
        f"{args.seconds:.0f}-second windows: as found / beside a busy loop / as found; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before",
        flush=True,
    )
    results: dict[str, dict[str, dict]] = {}
    tmp = tempfile.TemporaryDirectory(prefix="murakit-contention-")
    graph = export_study_graph(Path(tmp.name)) if "infer-onnx" in args.workloads else None
    for name in args.workloads:
        results[name] = {}
        for policy in args.policies:
            passive, adaptive, _ = POLICIES[policy]
            if name == "infer" and policy == "adaptive":
                continue  # inference adapts by default: the same as "murakit"
            if name == "infer-onnx" and policy != "murakit":
                continue  # ONNX Runtime's own threads: torch's thread policies do not apply
            env = child_env(passive)
            env.pop("MURAKIT_ADAPTIVE_THREADS", None)
            if adaptive is not None:
                env["MURAKIT_ADAPTIVE_THREADS"] = adaptive
            cmd = [sys.executable, __file__, "--worker", name, "--seconds", str(args.seconds)]
            if name == "infer-onnx":
                cmd += ["--onnx", str(graph)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                return proc.returncode
            results[name][policy] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(next(iter(results[args.workloads[0]].values()))["isa"])
    print(
        f"\n{'workload':10s} {'threads':20s} {'quiet':>8s} {'loaded':>8s} {'loaded/quiet':>13s}"
        f" {'2nd half/quiet':>15s}"
    )
    ok = True
    for name, by_policy in results.items():
        unit = "img/s"
        for policy, f in by_policy.items():
            share = f["loaded"] / f["quiet"]
            wait = POLICIES[policy][2]
            mark = "meets" if share >= TARGET else "below"
            if policy == "murakit" and "today" not in by_policy:
                ok &= share >= TARGET  # no baseline run for it: the share alone
            print(
                f"{name:10s} {wait:20s} {f['quiet']:8.1f} {f['loaded']:8.1f} {share:12.0%}  "
                f"{f['steady'] / f['quiet']:14.0%}  "
                f"({mark} the {TARGET:.0%} target; {unit}, quiet windows "
                f"{f['quiet_windows'][0]:.1f} / {f['quiet_windows'][1]:.1f}; {f['runtime']}; "
                f"{f['thread_changes']} thread changes)"
            )
        for policy in ("murakit", "adaptive"):
            if "today" in by_policy and policy in by_policy:
                today, new = by_policy["today"], by_policy[policy]
                met = new["loaded"] / new["quiet"] >= TARGET
                met &= new["quiet"] >= 0.95 * today["quiet"]
                if policy == "murakit":
                    ok &= met
                print(
                    f"{name:10s} {policy} / today: quiet {new['quiet'] / today['quiet']:.2f}x, "
                    f"loaded {new['loaded'] / today['loaded']:.2f}x "
                    f"({'meets' if met else 'misses'} both targets)"
                )
    tmp.cleanup()
    print(f"load average after: {os.getloadavg()[0]:.1f}; targets {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
