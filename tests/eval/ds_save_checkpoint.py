"""Launched by tests/eval: put given weights into a 2-rank ZeRO-3 engine and save a checkpoint root.

The root gets the layout megatiny training writes (tag dir with DeepSpeed's files + megatiny.json,
then an atomically written `latest`), so evaluation can be pointed at it like at a training run.
"""
import argparse
import os

import deepspeed
import torch.distributed as dist
from safetensors.torch import load_file

from megatiny.checkpoint.io import tag_for_step, write_latest
from megatiny.checkpoint.metadata import read_metadata, write_metadata
from megatiny.model import GPT

TAG = tag_for_step(80)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--weights", required=True, help="megatiny weights dir to start from")
    parser.add_argument("--save-dir", required=True)
    args = parser.parse_args()

    deepspeed.init_distributed(dist_backend="gloo")
    metadata = read_metadata(args.weights)
    model = GPT(metadata["model"])
    model.load_state_dict(load_file(os.path.join(args.weights, "model.safetensors")))
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 3},
                 "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    engine.save_checkpoint(args.save_dir, tag=TAG, save_latest=False)
    if dist.get_rank() == 0:
        write_metadata(os.path.join(args.save_dir, TAG), metadata["model"], tokenizer=metadata["tokenizer"],
                       step=80, consumed_samples=80 * 16, extra={"world_size": dist.get_world_size()})
        write_latest(args.save_dir, TAG)
    dist.barrier()
    engine.destroy()
    dist.destroy_process_group()  # gloo ranks abort at exit without this


if __name__ == "__main__":
    main()
