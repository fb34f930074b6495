"""scripts/bench_hardware.py (issue 12, point 4) runs end to end: `--quick` (vit_tiny, 64 px, 2 steps, 1 round) exits 0
and prints every section of its table. Timings depend on the machine and its load: none is asserted."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])


@pytest.mark.slow  # runs the benchmark script end to end in a subprocess
def test_bench_hardware_quick_runs_and_prints_the_table():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_hardware.py"), "--quick"],
                          capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-4000:]
    for line in ("load average (1 min) at start:", "SIMD flags: avx2", "matmul peak (512x512x512", "fp32 eager ",
                 "bf16 eager ", "best path:",
                 "the int8 probe (precision: int8) picks: ", "iBOT pretraining step: vit_tiny/16", "fp32 (amp=None)",
                 "bf16 (amp='bf16'", "largest loss difference, bf16 vs fp32, over 2 steps", "load average (1 min) at end:"):
        assert line in out, f"{line!r} missing from:\n{out}"
    # a compiled row or the reason it is missing; an int8 row or the reason it was skipped
    assert "bf16 compiled " in out or "compile unavailable:" in out, out
    assert "int8 ONNX Runtime " in out or "int8 (ONNX Runtime) skipped" in out, out
    loss_rows = [row for row in out.splitlines() if row.strip().startswith(("1 ", "2 ")) and row.strip().endswith("%")]
    assert len(loss_rows) == 2, out  # one loss row per step
