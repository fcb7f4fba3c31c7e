"""Several processes through Hugging Face ``accelerate`` (docs/scaling.md).

``accelerate launch --multi_gpu --num_processes N -m offswitch …`` starts N copies of a
command through torchrun (gloo on a machine without GPUs, NCCL on CUDA GPUs; accelerate's
``--cpu`` flag starts a single process unless MPI is set up with ``--mpirun_hostfile``);
``torchrun --nproc_per_node N -m offswitch …`` does the same. Nothing changes for one
process: every function here is then a no-op and accelerate is not even initialised. With N
processes:

* :func:`train_loop <offswitch.training.train_loop>` gives each process its share of every
  step's micro-batches (the same global batch as one process), sums the gradients over the
  processes before clipping, so all processes take the same optimizer step;
* only the main process writes (checkpoints, models, manifests, reports, results) and shows
  progress; the others wait at :func:`barrier`.

Why not DDP (``accelerator.prepare(model)``): a step's micro-batches do not split evenly over
processes (16 examples in micro-batches of 8 give 2 of them; 3 processes get 1, 1 and 0), and
DDP needs the same number of backward passes on every process. Summing the gradients of the
trainable parameters once per step is the same arithmetic, needs no model wrapper (so peft and
``merge_and_unload`` are untouched) and costs one all-reduce of the trainable weights per step.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

#: Where launchers put the number of processes (torchrun/accelerate, MPI).
_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
#: How long a process waits at a barrier for the others (the process group's timeout): an
#: attack point or a cold distillation takes minutes to hours on a CPU.
TIMEOUT_HOURS = 48


def launched() -> bool:
    """True when this process is one of several started by a launcher (accelerate, torchrun,
    mpirun): the launcher sets the world size in the environment."""
    return any(int(os.environ.get(v, "1") or "1") > 1 for v in _SIZE_VARS)


@cache
def _state() -> Any:
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    from .errors import LaunchError

    # gloo on CPU, NCCL on CUDA; without cpu=True a GPU-less machine gets no process group
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=TIMEOUT_HOURS))
    if state.num_processes < 2:
        raise LaunchError(
            "started by a multi-process launcher, but accelerate set up a single process: "
            "launch with accelerate launch --multi_gpu --num_processes N, or torchrun"
        )
    return state


def world() -> tuple[int, int]:
    """(number of processes, this process's index)."""
    if not launched():
        return 1, 0
    s = _state()
    return s.num_processes, s.process_index


def is_main() -> bool:
    return world()[1] == 0


def device() -> Any:
    """The device this process trains on (its GPU, or the CPU)."""
    return _state().device if launched() else None


def barrier() -> None:
    """Wait until every process gets here (no-op for one process)."""
    if launched():
        _state().wait_for_everyone()


@contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (e.g. filling a cache), the others after it (they
    then find the cache full): two writers never share a file."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def sum_gradients(params: list[Any]) -> None:
    """Sum the gradients of ``params`` over the processes (a parameter that got no gradient
    here counts as zero), in place, so every process holds the global gradient."""
    if not launched():
        return
    import torch
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def sum_values(*values: float) -> list[float]:
    """Each value summed over the processes (loss and token counts of a step)."""
    if not launched():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
