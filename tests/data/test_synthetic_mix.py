"""Synthetic images in pretraining: every batch holds round(ratio x batch) of them, counted and logged per epoch;
bad folders and ratios stop the run before it starts; ratio 0 is the run of before."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, run
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from bundle_harness import REPO, TINY
from tests_common import chain_text
from visionfm_core.data import UnlabelledImageDataset, write_phantom_folder
from visionfm_core.data.synthetic.phantoms import make_phantom
from visionfm_core.data import synthetic_mix
from visionfm_core.data.synthetic_mix import (SyntheticMixDataset, SyntheticMixSampler, check_synthetic_sizes,
                                              mix_synthetic, synthetic_per_batch, train_sampler)

FUNDUS = REPO / "bundles" / "fundus_ibot_pretraining" / "configs"
SMALL = {**TINY, "out_dim": 64, "warmup_epochs": 0, "num_workers": 0}


class Items(Dataset):
    """n items shaped like UnlabelledImageDataset's."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.zeros(4, 2, 2, dtype=torch.uint8), "skipped": 0}


def batches(sampler):
    order = list(sampler)
    assert len(order) == len(sampler)
    return [order[i : i + sampler.batch_size] for i in range(0, len(order), sampler.batch_size)]


def test_every_batch_holds_the_ratio_of_synthetic_images():
    mix = SyntheticMixDataset(Items(12), Items(5), 0.5)
    sampler = SyntheticMixSampler(mix, batch_size=4, seed=0)
    sampler.set_epoch(1)
    epoch1 = batches(sampler)
    assert len(epoch1) == 6  # one pass over the 12 real images, 2 per batch
    assert all(sum(i >= 12 for i in b) == 2 for b in epoch1)
    assert sorted(i for b in epoch1 for i in b if i < 12) == list(range(12))  # every real image once
    uses = Counter(i for b in epoch1 for i in b if i >= 12)  # 12 draws from 5 synthetic images: reshuffled cycles
    assert set(uses) == set(range(12, 17)) and min(uses.values()) >= 2
    assert batches(sampler) == epoch1  # a function of (seed, epoch): a resumed epoch replays it
    sampler.set_epoch(2)
    assert batches(sampler) != epoch1
    flags = [b["synthetic"].tolist() for b in DataLoader(mix, batch_size=4, sampler=sampler)]
    assert flags == [[0, 0, 1, 1]] * 6

    only = SyntheticMixSampler(SyntheticMixDataset(Items(3), Items(9), 1.0), batch_size=4)
    assert [sum(i >= 3 for i in b) for b in batches(only)] == [4, 4]  # ratio 1: synthetic images only


def test_processes_share_the_batches_without_overlap():
    mix = SyntheticMixDataset(Items(13), Items(4), 0.25)  # 3 real + 1 synthetic per batch: 4 batches in all
    parts = [SyntheticMixSampler(mix, batch_size=4, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for p in parts:
        p.set_epoch(5)
    b0, b1 = batches(parts[0]), batches(parts[1])
    assert len(b0) == len(b1) == 2  # as many iterations on every process
    real0, real1 = ({i for b in bs for i in b if i < 13} for bs in (b0, b1))
    assert not real0 & real1 and len(real0 | real1) == 12
    assert all(sum(i >= 13 for i in b) == 1 for b in b0 + b1)


def test_bad_ratios():
    for bad in (-0.1, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match="synthetic_ratio"):
            synthetic_per_batch(bad, 8)
    with pytest.raises(ValueError, match=r"round\(0.05 x 8\) = 0 synthetic"):
        synthetic_per_batch(0.05, 8)
    with pytest.raises(ValueError, match="no real image"):
        synthetic_per_batch(0.95, 4)
    assert (synthetic_per_batch(0.5, 5), synthetic_per_batch(0.3, 10), synthetic_per_batch(1, 4)) == (2, 3, 4)
    with pytest.raises(ValueError, match="3 real images .* do not fill one batch of 8"):
        SyntheticMixSampler(SyntheticMixDataset(Items(3), Items(8), 0.5), batch_size=8)


def test_bad_synthetic_folders(tmp_path):
    real = UnlabelledImageDataset(write_phantom_folder(tmp_path / "real", "Fundus", count=4, size=48), "Fundus", 64)
    good = write_phantom_folder(tmp_path / "synth", "Fundus", count=2, size=48, seed=50)
    (tmp_path / "empty").mkdir()
    oct_folder = write_phantom_folder(tmp_path / "oct", "OCT", count=2, size=48)
    cases = [
        (None, 0.5, "no synthetic_dir is given"),
        (good, 0.0, f"synthetic_dir {good} is given but synthetic_ratio is 0"),
        (good, 1.5, "synthetic_ratio must be in [0, 1]"),
        (str(tmp_path / "nowhere"), 0.5, f"synthetic_dir {tmp_path / 'nowhere'}: Image folder"),
        (str(tmp_path / "empty"), 0.5, "contains no images"),
        (oct_folder, 0.5, f"synthetic_dir {oct_folder}: the images under {oct_folder} are greyscale, but Fundus"),
    ]
    for folder, ratio, message in cases:
        with pytest.raises(ValueError) as info:
            mix_synthetic(real, folder, ratio)
        assert message in str(info.value), (folder, ratio, str(info.value))
    write_phantom_folder(tmp_path / "outer" / "generated", "Fundus", count=2, size=48)
    outer = UnlabelledImageDataset(write_phantom_folder(tmp_path / "outer", "Fundus", count=2, size=48), "Fundus", 64)
    with pytest.raises(ValueError, match="lie inside one another"):
        mix_synthetic(outer, tmp_path / "outer" / "generated", 0.5)

    mixed = mix_synthetic(real, good, 0.5)
    assert (len(mixed), mixed.files, mixed[4]["synthetic"], mixed[0]["synthetic"]) == (6, real.files, 1, 0)
    assert mixed[4]["image"].shape == real[0]["image"].shape  # read as the real images are
    assert mix_synthetic(real, None, 0.0) is real and train_sampler(real, 4) is None


def test_synthetic_images_of_mixed_sizes_are_refused_naming_two_files(tmp_path):
    real = UnlabelledImageDataset(write_phantom_folder(tmp_path / "real", "Fundus", count=2, size=48), "Fundus", 64)
    synth = tmp_path / "synth"
    write_phantom_folder(synth / "run1", "Fundus", count=2, size=48, seed=50)
    write_phantom_folder(synth / "run2", "Fundus", count=1, size=40, seed=60)
    with pytest.raises(ValueError) as info:
        mix_synthetic(real, synth, 0.5)
    message = str(info.value)
    assert message.startswith(f"synthetic_dir {synth}: its images are not all the same size"), message
    assert f"{synth / 'run1' / 'fundus_0000.png'} is 48 x 48 pixels" in message
    assert f"but {synth / 'run2' / 'fundus_0000.png'} is 40 x 40" in message


def test_synthetic_images_smaller_than_the_crops_are_refused(tmp_path):
    real = UnlabelledImageDataset(write_phantom_folder(tmp_path / "real", "Fundus", count=2, size=48), "Fundus", 64)
    small = write_phantom_folder(tmp_path / "small", "Fundus", count=2, size=24, seed=50)
    with pytest.raises(ValueError) as info:  # load size 64: the recipe's default factor 2 gives 32 px crops
        mix_synthetic(real, small, 0.5)
    message = str(info.value)
    assert message.startswith(f"synthetic_dir {small}: its images are 24 x 24 pixels (e.g. {small}"), message
    assert "smaller than the 32 x 32 pixel crops" in message and "would be upsampled" in message
    assert "short side is at least 32 pixels" in message
    with pytest.raises(ValueError, match="smaller than the 28 x 28 pixel crops"):
        mix_synthetic(real, small, 0.5, crop_size=28)
    assert len(mix_synthetic(real, small, 0.5, crop_size=24)) == 4  # a short side of exactly the crop is kept
    wide = tmp_path / "wide"  # the short side counts: 40 x 24 images are still too small for 32 px crops
    wide.mkdir()
    for i in range(2):
        Image.fromarray(make_phantom("Fundus", 40, 70 + i)[:24]).save(wide / f"w{i}.png")
    with pytest.raises(ValueError, match="its images are 40 x 24 pixels"):
        mix_synthetic(real, wide, 0.5)


def test_size_check_reads_the_headers_of_a_sample_only(tmp_path, monkeypatch):
    files = [str(tmp_path / f"img_{i:04d}.png") for i in range(1000)]
    read = []
    monkeypatch.setattr(synthetic_mix, "_header_size",
                        lambda path: read.append(path) or ((300, 200) if path == files[-1] else (256, 256)))
    with pytest.raises(ValueError, match=f"{files[0]} is 256 x 256 pixels but {files[-1]} is 300 x 200"):
        check_synthetic_sizes(files, str(tmp_path), 224)
    assert len(read) <= synthetic_mix.SIZE_SAMPLE and read[0] == files[0] and read[-1] == files[-1]
    read.clear()
    monkeypatch.setattr(synthetic_mix, "_header_size", lambda path: read.append(path) or (256, 256))
    check_synthetic_sizes(files, str(tmp_path), 224)
    again = list(read)
    read.clear()
    check_synthetic_sizes(files, str(tmp_path), 224)
    assert read == again and len(set(read)) == synthetic_mix.SIZE_SAMPLE  # the same sample every time
    # a file PIL cannot open (a DICOM, a truncated file) is left to the dataset's own checks
    monkeypatch.setattr(synthetic_mix, "_header_size", lambda path: None)
    check_synthetic_sizes(files, str(tmp_path), 224)


def test_header_size_reads_no_pixels(tmp_path):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    assert synthetic_mix._header_size(str(tmp_path / "a.png")) == (30, 20)
    assert synthetic_mix._header_size(str(tmp_path / "b.png")) is None


def test_ratio_zero_is_the_loader_of_before(tmp_path):
    raw = json.loads((FUNDUS / "train.json").read_text())
    assert (raw["synthetic_dir"], raw["synthetic_ratio"]) == (None, 0.0)
    parser = ConfigParser()
    parser.read_config(str(FUNDUS / "train.json"))
    parser.update({**SMALL, "dataset_dir": write_phantom_folder(tmp_path / "real", "Fundus", count=4, size=48)})
    loader = parser.get_parsed_content("train::dataloader")
    assert loader.dataset is parser.get_parsed_content("train::dataset")  # the UnlabelledImageDataset itself
    assert isinstance(loader.sampler, RandomSampler) and loader.drop_last and loader.batch_size == 4


def test_bundle_run_draws_half_its_images_from_the_synthetic_folder(tmp_path, capsys):
    real = write_phantom_folder(tmp_path / "real", "Fundus", count=4, size=48)
    synth = write_phantom_folder(tmp_path / "synth", "Fundus", count=3, size=48, seed=100)
    args = dict(config_file=str(FUNDUS / "train.json"), logging_file=str(FUNDUS / "logging.conf"), dataset_dir=real,
                synthetic_dir=synth, synthetic_ratio=0.5, ckpt_dir=str(tmp_path / "models"),
                output_dir=str(tmp_path / "runs"), stop_on_collapse=False, **SMALL,
                **{"train::trainer::max_epochs": 1})
    workflow = ConfigWorkflow(workflow_type="train", **args)
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train::trainer")
    assert trainer.state.iteration == 2  # an epoch is one pass over the 4 real images, 2 per batch of 4
    metrics = trainer.state.metrics
    assert (metrics["real_images"], metrics["synthetic_images"], metrics["synthetic_share"]) == (4, 4, 0.5)
    assert "epoch 1: 4 real + 4 synthetic images, synthetic share 0.500" in capsys.readouterr().out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs"))
    events.Reload()
    assert [e.value for e in events.Scalars("synthetic_share")] == [0.5]

    run(**args)  # the same run: its checkpoint is accepted (and complete: nothing to train)
    assert "is complete" in capsys.readouterr().out
    with pytest.raises(Exception) as info:  # another share is another run
        run(**{**args, "synthetic_ratio": 0.25})
    assert "synthetic_ratio=0.5 (this run: 0.25)" in chain_text(info.value)


def test_bundle_refuses_a_bad_synthetic_folder_before_writing(tmp_path):
    real = write_phantom_folder(tmp_path / "real", "Fundus", count=4, size=48)
    oct_folder = write_phantom_folder(tmp_path / "oct", "OCT", count=2, size=48)
    small = write_phantom_folder(tmp_path / "small", "Fundus", count=2, size=24)  # TINY: 32 px crops
    for folder, ratio, message in ((oct_folder, 0.5, f"synthetic_dir {oct_folder}"), (None, 0.5, "no synthetic_dir"),
                                   (oct_folder, 2, "synthetic_ratio must be in [0, 1]"),
                                   (small, 0.5, f"synthetic_dir {small}: its images are 24 x 24 pixels")):
        with pytest.raises(Exception) as info:
            run(config_file=str(FUNDUS / "train.json"), dataset_dir=real, synthetic_dir=folder, synthetic_ratio=ratio,
                ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"), **SMALL)
        assert message in chain_text(info.value)
        assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_synthetic_mix_under_torchrun_on_cpu(tmp_path):
    real = write_phantom_folder(tmp_path / "real", "Fundus", count=16, size=48)
    synth = write_phantom_folder(tmp_path / "synth", "Fundus", count=4, size=48, seed=100)
    args = [f"--{k}={v}" for k, v in SMALL.items()] + [
        f"--dataset_dir={real}", f"--synthetic_dir={synth}", "--synthetic_ratio=0.5", "--stop_on_collapse=False",
        f"--ckpt_dir={tmp_path / 'models'}", f"--output_dir={tmp_path / 'runs'}", "--train::trainer::max_epochs=1",
        f"--logging_file={FUNDUS / 'logging.conf'}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
           "run", "--config_file", f"['{FUNDUS / 'train.json'}','{FUNDUS / 'multi_gpu_train.json'}']", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    ckpt = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 4  # 16 real images / (2 per batch x 2 processes)
    assert "16 real + 16 synthetic images, synthetic share 0.500" in output  # summed over both processes
