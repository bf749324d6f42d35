"""Launched by tests/checkpoint: train a tiny GQA megatiny GPT under DeepSpeed and save checkpoints.

The run saves two tags through `CheckpointManager`, as megatiny training does (DeepSpeed files, RNG
states, then megatiny.json, then `latest` naming the newest complete tag):
  step_00000000  the initial weights (identical for every world size: same seed, and each rank
                 initialises the full tensors before ZeRO partitions them)
  step_{N:08d}   after N optimizer steps on random tokens
The global batch is fixed (GLOBAL_BATCH samples) and split evenly across ranks, so runs with one and
two ranks see the same data.
"""
import argparse
import os

import deepspeed
import torch
import torch.distributed as dist

from megatiny.checkpoint.manager import CheckpointManager
from megatiny.checkpoint.metadata import TrainState, WorldLayout
from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.parallel.process_group import skip_inference_shm_allreduce
from megatiny.process_env import exit_fast

GLOBAL_BATCH = 6  # divisible by 1, 2 and 3 ranks
SEQ_LENGTH = 16


MATH = ModelRuntime(attention_backend="math")


def tiny_config(tie: bool):
    # GQA: 8 query heads share 2 KV groups (4 heads each).
    return get_preset("tiny-test", tie_word_embeddings=tie)


def save(engine, save_dir: str, step: int, config, stage: int, precision: str) -> None:
    world = WorldLayout(world_size=dist.get_world_size(), zero_stage=stage, precision=precision)
    manager = CheckpointManager(save_dir, rank=dist.get_rank(), world_size=world.world_size)
    manager.save(engine, config, TrainState(step=step, consumed_samples=step * GLOBAL_BATCH, world=world))


def train_and_save(save_dir: str, stage: int, tie: bool, steps: int, fp32: bool) -> None:
    """One DeepSpeed engine: save the initial weights, train `steps` steps, save again.

    bf16 unless `fp32`: both checkpoint layouts are tested whatever this machine's `auto` is."""
    rank, world = dist.get_rank(), dist.get_world_size()
    precision = "fp32" if fp32 else "bf16"
    micro = GLOBAL_BATCH // world
    ds_config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        **({} if fp32 else {"bf16": {"enabled": True}}),
        # a small sub_group_size splits ZeRO-3's fp32 buffers into several sub-groups, as a large
        # model's are (DeepSpeed's default is 1e9 elements)
        "zero_optimization": {"stage": stage, "sub_group_size": 20_000},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
    }
    config = tiny_config(tie)
    torch.manual_seed(0)
    if stage == 3:
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = GPT(config, runtime=MATH)
    else:
        model = GPT(config, runtime=MATH)
    # Two parameter groups like megatiny training (weight decay on matrices only), so the ZeRO
    # flat buffers hold several groups.
    matrices = [p for p in model.parameters() if len(getattr(p, "ds_shape", p.shape)) >= 2]
    vectors = [p for p in model.parameters() if len(getattr(p, "ds_shape", p.shape)) < 2]
    groups = [{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    save(engine, save_dir, 0, config, stage, precision)
    generator = torch.Generator().manual_seed(1234)
    for _ in range(steps):
        batch = torch.randint(0, config.vocab_size, (GLOBAL_BATCH, SEQ_LENGTH + 1), generator=generator)
        batch = batch[rank * micro:(rank + 1) * micro]
        loss = engine(batch[:, :-1], labels=batch[:, 1:])
        engine.backward(loss)
        engine.step()
    save(engine, save_dir, steps, config, stage, precision)
    engine.destroy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--save-root", required=True)
    parser.add_argument("--run", action="append", required=True,
                        help="NAME:STAGE[:tie][:fp32] (bf16 unless fp32); saved under SAVE_ROOT/NAME")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    skip_inference_shm_allreduce()
    deepspeed.init_distributed(dist_backend="gloo")
    if GLOBAL_BATCH % dist.get_world_size():
        raise ValueError(f"world size {dist.get_world_size()} must divide the global batch {GLOBAL_BATCH}")
    for spec in args.run:
        name, stage, *flags = spec.split(":")
        train_and_save(os.path.join(args.save_root, name), int(stage), "tie" in flags, args.steps,
                       "fp32" in flags)
    # Without this, gloo ranks on CPU abort with "terminate called without an active exception".
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_fast(0)
