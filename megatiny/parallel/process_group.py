"""The process group's lifecycle: join or make it, wait, sum host values over it, destroy it.

`init_distributed` works under the `deepspeed` launcher (env vars), `mpirun` (mpi4py discovery)
and plain `python` (a world-size-1 group made here), with a configurable timeout. The DeepSpeed
engine built on top of the group is `megatiny.training.engine`'s.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import deepspeed
import torch
import torch.distributed as dist

from megatiny.process_env import RENDEZVOUS_VARIABLES, free_port, put_interpreter_bin_first


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _mpi_launched() -> bool:
    keys = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
    return any(k in os.environ for k in keys)


def skip_inference_shm_allreduce() -> None:
    """Keep DeepSpeed's CPU backend from building and mapping its shared-memory allreduce.

    On a CPU, DeepSpeed's communication backend JIT-compiles that op on its first use on a machine
    (~40 s on 2 cores, so in the first run of a fresh install) and maps a ~66 MB /dev/shm buffer
    per rank that it never removes, yet only DeepSpeed inference's `inference_all_reduce` uses it:
    every collective of training goes through torch.distributed (gloo). Marking the op
    incompatible in DeepSpeed's probe of its ops (a dict it caches, and reads before loading the
    op) skips both. Call it before `deepspeed.init_distributed`."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def init_distributed(backend: str = "auto", timeout_s: float = 600.0, master_port: int = 29500) -> DistInfo:
    """Join (or make) the process group (`distributed:` section of the run config: backend auto |
    nccl | gloo, collective timeout in seconds, mpirun's rendezvous port). Returns this process's
    rank, world size and device."""
    put_interpreter_bin_first(if_it_has="ninja")  # one ninja for DeepSpeed's JIT ops (see process_env)
    skip_inference_shm_allreduce()
    launched = all(k in os.environ for k in RENDEZVOUS_VARIABLES)
    port = int(os.environ.get("MASTER_PORT", master_port))
    if not launched and not _mpi_launched():
        # Plain `python tools/train.py`: a group of one on this host.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(os.environ.get("MASTER_PORT", free_port())))
    os.environ.setdefault("LOCAL_RANK", "0")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=True, distributed_port=port,
                               timeout=timedelta(seconds=timeout_s), verbose=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def barrier() -> None:
    """All ranks wait here (nothing to wait for without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all ranks of `values` (float64 on `device`), read back on the host."""
    return all_reduce_sum_tensor(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def all_reduce_sum_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all ranks of a device tensor (as float64); stays on the device."""
    tensor = tensor.to(torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    """Destroy the process group (without it gloo ranks abort at exit), and with it every group
    DeepSpeed remembers, so that the same process can train again, on another layout too.

    Through `deepspeed.comm`, which also drops DeepSpeed's references to the groups that die
    with the world: its clone of the world group (`deepspeed.utils.groups._WORLD_GROUP`) and the
    `mpu` a tensor-parallel engine left in `deepspeed.utils.groups.mpu`; a later engine without
    one (plain data parallelism) would otherwise take its dead data-parallel group."""
    if dist.is_available() and dist.is_initialized():
        deepspeed.comm.destroy_process_group()
