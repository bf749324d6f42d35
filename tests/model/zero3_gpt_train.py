"""Launched by tests/model/test_zero3.py: GPT built under deepspeed.zero.Init, trained with ZeRO-3,
precision auto and activation checkpointing on every block. Writes OUT_DIR/rank{R}.json with the losses and
what the partitioned model looked like."""
import argparse
import json
import os

import deepspeed
import torch
import torch.distributed as dist

from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.parallel.process_group import skip_inference_shm_allreduce
from megatiny.precision import detect_hardware, resolve_precision
from megatiny.process_env import exit_fast
from megatiny.training.config import precision_section


def _gathered_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full copies of every (partitioned) parameter, by name."""
    named = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(named.values())):
        return {name: p.detach().float().clone() for name, p in named.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--tie", action="store_true")
    args = parser.parse_args()

    skip_inference_shm_allreduce()
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    config = get_preset("tiny-test", num_layers=3, tie_word_embeddings=args.tie)
    ds_config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        **precision_section(resolve_precision("auto", detect_hardware("cpu")), {}),
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "torch_adam": True}},
    }
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = GPT(config, runtime=ModelRuntime(activation_checkpointing=1))
    # Partitioned: every parameter's local data is a shard, yet the logical sizes are all there.
    shard_numel = sum(p.ds_tensor.numel() for p in model.parameters())
    resident_numel = sum(p.numel() for p in model.parameters())  # gathered copies outside forward
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    o_proj = model.model.layers[0].self_attn.o_proj.weight
    with deepspeed.zero.GatheredParameters([q_proj, o_proj]):
        init_stds = [q_proj.float().std().item(), o_proj.float().std().item()]
    before = _gathered_copy(model)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=ds_config)
    gen = torch.Generator().manual_seed(100 + rank)
    batch = torch.randint(0, config.vocab_size, (4, 33), generator=gen)  # one batch, memorized
    losses = []
    for _ in range(args.steps):
        loss = engine(batch[:, :-1], labels=batch[:, 1:])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    after = _gathered_copy(model)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    with open(os.path.join(args.out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"losses": losses, "num_parameters": model.num_parameters(),
                   "expected_parameters": config.num_parameters(), "shard_numel": shard_numel,
                   "resident_numel": resident_numel,
                   "init_stds": init_stds, "unchanged_parameters": unchanged, "init_std": config.init_std,
                   "num_layers": config.num_layers}, f)
    dist.barrier()
    dist.destroy_process_group()  # else gloo ranks abort at exit


if __name__ == "__main__":
    main()
    exit_fast(0)
