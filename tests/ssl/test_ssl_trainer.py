"""IBOTTrainer: iterations, EMA, freeze, collapse detection, NaN handling, resume, MONAI handlers."""

import copy
import math

import numpy as np
import pytest
import torch
from ignite.engine import Events

from visionfm_core.ssl import BlockMaskGenerator, IBOTRecipe, IBOTTrainer, build_ibot_trainer

OUT_DIM = 64
BATCH = 4


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models gain nothing from threads, and oversubscribed CI machines lose a lot
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n_batches=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(BATCH, 3, 40, 40, generator=g)} for _ in range(n_batches)]


def make_trainer(
    data=None, epochs=2, lr=1e-3, momentum=0.996, warmup_epochs=0, n_local=1, drop_path=0.0, **kw
) -> IBOTTrainer:
    """A ViT-Tiny trainer at 32 px with a constant lr, through the one builder; `kw` are recipe fields or
    builder options."""
    torch.manual_seed(0)
    data = _data() if data is None else data
    settings = dict(
        arch="vit_tiny",
        image_size=32,
        local_size=16,
        n_local=n_local,
        out_dim=OUT_DIM,
        hidden_dim=64,
        bottleneck_dim=32,
        drop_path_rate=drop_path,
        batch_size=BATCH,
        base_lr=lr * 256 / BATCH,
        min_lr=lr,
        warmup_epochs=warmup_epochs,
        momentum_teacher=momentum,
        momentum_teacher_end=momentum if momentum == 1.0 else 1.0,
        warmup_teacher_temp_epochs=1,
        freeze_last_layer_epochs=0,
        mask_min_num_patches=1,
        prob_no_mask=0.25,
    )
    return build_ibot_trainer(data, "Fundus", max_epochs=epochs, **{**settings, **kw})


def _record(trainer):
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output[0])))
    return outputs


def test_iterations_output_and_schedules():
    trainer = make_trainer(epochs=2)
    outputs = _record(trainer)
    trainer.run()
    assert trainer.state.iteration == 4 and len(outputs) == 4
    expected_keys = {"loss", "cls_loss", "patch_loss", "lr", "wd", "momentum", "teacher_temp", "teacher_entropy"}
    assert expected_keys | {"kl_teacher_student"} <= set(outputs[0])
    for i, out in enumerate(outputs):
        assert all(math.isfinite(v) for v in out.values())
        at = trainer.schedules.at(i)
        assert (out["lr"], out["wd"], out["momentum"]) == (at.lr, at.weight_decay, at.momentum)
        assert (out["teacher_temp"], out["patch_teacher_temp"]) == (at.teacher_temp, at.patch_teacher_temp)
        assert out["loss"] == pytest.approx(out["cls_loss"] + out["patch_loss"], rel=1e-5)
        assert out["kl_teacher_student"] >= -1e-4
    assert trainer.optimizer.param_groups[0]["weight_decay"] == outputs[-1]["wd"]
    assert trainer.optimizer.param_groups[1]["weight_decay"] == 0.0
    assert outputs[0]["teacher_temp"] == pytest.approx(0.07) and outputs[-1]["teacher_temp"] == pytest.approx(0.04)
    assert trainer.state.collapse is None


def test_loss_falls_on_a_fixed_batch():
    # a stationary problem: same crops and masks every iteration, frozen teacher (momentum 1), fixed
    # centre and temperatures; the student must then fit the teacher's targets
    data = _data(1)
    trainer = make_trainer(
        data=data,
        epochs=10,
        lr=3e-4,
        n_local=0,
        momentum=1.0,
        warmup_teacher_temp=0.04,
        teacher_temp=0.04,
        warmup_teacher_patch_temp=0.07,
        teacher_patch_temp=0.07,
        center_momentum=1.0,
    )
    fixed_crops = trainer.augmentation(data[0]["image"], generator=0)
    fixed_masks = trainer.mask_generator.batch(2 * BATCH, np.random.default_rng(0))
    assert fixed_masks.any()
    trainer.augmentation = lambda images, generator=None: fixed_crops
    trainer.mask_generator = type("Fixed", (), {"batch": lambda self, n, g=None: fixed_masks})()
    outputs = _record(trainer)
    trainer.run()
    losses = [o["loss"] for o in outputs]
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    assert outputs[-1]["patch_loss"] < outputs[0]["patch_loss"], losses


def test_teacher_is_ema_of_student():
    trainer = make_trainer(epochs=1, momentum=0.9)
    student, teacher = trainer.student, trainer.teacher
    snapshot = {}

    @trainer.on(Events.ITERATION_STARTED)
    def _before(engine):
        snapshot["teacher"] = copy.deepcopy(teacher.state_dict())

    @trainer.on(Events.ITERATION_COMPLETED)
    def _after(engine):
        m = engine.state.output[0]["momentum"]
        s = student.state_dict()
        for k, v in teacher.state_dict().items():
            torch.testing.assert_close(v, m * snapshot["teacher"][k] + (1 - m) * s[k], atol=1e-6, rtol=1e-5)
        snapshot["checked"] = snapshot.get("checked", 0) + 1

    trainer.run()
    assert snapshot["checked"] == 2
    assert not torch.equal(teacher.backbone.blocks[0].attn.qkv.weight, student.backbone.blocks[0].attn.qkv.weight)


def test_last_layer_frozen_for_first_epochs():
    trainer = make_trainer(epochs=2, freeze_last_layer_epochs=1)
    v = trainer.student.head.last_layer.weight_v
    start = v.detach().clone()
    seen = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: seen.update(epoch1=v.detach().clone()))
    trainer.run()
    assert torch.equal(seen["epoch1"], start)  # untouched (no AdamW step, no weight decay) in epoch 1
    assert not torch.equal(v, start)  # trained from epoch 2
    assert torch.all(trainer.student.head.last_layer.weight_g == 1)  # the gain never moves


def _collapse_heads(trainer, one_hot=False):
    """Put both heads in a collapsed state that training cannot leave on its own."""
    with torch.no_grad():
        for model in (trainer.student, trainer.teacher):
            v = model.head.last_layer.weight_v
            if not one_hot:
                # identical prototypes: every logit equal, output exactly uniform; all rows get the same
                # gradient, so the symmetry (and the collapse) survives training
                v.copy_(v[:1].expand_as(v))
            else:
                # constant bottleneck e0; prototype 0 = e0, all others orthogonal to it: cosine 1 vs 0
                mlp4 = model.head.mlp[4]
                mlp4.weight.zero_()
                mlp4.bias.zero_()
                mlp4.bias[0] = 1.0
                v[:, 0] = 0.0
                v[0] = 0.0
                v[0, 0] = 1.0


def test_uniform_collapse_detected_and_stops():
    trainer = make_trainer(epochs=3, collapse_check_from_epoch=0)
    _collapse_heads(trainer)
    outputs = _record(trainer)
    with pytest.warns(RuntimeWarning, match="Uniform collapse"):
        trainer.run()
    assert trainer.state.epoch == 1 and len(outputs) == 2  # stopped after the first epoch
    assert outputs[0]["cls_loss"] == pytest.approx(math.log(OUT_DIM), rel=1e-4)
    assert "lower teacher temperature" in trainer.state.collapse


def test_uniform_check_waits_for_warmup_and_can_continue():
    trainer = make_trainer(epochs=2, warmup_epochs=1, stop_on_collapse=False)
    assert trainer.collapse_check_from_epoch == 1
    _collapse_heads(trainer)
    with pytest.warns(RuntimeWarning, match="Continuing"):
        trainer.run()
    assert trainer.state.epoch == 2 and trainer.state.collapse.startswith("Uniform collapse suspected after epoch 2")


def test_one_hot_collapse_detected():
    trainer = make_trainer(epochs=3, momentum=1.0)
    _collapse_heads(trainer, one_hot=True)
    outputs = _record(trainer)
    with pytest.warns(RuntimeWarning, match="One-hot collapse"):
        trainer.run()
    assert trainer.state.epoch == 1
    assert outputs[0]["teacher_entropy"] < 0.01 * math.log(OUT_DIM)


def test_nan_loss_raises_naming_iteration_and_keeps_last_checkpoint(tmp_path):
    from monai.handlers import CheckpointSaver

    trainer = make_trainer(epochs=2)
    CheckpointSaver(str(tmp_path), trainer.checkpoint_dict(), save_interval=1, n_saved=None).attach(trainer)
    saved = {}

    @trainer.on(Events.ITERATION_STARTED(once=3))
    def _poison(engine):
        saved["teacher"] = copy.deepcopy(engine.teacher.state_dict())
        saved["center"] = engine.cls_loss.center.clone()
        saved["patch_center"] = engine.patch_loss.center.clone()
        with torch.no_grad():
            engine.student.head.mlp[0].weight[0, 0] = float("nan")

    with pytest.raises(FloatingPointError, match="iteration 3 \\(epoch 2\\)"):
        trainer.run()
    # nothing was updated by the failing iteration
    for k, v in trainer.teacher.state_dict().items():
        assert torch.equal(v, saved["teacher"][k])
    assert torch.equal(trainer.cls_loss.center, saved["center"])
    assert torch.equal(trainer.patch_loss.center, saved["patch_center"])
    # the checkpoint of epoch 1 is intact and finite
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 1 and "epoch=1" in files[0].name
    ckpt = torch.load(files[0], weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values())
    assert ckpt["trainer"]["iteration"] == 2


def test_resume_continues_schedules_and_matches_uninterrupted_run(tmp_path):
    from monai.handlers import CheckpointLoader, CheckpointSaver

    straight = make_trainer(epochs=2)
    straight.run()

    first = make_trainer(epochs=2)
    first.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())
    CheckpointSaver(str(tmp_path), first.checkpoint_dict(), save_interval=1).attach(first)
    first.run()
    ckpt = next(tmp_path.glob("*.pt"))

    resumed = make_trainer(epochs=2)
    CheckpointLoader(str(ckpt), resumed.checkpoint_dict()).attach(resumed)
    outputs = _record(resumed)
    resumed.run()
    assert resumed.state.iteration == 4 and len(outputs) == 2
    assert outputs[0]["lr"] == resumed.schedules.at(2).lr and outputs[0]["momentum"] == resumed.schedules.at(2).momentum
    for a, b in ((straight.student, resumed.student), (straight.teacher, resumed.teacher)):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(v, w, atol=1e-6, rtol=1e-5, msg=k)
    torch.testing.assert_close(straight.cls_loss.center, resumed.cls_loss.center)
    torch.testing.assert_close(straight.patch_loss.center, resumed.patch_loss.center)


def test_monai_stats_and_tensorboard_handlers(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from monai.handlers import StatsHandler, TensorBoardStatsHandler
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(
        epochs=1,
        train_handlers=[
            StatsHandler(name="ibot_test", tag_name="train_loss"),
            TensorBoardStatsHandler(log_dir=str(tmp_path)),
        ],
    )
    trainer.run()
    logged = capsys.readouterr()
    logged = logged.out + logged.err
    assert "cls_loss" in logged and "teacher_entropy" in logged and "kl_teacher_student" in logged
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "cls_loss", "patch_loss", "lr", "teacher_entropy", "kl_teacher_student"} <= tags
    assert len(acc.Scalars("loss")) == 2


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_step(amp):
    trainer = make_trainer(data=_data(1), epochs=1, amp=amp)
    assert (trainer.scaler is not None) == (amp == "fp16")
    outputs = _record(trainer)
    trainer.run()
    assert all(math.isfinite(o["loss"]) for o in outputs)
    if amp == "fp16":
        assert "scaler" in trainer.checkpoint_dict()


def test_mask_grid_mismatch_is_explained():
    trainer = make_trainer(epochs=1)
    trainer.mask_generator = BlockMaskGenerator(14)
    with pytest.raises(ValueError, match="grid = global crop size // patch size"):
        trainer.run()


def test_build_ibot_trainer_from_a_data_loader():
    from torch.utils.data import DataLoader

    loader = DataLoader([{"image": torch.rand(3, 40, 40)} for _ in range(4)], batch_size=2)
    trainer = build_ibot_trainer(
        loader, "OCT", max_epochs=1, arch="vit_tiny", image_size=32, local_size=16, n_local=1, out_dim=OUT_DIM,
        warmup_epochs=0,
    )  # fmt: skip
    assert trainer.schedules.lr[0] == pytest.approx(7.5e-5 * 2 / 256)  # batch size read from the loader
    assert trainer.mask_generator.num_patches == 4
    assert trainer.recipe == IBOTRecipe(arch="vit_tiny", image_size=32, local_size=16, n_local=1, out_dim=OUT_DIM,
                                        warmup_epochs=0, epochs=1)
    assert trainer.state.max_epochs == 1 and trainer.modality == "OCT"
    outputs = _record(trainer)
    trainer.run()
    assert len(outputs) == 2 and all(math.isfinite(o["loss"]) for o in outputs)


def test_every_part_is_made_from_the_recipe():
    trainer = make_trainer(epochs=3, student_temp=0.2, center_momentum=0.8, mask_ratio_range=[0.2, 0.4])
    r = trainer.recipe
    assert r.mask_ratio_range == (0.2, 0.4)  # a JSON list becomes the recipe's pair
    assert trainer.state.max_epochs == r.epochs == 3 and len(trainer.schedules) == 3 * 2
    for loss in (trainer.cls_loss, trainer.patch_loss):
        assert (loss.out_dim, loss.student_temp, loss.center_momentum) == (OUT_DIM, 0.2, 0.8)
    m = trainer.mask_generator
    assert (m.height, m.ratio_range, m.prob_no_mask, m.min_num_patches) == (2, (0.2, 0.4), 0.25, 1)
    assert trainer.augmentation.n_local == 1 and trainer.augmentation.views[2].size == 16
    assert trainer.student.head.last_layer.weight_v.shape == (OUT_DIM, 32)
    # amp "auto" on the CPU: bf16 where it is native, fp32 elsewhere; never a grad scaler
    from visionfm_core.engine.precision import cpu_has_native_bf16

    assert trainer.amp_dtype == (torch.bfloat16 if cpu_has_native_bf16() else None) and trainer.scaler is None


def test_builder_refuses_unknown_settings():
    with pytest.raises(ValueError, match="unknown iBOT recipe setting.*'learning_rate'"):
        make_trainer(learning_rate=1e-3)
    with pytest.raises(ValueError, match="max_epochs=2 and epochs=3"):
        build_ibot_trainer(_data(), "Fundus", max_epochs=2, epochs=3)


@pytest.mark.slow
def test_compiled_backbones_give_the_eager_losses_and_checkpoint_names():
    """compile=True: same losses as the eager trainer from the same start (in fp32: under bf16 autocast the fused
    kernels round at other places, ~1 bf16 ulp of the logits), and the same parameter names in the checkpoint."""
    eager, compiled = make_trainer(epochs=1, amp=None), make_trainer(epochs=1, amp=None, compile=True)
    runs = []
    for trainer in (eager, compiled):
        outputs = _record(trainer)
        torch.manual_seed(1)  # drop path draws
        trainer.run()
        runs.append([o["loss"] for o in outputs])
    assert np.allclose(runs[0], runs[1], rtol=1e-4), runs
    assert compiled.checkpoint_dict()["student"].state_dict().keys() == eager.student.state_dict().keys()


def test_compile_without_a_working_compiler_warns_and_runs_eagerly(monkeypatch, caplog):
    import visionfm_core.engine.precision as precision

    monkeypatch.setattr(precision, "_compiler_works", lambda: "RuntimeError: no C++ compiler")
    with caplog.at_level("WARNING", logger="visionfm_core.ssl.trainer"):
        trainer = make_trainer(data=_data(1), epochs=1, compile=True)
    assert "does not work here (RuntimeError: no C++ compiler)" in caplog.text
    assert "forward_features" not in vars(trainer.student.backbone)  # not replaced by a compiled function
    trainer.run()
