"""Progress and run tracking: a bar on a terminal, plain log lines with rate and ETA elsewhere; TensorBoard logs by
default and MLflow through MONAI's `--tracking mlflow` with a local store."""

import io
import logging

import pytest
import torch
from ignite.engine import Engine

from bundle_harness import REPO, TINY, config, make_data
from visionfm_core.engine.progress import Progress, progress_iter, progress_mode


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_log_lines_elsewhere_and_the_environment_decides(monkeypatch):
    monkeypatch.delenv("VISIONFM_PROGRESS", raising=False)
    assert progress_mode(stream=_Terminal()) == "bar"
    assert progress_mode(stream=io.StringIO()) == "log"
    monkeypatch.setenv("VISIONFM_PROGRESS", "log")
    assert progress_mode(stream=_Terminal()) == "log"
    assert progress_mode("off", stream=_Terminal()) == "off"  # the config's explicit choice wins
    monkeypatch.setenv("VISIONFM_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="VISIONFM_PROGRESS 'fancy'"):
        progress_mode(stream=io.StringIO())
    with pytest.raises(ValueError, match="mode 'loud'"):
        Progress(mode="loud")


def test_log_lines_say_where_the_run_is_its_rate_and_eta(monkeypatch, caplog):
    monkeypatch.setenv("VISIONFM_PROGRESS", "log")
    engine = Engine(lambda e, batch: None)
    Progress(every_s=0, name="trainer").attach(engine)
    with caplog.at_level(logging.INFO, logger="visionfm_core.engine.progress"):
        engine.run(range(4), max_epochs=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "visionfm_core.engine.progress"]
    assert "trainer epoch 1/3: 2/4 iterations (50 %)" in lines[1]
    assert "it/s" in lines[1] and "epoch ETA" in lines[1] and "run ETA" in lines[1]
    done = [line for line in lines if " done: " in line]
    assert len(done) == 3 and done[0].startswith("trainer epoch 1/3 done: 4 iterations in")
    assert "run ETA" in done[0] and "run ETA" not in done[-1]  # nothing left after the last epoch


def test_a_terminal_gets_the_tqdm_bar_and_off_attaches_nothing(monkeypatch):
    from ignite.handlers import ProgressBar

    for mode, expected in (("bar", 1), ("off", 0)):
        engine = Engine(lambda e, batch: None)
        before = sum(len(v) for v in engine._event_handlers.values())
        Progress(mode=mode).attach(engine)
        handlers = [h for v in engine._event_handlers.values() for h, *_ in v]
        bars = [h for h in handlers if isinstance(getattr(h, "__self__", None), ProgressBar)
                or "ProgressBar" in repr(h)]
        assert (len(bars) > 0) == bool(expected), mode
        if not expected:
            assert sum(len(v) for v in engine._event_handlers.values()) == before


def test_progress_iter_yields_everything_and_reports_the_end(monkeypatch, caplog):
    monkeypatch.setenv("VISIONFM_PROGRESS", "log")
    with caplog.at_level(logging.INFO, logger="visionfm_core.engine.progress"):
        assert list(progress_iter(range(5), desc="export check", every_s=0)) == list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert "export check: 3/5 batches (60 %)" in lines[2] and "ETA" in lines[2]
    assert lines[-1].startswith("export check done: 5 batches in")


@pytest.mark.slow
def test_training_logs_to_tensorboard_by_default_and_to_mlflow_when_asked(tmp_path, monkeypatch):
    """`--tracking mlflow` (MONAI's standard option) with a local SQLite store: the run, its training loss and the
    validation metric are recorded; the TensorBoard event files are written as always."""
    mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is part of the dev extra (scripts/setup.sh)")
    from monai.bundle import run

    monkeypatch.setenv("VISIONFM_PROGRESS", "log")
    bundle = REPO / "bundles" / "fundus_vessel_segmentation"
    spec = make_data(bundle, tmp_path)
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run(config_file=config(bundle, "train"), logging_file=str(bundle / "configs" / "logging.conf"), **TINY,
        **spec["train"], ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"),
        **{"train::trainer::max_epochs": 2}, tracking="mlflow", tracking_uri=store, experiment_name="vessels")
    assert list((tmp_path / "runs").glob("events.out.tfevents.*")), "no TensorBoard event file"
    client = mlflow.tracking.MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "vessels"]
    runs = client.search_runs([experiment.experiment_id])
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    metrics = {k for r in runs for k in r.data.metrics}
    assert {"train_loss", "val_mean_dice"} <= metrics, metrics
    (validated,) = [r for r in runs if "val_mean_dice" in r.data.metrics]
    history = client.get_metric_history(validated.info.run_id, "val_mean_dice")
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(m.value)) for m in history)
