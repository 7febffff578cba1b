"""benchmarks/peak.py: the matmul peak per precision and the memory bandwidth a decoding step is read against."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
_ENV = dict(os.environ)
sys.path.insert(0, str(_DIR))  # peak.py imports its neighbour common.py
_spec = importlib.util.spec_from_file_location("peak", _DIR / "peak.py")
peak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peak)
# common.py sets OMP_NUM_THREADS=1 for the benchmarks: subprocesses of later tests would inherit it, and run with
# another thread count than this process (tests/test_resume.py compares them bit for bit)
os.environ.clear()
os.environ.update(_ENV)
sys.path.remove(str(_DIR))


def test_peak_reports_a_matmul_rate_per_precision_and_a_read_bandwidth_per_thread_count():
    # measure() itself sets torch's thread count, which would change the threads of every later test in this process
    assert peak.matmul_gflops(64, torch.float32, 1, 1) > 0 and peak.read_gbs(8, 1) > 0
    result = {"cells": [{"threads": 1, "dtype": d, "n": 64, "gflops": g} for d, g in (("float32", 50.0), ("bfloat16", 100.0))],
              "peak": {"1": {"float32": 50.0, "bfloat16": 100.0}}, "read_gbs": {"1": 12.5}, "bf16_units": None, "torch": "x"}
    lines = peak.markdown(result)
    assert "| 1 | bfloat16 | 100 | 100 | 2.00 |" in lines
    assert "| threads | memory read GB/s |" in lines and "| 1 | 12.5 |" in lines


CHECK_BOUNDS = """
import step_profile
row = {"model_work": ["generate", "reference", "score"], "parts_flops": {"generate": 2e9, "reference": 1e10},
       "generate_calls": 1, "max_new_tokens": 32, "weight_bytes": 5e8}
bounds = step_profile.phase_bounds(row, 100.0, 10.0)
assert bounds == {"generate": 1.6, "reference": 0.1}, bounds
row |= {"method": "meal", "model": "smollm2", "precision": "float32", "bounds_s": bounds,
        "parts_wall_s": {"generate": 3.2, "reference": 0.4, "score": 0.5}}
table = step_profile.bounds_table([row])
assert "3.20 / 1.600 (50%)" in table[-1] and "0.40 / 0.100 (25%)" in table[-1], table
print("ok")
"""


def test_each_phase_is_read_against_its_bound():
    # 10 GFLOP of reference pass at a 100 GFLOP/s peak: 0.1 s. Decoding 32 tokens of a 0.5 GB model at 10 GB/s: 1.6 s,
    # more than its 2 GFLOP's 0.02 s of arithmetic. In a subprocess: step_profile imports the bench and sets the
    # benchmarks' process-wide settings, which later tests in this process must not inherit.
    out = subprocess.run([sys.executable, "-c", CHECK_BOUNDS], cwd=_DIR, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
