"""Per-rank parameter and activation memory under tensor parallelism, with and without sequence
parallelism, for a slice of the TinyLlama 1.1B shape (hidden 2048, ffn 5632, 32 heads, 4 kv groups,
vocab 32000; 2 layers by default).

For each layout (TP1; TP2, TP4 each without and with SP) fresh gloo CPU processes build the model
and run one training forward (with labels: the fused loss) of one micro-batch. Measured on rank 0:
- parameter bytes: the rank's own parameters (fp32);
- activation bytes: everything autograd saves for the backward pass, captured with
  torch.autograd.graph.saved_tensors_hooks, counted once per storage, parameters excluded: the
  memory held from forward to backward. The fused loss saves its precomputed gradients: that of
  the hidden states is counted as an activation; that of the head (shard) weight, a
  parameter-sized fp32 gradient buffer, is reported in its own column ("head grad").
Ratios are to TP1. Goal: parameters ~1/TP; activations ~1/TP with SP (without SP the norms,
residuals and the replicated inputs of the parallel layers stay full size on every rank).

    python benchmarks/bench_tensor_parallel_memory.py --seq 2048
"""
from __future__ import annotations

import argparse
import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.parallel.state import ParallelLayout, ParallelState


def layouts(tensor_sizes: list[int]) -> list[tuple[int, bool]]:
    """(tensor, sequence_parallel) pairs: TP1, then each size without and with SP."""
    return [(1, False)] + [(t, sp) for t in tensor_sizes if t > 1 for sp in (False, True)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def saved_activation_bytes(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages autograd saves during one forward."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids, labels=labels)
    del loss
    return sum(saved.values())


def _measure(rank: int, tensor: int, sequence_parallel: bool, args: argparse.Namespace, port: int,
             results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=tensor)
    config = get_preset(args.preset, num_layers=args.layers)
    parallel = None
    if tensor > 1:
        parallel = ParallelState(ParallelLayout.for_world(tensor, tensor=tensor,
                                                          sequence_parallel=sequence_parallel))
    torch.manual_seed(0)
    model = GPT(config, parallel, runtime=ModelRuntime(attention_backend="sdpa"))
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1),
                           generator=torch.Generator().manual_seed(1))
    saved = saved_activation_bytes(model, tokens[:, :-1], tokens[:, 1:])
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    head_grad = model.lm_head.weight.numel() * 4  # fp32, saved by the fused loss for backward
    if rank == 0:
        results[(tensor, sequence_parallel)] = (params, saved - head_grad, head_grad)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tinyllama-1.1b")
    parser.add_argument("--tensor-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    manager = mp.Manager()
    results = manager.dict()
    for tensor, sequence_parallel in layouts(args.tensor_sizes):
        mp.spawn(_measure, args=(tensor, sequence_parallel, args, _free_port(), results), nprocs=tensor)
    base_params, base_acts, _ = results[(1, False)]
    print(f"{args.preset} slice: {args.layers} layers, micro-batch {args.batch} x {args.seq} tokens, fp32; "
          "per-rank MiB and ratio to TP1")
    print(f"{'layout':8s} {'params':>8s} {'ratio':>6s} {'activations':>12s} {'ratio':>6s} {'head grad':>10s}")
    rows = []
    for tensor, sequence_parallel in layouts(args.tensor_sizes):
        params, acts, head_grad = results[(tensor, sequence_parallel)]
        name = f"TP{tensor}" + ("+SP" if sequence_parallel else "")
        rows.append({"layout": name, "param_bytes": params, "activation_bytes": acts,
                     "head_grad_bytes": head_grad, "param_ratio": params / base_params,
                     "activation_ratio": acts / base_acts})
        print(f"{name:8s} {params / 2**20:8.1f} {params / base_params:6.3f} {acts / 2**20:12.1f} "
              f"{acts / base_acts:6.3f} {head_grad / 2**20:10.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"layers": args.layers, "seq": args.seq, "batch": args.batch, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
