"""megatiny.parallel.process_group in this process: a world of one made, ended and made again."""
from __future__ import annotations

import torch
import torch.distributed as dist

from megatiny.parallel import process_group
from megatiny.parallel.state import ParallelLayout, ParallelState


def test_shutdown_forgets_deepspeed_groups_so_the_process_can_start_again(restore_environment):
    """After a tensor-parallel engine, DeepSpeed holds its `mpu` (deepspeed.initialize(mpu=...)
    stores it in deepspeed.utils.groups) and a clone of the world group; both die with the process
    group. shutdown() drops them, so the next run's data-parallel group is a live one."""
    from deepspeed.utils import groups

    process_group.init_distributed("gloo", timeout_s=60)
    try:
        groups.mpu = ParallelState(ParallelLayout()).mpu()  # what DeepSpeed's engine keeps of its mpu
        groups._clone_world_group()
    finally:
        process_group.shutdown()
    assert not dist.is_initialized()
    assert groups.mpu is None and groups._WORLD_GROUP is None

    process_group.init_distributed("gloo", timeout_s=60)
    try:
        ones = torch.ones(2)
        dist.all_reduce(ones, group=groups._get_data_parallel_group())  # plain data parallelism's group
        assert ones.tolist() == [1.0, 1.0]
    finally:
        process_group.shutdown()
