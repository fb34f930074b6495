"""Every task family trains under torchrun with its multi_gpu_train.json (2 Gloo processes on the CPU): the
families beyond classification/segmentation/landmarks take extra inputs (interval, modalities present) and, for
fusion, whole encoders that a batch may not use (a modality missing or dropped), which DDP must survive."""

import os
import subprocess
import sys

import pytest
import torch

from bundle_harness import REPO, TINY, make_data

CASES = {
    "multitask": ("fundus_multidisease_classification", {}),
    "regression": ("fundus_biomarker_regression", {}),
    "forecasting": ("fundus_glaucoma_forecasting", {}),
    "fusion_fine_tuned": ("multimodal_disease_classification", {"freeze_encoder": False}),
    "volume_classification": ("oct_volume_classification", {}),
    "oct_layers": ("oct_layer_segmentation", {}),
    "segmentation3d": ("mri_orbit_segmentation", {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_family_trains_with_two_processes(case, tmp_path):
    name, extra = CASES[case]
    configs = REPO / "bundles" / name / "configs"
    data = make_data(REPO / "bundles" / name, tmp_path)
    overrides = {**TINY, **data["train"], "ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "runs",
                 "train::trainer::max_epochs": 1, **extra}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "--config_file",
           f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']",
           "--logging_file", str(configs / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)  # rank 0 saved the bare network
