"""Decisions that agree across processes in iBOT pretraining, checked with 2 Gloo CPU processes under torchrun.

One torchrun launch (this file run as a script, `python -m torch.distributed.run --nproc_per_node=2
tests/engine/test_distributed_decisions.py OUT_DIR KNN_DATALIST`) plays four scenarios in turn and writes what each
process saw under OUT_DIR; the tests below read it:

- no_mask: a DDP student without find_unused_parameters on batches where no crop is masked: no error, and the
  gradients equal those of one process on the whole batch;
- knn: the k-NN probe embeds on rank 0 only; every process gets rank 0's accuracy;
- collapse: the collapse check decides on epoch sums reduced over processes, so both decide the same;
- nan: a NaN in one process's batch stops both processes with the same message (nothing hangs).

The launch runs in its own process group with a timeout: a hang fails the tests instead of blocking them.
"""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests_common import assert_close_to_scale

REPO = Path(__file__).resolve().parents[2]
BATCH = 2  # images per process per step
TIMEOUT_S = 120
SETTINGS = dict(
    arch="vit_tiny", image_size=32, out_dim=64, hidden_dim=32, bottleneck_dim=16, drop_path_rate=0.0, batch_size=BATCH,
    base_lr=1e-3 * 256 / BATCH, min_lr=1e-3, warmup_epochs=0, warmup_teacher_temp_epochs=1, clip_grad=0.0,
    freeze_last_layer_epochs=0, n_local=0, mask_min_num_patches=1, amp=None,
)


def _images(n_batches: int, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(2 * BATCH, 3, size, size, generator=g) for _ in range(n_batches)]  # both processes' images


def _no_mask_trainer(batches, ddp: bool, total_batch: int):
    """Global crops = the images themselves (so 1 and 2 processes see the same crops) and no masked patch."""
    from visionfm_core.ssl import BlockMaskGenerator, build_ibot_trainer

    torch.manual_seed(0)
    trainer = build_ibot_trainer([{"image": b} for b in batches], "Fundus", max_epochs=1, ddp=ddp,
                                 total_batch=total_batch, **SETTINGS)
    trainer.augmentation = lambda images, generator=None: [images, images.flip(-1)]
    trainer.mask_generator = BlockMaskGenerator(2, prob_no_mask=1.0)
    return trainer


def _gradients(trainer) -> dict[str, torch.Tensor]:
    from visionfm_core.engine.distributed import unwrap

    return {n: p.grad.clone() for n, p in unwrap(trainer.student).named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------------------------------------
# the worker: run by torchrun, one per process
def _worker(out: Path, knn_datalist: str) -> None:
    import torch.distributed as dist

    from visionfm_core.engine import distributed
    from visionfm_core.ssl import KNNProbe, build_ibot_trainer

    distributed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)

    def save(name, value):
        (out / f"{name}_rank{rank}.json").write_text(json.dumps(value))

    # no masked crop, DDP without find_unused_parameters: two steps (an unused parameter fails the second)
    halves = [b.chunk(world)[rank] for b in _images(2)]
    trainer = _no_mask_trainer(halves, ddp=True, total_batch=2 * BATCH)
    trainer.run()
    if rank == 0:
        torch.save(_gradients(trainer), out / "no_mask_grads.pt")
    save("no_mask", {"find_unused_parameters": trainer.student.find_unused_parameters,
                     "iterations": trainer.state.iteration})

    # k-NN probe: rank 0 embeds, the others wait and receive its accuracy
    torch.manual_seed(0)
    trainer = build_ibot_trainer([{"image": b.chunk(world)[rank]} for b in _images(1, 40)], "Fundus", max_epochs=1,
                                 ddp=True, **{**SETTINGS, "n_local": 0})
    probe = KNNProbe(knn_datalist, "Fundus", image_size=32, k=3)
    probe.attach(trainer)
    calls = []
    trainer.teacher.backbone.register_forward_hook(lambda *args: calls.append(1))
    trainer.run()
    save("knn", {"metric": trainer.state.metrics["knn_top1"], "backbone_calls": len(calls),
                 "loaded": probe.train_loader is not None})

    # collapse: rank 0's own sums look uniformly collapsed, rank 1's healthy; the decision must be shared
    import warnings

    trainer.collapse_check_from_epoch = 0
    n, ln_k = 4, math.log(SETTINGS["out_dim"])
    trainer._epoch_sums[:] = (ln_k * n, 3.0 * n, n) if rank == 0 else (0.5 * n, 3.0 * n, n)
    trainer.should_terminate = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer._check_collapse(trainer)
    save("collapse", {"collapse": trainer.state.collapse, "terminate": bool(trainer.should_terminate)})
    trainer._epoch_sums[:] = (ln_k * n, 3.0 * n, n)  # collapsed everywhere: both stop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer._check_collapse(trainer)
    save("collapse_all", {"collapse": trainer.state.collapse, "terminate": bool(trainer.should_terminate)})

    # NaN in process 1's second batch only
    batches = [b.chunk(world)[rank].clone() for b in _images(2, 40)]
    if rank == 1:
        batches[1][0, 0, 5, 5] = float("nan")
    torch.manual_seed(0)
    trainer = build_ibot_trainer([{"image": b} for b in batches], "Fundus", max_epochs=1, ddp=True, **SETTINGS)
    try:
        trainer.run()
        message = None
    except FloatingPointError as error:
        message = str(error)
    save("nan", {"message": message, "iteration": trainer.state.iteration})
    distributed.destroy_distributed()


# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Run the worker under torchrun with 2 CPU processes once; its files are read by every test below."""
    from visionfm_core.data import write_demo_dataset

    root = tmp_path_factory.mktemp("distributed_decisions")
    datalist = write_demo_dataset(root / "labelled", per_class=2, size=40, num_classes=2)
    out = root / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, str(out),
           datalist]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # own process group: a hang is killed with its workers
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        log = f"torchrun did not finish within {TIMEOUT_S} s (a process waited for the other)\n" + log
    return out, proc.returncode, log


def _read(out: Path, name: str, log: str) -> list[dict]:
    files = [out / f"{name}_rank{r}.json" for r in range(2)]
    missing = [f.name for f in files if not f.is_file()]
    assert not missing, f"{missing} not written; torchrun output:\n{log[-4000:]}"
    return [json.loads(f.read_text()) for f in files]


@pytest.mark.slow
def test_nan_on_one_process_stops_both_with_the_same_message(two_processes):
    out, returncode, log = two_processes
    first, second = _read(out, "nan", log)
    assert first["message"] is not None and first["message"] == second["message"], log[-4000:]
    assert "iteration 2 (epoch 1) on process 1 of 2" in first["message"]
    assert "NaN/inf pixels" in first["message"]  # the cause seen on process 1 is named on process 0 too
    assert first["iteration"] == second["iteration"] == 2
    assert returncode == 0, log[-4000:]  # and nothing hung


@pytest.mark.slow
def test_collapse_decided_on_sums_over_processes(two_processes):
    out, _, log = two_processes
    mixed = _read(out, "collapse", log)
    assert mixed[0] == mixed[1] == {"collapse": None, "terminate": False}  # the mean over processes is healthy
    collapsed = _read(out, "collapse_all", log)
    assert collapsed[0] == collapsed[1] and collapsed[0]["terminate"]
    assert collapsed[0]["collapse"].startswith("Uniform collapse suspected")


@pytest.mark.slow
def test_knn_probe_runs_on_rank_0_and_every_process_gets_its_accuracy(two_processes):
    out, _, log = two_processes
    rank0, rank1 = _read(out, "knn", log)
    assert rank0["backbone_calls"] > 0 and rank0["loaded"]
    assert rank1["backbone_calls"] == 0 and not rank1["loaded"]  # rank 1 only waited
    assert rank0["metric"] == rank1["metric"] and 0.0 <= rank0["metric"] <= 1.0


@pytest.mark.slow
def test_ddp_without_find_unused_parameters_on_a_batch_with_no_masked_crop(two_processes):
    out, _, log = two_processes
    rank0, rank1 = _read(out, "no_mask", log)
    assert rank0 == rank1 == {"find_unused_parameters": False, "iterations": 2}
    two = torch.load(out / "no_mask_grads.pt", weights_only=True)
    torch.set_num_threads(1)
    one_trainer = _no_mask_trainer(_images(2), ddp=False, total_batch=2 * BATCH)
    one_trainer.run()
    one = _gradients(one_trainer)
    assert set(two) == set(one) and "backbone.masked_embed" in one  # every parameter got a gradient
    assert torch.count_nonzero(one["backbone.masked_embed"]) == 0  # nothing masked: the mask token weighs 0
    for name, grad in one.items():
        assert_close_to_scale(two[name], grad, rel=1e-3, msg=name)  # 2 processes sum in another order


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2])
