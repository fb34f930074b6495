"""Task training resumes after a kill and never silently replaces another run's model (engine.resume).

The fast tests drive MONAI's SupervisedTrainer/SupervisedEvaluator/CheckpointSaver with `TrainingCheckpoint` on a
tiny network in-process, an exception standing in for the kill; the slow test kills a real bundle run with SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy

from visionfm_core.engine.resume import ResumeError, TrainingCheckpoint, differences, flag, resume_setting

REPO = Path(__file__).resolve().parents[2]


class Killed(Exception):
    pass


def _data(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randn(1, 4, 4, generator=g), "label": torch.tensor(i % 2)} for i in range(n)]


def _run(ckpt_dir: Path, max_epochs: int = 4, resume="auto", kill_at: int | None = None, lr: float = 0.1,
         n_train: int = 8, best_override: float | None = None):
    """One training run into `ckpt_dir`; `kill_at`: raise at the start of that epoch (the checkpoint of the epoch
    before is on disk). Returns (trainer, evaluator, network, epochs this process trained)."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import CheckpointSaver, LrScheduleHandler, ValidationHandler
    from monai.transforms import Compose, RandGaussianNoised
    from monai.utils import set_determinism

    set_determinism(seed=0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2))
    optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    augment = Compose([RandGaussianNoised(keys="image", prob=0.5, std=0.5)])  # its own generator (num_workers=0)
    train_loader = DataLoader(Dataset(_data(n_train), augment), batch_size=2, shuffle=True, num_workers=0)
    val_loader = DataLoader(Dataset(_data(6)), batch_size=3, num_workers=0)
    saver = CheckpointSaver(save_dir=str(ckpt_dir), save_dict={"model": network}, save_key_metric=True,
                            key_metric_filename="model.pt")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=val_loader, network=network, decollate=False,
        key_val_metric={"val_acc": Accuracy(output_transform=lambda o: (o["pred"], o["label"]))},
        val_handlers=[saver])
    ckpt = TrainingCheckpoint(str(ckpt_dir), network, optimizer, resume=resume, lr_scheduler=scheduler,
                              evaluator=evaluator, key_metric_saver=saver, settings={"base_lr": lr})
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=train_loader, network=network,
        optimizer=optimizer, loss_function=torch.nn.CrossEntropyLoss(), decollate=False,
        train_handlers=[ckpt, LrScheduleHandler(scheduler, print_lr=False),
                        ValidationHandler(interval=1, validator=evaluator, epoch_level=True)])
    trained = []

    @trainer.on(Events.EPOCH_STARTED)
    def _log(engine):
        if engine.state.epoch == kill_at:
            raise Killed
        trained.append(engine.state.epoch)

    trainer.run()
    return trainer, evaluator, network, trained


def _tensors(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_a_resumed_run_continues_bit_for_bit(tmp_path):
    _, ev_a, net_a, trained_a = _run(tmp_path / "a")
    with pytest.raises(Killed):
        _run(tmp_path / "b", kill_at=3)
    record = _tensors(tmp_path / "b" / "checkpoint.pt")["visionfm_training"]
    assert record["epoch"] == 2
    trainer, ev_b, net_b, trained_b = _run(tmp_path / "b")
    assert trained_a == [1, 2, 3, 4] and trained_b == [3, 4]  # continued, not restarted
    assert trainer.state.epoch == 4 and trainer.state.iteration == 4 * 4
    for (name, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), name  # the same data order, augmentation and dropout as without the kill
    assert (ev_b.state.best_metric, ev_b.state.best_metric_epoch) == (ev_a.state.best_metric,
                                                                       ev_a.state.best_metric_epoch)
    model_a, model_b = _tensors(tmp_path / "a" / "model.pt"), _tensors(tmp_path / "b" / "model.pt")
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def test_a_resumed_run_replaces_the_best_model_only_with_a_better_one(tmp_path):
    with pytest.raises(Killed):
        _run(tmp_path, kill_at=3)
    # the killed run's best: make it unbeatable (accuracy 2.0), as a very good epoch before the kill would be
    path = tmp_path / "checkpoint.pt"
    state = _tensors(path)
    state["visionfm_training"].update(best_metric=2.0, best_metric_epoch=2, key_metric_saved=[[2.0, "model.pt"]])
    torch.save(state, path)
    before = (tmp_path / "model.pt").read_bytes()
    _, evaluator, _, trained = _run(tmp_path)
    assert trained == [3, 4]
    assert (tmp_path / "model.pt").read_bytes() == before  # epochs 3 and 4 were worse: model.pt kept
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (2.0, 2)


def test_a_best_model_lost_in_the_kill_is_written_again(tmp_path):
    with pytest.raises(Killed):
        _run(tmp_path, kill_at=3)
    (tmp_path / "model.pt").unlink()  # MONAI's saver writes model.pt in place: a kill mid-write loses it
    _run(tmp_path)
    assert (tmp_path / "model.pt").is_file()


def test_a_finished_run_started_again_trains_nothing(tmp_path, caplog):
    _run(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with caplog.at_level(logging.WARNING, logger="visionfm_core.engine.resume"):
        trainer, _, _, trained = _run(tmp_path)
    assert trained == [] and trainer.state.epoch == 4
    lines = [r.getMessage() for r in caplog.records if "is complete" in r.getMessage()]
    assert len(lines) == 1 and "NOTHING was trained" in lines[0] and "max_epochs" in lines[0]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    _, _, _, trained = _run(tmp_path, max_epochs=6)  # a larger max_epochs extends it
    assert trained == [5, 6]


def test_another_run_is_refused_naming_the_differences_and_the_ways_out(tmp_path, caplog):
    with pytest.raises(Killed):
        _run(tmp_path, kill_at=3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ResumeError) as e:
        _run(tmp_path, lr=0.2)
    message = str(e.value)
    assert "base_lr=0.1 (this run: 0.2)" in message
    assert "--resume False" in message and "--ckpt_dir" in message and "--resume force" in message
    with pytest.raises(ResumeError, match=r"training data items=8 \(this run: 9\)"):
        _run(tmp_path, n_train=9)
    with pytest.raises(ResumeError, match="would replace it.*--ckpt_dir.*--resume force"):
        _run(tmp_path, resume=False)  # a new run over a trained model.pt
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written by a refused run
    with caplog.at_level(logging.WARNING, logger="visionfm_core.engine.resume"):
        _, _, _, trained = _run(tmp_path, lr=0.2, resume="force")
    assert trained == [3, 4] and any("as asked (--resume force)" in r.getMessage() for r in caplog.records)


def test_a_model_without_its_run_record_is_not_replaced(tmp_path):
    _run(tmp_path, max_epochs=1)
    (tmp_path / "checkpoint.pt").unlink()
    before = (tmp_path / "model.pt").read_bytes()
    with pytest.raises(ResumeError, match="checkpoint.pt .*is missing"):
        _run(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint.pt does not exist"):
        _run(tmp_path, resume=True)
    assert (tmp_path / "model.pt").read_bytes() == before
    _, _, _, trained = _run(tmp_path, max_epochs=2, resume="force")  # replaced, as asked
    assert trained == [1, 2]


def test_settings_words_and_differences():
    assert [resume_setting(v) for v in ("False", "true", "AUTO", "force", None, True)] == [
        False, True, "auto", "force", False, True]
    assert flag("true") is True and flag("False") is False and flag(0) is False
    with pytest.raises(ValueError, match="overwrite must be true or false"):
        flag("maybe", "overwrite")
    assert differences({"a": (1, 2), "b": 3, "old": 1}, {"a": [1, 2], "b": 4, "new": 2}) == ["b=3 (this run: 4)"]


# ---------------------------------------------------------------------------------------------------------------
# a real bundle run killed with SIGKILL
# ---------------------------------------------------------------------------------------------------------------
BUNDLE = REPO / "bundles" / "fundus_dr_classification"
EPOCHS, KILL_AFTER = 6, 3


def _bundle_command(data: Path, out: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json",
            "--logging_file", "configs/logging.conf", "--dataset_dir", str(data),
            "--datalist", str(data / "datalist.json"), "--ckpt_dir", str(out / "models"),
            "--output_dir", str(out / "runs"), "--arch", "vit_tiny", "--image_size", "32", "--batch_size", "4",
            "--num_workers", "0", "--train::trainer::max_epochs", str(epochs), *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "VISIONFM_PROGRESS": "off"}


def _epoch_metrics(log: str) -> dict[int, float]:
    """{epoch: val_auroc} from the validation StatsHandler lines of a bundle log."""
    import re

    return {int(m[1]): float(m[2]) for m in re.finditer(r"Epoch\[(\d+)\] Metrics -- val_accuracy.*?val_auroc: ([\d.]+)",
                                                          log)}


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["visionfm_training"]["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return 0


@pytest.mark.slow
def test_a_bundle_killed_with_sigkill_resumes_where_it_stopped(tmp_path):
    from visionfm_core.data import write_demo_dataset

    data = tmp_path / "data"
    write_demo_dataset(data, per_class=4, size=48, num_classes=5)
    env = _env()
    # the uninterrupted reference run
    ref = subprocess.run(_bundle_command(data, tmp_path / "ref"), cwd=BUNDLE, env=env, capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_metrics = _epoch_metrics(ref.stdout + ref.stderr)
    assert sorted(ref_metrics) == list(range(1, EPOCHS + 1))

    # the same run, killed with SIGKILL once the checkpoint of epoch KILL_AFTER is on disk
    out = tmp_path / "killed"
    ckpt = out / "models" / "checkpoint.pt"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(_bundle_command(data, out), cwd=BUNDLE, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while _checkpoint_epoch(ckpt) < KILL_AFTER and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _checkpoint_epoch(ckpt)
    assert KILL_AFTER <= killed_at < EPOCHS
    killed_metrics = _epoch_metrics((tmp_path / "killed.log").read_text())
    best_before = max(v for e, v in killed_metrics.items() if e <= killed_at)

    # started again: continues from the next epoch, not from epoch 1
    again = subprocess.run(_bundle_command(data, out), cwd=BUNDLE, env=env, capture_output=True, text=True,
                           timeout=600)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert f"after epoch {killed_at}" in log and f"training epochs {killed_at + 1} to {EPOCHS}" in log
    resumed_metrics = _epoch_metrics(log)
    assert sorted(resumed_metrics) == list(range(killed_at + 1, EPOCHS + 1))
    # deterministic on one machine: the epochs after the kill give what the uninterrupted run gave
    assert all(resumed_metrics[e] == ref_metrics[e] for e in resumed_metrics), (resumed_metrics, ref_metrics)
    saved = torch.load(ckpt, weights_only=True)["visionfm_training"]
    assert saved["best_metric"] >= best_before
    assert saved["best_metric"] == max(ref_metrics.values())
    model, ref_model = (torch.load(p / "models" / "model.pt", weights_only=True) for p in (out, tmp_path / "ref"))
    assert all(torch.equal(model[k], ref_model[k]) for k in ref_model)
    print(f"\nkilled after epoch {killed_at}; val_auroc reference {ref_metrics}, killed run {killed_metrics}, "
          f"resumed {resumed_metrics}; best {saved['best_metric']} at epoch {saved['best_metric_epoch']}")

    # another configuration into the same folder: refused, naming the setting, nothing written
    before = {p.name: p.read_bytes() for p in (out / "models").iterdir()}
    other = subprocess.run(_bundle_command(data, out, "--base_lr", "0.01"), cwd=BUNDLE, env=env,
                           capture_output=True, text=True, timeout=600)
    assert other.returncode != 0
    assert "base_lr=0.001 (this run: 0.01)" in other.stdout + other.stderr
    assert {p.name: p.read_bytes() for p in (out / "models").iterdir()} == before


@pytest.mark.slow
def test_two_processes_resume_from_the_checkpoint_rank_0_wrote(tmp_path):
    from visionfm_core.data import write_demo_dataset

    data = tmp_path / "data"
    write_demo_dataset(data, per_class=2, size=48, num_classes=5)
    configs = BUNDLE / "configs"

    def torchrun(epochs: int) -> str:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
               "-m", "monai.bundle", "run", "--config_file",
               f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']",
               *_bundle_command(data, tmp_path, epochs=epochs)[6:]]
        result = subprocess.run(cmd, cwd=BUNDLE, env={**_env(), "OMP_NUM_THREADS": "1"}, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    torchrun(1)
    log = torchrun(2)
    assert log.count("after epoch 1") == 2  # both ranks continued the same run
    state = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert state["visionfm_training"]["epoch"] == 2
    assert not any(k.startswith("module.") for k in state["network"])  # the bare network, loadable anywhere
