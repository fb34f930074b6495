"""The eight iBOT pretraining bundles: generated from one description, resumable, distributed, exportable."""

import json
import os
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser, run

from visionfm_core import build_encoder, load_encoder_weights
from visionfm_core.data import write_phantom_folder
from visionfm_core.ssl import DINOClsLoss, IBOTPatchLoss, IBOTRecipe, PretrainingCheckpoint, knn_accuracy

from bundle_harness import REPO, TINY
from tests_common import assert_close_to_scale, chain_text

sys.path.insert(0, str(REPO / "scripts"))
from bundlegen import pretraining  # noqa: E402

FOLDERS = ["fundus", "oct", "ffa", "slitlamp", "external", "ultrasound", "ubm", "mri"]
FUNDUS = REPO / "bundles" / "fundus_ibot_pretraining" / "configs"
SMALL = {**TINY, "out_dim": 64, "warmup_epochs": 0, "num_workers": 0}


def test_committed_bundles_match_their_description():
    # this family only; tests/bundles/test_generated_bundles.py runs `scripts/generate_bundles.py --check` over all of them
    described = pretraining.bundles()
    assert sorted(described) == sorted(p.name for p in (REPO / "bundles").glob("*_ibot_pretraining")) == sorted(
        f"{f}_ibot_pretraining" for f in FOLDERS)
    stale = [f"{name}/{rel}" for name, files in described.items() for rel, text in files.items()
             if not (REPO / "bundles" / name / rel).is_file() or (REPO / "bundles" / name / rel).read_text() != text]
    assert not stale, f"out of date (run python scripts/generate_bundles.py): {stale}"
    oct_cfg = json.loads((REPO / "bundles" / "oct_ibot_pretraining" / "configs" / "train.json").read_text())
    fundus_cfg = json.loads((FUNDUS / "train.json").read_text())
    differing = {k for k in fundus_cfg if fundus_cfg[k] != oct_cfg[k]}
    assert differing == {"modality", "dataset_dir"}  # the bundles differ only in what differs between modalities


def parsed(config, **overrides):
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update(overrides)  # before parsing, as `monai.bundle run` does: `%` macros copy at parse time
    return parser


def test_train_config_is_the_recipe_and_its_overrides():
    parser = parsed(FUNDUS / "train.json")
    assert parser.get_parsed_content("recipe") == IBOTRecipe()  # written from the dataclass, not retyped
    assert parser["train"]["trainer"]["max_epochs"] == IBOTRecipe().epochs
    assert parser["train"]["trainer"]["_target_"] == "visionfm_core.ssl.build_ibot_trainer"
    [checkpoint] = [h for h in parser.get_parsed_content("train::handlers") if isinstance(h, PretrainingCheckpoint)]
    assert checkpoint.save is True

    parser = parsed(FUNDUS / "train.json", base_lr=1e-4, mask_ratio_range=[0.2, 0.4], image_size=32,
                    **{"train::checkpoint::save": False})
    recipe = parser.get_parsed_content("recipe")
    assert (recipe.base_lr, recipe.mask_ratio_range, parser.get_parsed_content("load_size")) == (1e-4, (0.2, 0.4), 64)
    [checkpoint] = [h for h in parser.get_parsed_content("train::handlers") if isinstance(h, PretrainingCheckpoint)]
    assert checkpoint.save is False  # the override of the handler's own id reaches the list


def train(tmp_path, folder, config="train.json", **overrides):
    run(config_file=str(FUNDUS / config), logging_file=str(FUNDUS / "logging.conf"), dataset_dir=str(folder),
        ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"), **{**SMALL, **overrides})


def test_resume_after_a_hard_kill_mid_epoch(tmp_path):
    # resuming is checked, not the recipe: a tiny run may look collapsed after one epoch, so the check is off
    folder = write_phantom_folder(tmp_path / "images", "Fundus", count=12, size=48)  # 3 iterations per epoch
    script = (
        "import sys; sys.path.insert(0, 'tests'); from monai.bundle import run; "
        f"run(config_file='{FUNDUS / 'train.json'}', dataset_dir='{folder}', ckpt_dir='{tmp_path / 'models'}', "
        f"output_dir='{tmp_path / 'runs'}', save_every_iterations=1, stop_on_collapse=False, "
        "**{'train::trainer::max_epochs': 2, 'train::progress': "  # a crash in the progress bar's place
        "{'_target_': 'crash_handler.CrashAt', 'iteration': 4}}, "
        + ", ".join(f"{k}={v!r}" for k, v in SMALL.items()) + ")"
    )
    killed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr[-2000:]
    ckpt = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert ckpt["visionfm_pretraining"]["iteration"] == 4 and ckpt["trainer"]["iteration"] == 4  # mid-epoch 2
    teacher_at_kill = ckpt["teacher"]
    assert not list((tmp_path / "models").glob(".*tmp"))  # no half-written file left behind

    train(tmp_path, folder, save_every_iterations=1, stop_on_collapse=False, **{"train::trainer::max_epochs": 2})
    final = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 6 and final["visionfm_pretraining"]["epoch"] == 2
    steps = {int(s["step"]) for s in final["optimizer"]["state"].values()}
    assert steps == {6}  # AdamW continued from step 4, not from 0
    changed = [k for k, v in final["teacher"].items() if not torch.equal(v, teacher_at_kill[k])]
    assert changed, "the teacher did not continue training after the resume"
    encoder = build_encoder("vit_tiny", img_size=32)
    report = load_encoder_weights(encoder, tmp_path / "models" / "encoder.pt")
    assert torch.equal(encoder.cls_token, final["teacher"]["backbone.cls_token"])
    assert report.entry == "state_dict"


def test_resume_from_another_architecture_is_refused(tmp_path):
    folder = write_phantom_folder(tmp_path / "images", "Fundus", count=8, size=48)
    train(tmp_path, folder, **{"train::trainer::max_epochs": 1})
    before = (tmp_path / "models" / "checkpoint.pt").read_bytes()
    with pytest.raises(Exception) as info:
        train(tmp_path, folder, arch="vit_small", resume=True, **{"train::trainer::max_epochs": 2})
    assert "cannot resume" in chain_text(info.value) and "arch=vit_tiny (this run: vit_small)" in chain_text(info.value)
    assert (tmp_path / "models" / "checkpoint.pt").read_bytes() == before  # the last good checkpoint is kept


def test_empty_folder_and_wrong_modality_stop_before_training(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception) as info:
        train(tmp_path, tmp_path / "empty", **{"train::trainer::max_epochs": 1})
    assert "empty" in chain_text(info.value)
    fundus = write_phantom_folder(tmp_path / "fundus", "Fundus", count=4, size=48)
    oct_configs = REPO / "bundles" / "oct_ibot_pretraining" / "configs"
    with pytest.raises(Exception) as info:
        run(config_file=str(oct_configs / "train.json"), dataset_dir=fundus, ckpt_dir=str(tmp_path / "m"),
            output_dir=str(tmp_path / "r"), **SMALL)
    assert "colour photographs" in chain_text(info.value) and "OCT" in chain_text(info.value)
    assert not (tmp_path / "models").exists() and not (tmp_path / "m").exists()


def test_start_from_original_weights_and_feed_the_task_bundle(tmp_path):
    torch.manual_seed(0)
    original = build_encoder("vit_tiny", img_size=32)
    ckpt = {"teacher": {f"backbone.{k}": v for k, v in original.state_dict().items()}, "epoch": 400}
    torch.save(ckpt, tmp_path / "VFM_Fundus_weights.pth")
    folder = write_phantom_folder(tmp_path / "images", "Fundus", count=8, size=48)
    parser = ConfigParser()
    parser.read_config(str(FUNDUS / "train.json"))
    parser.update({**SMALL, "dataset_dir": str(folder), "init_weights": str(tmp_path / "VFM_Fundus_weights.pth")})
    trainer = parser.get_parsed_content("train::trainer")
    assert torch.equal(trainer.student.backbone.blocks[3].mlp.fc1.weight, original.blocks[3].mlp.fc1.weight)
    assert torch.equal(trainer.teacher.backbone.pos_embed, original.pos_embed)

    train(tmp_path, folder, init_weights=str(tmp_path / "VFM_Fundus_weights.pth"), **{"train::trainer::max_epochs": 1})
    task = ConfigParser()
    task.read_config(str(REPO / "bundles" / "fundus_dr_classification" / "configs" / "train.json"))
    task.update({**TINY, "pretrained_encoder": str(tmp_path / "models" / "encoder.pt")})
    network = task.get_parsed_content("network_def")
    exported = torch.load(tmp_path / "models" / "encoder.pt", weights_only=True)
    assert exported["visionfm_encoder"]["modality"] == "Fundus"
    assert torch.equal(network.encoder.norm.weight, exported["state_dict"]["norm.weight"])


def test_knn_probe_on_separable_embeddings():
    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 5
    labels = torch.arange(3).repeat(10)
    feats = centres[labels] + torch.randn(30, 16) * 0.1
    assert knn_accuracy(feats[:15], labels[:15], feats[15:], labels[15:], k=5) == 1.0
    shuffled = labels[torch.randperm(30)]
    assert knn_accuracy(torch.randn(15, 16), shuffled[:15], torch.randn(15, 16), shuffled[15:], k=5) < 1.0


@pytest.mark.slow
def test_two_processes_give_the_same_centre_update_as_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "dist_center_check.py"), str(tmp_path / "centres.pt")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two = torch.load(tmp_path / "centres.pt", weights_only=True)
    torch.manual_seed(0)
    cls_logits, patch_logits = torch.randn(8, 32), torch.randn(12, 32)
    cls_loss, patch_loss = DINOClsLoss(32), IBOTPatchLoss(32)
    cls_loss.update_center(cls_logits)
    patch_loss.update_center(patch_logits)
    cls_loss.apply_center_update()
    patch_loss.apply_center_update()
    assert_close_to_scale(two["cls"], cls_loss.center)
    assert_close_to_scale(two["patch"], patch_loss.center)
    assert not torch.allclose(cls_loss.center, torch.zeros_like(cls_loss.center))


@pytest.mark.slow
def test_multi_process_pretraining_with_torchrun_on_cpu(tmp_path):
    folder = write_phantom_folder(tmp_path / "images", "Fundus", count=16, size=48)
    args = [f"--{k}={v}" for k, v in SMALL.items()] + [
        f"--dataset_dir={folder}", f"--ckpt_dir={tmp_path / 'models'}", f"--output_dir={tmp_path / 'runs'}",
        "--train::trainer::max_epochs=1", f"--logging_file={FUNDUS / 'logging.conf'}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
           "run", "--config_file", f"['{FUNDUS / 'train.json'}','{FUNDUS / 'multi_gpu_train.json'}']", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2  # 16 images / (2 processes x 4) per epoch
    assert not any(k.startswith("module.") for k in ckpt["student"])


def test_knn_probe_runs_in_the_bundle_when_a_labelled_set_is_given(tmp_path):
    from monai.bundle import ConfigWorkflow

    from visionfm_core.data import write_demo_dataset

    folder = write_phantom_folder(tmp_path / "images", "Fundus", count=8, size=48)
    labelled = write_demo_dataset(tmp_path / "labelled", per_class=2, size=48, num_classes=2)
    workflow = ConfigWorkflow(config_file=str(FUNDUS / "train.json"), workflow_type="train", dataset_dir=folder,
                              ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"),
                              knn_datalist=labelled, stop_on_collapse=False,
                              **{**SMALL, "train::trainer::max_epochs": 1})
    workflow.initialize()
    workflow.run()
    metrics = workflow.parser.get_parsed_content("train::trainer").state.metrics
    assert 0.0 <= metrics["knn_top1"] <= 1.0
    assert {"epoch_loss", "epoch_teacher_entropy", "epoch_kl_teacher_student"} <= set(metrics)
