import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def timm():
    from visionfm_core.timm_reference import import_timm

    return import_timm()
