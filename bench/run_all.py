"""Run every benchmark in bench/ in turn (what `make bench` does).

Each script runs with its defaults, plus its short flag (`--quick`) where it has one, so the
whole set finishes in minutes; pass --full to run them at their defaults only. Exits
non-zero if any script failed.

    python bench/run_all.py [--full] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="no --quick: each at its defaults")
    parser.add_argument("--only", nargs="+", default=[], help="script names to run (stems)")
    args = parser.parse_args(argv)

    failed = []
    for script in scripts():
        if args.only and script.stem not in args.only:
            continue
        cmd = [sys.executable, str(script)]
        if not args.full and '"--quick"' in script.read_text():
            cmd.append("--quick")
        print(f"\n=== {script.name} {' '.join(cmd[2:])} ===", flush=True)
        tick = time.perf_counter()
        code = subprocess.call(cmd)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"=== {script.name}: {status} in {time.perf_counter() - tick:.0f} s ===", flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
