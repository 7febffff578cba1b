"""This machine's measured matrix-multiply peak per precision and its memory bandwidth: what a pass over whole
sequences (FLOPs) and a decoding step (weight bytes read) are read against.

    python benchmarks/peak.py                      # float32 and bfloat16, 1 and 2 threads, n = 1024 and 2048
    python benchmarks/peak.py --threads 2 --sizes 1024

Each cell: the best of `--repeats` timings of `--inner` square matmuls (2 n^3 FLOPs each) after a warm-up, in
GFLOP/s; the peak of a precision at a thread count is its best size. Bandwidth: the best of `--repeats` reads (a sum)
of a `--bandwidth-mib` float32 buffer, far larger than the caches, in GB/s: a decoding step of a model reads its
weights once, so weight bytes over this is the step's memory bound. Prints the tables and the CPU's bf16 matrix units
(meal_pl.precision), writes peak.json and peak.md to --out (step_profile.py reads peak.json).
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


def read_gbs(mib: int, repeats: int) -> float:
    """Best GB/s of reading a `mib` MiB float32 buffer once (a sum: one pass, no write)."""
    buffer = torch.ones(mib * 2**20 // 4)
    buffer.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best / 1e9


def measure(threads: list[int], sizes: list[int], repeats: int = 5, inner: int = 4, bandwidth_mib: int = 512) -> dict:
    """{"cells": [...], "peak": {threads: {dtype: GFLOP/s}}, "read_gbs": {threads: GB/s}}, torch's thread count
    restored after."""
    before = torch.get_num_threads()
    cells, peak, bandwidth = [], {}, {}
    try:
        for t in threads:
            torch.set_num_threads(t)
            for name, dtype in DTYPES.items():
                for n in sizes:
                    cells.append({"threads": t, "dtype": name, "n": n, "gflops": matmul_gflops(n, dtype, repeats, inner)})
                peak.setdefault(str(t), {})[name] = max(c["gflops"] for c in cells if c["threads"] == t and c["dtype"] == name)
            bandwidth[str(t)] = read_gbs(bandwidth_mib, repeats)
    finally:
        torch.set_num_threads(before)
    return {"cells": cells, "peak": peak, "read_gbs": bandwidth, "bf16_units": cpu_bf16_units(), "torch": torch.__version__}


def markdown(result: dict) -> list[str]:
    sizes = sorted({c["n"] for c in result["cells"]})
    head = ["threads", "dtype"] + [f"n={n} GFLOP/s" for n in sizes] + ["peak", "x float32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t, per_dtype in result["peak"].items():
        for name, best in per_dtype.items():
            cells = {c["n"]: c["gflops"] for c in result["cells"] if str(c["threads"]) == t and c["dtype"] == name}
            row = [t, name] + [f"{cells[n]:.0f}" for n in sizes] + [f"{best:.0f}", f"{best / per_dtype['float32']:.2f}"]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| threads | memory read GB/s |", "|---|---|"]
    lines += [f"| {t} | {gbs:.1f} |" for t, gbs in result.get("read_gbs", {}).items()]
    lines += ["", f"CPU bf16 matrix units: {result['bf16_units'] or 'none'}; torch {result['torch']}"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=4)
    parser.add_argument("--bandwidth-mib", type=int, default=512, help="the buffer read for the bandwidth, MiB")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "peak")
    args = parser.parse_args()
    if any(t < 1 for t in args.threads) or any(n < 1 for n in args.sizes) or args.bandwidth_mib < 1:
        parser.error(f"--threads {args.threads}, --sizes {args.sizes} and --bandwidth-mib {args.bandwidth_mib} must be "
                     "positive integers")
    result = measure(args.threads, args.sizes, args.repeats, args.inner, args.bandwidth_mib)
    lines = markdown(result)
    write_report(args.out, "peak", "Matmul peak per precision and memory bandwidth", lines, result)


if __name__ == "__main__":
    main()
