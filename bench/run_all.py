"""Run every benchmark in bench/ in turn (what `make bench` does).

Each script runs with its defaults, plus its short flag (`--quick`) where it has one, so the
whole set finishes in minutes; pass --full to run them at their defaults only. --avx2 runs
every script as an AVX2-only CPU would (oneDNN, MKL and ATen capped at AVX2, so fp32: see
bench/_machine.py). First it prints the CPU's ISA and its fp32 (and bf16) matrix-multiply
peak, the ceiling the other figures are read against. Exits non-zero if any script failed.

    python bench/run_all.py [--full] [--avx2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# In bench/ but not benchmarks: it rebuilds the shipped weights (a committed file).
NOT_BENCHMARKS = {"train_quality_models.py"}


def scripts() -> list[Path]:
    """The bench scripts: not _name.py helpers, not NOT_BENCHMARKS, not modules without a
    ``__main__`` block (code the scripts share, such as quality_real.py)."""
    return sorted(
        p
        for p in HERE.glob("*.py")
        if p.name != Path(__file__).name
        and not p.name.startswith("_")
        and p.name not in NOT_BENCHMARKS
        and '__name__ == "__main__"' in p.read_text()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="no --quick: each at its defaults")
    parser.add_argument("--only", nargs="+", default=[], help="script names to run (stems)")
    parser.add_argument("--avx2", action="store_true", help="run as an AVX2-only CPU would")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from _machine import AVX2_ENV

    env = dict(os.environ, **(AVX2_ENV if args.avx2 else {}))
    print("=== the machine ===", flush=True)
    subprocess.call([sys.executable, str(HERE / "_machine.py")], env=env)

    failed = []
    for script in scripts():
        if args.only and script.stem not in args.only:
            continue
        cmd = [sys.executable, str(script)]
        if not args.full and '"--quick"' in script.read_text():
            cmd.append("--quick")
        print(f"\n=== {script.name} {' '.join(cmd[2:])} ===", flush=True)
        tick = time.perf_counter()
        code = subprocess.call(cmd, env=env)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"=== {script.name}: {status} in {time.perf_counter() - tick:.0f} s ===", flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
