"""This machine's measured matrix-multiply peak per precision: what a model pass's achieved GFLOP/s is read against.

    python benchmarks/peak.py                      # float32 and bfloat16, 1 and 2 threads, n = 1024 and 2048
    python benchmarks/peak.py --threads 2 --sizes 1024

Each cell: the best of `--repeats` timings of `--inner` square matmuls (2 n^3 FLOPs each) after a warm-up, in
GFLOP/s; the peak of a precision at a thread count is its best size. Prints the table and the CPU's bf16 matrix
units (meal_pl.precision), writes peak.json and peak.md to --out (step_profile.py reads peak.json).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import ROOT, write_report

from meal_pl.precision import cpu_bf16_units

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def matmul_gflops(n: int, dtype: torch.dtype, repeats: int, inner: int) -> float:
    """Best GFLOP/s of `inner` n x n matmuls, over `repeats` timings."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * inner / best / 1e9


def measure(threads: list[int], sizes: list[int], repeats: int = 5, inner: int = 4) -> dict:
    """{"cells": [...], "peak": {threads: {dtype: GFLOP/s}}}, torch's thread count restored after."""
    before = torch.get_num_threads()
    cells, peak = [], {}
    try:
        for t in threads:
            torch.set_num_threads(t)
            for name, dtype in DTYPES.items():
                for n in sizes:
                    cells.append({"threads": t, "dtype": name, "n": n, "gflops": matmul_gflops(n, dtype, repeats, inner)})
                peak.setdefault(str(t), {})[name] = max(c["gflops"] for c in cells if c["threads"] == t and c["dtype"] == name)
    finally:
        torch.set_num_threads(before)
    return {"cells": cells, "peak": peak, "bf16_units": cpu_bf16_units(), "torch": torch.__version__}


def markdown(result: dict) -> list[str]:
    sizes = sorted({c["n"] for c in result["cells"]})
    head = ["threads", "dtype"] + [f"n={n} GFLOP/s" for n in sizes] + ["peak", "x float32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t, per_dtype in result["peak"].items():
        for name, best in per_dtype.items():
            cells = {c["n"]: c["gflops"] for c in result["cells"] if str(c["threads"]) == t and c["dtype"] == name}
            row = [t, name] + [f"{cells[n]:.0f}" for n in sizes] + [f"{best:.0f}", f"{best / per_dtype['float32']:.2f}"]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"CPU bf16 matrix units: {result['bf16_units'] or 'none'}; torch {result['torch']}"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "peak")
    args = parser.parse_args()
    if any(t < 1 for t in args.threads) or any(n < 1 for n in args.sizes):
        parser.error(f"--threads {args.threads} and --sizes {args.sizes} must be positive integers")
    result = measure(args.threads, args.sizes, args.repeats, args.inner)
    lines = markdown(result)
    write_report(args.out, "peak", "Matmul peak per precision", lines, result)


if __name__ == "__main__":
    main()
