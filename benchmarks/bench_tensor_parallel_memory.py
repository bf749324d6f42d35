"""Per-rank training memory under tensor parallelism, with and without sequence parallelism:
parameters, gradients, optimizer states (fp32 master weights and Adam's two moments) and
activations, for a model preset (by default a 2-layer slice of the TinyLlama 1.1B shape: hidden
2048, ffn 5632, 32 heads, 4 kv groups, vocab 32000), then computed for the full-depth model and
for bf16 training under ZeRO.

For each layout (TP1; TP2, TP4 each without and with SP) fresh gloo CPU processes build the model
in --dtype (fp32, or bf16 as GPU training holds it) and, on rank 0, measure:
- parameters: the rank's own parameters;
- activations: everything autograd saves for the backward pass during one training forward (with
  labels: the fused loss) of one micro-batch, captured with torch.autograd.graph.saved_tensors_hooks,
  counted once per storage, parameters excluded: the memory held from forward to backward. Each
  saved storage is attributed to the block whose forward saved it first, so the bytes of one block
  are measured (the last block: its input comes from a block, as in every block but the first).
  The fused loss saves its precomputed gradients: that of the hidden states is an activation; that
  of the head (shard) weight, a parameter-sized fp32 buffer, has its own column ("head grad");
- gradients: the bytes of every parameter's .grad after the backward of that forward;
- optimizer states: a real DeepSpeed ZeRO-1 engine (on the model cast to fp32, the rank's tensor-parallel mpu,
  torch AdamW on `param_groups`) takes one step; counted are its fp32 master partitions
  (`single_partition_of_fp32_groups`) and the AdamW state tensors (exp_avg, exp_avg_sq). The
  engine's data-parallel size is 1 (world = tensor), so these are unsharded by ZeRO.

Computed from those (printed as a second table, labelled computed):
- the full-depth model (--full-layers, 22 for TinyLlama): bytes(L) = bytes(slice) +
  (L - slice layers) x bytes(one block), for parameters (measured per block) and activations
  (measured per block); gradients and optimizer states scale with the parameters;
- bf16 training as on GPUs: parameters, gradients and activations as measured with --dtype bf16
  (half the fp32 figures with --dtype fp32), master and moments fp32 as measured (12 bytes per
  parameter);
- ZeRO stage z over D = --gpus / TP data-parallel ranks: stage >= 1 divides master + moments by D,
  stage >= 2 the gradients, stage 3 the parameters.

    python benchmarks/bench_tensor_parallel_memory.py --seq 2048 --dtype bf16   # docs/PARALLELISM.md
    python benchmarks/bench_tensor_parallel_memory.py --preset tiny-test --query-groups 4 --seq 128 \
        --dtype bf16
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass

import deepspeed
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.parallel.process_group import skip_inference_shm_allreduce
from megatiny.parallel.state import ParallelLayout, ParallelState
from megatiny.process_env import exit_fast, free_port
from megatiny.training.engine import param_groups

UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
OPTIMIZER_STEP_TOKENS = 16  # the optimizer states do not depend on the batch: a short one will do
ZERO_STAGES = (0, 1, 2, 3)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RankMemory:
    """Bytes on tensor-parallel rank 0 of one layout (model in --dtype, optimizer fp32)."""

    params: int
    grads: int
    master: int  # fp32 master weights held by the ZeRO optimizer
    moments: int  # AdamW exp_avg + exp_avg_sq
    activations: int  # saved for backward, head grad excluded
    head_grad: int  # the fused loss's precomputed fp32 head-weight gradient
    block_params: int  # one transformer block's parameters
    block_activations: int  # what one block's forward saves (the last block)
    param_count: int  # elements (for bytes per parameter)


def layouts(tensor_sizes: list[int]) -> list[tuple[int, bool]]:
    """(tensor, sequence_parallel) pairs: TP1, then each size without and with SP."""
    return [(1, False)] + [(t, sp) for t in tensor_sizes if t > 1 for sp in (False, True)]


def layout_name(tensor: int, sequence_parallel: bool) -> str:
    return f"TP{tensor}" + ("+SP" if sequence_parallel else "")


def unit_for(size: float) -> tuple[str, int]:
    """The largest unit in which `size` bytes is at least 1."""
    return next(((name, b) for name, b in UNITS if size >= b), UNITS[-1])


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_activation_bytes(model: GPT, input_ids: torch.Tensor, labels: torch.Tensor
                           ) -> tuple[torch.Tensor, int, list[int]]:
    """One training forward. Returns the loss, the bytes of the distinct non-parameter storages
    autograd saved, and of those the bytes first saved inside each block's forward."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, tuple[int, int | None]] = {}  # storage -> (bytes, block index or None)
    current: list[int | None] = [None]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_storages and storage.data_ptr() not in saved:
            saved[storage.data_ptr()] = (storage.nbytes(), current[0])
        return tensor

    def enter(index: int):
        return lambda module, inputs: current.__setitem__(0, index)

    hooks = []
    for i, block in enumerate(model.model.layers):
        hooks.append(block.register_forward_pre_hook(enter(i)))
        hooks.append(block.register_forward_hook(lambda module, inputs, output: current.__setitem__(0, None)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(input_ids, labels=labels)
    finally:
        for hook in hooks:
            hook.remove()
    per_block = [sum(b for b, owner in saved.values() if owner == i) for i in range(len(model.model.layers))]
    return loss, sum(b for b, _ in saved.values()), per_block


def optimizer_state_bytes(model: GPT, state: ParallelState | None, tokens: torch.Tensor) -> tuple[int, int]:
    """(fp32 master bytes, AdamW moment bytes) of a DeepSpeed ZeRO-1 engine after one step."""
    config = {"train_micro_batch_size_per_gpu": tokens.shape[0], "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True,
              "steps_per_print": 10**12}
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4)
    mpu = state.mpu() if state is not None else None
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, mpu=mpu)
    engine.backward(engine(tokens[:, :-1], labels=tokens[:, 1:]))
    engine.step()
    zero = engine.optimizer
    master = nbytes(zero.single_partition_of_fp32_groups)
    moments = nbytes(value for per_param in zero.optimizer.state.values() for key, value in per_param.items()
                     if key in ("exp_avg", "exp_avg_sq"))
    engine.destroy()
    return master, moments


def _measure(rank: int, tensor: int, sequence_parallel: bool, args: argparse.Namespace, port: int,
             results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(tensor))
    torch.set_num_threads(1)
    skip_inference_shm_allreduce()
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    config = model_config(args)
    parallel = ParallelState(ParallelLayout.for_world(tensor, tensor=tensor,
                                                      sequence_parallel=sequence_parallel))
    torch.manual_seed(0)
    model = GPT(config, parallel if tensor > 1 else None, runtime=ModelRuntime(attention_backend="sdpa"))
    model.to(DTYPES[args.dtype])
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1),
                           generator=torch.Generator().manual_seed(1))
    loss, saved, per_block = saved_activation_bytes(model, tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    grads = nbytes(p.grad for p in model.parameters())
    params = nbytes(model.parameters())
    block_params = nbytes(model.model.layers[-1].parameters())
    model.zero_grad(set_to_none=True)
    del loss
    model.float()  # the ZeRO engine runs in fp32: its master weights and moments are fp32 either way
    master, moments = optimizer_state_bytes(model, parallel if tensor > 1 else None,
                                            tokens[:, :OPTIMIZER_STEP_TOKENS + 1])
    head_grad = model.lm_head.weight.numel() * 4  # fp32, saved by the fused loss for backward
    if rank == 0:
        results[(tensor, sequence_parallel)] = RankMemory(
            params=params, grads=grads, master=master, moments=moments,
            activations=saved - head_grad, head_grad=head_grad,
            block_params=block_params, block_activations=per_block[-1],
            param_count=sum(p.numel() for p in model.parameters()))
    dist.barrier()
    dist.destroy_process_group()


def model_config(args: argparse.Namespace):
    overrides = {}
    if args.layers is not None:
        overrides["num_layers"] = args.layers
    if args.query_groups is not None:
        overrides["num_query_groups"] = args.query_groups
    return get_preset(args.preset, **overrides)


def full_depth(m: RankMemory, slice_layers: int, full_layers: int) -> dict[str, float]:
    """Computed fp32 bytes of the `full_layers` model from a `slice_layers` measurement."""
    extra = full_layers - slice_layers
    params = m.params + extra * m.block_params
    scale = params / m.params  # gradients and optimizer states are per parameter
    return {"params": params, "grads": m.grads * scale, "master": m.master * scale,
            "moments": m.moments * scale, "activations": m.activations + extra * m.block_activations,
            "head_grad": m.head_grad}


def bf16_training(measured: dict[str, float], dtype: str) -> dict[str, float]:
    """bf16 parameters, gradients and activations: as measured with --dtype bf16, half the fp32
    figures otherwise; fp32 master and moments as measured."""
    if dtype == "bf16":
        return measured
    return {**measured, "params": measured["params"] / 2, "grads": measured["grads"] / 2,
            "activations": measured["activations"] / 2}


def zero_sharded(b: dict[str, float], stage: int, data: int) -> float:
    """Per-rank bytes of parameters, gradients and optimizer states under ZeRO `stage` over
    `data` data-parallel ranks (computed: ZeRO partitions evenly; its padding is ignored)."""
    states = (b["master"] + b["moments"]) / (data if stage >= 1 else 1)
    grads = b["grads"] / (data if stage >= 2 else 1)
    params = b["params"] / (data if stage >= 3 else 1)
    return params + grads + states


def print_measured(results: dict, tensor_sizes: list[int], header: str) -> list[dict]:
    base = results[(1, False)]
    unit, scale = unit_for(base.params)
    print(f"{header}; per-rank {unit} and ratio to TP1")
    columns = ("params", "grads", "master", "moments", "activations")
    print(f"{'layout':8s} " + " ".join(f"{c:>11s} {'ratio':>6s}" for c in columns) + f" {'head grad':>10s}"
          f" {'block params':>12s} {'block acts':>10s}")
    rows = []
    for tensor, sequence_parallel in layouts(tensor_sizes):
        m: RankMemory = results[(tensor, sequence_parallel)]
        name = layout_name(tensor, sequence_parallel)
        row = {"layout": name, **{f"{k}_bytes": v for k, v in asdict(m).items() if k != "param_count"},
               "param_count": m.param_count}
        row.update({f"{c}_ratio": getattr(m, c) / getattr(base, c) for c in columns})
        row["activation_ratio"] = row["activations_ratio"]
        row["param_ratio"] = row["params_ratio"]
        rows.append(row)
        cells = [f"{getattr(m, c) / scale:11.1f} {row[f'{c}_ratio']:6.3f}" for c in columns]
        cells += [f"{m.head_grad / scale:10.1f}", f"{m.block_params / scale:12.1f}",
                  f"{m.block_activations / scale:10.1f}"]
        print(f"{name:8s} " + " ".join(cells))
    return rows


def print_computed(results: dict, args: argparse.Namespace, slice_layers: int) -> list[dict]:
    rows = []
    for tensor, sequence_parallel in layouts(args.tensor_sizes):
        b = bf16_training(full_depth(results[(tensor, sequence_parallel)], slice_layers, args.full_layers),
                          args.dtype)
        data = args.gpus // tensor
        rows.append({"layout": layout_name(tensor, sequence_parallel), "data_parallel": data,
                     **{f"{k}_bytes": v for k, v in b.items()},
                     **{f"zero{z}_bytes": zero_sharded(b, z, data) for z in ZERO_STAGES}})
    unit, scale = unit_for(rows[0]["params_bytes"])
    print(f"\ncomputed: {args.full_layers}-layer model, bf16 training (bf16 params, grads, activations; fp32 "
          f"master + moments), per rank, {unit}; ZeRO-z over D = {args.gpus} / TP data-parallel ranks; "
          f"activations per {args.batch} x {args.seq} micro-batch")
    print(f"{'layout':8s} {'D':>3s} {'params':>7s} {'grads':>7s} {'states':>7s} {'acts':>7s} "
          f"{'head grad':>9s} " + " ".join(f"{'ZeRO-' + str(z):>7s}" for z in ZERO_STAGES)
          + "   (ZeRO-z: params+grads+states)")
    for row in rows:
        states = row["master_bytes"] + row["moments_bytes"]
        print(f"{row['layout']:8s} {row['data_parallel']:3d} {row['params_bytes'] / scale:7.2f} "
              f"{row['grads_bytes'] / scale:7.2f} {states / scale:7.2f} "
              f"{row['activations_bytes'] / scale:7.2f} {row['head_grad_bytes'] / scale:9.2f} "
              + " ".join(f"{row[f'zero{z}_bytes'] / scale:7.2f}" for z in ZERO_STAGES))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tinyllama-1.1b")
    parser.add_argument("--tensor-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--layers", type=int, help="blocks to build (default: 2 for tinyllama-1.1b, "
                        "else the preset's)")
    parser.add_argument("--query-groups", type=int, help="override num_query_groups (TP must divide it)")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--full-layers", type=int, help="depth of the computed full model "
                        "(default: the preset's)")
    parser.add_argument("--gpus", type=int, default=16, help="ranks of the computed layout (D = gpus / TP)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="parameters, gradients and activations are measured in this dtype")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    if args.layers is None:
        args.layers = 2 if args.preset == "tinyllama-1.1b" else preset.num_layers
    if args.full_layers is None:
        args.full_layers = preset.num_layers
    manager = mp.Manager()
    results = manager.dict()
    for tensor, sequence_parallel in layouts(args.tensor_sizes):
        mp.spawn(_measure, args=(tensor, sequence_parallel, args, free_port(), results), nprocs=tensor)
    results = dict(results)
    measured = print_measured(results, args.tensor_sizes,
                              f"measured: {args.preset}, {args.layers} layers, micro-batch {args.batch} x "
                              f"{args.seq} tokens, {args.dtype} (optimizer: fp32 ZeRO-1)")
    computed = print_computed(results, args, args.layers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "layers": args.layers, "seq": args.seq, "batch": args.batch,
                       "dtype": args.dtype, "full_layers": args.full_layers, "gpus": args.gpus,
                       "rows": measured, "computed": computed}, f, indent=1)


if __name__ == "__main__":
    main()
    exit_fast(0)
