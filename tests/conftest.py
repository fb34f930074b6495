import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# tests mirror the package; the families' bundle-harness plugins (tests/tasks/<family>/harness_<family>.py) are
# imported by name from any test, as the shared helpers of tests/ are
TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS)] + [str(d) for d in sorted((TESTS / "tasks").iterdir()) if d.is_dir()]


@pytest.fixture(scope="session")
def timm():
    from timm_reference import import_timm

    return import_timm()
