"""Shared by the bench scripts (not a bench itself: run_all.py skips names starting with _):
the CPU's ISA in one line, the fp32 / bf16 matrix-multiply peak, and the environment that
makes this CPU run as an AVX2-only one would.

    python bench/_machine.py          # prints the ISA line and the matmul peak
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# What an AVX2-only CPU (e.g. Zen 2/3) runs: oneDNN, MKL and ATen's own kernels capped at
# AVX2, and no bf16 autocast (make_runtime asks oneDNN, which then says no).
AVX2_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}

# DenseNet-169 at 224 px: forward GFLOP per image (2 x MACs), and forward + backward (~3x)
DENSENET169_FWD_GFLOP = 6.72
DENSENET169_TRAIN_GFLOP = 3 * DENSENET169_FWD_GFLOP


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def capped_to_avx2() -> bool:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2"


def isa_line() -> str:
    """e.g. 'AMD EPYC, 2 CPUs: AVX2 AVX-512 bf16 (run capped at AVX2, fp32); torch avx2'."""
    import torch

    from murakit.infer.runtime import cpu_supports_bf16, openmp_wait

    flags = cpu_flags()
    has = [
        name
        for name, flag in (
            ("AVX2", "avx2"),
            ("FMA", "fma"),
            ("AVX-512", "avx512f"),
            ("bf16", "avx512_bf16"),
            ("AMX", "amx_tile"),
        )
        if flag in flags
    ]
    cap = ""
    if capped_to_avx2():
        cap = " (run capped at AVX2: oneDNN, MKL, ATen; fp32"
        # MLAS picks its kernels from CPUID and has no run-time switch
        cap += "; ONNX Runtime is not capped: AVX-512 here)" if "avx512f" in flags else ")"
    bf16 = "bf16 autocast" if cpu_supports_bf16() else "fp32"
    return (
        f"CPU {cpu_name()}, {os.cpu_count()} CPUs: {' '.join(has) or 'no AVX2'}{cap}; torch "
        f"kernels {torch.backends.cpu.get_cpu_capability()}, murakit runtime {bf16}, "
        f"{torch.get_num_threads()} threads, OpenMP {openmp_wait()}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def matmul_gflops(dtype_name: str = "float32", n: int = 1024, seconds: float = 2.0) -> float:
    """Best GFLOP/s of an n x n matrix multiply over ~seconds (best, not median: on a shared
    machine the best rep is the one that had the cores)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        tick = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - tick) / 1e9)
    return best


def matmul_peak(seconds: float = 2.0) -> dict[str, float]:
    """fp32 always; bf16 where the runtime would use it (not when capped at AVX2)."""
    from murakit.infer.runtime import cpu_supports_bf16

    peak = {"fp32": matmul_gflops("float32", seconds=seconds)}
    if cpu_supports_bf16() and not capped_to_avx2():
        peak["bf16"] = matmul_gflops("bfloat16", seconds=seconds)
    return peak


def peak_line(peak: dict[str, float]) -> str:
    return "matmul peak " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items())


def child_env(passive: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a bench subprocess: murakit's OpenMP wait policy (as the CLI sets
    it) or today's default spin-wait (both removed), plus ``extra``."""
    from murakit.infer.runtime import PASSIVE_OPENMP, passive_openmp

    env = dict(os.environ)
    for key in (*PASSIVE_OPENMP, "GOMP_SPINCOUNT"):
        env.pop(key, None)
    if passive:
        passive_openmp(env)
    env.update(extra or {})
    return env


class busy_loop:
    """Another process keeping one core busy for at most ``seconds`` (it exits by itself).
    Started detached (not a child of this process), as another user's job would be: murakit's
    ThreadGovernor counts its own children's CPU time as its own."""

    def __init__(self, seconds: float) -> None:
        code = (
            f"import time\nend = time.time() + {seconds:.1f}\nwhile time.time() < end:\n    pass\n"
        )
        launcher = (  # the loop must not hold our pipe, or run() would wait for its end
            "import subprocess, sys; print(subprocess.Popen(sys.argv[1:], stdin=-3, "
            "stdout=-3, stderr=-3, start_new_session=True).pid)"
        )
        out = subprocess.run(
            [sys.executable, "-c", launcher, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
        )
        self.pid = int(out.stdout.strip())

    def stop(self) -> None:
        try:
            os.kill(self.pid, 15)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    print(isa_line())
    print(peak_line(matmul_peak()))
