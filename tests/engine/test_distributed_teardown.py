"""destroy_distributed returns only when Gloo's worker threads hold nothing: after a DDP model was built, the Gloo
process group outlives destroy_process_group, and a worker still releasing a collective's Python-made tensors when
the interpreter shuts down aborts the process ("terminate called without an active exception") after a good run."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from visionfm_core.engine import distributed


def test_the_wait_ends_only_after_consecutive_quiet_samples(monkeypatch):
    samples = iter([["R", "S"], ["S", "S"], ["R", "S"], ["S", "S"], ["S", "S"], ["S", "S"], ["R", "R"]])
    seen = []

    def states():
        seen.append(next(samples))
        return seen[-1]

    monkeypatch.setattr(distributed, "_gloo_worker_states", states)
    assert distributed._wait_for_idle_gloo_workers(timeout=5, quiet_samples=3, interval=0)
    assert len(seen) == 6  # a busy sample restarts the count


def test_the_wait_gives_up_at_its_timeout(monkeypatch):
    monkeypatch.setattr(distributed, "_gloo_worker_states", lambda: ["R"])
    assert not distributed._wait_for_idle_gloo_workers(timeout=0.05, interval=0.01)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread states are read from /proc")
def test_it_finds_gloo_workers_that_outlive_the_group_after_ddp(tmp_path):
    """Guards the thread name the wait looks for: if PyTorch renamed Gloo's workers the wait would see none."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
        model(torch.randn(3, 4)).sum().backward()
    finally:
        distributed.destroy_distributed()
    states = distributed._gloo_worker_states()
    assert states, "no 'pt_gloo_runloop' thread found after DDP: the thread name changed, update the wait"
    assert distributed._wait_for_idle_gloo_workers(timeout=5)


WORKER = """
import torch, torch.distributed as dist
from visionfm_core.engine import distributed
distributed.init_distributed()
model = distributed.wrap_ddp(torch.nn.Linear(4, 2), torch.device("cpu"))
model(torch.randn(3, 4)).sum().backward()
for _ in range(100):  # collectives on tensors made in Python, dropped at once, as metric all_gathers do
    out = [torch.empty(1000) for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.ones(1000), async_op=True)
    del out
distributed.destroy_distributed()
"""


@pytest.mark.slow
def test_two_processes_exit_cleanly_after_ddp_and_pending_collectives(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    for attempt in range(1):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 str(script)], capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert result.returncode == 0, f"attempt {attempt + 1}: " + result.stderr[-3000:]
