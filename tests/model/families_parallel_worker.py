"""Launched by tests/model/test_families_parallel.py (2 CPU ranks, gloo): the family features
(llama3 RoPE scaling, an explicit head size, a sliding window, Qwen2's q/k/v biases, Llama's
attention_bias on q/k/v/o) under TP2, TP2 + SP and CP2, against the one-rank GPT built with the
same seed: the initial weights, then (with non-zero biases loaded into both) logits, loss and
every gradient (the largest relative difference), and TP2 greedy generation with the KV cache.
Every rank writes OUT_DIR/families-rank<R>.json."""
from __future__ import annotations

import argparse
import json
import os

import deepspeed
import torch
import torch.distributed as dist

from megatiny.checkpoint.partition import partition_dim, shard_state_dict
from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.model.generate import generate
from megatiny.parallel.context_parallel import split_for_context
from megatiny.parallel.process_group import skip_inference_shm_allreduce
from megatiny.parallel.state import ParallelLayout, ParallelState
from megatiny.parallel.tensor_parallel import shard
from megatiny.process_env import exit_fast

SEQ = 16
LAYOUTS = {"tp2": {"tensor": 2}, "tp2-sp": {"tensor": 2, "sequence_parallel": True}, "cp2": {"context": 2}}
LLAMA3 = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 4}  # positions up to 16: past the original length
CONFIGS = {
    "llama3.2": dict(kv_channels=16, rope_theta=500000.0, rope_scaling=LLAMA3, tie_word_embeddings=True),
    "mistral": dict(family="mistral", sliding_window=5),
    "qwen2.5": dict(family="qwen2", qkv_bias=True, tie_word_embeddings=True),
    "llama-bias": dict(qkv_bias=True, output_bias=True),
}


def rel_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).abs().max() / reference.abs().max().clamp(min=1e-30))


def check(layout_name: str, config_name: str) -> dict[str, object]:
    state = ParallelState(ParallelLayout.for_world(dist.get_world_size(), **LAYOUTS[layout_name]))
    config = get_preset("tiny-test", num_layers=2, **CONFIGS[config_name])
    runtime = ModelRuntime(attention_backend="math")
    torch.manual_seed(0)
    reference = GPT(config, runtime=runtime)
    torch.manual_seed(0)
    try:
        model = GPT(config, state, runtime=runtime)
    except ValueError as refused:
        return {"refused": str(refused)}
    t, c = state.layout.tensor, state.layout.context
    initial = shard_state_dict(reference.state_dict(), state.tensor_rank, t)
    init = max(rel_diff(v, initial[k]) if v.abs().max() > 0 else float((v != initial[k]).any())
               for k, v in model.state_dict().items())
    with torch.no_grad():  # non-zero biases (initialized to zero) so a misplaced one shows
        generator = torch.Generator().manual_seed(2)
        for name, param in reference.named_parameters():
            if name.endswith(".bias"):
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    model.load_state_dict(shard_state_dict(reference.state_dict(), state.tensor_rank, t))
    tokens = torch.randint(0, config.vocab_size, (2, SEQ + 1), generator=torch.Generator().manual_seed(1))
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    mine = [split_for_context(x, state.context_rank, c) for x in (inputs, labels)]
    with torch.no_grad():
        logits = rel_diff(model(mine[0]), reference(inputs).chunk(c, dim=1)[state.context_rank])
    ref_loss = reference(inputs, labels=labels)
    ref_loss.backward()
    loss = model(*mine[:1], labels=mine[1])
    loss.backward()
    grads = 0.0
    reference_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        grad = param.grad.clone()
        if c > 1:  # each context rank holds its slice's share, scaled by c
            dist.all_reduce(grad, group=state.context_group)
            grad /= c
        full = reference_params[name].grad
        dim = partition_dim(name)
        want = full if dim is None or t == 1 else shard(full, dim, state.tensor_rank, t)
        grads = max(grads, rel_diff(grad, want))
    result = {"init": init, "logits": logits, "loss": rel_diff(loss.detach(), ref_loss.detach()),
              "grads": grads}
    if not state.sequence_parallel and c == 1:
        prompt = inputs[:, :3]
        result["same_generation"] = torch.equal(generate(model, prompt, 10), generate(reference, prompt, 10))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    skip_inference_shm_allreduce()
    deepspeed.init_distributed(dist_backend="gloo")
    results = {f"{layout}/{name}": check(layout, name) for layout in LAYOUTS for name in CONFIGS}
    path = os.path.join(args.out_dir, f"families-rank{dist.get_rank()}.json")
    with open(path, "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_fast(0)
