"""`python -m benchmarks [--quick] [NAME ...]`: run every benchmarks/bench_*.py and print one table."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="bench modules to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the benches that take it run their models "
                                                         "(benchmarks.device())")
    args = parser.parse_args()
    os.environ["LANTERN_BENCH_DEVICE"] = args.device
    here = Path(__file__).parent
    modules = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if args.names:
        modules = [m for m in modules if m in args.names or m.removeprefix("bench_") in args.names]
    print(f"{'benchmark':<58} {'ours':>12} {'baseline':>12} {'ratio':>8}  unit / baseline")
    failed = 0
    for name in modules:
        try:
            rows = importlib.import_module(f"benchmarks.{name}").run(quick=args.quick)
        except Exception as e:  # one broken bench must not hide the others
            print(f"{name}: FAILED {type(e).__name__}: {e}")
            failed += 1
            continue
        for r in rows:
            base = f"{r.baseline:12.4g}" if r.baseline is not None else f"{'-':>12}"
            ratio = f"{r.ratio:7.2f}x" if r.ratio is not None else f"{'-':>8}"
            print(f"{r.name:<58} {r.ours:12.4g} {base} {ratio}  {r.unit}"
                  + (f" vs {r.baseline_name}" if r.baseline_name else "") + (f"  ({r.note})" if r.note else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
