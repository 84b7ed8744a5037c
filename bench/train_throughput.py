"""Training-step throughput: plain PyTorch defaults vs murakit's runtime settings.

Times forward + backward + Adam step of a DenseNet (default DenseNet-169, 224 px, batch 16)
from random init on one fixed random batch, in two phases:

  plain    MONAI's DenseNet as it comes, fp32, contiguous (NCHW) tensors, no autocast,
           glibc malloc untouched
  murakit  build_model()'s DenseNet (transitions pool before their 1x1 conv: the same
           function, ~8% fewer FLOPs), make_runtime(): malloc tuned, channels_last, bf16
           autocast (AMP on CUDA), the step written as murakit.train.loop writes it

Each phase runs in its own fresh subprocess, plain first: mallopt() is process-global and
cannot be undone, and a fresh process makes each phase's peak RSS its own. Printed with
the CPU's ISA and matmul peak, and each phase's fraction of the roofline: img/s x 20.2 GFLOP
(DenseNet-169 forward + backward at 224 px) over the fp32 peak (bf16 peak where the phase
runs bf16). Target (issue 16): murakit / plain >= 1.35x on an AVX2-only CPU (run with the
environment of bench/_machine.py's AVX2_ENV, or `run_all.py --avx2`); on bf16/AMX CPUs the
figure is reported without a target.

    python bench/train_throughput.py [--arch densenet169] [--size 224] [--batch 16]
                                     [--warmup 3] [--steps 6] [--device cpu] [--threads N]
                                     [--quick]

On a machine busy with other work, wall-clock figures mean little; run with --threads 1 and
read the per-CPU-second figures, which count only this process's own work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import (  # noqa: E402
    DENSENET169_TRAIN_GFLOP,
    capped_to_avx2,
    cpu_flags,
    isa_line,
    matmul_peak,
    peak_line,
)

TARGET_RATIO = 1.35  # AVX2 only


def run_phase(args: argparse.Namespace) -> dict:
    """One phase in this process; returns its figures."""
    import torch
    import torch.nn.functional as F

    from murakit.model.densenet import build_model

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    # plain: MONAI's DenseNet as it comes (each transition convolves, then pools)
    model = build_model(args.arch, dropout=0.2, pool_first=args.phase != "plain").train()
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 2, (args.batch,)).float()

    if args.phase == "plain":
        model = model.to(device)
        batch, labels = images.to(device), labels.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step() -> None:
            logits = model(batch)[:, 0]
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        described = f"{device} (fp32, NCHW, malloc untouched)"
    else:
        from murakit.infer.runtime import adaptive_threads_setting, make_runtime
        from murakit.train.loop import train_step

        # the batch below is prepared once, so tell the runtime what training does: adapt
        # its threads only where MURAKIT_ADAPTIVE_THREADS=1 asks (bench/contention.py)
        runtime = make_runtime(
            str(device),
            mixed_precision=True,
            channels_last=True,
            adaptive_threads=adaptive_threads_setting() == "1",
        )
        model = runtime.prepare_model(model)
        batch, labels = runtime.batch(images), labels.to(runtime.device)  # once, like plain
        weights = torch.ones(args.batch, device=runtime.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = runtime.grad_scaler()

        def step() -> None:
            train_step(model, batch, labels, weights, optimizer, scaler, runtime)

        described = runtime.describe() + (", malloc tuned" if device.type == "cpu" else "")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    times, cpu = [], []
    for _ in range(args.steps):
        tick, cpu_tick = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - tick)
        cpu.append(time.process_time() - cpu_tick)
    median = statistics.median(times)
    figures = {
        "phase": args.phase,
        "runtime": described,
        "img_per_s": args.batch / median,
        "img_per_s_mean": args.batch * len(times) / sum(times),
        "img_per_s_best": args.batch / min(times),
        "step_s": times,
        # CPU seconds per step: the work done, whatever else the machine runs (fair with
        # --threads 1; with more threads it also counts OpenMP spin-waiting)
        "img_per_cpu_s": args.batch / statistics.median(cpu),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "bf16": "bf16" in described,
    }
    if device.type == "cuda":
        figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        figures["gpu"] = torch.cuda.get_device_name(device)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="densenet169")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps")
    parser.add_argument(
        "--phase",
        choices=("plain", "murakit", "both"),
        default="both",
        help="run one phase in this process (used internally) or both in subprocesses",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.steps = 1, 2

    if args.phase != "both":
        print(json.dumps(run_phase(args)))
        return 0

    print(
        f"training step of {args.arch} at {args.size} px, batch {args.batch}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per phase; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = {}
    for phase in ("plain", "murakit"):
        cmd = [sys.executable, __file__, "--phase", phase, "--device", args.device]
        for name in ("arch", "size", "batch", "warmup", "steps", "threads"):
            cmd += [f"--{name}", str(getattr(args, name))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return proc.returncode
        results[phase] = figures = json.loads(proc.stdout.strip().splitlines()[-1])
        steps = " ".join(f"{s:.2f}" for s in figures["step_s"])
        extra = f", peak GPU {figures['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in figures else ""
        print(
            f"  {phase:8s} {figures['img_per_s']:6.1f} img/s (median step; mean "
            f"{figures['img_per_s_mean']:.1f}, best {figures['img_per_s_best']:.1f})  "
            f"{figures['img_per_cpu_s']:.1f} per CPU-second; "
            f"peak RSS {figures['peak_rss_mb']:.0f} MB{extra}"
            f"  [{figures['runtime']}; steps {steps} s]",
            flush=True,
        )
    ratio = results["murakit"]["img_per_s"] / results["plain"]["img_per_s"]
    best = results["murakit"]["img_per_s_best"] / results["plain"]["img_per_s_best"]
    per_cpu = results["murakit"]["img_per_cpu_s"] / results["plain"]["img_per_cpu_s"]
    avx2_only = capped_to_avx2() or "avx512f" not in cpu_flags()
    verdict = (
        ("meets" if ratio >= TARGET_RATIO else "below") + f" the {TARGET_RATIO}x AVX2 target"
        if avx2_only
        else "no target beyond AVX2"
    )
    print(
        f"  speed-up murakit / plain: {ratio:.2f}x of median steps ({verdict}); "
        f"{best:.2f}x of fastest steps, {per_cpu:.2f}x per CPU-second "
        "(steadier on a busy machine)"
    )
    if args.device == "cpu" and args.arch == "densenet169":
        peak = matmul_peak()
        gflop = DENSENET169_TRAIN_GFLOP * (args.size / 224) ** 2
        print(f"  {isa_line()}\n  {peak_line(peak)}")
        for phase, f in results.items():
            ceiling = peak["bf16" if f["bf16"] and "bf16" in peak else "fp32"]
            print(
                f"  {phase}: {f['img_per_s'] * gflop:.0f} GFLOP/s = "
                f"{f['img_per_s'] * gflop / ceiling:.0%} of the "
                f"{'bf16' if f['bf16'] and 'bf16' in peak else 'fp32'} roofline "
                f"({ceiling / gflop:.1f} img/s at {gflop:.1f} GFLOP per image)"
            )
    print(f"  load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        print(json.dumps({"ratio": ratio, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
