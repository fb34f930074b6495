"""Model files in the bundles' configs go through the safe loader: a file that cannot be loaded safely (a pickle
that runs code) or does not fit gets one line naming the file and the reason, never torch's advice to turn
weights_only off, and nothing in it runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from visionfm_core.engine.checkpoint import (
    SafeCheckpointLoader,
    load_bundle_encoder_or_exit,
)

REPO = Path(__file__).resolve().parents[2]


class _Exploit:
    """Unpickled unsafely, runs a shell command that writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def evil_file(path: Path, marker: Path, state: dict | None = None) -> Path:
    torch.save({**(state or {}), "payload": _Exploit(marker)}, path)
    return path


def _engine() -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = 3
    return engine


def test_handler_refuses_a_code_running_file_in_one_line(tmp_path):
    marker = tmp_path / "marker"
    net = nn.Linear(3, 2)
    path = evil_file(tmp_path / "model.pt", marker, net.state_dict())
    with pytest.raises(SystemExit) as info:
        SafeCheckpointLoader(str(path), {"model": net})(_engine())
    message = str(info.value.code)
    assert message.startswith(f"{path}: cannot be loaded safely: it contains the global 'os.system', which is not "
                              "allowed"), message
    assert "\n" not in message and "weights_only" not in message
    assert not marker.exists()


def test_handler_names_a_file_that_does_not_fit(tmp_path):
    torch.save(nn.Linear(3, 4).state_dict(), tmp_path / "model.pt")
    with pytest.raises(SystemExit, match=r"model.pt does not fit the bundle's network: 2 shape mismatches "
                                         r"\(e.g. weight: file \(4, 3\) vs network \(2, 3\)"):
        SafeCheckpointLoader(str(tmp_path / "model.pt"), {"model": nn.Linear(3, 2)})(_engine())


def test_handler_loads_a_model_and_a_resumed_trainer(tmp_path):
    saved = nn.Linear(3, 2)
    torch.save(saved.state_dict(), tmp_path / "model.pt")  # a bare state dict, as bundle training writes it
    net = nn.Linear(3, 2)
    SafeCheckpointLoader(str(tmp_path / "model.pt"), {"model": net}, map_location="cpu")(_engine())
    assert torch.equal(net.weight, saved.weight) and torch.equal(net.bias, saved.bias)
    # several objects (model, optimiser): loaded as MONAI's CheckpointLoader does, the engine's max_epochs kept
    opt = torch.optim.SGD(saved.parameters(), lr=0.5, momentum=0.9)
    saved(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.save({"model": saved.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "checkpoint.pt")
    net2, engine = nn.Linear(3, 2), _engine()
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1, momentum=0.9)
    SafeCheckpointLoader(str(tmp_path / "checkpoint.pt"), {"model": net2, "optimizer": opt2})(engine)
    assert torch.equal(net2.weight, saved.weight) and opt2.param_groups[0]["lr"] == 0.5
    assert engine.state.max_epochs == 3


def test_encoder_loader_refuses_a_code_running_file_in_one_line(tmp_path):
    marker = tmp_path / "marker"
    path = evil_file(tmp_path / "encoder.pt", marker, {"teacher": {"w": torch.zeros(2)}})
    with pytest.raises(SystemExit, match=r"encoder.pt: cannot be loaded safely: it contains the global 'os.system'"):
        load_bundle_encoder_or_exit(nn.Linear(2, 2), str(path))  # refused before the encoder is looked at
    assert not marker.exists()


def test_no_bundle_config_loads_a_model_file_with_monais_own_loader():
    """MONAI's CheckpointLoader calls torch.load itself: its refusal is a traceback ending in the weights_only
    advice. Every loader in the bundles' configs is the safe one."""
    found = []
    for config in sorted(REPO.glob("bundles/*/configs/*.json")):
        text = config.read_text()
        if '"CheckpointLoader"' in text or "monai.handlers.CheckpointLoader" in text or "torch.load(" in text:
            found.append(f"{config.parent.parent.name}/{config.name}")
    assert not found, found
    loaders = [c for c in REPO.glob("bundles/*/configs/*.json") if "SafeCheckpointLoader" in c.read_text()]
    assert len(loaders) >= 30  # inference.json and evaluate.json of every task bundle


def _bundle_run(bundle: str, configs: list[str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    config = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(cwd),
           "--arch", "vit_tiny", "--image_size", "32", "--num_workers", "0", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("bundle, configs, weights", [
    ("fundus_dr_classification", ["inference"], "model.pt"),
    ("fundus_dr_classification", ["train", "evaluate"], "model.pt"),
    ("fundus_ibot_pretraining", ["inference"], "encoder.pt"),
])
def test_bundle_run_refuses_a_code_running_model_file_in_one_line(tmp_path, bundle, configs, weights):
    """`python -m monai.bundle run` on a bundle whose weights file runs a command when unpickled: exit status 1, a
    short stderr naming the file and the global, no traceback, no weights_only advice, and the command never ran."""
    from bundle_harness import write_classification_dataset

    root = tmp_path / bundle
    (root / "models").mkdir(parents=True)
    (root / "configs").symlink_to(REPO / "bundles" / bundle / "configs")
    marker = tmp_path / "marker"
    evil_file(root / "models" / weights, marker, {"w": torch.zeros(2)})
    datalist = write_classification_dataset(tmp_path / "data", "Fundus",
                                            json.loads((root / "configs" / "train.json").read_text()).get(
                                                "default_class_names", ["a", "b"]), per_class=1, size=32)
    out = _bundle_run(bundle, [f"configs/{c}.json" for c in configs], root, "--dataset_dir",
                      str(tmp_path / "data" / "test"), "--datalist", datalist, "--output_dir", str(tmp_path / "out"))
    assert out.returncode == 1, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    ours = [line for line in lines if "cannot be loaded safely" in line]
    assert len(ours) == 1 and f"models/{weights}: cannot be loaded safely: it contains the global 'os.system'" \
        in ours[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "weights_only" not in out.stderr, out.stderr[-3000:]
    assert len(lines) <= 4, out.stderr  # MONAI's warnings about trusting configs and DICOM plugins, and ours
    assert not marker.exists()


@pytest.mark.slow
def test_generation_sampling_refuses_a_code_running_model_file_in_one_line(tmp_path):
    """The generation bundles read their two files before MONAI builds anything: the same one line, no traceback."""
    bundle = "fundus_ldm_generation"
    root = tmp_path / bundle
    (root / "models").mkdir(parents=True)
    (root / "configs").symlink_to(REPO / "bundles" / bundle / "configs")
    marker = tmp_path / "marker"
    evil_file(root / "models" / "autoencoder.pt", marker, {"w": torch.zeros(2)})
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--bundle_root",
           str(root), "--output_dir", str(tmp_path / "out")]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert any("models/autoencoder.pt: cannot be loaded safely: it contains the global 'os.system'" in line
               for line in lines), out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "weights_only" not in out.stderr, out.stderr[-3000:]
    assert len(lines) <= 4, out.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
