"""Launched by tests/foundation/test_deepspeed_launch.py: a tiny MLP under ZeRO-3, precision auto.

Every rank writes its per-step losses to OUT_DIR/rank{R}.json, so the test can check that training
really happened and that all ranks agree (ZeRO-3 reduces gradients across ranks).
"""
import argparse
import json
import os

import deepspeed
import torch
import torch.distributed as dist

from megatiny.parallel.process_group import skip_inference_shm_allreduce
from megatiny.precision import detect_hardware, resolve_precision
from megatiny.process_env import exit_fast
from megatiny.training.config import precision_section


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    skip_inference_shm_allreduce()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    precision = resolve_precision("auto", detect_hardware("cpu"))
    ds_config = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        **precision_section(precision, {}),
        "zero_optimization": {"stage": 3},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
    }
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=ds_config)
    generator = torch.Generator().manual_seed(1234 + rank)
    target_weights = torch.linspace(-1, 1, 16)
    losses = []
    for _ in range(args.steps):
        x = torch.randn(8, 16, generator=generator)
        y = (x @ target_weights).unsqueeze(-1)
        prediction = engine(x.to(precision.dtype)).float()
        loss = torch.nn.functional.mse_loss(prediction, y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    with open(os.path.join(args.out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world_size": world, "losses": losses}, f)
    dist.barrier()
    # Without this, gloo ranks on CPU abort with "terminate called without an active exception".
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_fast(0)
