"""`IBOTTrainer`: iBOT self-supervised pretraining as a MONAI engine, and `build_ibot_trainer`, the one way it is
assembled (bundles, tests and the benchmark all call it) from a data loader, a modality and an `IBOTRecipe`.

Being a `monai.engines.Trainer` (an ignite `Engine`), it takes `train_handlers` and works with
StatsHandler, TensorBoardStatsHandler, CheckpointSaver/CheckpointLoader, LR/metric handlers and
multi-GPU configs like any MONAI trainer; only `_iteration` is iBOT-specific:

1. augment the batch on the engine's device into 2 global (+ local) crops; draw block masks for
   the global crops (all random numbers come from (seed, rank, iteration), so a resumed run replays
   exactly the crops and masks an uninterrupted run would have seen);
2. teacher on the unmasked global crops (no grad); start the centre updates (async all-reduce);
3. student on the masked global crops and the unmasked local crops; CLS + masked-patch losses;
4. stop with a clear error if the loss is not finite on any process (before anything is updated): the
   logged values are means over processes (one small all-reduce), so every process sees a NaN of any of
   them and all stop together with the same message instead of one stopping and the others hanging;
5. backward (optional bf16 autocast, or fp16 with a GradScaler), per-parameter gradient clipping,
   last-layer freeze in the first epochs, optimizer step with this iteration's lr and weight decay;
6. teacher EMA with this iteration's momentum; finish the centre updates.

Every scheduled value of an iteration (lr, weight decay, momentum, both teacher temperatures) comes from
`IBOTSchedules`; the other settings (amp, clipping, freeze, loss weights, seed) from the recipe.

All schedules are indexed by `engine.state.iteration`, which ignite restores with the engine's
state dict, so put the trainer in CheckpointSaver/CheckpointLoader's dict (`checkpoint_dict()`).

The collapse check at the end of each epoch also decides on values reduced over processes, so every process
stops (or continues) together.

`engine.state.output` follows MONAI's decollated convention, a list with one dict of floats (the losses and
the entropy are means over all processes):
loss, cls_loss, patch_loss, lr, wd, momentum, teacher_temp, patch_teacher_temp, teacher_entropy,
kl_teacher_student. StatsHandler and TensorBoardStatsHandler log all of them with their default
`output_transform` (`lambda x: x[0]`); `monai.handlers.from_engine(["loss"], first=True)` picks one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from torch import nn

from visionfm_core.engine.distributed import gather_from_processes, mean_over_processes, unwrap, world_size
from visionfm_core.ssl.head import IBOTModel, masked_patch_index
from visionfm_core.ssl.loss import DINOClsLoss, IBOTPatchLoss, entropy, patch_weights
from visionfm_core.ssl.masking import BlockMaskGenerator
from visionfm_core.ssl.recipe import IBOTRecipe, start_warning
from visionfm_core.ssl.schedules import IBOTSchedules, cancel_last_layer_gradients, clip_gradients

__all__ = ["IBOTTrainer", "build_ibot_trainer", "iteration_generators", "OUTPUT_KEYS"]
logger = logging.getLogger(__name__)

OUTPUT_KEYS = (
    "loss",
    "cls_loss",
    "patch_loss",
    "lr",
    "wd",
    "momentum",
    "teacher_temp",
    "patch_teacher_temp",
    "teacher_entropy",
    "kl_teacher_student",
)


def iteration_generators(seed: int, rank: int, iteration: int) -> tuple[torch.Generator, np.random.Generator]:
    """The (torch, numpy) generators for the crops and masks of one iteration.

    A pure function of (seed, rank, iteration): a resumed run replays exactly the crops and masks an
    uninterrupted run would have drawn, without saving any RNG state.
    """
    a, b = np.random.SeedSequence([seed, rank, iteration]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(a) & (2**63 - 1)), np.random.default_rng(int(b))


def _amp_dtype(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    if amp in (None, False, "none", "fp32"):
        return None
    if amp == "auto":  # VisionFM's fp16 + grad scaler on CUDA; bf16 on CPUs that multiply it natively; else fp32
        if device.type == "cuda":
            return torch.float16
        from visionfm_core.engine.precision import cpu_has_native_bf16

        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    if amp is True:  # fp16 where a GradScaler matters (CUDA), else bf16
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if amp in ("bf16", "bfloat16"):
        return torch.bfloat16
    if amp in ("fp16", "float16", "half"):
        return torch.float16
    raise ValueError(f"amp must be None, 'auto', True, 'bf16' or 'fp16', got {amp!r}")


class IBOTTrainer(Trainer):
    """iBOT pretraining engine; build it with `build_ibot_trainer`, which makes every part from the recipe.

    Args:
        recipe: the `IBOTRecipe`: `epochs` is the engine's max_epochs; amp, clip_grad, freeze_last_layer_epochs,
            lambda_cls, lambda_patch and seed are read from it.
        device: where the models, augmentation and losses run.
        train_data_loader: yields image batches: a tensor (B, 3, H, W) in [0, 1] (or uint8), a dict
            with `image_key`, or a tuple/list whose first item is the images.
        student / teacher: `IBOTModel`s (see `build_ibot_models`); the student may be DDP-wrapped.
        optimizer: e.g. `torch.optim.AdamW(param_groups(student))`; lr and weight decay are
            overwritten every iteration from `schedules`.
        augmentation: `MultiCropAugmentation` (or any callable (images, generator=) -> list of crops,
            the first two being the global crops).
        mask_generator: `BlockMaskGenerator` on the global crops' patch grid (or any object with
            `batch(n, generator) -> (n, h, w) bool`).
        cls_loss / patch_loss: the loss modules (they hold the centres).
        schedules: per-iteration lr / weight decay / momentum / teacher temperatures (`IBOTSchedules.build`).
        modality: the modality being pretrained (read by handlers, e.g. the encoder export).
        stop_on_collapse: terminate the run when a collapse is detected (else only warn).
        collapse_check_from_epoch: first 0-based epoch checked for uniform collapse; default: the end
            of the lr warm-up (the loss legitimately stays near ln(out_dim) while the lr is tiny).
        train_handlers: MONAI/ignite handlers to attach.

    amp: recipe.amp None (fp32), 'auto' (fp16 on CUDA, else fp32), 'bf16' (autocast) or 'fp16' (autocast +
    GradScaler, `self.scaler`); a recipe.clip_grad of 0 disables clipping.
    """

    def __init__(
        self,
        recipe: IBOTRecipe,
        device: str | torch.device,
        train_data_loader: Iterable,
        student: nn.Module,
        teacher: IBOTModel,
        optimizer: torch.optim.Optimizer,
        augmentation: Callable[..., Sequence[torch.Tensor]],
        mask_generator: BlockMaskGenerator,
        cls_loss: DINOClsLoss,
        patch_loss: IBOTPatchLoss,
        schedules: IBOTSchedules,
        modality: str | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = True,
        image_key: str = "image",
        stop_on_collapse: bool = True,
        collapse_check_from_epoch: int | None = None,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
    ):
        super().__init__(
            device=device,
            max_epochs=recipe.epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            handlers=None,  # attached at the end, once every attribute a handler may touch exists
            amp=False,  # MONAI's amp flag would replace our scaler in run(); amp is handled here
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=False,  # the output is already a list with one dict of floats
        )
        device = self.state.device
        self.recipe = recipe
        self.modality = modality
        self.student = student.to(device)
        self.teacher = teacher.to(device).eval()
        self.teacher.requires_grad_(False)
        self.optimizer = optimizer
        self.augmentation = augmentation.to(device) if isinstance(augmentation, nn.Module) else augmentation
        self.mask_generator = mask_generator
        self.cls_loss = cls_loss.to(device)
        self.patch_loss = patch_loss.to(device)
        self.schedules = schedules
        self.image_key = image_key
        self.amp_dtype = _amp_dtype(recipe.amp, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        self.stop_on_collapse = stop_on_collapse
        if collapse_check_from_epoch is None:
            collapse_check_from_epoch = math.ceil(schedules.warmup_epochs)
        self.collapse_check_from_epoch = collapse_check_from_epoch
        self._student_params, self._teacher_params = self._ema_pairs()
        self.state.collapse = None
        self._epoch_sums = np.zeros(3)  # cls loss, teacher entropy, iterations
        self.add_event_handler(Events.EPOCH_STARTED, self._reset_epoch_stats)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._check_collapse)
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    # ------------------------------------------------------------------------------------------
    def checkpoint_dict(self) -> dict[str, Any]:
        """Everything a resumable checkpoint needs, for CheckpointSaver(save_dict=...) / CheckpointLoader."""
        d = {
            "student": unwrap(self.student),
            "teacher": self.teacher,
            "optimizer": self.optimizer,
            "cls_loss": self.cls_loss,
            "patch_loss": self.patch_loss,
            "trainer": self,
        }
        if self.scaler is not None:
            d["scaler"] = self.scaler
        return d

    def run(self) -> None:  # type: ignore[override]
        # skip monai Trainer.run, which would replace self.scaler with a CUDA-only GradScaler
        Workflow.run(self)

    def _ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        teacher = dict(self.teacher.named_parameters())
        student = dict(unwrap(self.student).named_parameters())
        missing = sorted(set(teacher) - set(student))
        if missing:
            raise ValueError(f"teacher parameters with no student counterpart (EMA impossible): {missing[:5]}")
        names = sorted(teacher)
        for n in names:
            if teacher[n].shape != student[n].shape:
                raise ValueError(f"teacher/student shape mismatch for {n}: {teacher[n].shape} vs {student[n].shape}")
        return [student[n] for n in names], [teacher[n] for n in names]

    def _images(self, batchdata: Any) -> torch.Tensor:
        x = batchdata
        if isinstance(x, dict):
            if self.image_key not in x:
                raise KeyError(f"batch has no {self.image_key!r} entry (keys: {sorted(x)}); set image_key")
            x = x[self.image_key]
        elif isinstance(x, (list, tuple)):
            x = x[0]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an image tensor (B, 3, H, W), got {type(x).__name__}")
        if hasattr(x, "as_tensor"):  # MetaTensor: metadata is irrelevant here and slows every op
            x = x.as_tensor()
        return x.to(self.state.device, non_blocking=self.non_blocking)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.state.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def _ema_update(self, momentum: float) -> None:
        # teacher = momentum * teacher + (1 - momentum) * student, in one pass over the weights
        torch._foreach_lerp_(self._teacher_params, self._student_params, 1.0 - momentum)

    # ------------------------------------------------------------------------------------------
    def _iteration(self, engine: "IBOTTrainer", batchdata: Any) -> list[dict[str, float]]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        it, epoch = engine.state.iteration - 1, engine.state.epoch - 1  # 0-based global iteration / epoch
        recipe = engine.recipe
        lr, wd, momentum, temp_cls, temp_patch = engine.schedules.at(it)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if group.get("apply_wd", group.get("weight_decay", 0.0) > 0):
                group["weight_decay"] = wd
        engine.student.train()

        images = engine._images(batchdata)
        tgen, ngen = iteration_generators(recipe.seed, engine.state.rank, it)
        crops = engine.augmentation(images, generator=tgen)
        global_crops, local_crops = list(crops[:2]), list(crops[2:])
        n_images = 2 * global_crops[0].shape[0]
        masks = engine.mask_generator.batch(n_images, ngen)  # CPU: indices below need no device sync
        patch_size = unwrap(engine.student).backbone.patch_size
        grid = (global_crops[0].shape[-2] // patch_size, global_crops[0].shape[-1] // patch_size)
        if tuple(masks.shape[1:]) != grid:
            raise ValueError(
                f"mask grid {tuple(masks.shape[1:])} does not match the global crops' patch grid {grid}: "
                "build the BlockMaskGenerator with grid = global crop size // patch size"
            )
        patch_index, weights = masked_patch_index(masks), patch_weights(masks)

        with torch.no_grad(), engine._autocast():
            t_cls, t_patch = engine.teacher(global_crops, masks=masks, mask_input=False, patch_index=patch_index)
        t_cls_probs = engine.cls_loss.softmax_center_teacher(t_cls, temp_cls)
        t_patch_probs = engine.patch_loss.softmax_center_teacher(t_patch, temp_patch)
        engine.cls_loss.update_center(t_cls)  # async all-reduce overlaps the student's pass
        engine.patch_loss.update_center(t_patch)

        with engine._autocast():
            s_cls, s_patch = engine.student(global_crops, masks=masks, local_crops=local_crops, patch_index=patch_index)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        cls = engine.cls_loss(s_cls, t_cls_probs)
        patch = engine.patch_loss(s_patch, t_patch_probs, weights, n_images)
        loss = recipe.lambda_cls * cls + recipe.lambda_patch * patch
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        with torch.no_grad():
            t_ent = entropy(t_cls_probs.flatten(0, 1))
            local = torch.stack([loss.detach(), cls.detach(), patch.detach(), t_ent]).float()
            # means over processes: a NaN on any process makes them NaN on all, so all stop together below
            values = mean_over_processes(local).tolist()
        loss_v, cls_v, patch_v, ent_v = values
        if not all(math.isfinite(v) for v in values):
            engine.cls_loss.discard_center_update()
            engine.patch_loss.discard_center_update()
            raise FloatingPointError(engine._nan_message(it, epoch, local, images))

        engine.optimizer.zero_grad(set_to_none=True)
        if engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.scaler.unscale_(engine.optimizer)  # clip the true gradients
        else:
            loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        student = unwrap(engine.student)
        if recipe.clip_grad:
            clip_gradients(student, recipe.clip_grad)
        cancel_last_layer_gradients(student, epoch, recipe.freeze_last_layer_epochs)
        if engine.scaler is not None:
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            engine.optimizer.step()
        engine._ema_update(momentum)
        engine.cls_loss.apply_center_update()
        engine.patch_loss.apply_center_update()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        engine._epoch_sums += (cls_v, ent_v, 1)
        return [
            dict(
                loss=loss_v,
                cls_loss=cls_v,
                patch_loss=patch_v,
                lr=lr,
                wd=wd,
                momentum=momentum,
                teacher_temp=temp_cls,
                patch_teacher_temp=temp_patch,
                teacher_entropy=ent_v,
                # CE = H(teacher) + KL(teacher || student), and every teacher crop has the same number of
                # partners, so the mean KL over the loss's pairs is exactly cls_loss - teacher_entropy
                kl_teacher_student=cls_v - ent_v,
            )
        ]

    def _nan_message(self, it: int, epoch: int, local: torch.Tensor, images: torch.Tensor) -> str:
        """The same message on every process: it is built from every process's values (a collective that all
        processes reach, since they all saw the non-finite mean)."""
        images_finite = torch.isfinite(images).all().to(local)
        rows = gather_from_processes(torch.cat([local, images_finite.reshape(1)])).tolist()
        bad = [r for r, row in enumerate(rows) if not all(math.isfinite(v) for v in row[:4])] or [0]
        loss_v, cls_v, patch_v, ent_v, pixels_ok = rows[bad[0]]
        where = ""
        if len(rows) > 1:
            processes = f"process{'es' if len(bad) > 1 else ''} {', '.join(map(str, bad))}"
            where = f" on {processes} of {len(rows)} (values of process {bad[0]}; every process stops)"
        cause = ""
        if not pixels_ok:
            cause = " The input batch itself contains NaN/inf pixels: check the images and their transforms."
        elif not math.isfinite(ent_v):
            cause = " The teacher's output is already non-finite: the teacher (or the data) holds NaN/inf."
        return (
            f"iBOT loss is not finite at iteration {it + 1} (epoch {epoch + 1}){where}: loss={loss_v}, "
            f"cls_loss={cls_v}, patch_loss={patch_v}, teacher_entropy={ent_v}.{cause} Training stopped before this "
            "iteration changed anything: weights, optimizer state and loss centres are those after iteration "
            f"{it}, and checkpoints already written are intact. Usual causes: a learning rate too high for the batch, fp16 "
            "overflow (try amp='bf16' or amp=None), or corrupt images."
        )

    # ------------------------------------------------------------------------------------------
    def _reset_epoch_stats(self, engine: "IBOTTrainer") -> None:
        engine._epoch_sums = np.zeros(3)

    def _check_collapse(self, engine: "IBOTTrainer") -> None:
        # decided on sums reduced over processes, so every process stops (or not) together; the per-iteration
        # values are already means over processes, this keeps the decision shared whatever filled the sums
        sums = torch.as_tensor(engine._epoch_sums, dtype=torch.float64, device=engine.state.device)
        cls_sum, ent_sum, n = mean_over_processes(sums).tolist()
        if n == 0:
            return
        epoch = engine.state.epoch - 1
        mean_cls, mean_ent = cls_sum / n, ent_sum / n
        k = engine.cls_loss.out_dim
        ln_k = math.log(k)
        message = None
        if mean_ent < 0.01 * ln_k:
            message = (
                f"One-hot collapse suspected after epoch {epoch + 1}: the teacher's mean output entropy is "
                f"{mean_ent:.3g} nats, below 1% of ln({k}) = {ln_k:.3f}. The teacher puts almost all its probability "
                "on one prototype for every image, so the loss can fall to ~0 without anything being learned. "
                "Usual cures: a higher teacher temperature, check that centring is on (center_momentum < 1), a "
                "lower learning rate, and check that the data are not one repeated or blank image."
            )
        elif epoch >= engine.collapse_check_from_epoch and abs(mean_cls - ln_k) <= 0.01 * ln_k:
            message = (
                f"Uniform collapse suspected after epoch {epoch + 1}: the mean CLS loss is {mean_cls:.4f}, within 1% "
                f"of ln({k}) = {ln_k:.4f}, the value for a uniform output. Student and teacher predict the same flat "
                f"distribution over all {k} prototypes, which carries no information about the image. Usual cures: "
                "a lower teacher temperature (warmup_teacher_temp / teacher_temp), check that the learning rate is "
                "not ~0 after warm-up and that the images are not blank."
            )
        if message is None:
            return
        engine.state.collapse = message
        action = (
            "Stopping the run (stop_on_collapse=True; pass stop_on_collapse=False to continue anyway)."
            if engine.stop_on_collapse
            else "Continuing because stop_on_collapse=False."
        )
        engine.logger.warning(f"{message} {action}")
        warnings.warn(f"{message} {action}", RuntimeWarning, stacklevel=2)
        if engine.stop_on_collapse:
            engine.terminate()


def _compile_backbones(*models: IBOTModel) -> None:
    """`torch.compile` each model's `backbone.forward_features` (what IBOTModel calls), in place; the module, its
    parameters and their names stay the same. The whole backbone is one graph: compiling block by block would
    recompile for every block (each has its own drop-path rate)."""
    from visionfm_core.engine.precision import _compiler_works

    problem = _compiler_works()
    if problem:
        logger.warning("compile=True, but torch.compile does not work here (%s): pretraining runs eagerly", problem)
        return
    for model in models:
        model.backbone.forward_features = torch.compile(model.backbone.forward_features)
    logger.info("pretraining backbones compiled with torch.compile (the first steps include the compilation)")


def build_ibot_trainer(
    train_data_loader: Iterable,
    modality: str,
    device: str | torch.device = "cpu",
    recipe: IBOTRecipe | None = None,
    max_epochs: int | None = None,
    *,
    total_batch: int | None = None,
    epoch_length: int | None = None,
    init_weights: str | None = None,
    init_checkpoint_key: str = "teacher",
    ddp: bool = False,
    compile: bool = False,
    stop_on_collapse: bool = True,
    collapse_check_from_epoch: int | None = None,
    image_key: str = "image",
    train_handlers: Sequence | None = None,
    **overrides: Any,
) -> IBOTTrainer:
    """The `IBOTTrainer` of a recipe: models, optimizer, augmentation, masks, losses and schedules all made from it.

    Args:
        train_data_loader: batches of images (see `IBOTTrainer`); its length is the epoch length.
        modality: the VisionFM modality (its normalisation; written into the exported encoder).
        recipe: an `IBOTRecipe` (default: VisionFM's, `IBOTRecipe()`); `overrides` change any of its fields
            (e.g. `arch="vit_small", base_lr=1e-4`), an unknown name is an error.
        max_epochs: the recipe's `epochs`, under the name MONAI bundles use (`train::trainer::max_epochs`).
        total_batch: images per optimizer step over all processes, for the lr scaling rule; default: the loader's
            `batch_size` (`recipe.batch_size` for a loader without one) times the number of processes.
        epoch_length: iterations per epoch, for loaders without a length.
        init_weights / init_checkpoint_key: start both backbones from existing encoder weights (the original
            VisionFM or ImageNet DINO weights, a local file; see `load_initial_weights`).
        ddp: wrap the student in DistributedDataParallel (multi-process runs under torchrun).
        compile: run the student's and the teacher's backbones through `torch.compile` (one graph per crop size; the
            first steps pay the compilation, minutes on a small CPU). It fuses the casts, norms and activations
            around the matmuls that autocast leaves as separate passes over memory. Parameter names, checkpoints
            and results are unchanged; without a working compiler it warns and runs eagerly.
        stop_on_collapse / collapse_check_from_epoch / image_key / train_handlers: passed to `IBOTTrainer`.

    The trainer keeps the recipe as `trainer.recipe` and every part as an attribute (student, teacher, optimizer,
    augmentation, mask_generator, cls_loss, patch_loss, schedules).
    """
    from visionfm_core.engine import distributed
    from visionfm_core.ssl.augment import MultiCropAugmentation
    from visionfm_core.ssl.head import build_ibot_models
    from visionfm_core.ssl.monitor import load_initial_weights
    from visionfm_core.ssl.schedules import param_groups

    if max_epochs is not None:
        if overrides.get("epochs", max_epochs) != max_epochs:
            raise ValueError(f"max_epochs={max_epochs} and epochs={overrides['epochs']} disagree: give one of them")
        overrides["epochs"] = max_epochs
    recipe = (recipe or IBOTRecipe()).replace(**overrides)
    message = start_warning(recipe, init_weights)  # e.g. a random start with VisionFM's temperatures
    if message and distributed.is_main_process():  # once per run, not once per process
        logger.warning(message)
    if epoch_length is None:
        try:
            epoch_length = len(train_data_loader)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError("the data loader has no length: pass epoch_length") from None
    if total_batch is None:
        batch = getattr(train_data_loader, "batch_size", None) or recipe.batch_size
        total_batch = batch * world_size()

    student, teacher = build_ibot_models(
        recipe.arch,
        recipe.patch_size,
        recipe.image_size,
        out_dim=recipe.out_dim,
        hidden_dim=recipe.hidden_dim,
        bottleneck_dim=recipe.bottleneck_dim,
        drop_path_rate=recipe.drop_path_rate,
    )
    load_initial_weights((student, teacher), init_weights, init_checkpoint_key)
    if compile:
        _compile_backbones(student, teacher)
    # the fused kernel updates each tensor in one pass (the default for-each path makes ~10 passes over the weights
    # and moments): ~3.5x faster on a CPU, where it was ~1/4 of the bf16 step
    optimizer = torch.optim.AdamW(param_groups(student), fused=torch.device(device).type in ("cpu", "cuda"))
    if ddp:
        # no find_unused_parameters (a graph walk every step): every student parameter gets a gradient every
        # step, the mask token included when no crop is masked (it is in the graph with weight 0)
        student = distributed.wrap_ddp(student, torch.device(device))
    return IBOTTrainer(
        recipe=recipe,
        device=device,
        train_data_loader=train_data_loader,
        student=student,
        teacher=teacher,
        optimizer=optimizer,
        augmentation=MultiCropAugmentation(
            modality,
            recipe.image_size,
            recipe.local_size,
            recipe.n_local,
            global_scale=recipe.global_crops_scale,
            local_scale=recipe.local_crops_scale,
        ),
        mask_generator=BlockMaskGenerator(
            recipe.image_size // recipe.patch_size,
            ratio_range=recipe.mask_ratio_range,
            prob_no_mask=recipe.prob_no_mask,
            min_num_patches=recipe.mask_min_num_patches,
        ),
        cls_loss=DINOClsLoss(recipe.out_dim, recipe.student_temp, recipe.center_momentum),
        patch_loss=IBOTPatchLoss(recipe.out_dim, recipe.student_temp, recipe.center_momentum),
        schedules=IBOTSchedules.build(recipe, epoch_length, total_batch),
        modality=modality,
        epoch_length=epoch_length,
        image_key=image_key,
        stop_on_collapse=stop_on_collapse,
        collapse_check_from_epoch=collapse_check_from_epoch,
        train_handlers=train_handlers,
    )
