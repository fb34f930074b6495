"""Resuming pretraining only continues the same run: other data or recipe values are refused (saying how to start
afresh or force it), a larger max_epochs extends a finished run, and the same max_epochs says it is complete."""

import logging

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import run
from torch import nn

from bundle_harness import REPO, TINY
from tests_common import chain_text
from visionfm_core.data import write_phantom_folder
from visionfm_core.ssl import IBOTRecipe, PretrainingCheckpoint
from visionfm_core.ssl.checkpoint import _run_differences
from visionfm_core.encoders import WeightsError

FUNDUS = REPO / "bundles" / "fundus_ibot_pretraining" / "configs"


class Images(torch.utils.data.Dataset):
    """A stand-in for UnlabelledImageDataset: a list of files, one number per item."""

    def __init__(self, folder, count):
        self.files = [f"{folder}/{i}.png" for i in range(count)]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        return torch.tensor(float(index))


def pretrain(ckpt_dir, folder, epochs, count=4, resume="auto", **recipe):
    """A 2-iteration-per-epoch engine shaped like IBOTTrainer for the checkpoint handler (no model to train)."""
    teacher = nn.Linear(2, 2)
    engine = Engine(lambda e, batch: teacher.weight.data.add_(1.0))  # each iteration changes the "teacher"
    engine.recipe = IBOTRecipe(arch="vit_tiny", image_size=32, out_dim=64, epochs=epochs, **recipe)
    engine.modality = "Fundus"
    engine.checkpoint_dict = lambda: {"trainer": engine, "teacher": teacher}
    PretrainingCheckpoint(str(ckpt_dir), resume=resume).attach(engine)
    engine.run(torch.utils.data.DataLoader(Images(folder, count), batch_size=count // 2), max_epochs=epochs)
    return engine


def saved(ckpt_dir):
    return torch.load(ckpt_dir / "checkpoint.pt", weights_only=True)["visionfm_pretraining"]


def test_bundle_refuses_a_stale_checkpoint_of_another_dataset(tmp_path):
    # the case of the issue: a second run in the same bundle folder on other data used to log "nothing left to
    # train" and exit 0
    first = write_phantom_folder(tmp_path / "first", "Fundus", count=4, size=48)
    second = write_phantom_folder(tmp_path / "second", "Fundus", count=6, size=48, seed=1)
    args = dict(config_file=str(FUNDUS / "train.json"), logging_file=False, ckpt_dir=str(tmp_path / "models"),
                output_dir=str(tmp_path / "runs"), **TINY, out_dim=64, warmup_epochs=0, stop_on_collapse=False,
                **{"train::trainer::max_epochs": 1, "train::tensorboard#_disabled_": True})
    run(dataset_dir=str(first), **args)
    identity = saved(tmp_path / "models")["run_identity"]  # the bundle's dataset_dir + what the loader says
    assert identity["dataset_dir"] == str(first) and identity["num_images"] == 4
    before = (tmp_path / "models" / "checkpoint.pt").read_bytes()
    with pytest.raises(Exception) as info:  # resume: auto, the bundle's default
        run(dataset_dir=str(second), **args)
    message = chain_text(info.value)
    assert "cannot resume from" in message and "checkpoint.pt" in message and "another run" in message
    assert f"dataset_dir={first} (this run: {second})" in message and "num_images=4 (this run: 6)" in message
    assert "--resume False" in message and "--resume force" in message and "--ckpt_dir" in message
    assert (tmp_path / "models" / "checkpoint.pt").read_bytes() == before  # nothing trained, nothing overwritten


def test_forced_resume_and_starting_afresh(tmp_path):
    models = tmp_path / "models"
    pretrain(models, tmp_path / "a", 1, count=4)
    assert saved(models)["run_identity"] == {"image_folder": str(tmp_path / "a"), "num_images": 4}
    with pytest.raises(WeightsError, match=r"another run \(image_folder=.*/a \(this run: .*/b\); num_images=4 "
                                           r"\(this run: 6\)\).*--resume False.*--resume force"):
        pretrain(models, tmp_path / "b", 2, count=6)
    assert saved(models)["epoch"] == 1
    engine = pretrain(models, tmp_path / "b", 2, count=6, resume="force")  # continues the run on the new data
    assert engine.state.epoch == 2 and engine.state.iteration == 2 + 2
    assert saved(models)["epoch"] == 2 and saved(models)["run_identity"]["num_images"] == 6
    engine = pretrain(models, tmp_path / "a", 1, count=4, resume="False")  # as `--resume False` spells it
    assert engine.state.iteration == 2 and saved(models)["epoch"] == 1  # a new run: the count starts again


def test_same_run_resumes_extends_and_says_when_complete(tmp_path, caplog):
    models = tmp_path / "models"
    pretrain(models, tmp_path / "a", 1)
    before = (models / "checkpoint.pt").read_bytes()
    with caplog.at_level(logging.INFO, logger="visionfm_core.ssl.checkpoint"):
        engine = pretrain(models, tmp_path / "a", 1)  # the same command again
    complete = [r for r in caplog.records if "is complete" in r.getMessage()]
    assert len(complete) == 1 and complete[0].levelno == logging.WARNING
    assert "NOTHING was trained" in complete[0].getMessage() and "max_epochs" in complete[0].getMessage()
    assert engine.state.already_complete and engine.state.iteration == 2  # no iteration ran
    assert (models / "checkpoint.pt").read_bytes() == before

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="visionfm_core.ssl.checkpoint"):
        engine = pretrain(models, tmp_path / "a", 3)  # a larger max_epochs continues the run
    assert "resumed from" in caplog.text and "training to max_epochs=3" in caplog.text
    assert not getattr(engine.state, "already_complete", False)
    assert engine.state.iteration == 6 and saved(models)["epoch"] == 3

    with pytest.raises(WeightsError, match=r"recipe base_lr=7.5e-05 \(this run: 0.001\)"):
        pretrain(models, tmp_path / "a", 4, base_lr=1e-3)  # another recipe value is another run


def test_what_counts_as_another_run():
    recipe = {"arch": "vit_tiny", "base_lr": 1e-4, "epochs": 10, "global_crops_scale": (0.32, 1.0), "amp": "auto"}
    ckpt = {"modality": "Fundus", "recipe": recipe, "run_identity": {"dataset_dir": "/data/a", "num_images": 8}}
    same = {"modality": "fundus", "recipe": dict(recipe, epochs=50, amp="bf16", global_crops_scale=[0.32, 1.0]),
            "run_identity": {"dataset_dir": "/data/a", "num_images": 8}}
    assert _run_differences(ckpt, same) == []  # more epochs, another amp, a list for a pair, a modality alias
    other = {"modality": "OCT", "recipe": dict(recipe, base_lr=2e-4), "run_identity": {"dataset_dir": "/data/b"}}
    assert _run_differences(ckpt, other) == ["modality=Fundus (this run: OCT)",
                                             "dataset_dir=/data/a (this run: /data/b)",
                                             "recipe base_lr=0.0001 (this run: 0.0002)"]
    # a checkpoint written before the run identity was recorded is not refused for lacking it
    assert _run_differences({"modality": "Fundus", "recipe": recipe}, same) == []


@pytest.mark.parametrize("word, expected", [("False", False), ("false", False), (None, False), ("true", True),
                                            ("AUTO", "auto"), ("force", "force"), ("/x/ckpt.pt", "/x/ckpt.pt")])
def test_resume_words_from_the_command_line(word, expected):
    assert PretrainingCheckpoint("models", resume=word).resume == expected
