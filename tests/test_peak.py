"""benchmarks/peak.py: the matmul peak per precision and the memory bandwidth a decoding step is read against."""

import importlib.util
import sys
from pathlib import Path

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(_DIR))  # peak.py imports its neighbour common.py
_spec = importlib.util.spec_from_file_location("peak", _DIR / "peak.py")
peak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peak)


def test_measure_reports_a_peak_per_precision_and_a_read_bandwidth_per_thread_count():
    result = peak.measure([1], [64], repeats=1, inner=1, bandwidth_mib=8)
    assert set(result["peak"]["1"]) == {"float32", "bfloat16"} and all(v > 0 for v in result["peak"]["1"].values())
    assert result["read_gbs"]["1"] > 0
    lines = peak.markdown(result)
    assert any(line.startswith("| 1 | ") and "GB/s" not in line for line in lines)  # the bandwidth row
    assert "| threads | memory read GB/s |" in lines


def test_each_phase_is_read_against_its_bound():
    spec = importlib.util.spec_from_file_location("step_profile", _DIR / "step_profile.py")
    step_profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_profile)
    # 10 GFLOP of reference pass at a 100 GFLOP/s peak: 0.1 s. Decoding 32 tokens of a 0.5 GB model at 10 GB/s: 1.6 s,
    # more than its 2 GFLOP's 0.02 s of arithmetic.
    row = {"model_work": ["generate", "reference", "score"], "parts_flops": {"generate": 2e9, "reference": 1e10},
           "generate_calls": 1, "max_new_tokens": 32, "weight_bytes": 5e8}
    bounds = step_profile.phase_bounds(row, 100.0, 10.0)
    assert bounds == {"generate": 1.6, "reference": 0.1}
    row |= {"method": "meal", "model": "smollm2", "precision": "float32", "bounds_s": bounds,
            "parts_wall_s": {"generate": 3.2, "reference": 0.4, "score": 0.5}}
    table = step_profile.bounds_table([row])
    assert "3.20 / 1.600 (50%)" in table[-1] and "0.40 / 0.100 (25%)" in table[-1]
