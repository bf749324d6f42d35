"""Launched by tests/eval: put given weights into a 2-rank ZeRO-3 engine and save a checkpoint root.

The root is written by `CheckpointManager`, as megatiny training writes it, so evaluation can be
pointed at it like at a training run.
"""
import argparse
import os

import deepspeed
import torch.distributed as dist
from safetensors.torch import load_file

from megatiny.checkpoint.manager import CheckpointManager
from megatiny.checkpoint.metadata import TrainState, WorldLayout, read_metadata
from megatiny.model import GPT
from megatiny.parallel.process_group import skip_inference_shm_allreduce
from megatiny.process_env import exit_fast

STEP = 80


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--weights", required=True, help="megatiny weights dir to start from")
    parser.add_argument("--save-dir", required=True)
    args = parser.parse_args()

    skip_inference_shm_allreduce()
    deepspeed.init_distributed(dist_backend="gloo")
    metadata = read_metadata(args.weights)
    model = GPT(metadata["model"])
    model.load_state_dict(load_file(os.path.join(args.weights, "model.safetensors")))
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 3},
                 "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    world = WorldLayout(world_size=dist.get_world_size(), zero_stage=3, precision="fp32")
    manager = CheckpointManager(args.save_dir, rank=dist.get_rank(), world_size=world.world_size)
    manager.save(engine, metadata["model"], TrainState(step=STEP, consumed_samples=STEP * 16, world=world),
                 tokenizer=metadata["tokenizer"])
    engine.destroy()
    dist.destroy_process_group()  # gloo ranks abort at exit without this


if __name__ == "__main__":
    main()
    exit_fast(0)
