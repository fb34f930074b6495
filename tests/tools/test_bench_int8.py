"""scripts/bench_int8.py (issue 24, point 4) runs end to end: `--quick` exits 0 and prints, for the encoder and the
bundle network, fp32 and both int8 backends with their agreement, and the probe's choice. Timings are not asserted."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])


@pytest.mark.slow  # exports two networks to ONNX in a subprocess
def test_bench_int8_quick_prints_both_backends_and_the_probe():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("VISIONFM_INT8_BACKEND", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_int8.py"), "--quick"],
                          capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-4000:]
    for title in ("vit_tiny/16 encoder, 64 px", "fundus_dr_classification network, 64 px"):
        table = out.split(title, 1)[1].split("faster int8 here:", 1)[0]
        assert "fp32 eager " in table and "int8 torch.ao " in table and "int8 onnxruntime " in table, out
    assert out.count("min cosine ") == 2 and out.count("max prob diff ") == 2, out
    assert "probe (int8_backend: probe) on fundus_dr_classification network: " in out, out
