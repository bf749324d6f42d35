"""GPU training-step throughput and MFU of GPT per attention backend (TinyLlama recipe by default).

One step = forward + backward + AdamW on one micro-batch, weights in --dtype. Reports tokens/s,
achieved TFLOP/s (ModelConfig.flops_per_token: torchtitan/TinyLlama convention), MFU against the
device's dense peak, and peak allocated memory, for each attention backend, with the first
backend as the baseline of the printed ratios.

    python benchmarks/bench_gpu_model.py                      # tinyllama-1.1b, bf16, seq 2048, cuda
    python benchmarks/bench_gpu_model.py --device cpu --preset tiny-test --seq 64 --dtype fp32
    --compile: also with each block torch.compiled (runtime.compile: true)
    --max-batch N: also the largest micro-batch that fits, doubling from --batch up to N
    --json PATH: also write every measurement (benchmarks/gpu/run_all.sh reads it)
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.model.attention import FLASH_ATTN_AVAILABLE
from megatiny.precision import resolve_dtype
from megatiny.process_env import exit_fast
from megatiny.training.flops import peak_tflops_for, throughput


def default_backends(device: torch.device, dtype: torch.dtype) -> list[str]:
    flash = FLASH_ATTN_AVAILABLE and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    return (["flash_attn"] if flash else []) + ["sdpa", "math"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(backend: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
            peak: float | None, compile: bool = False, batch_size: int | None = None,
            activation_checkpointing: int | None = None) -> dict:
    """Throughput (megatiny.training.flops.throughput: tokens/s, TFLOP/s, MFU when `peak` is known)
    and peak memory of args.steps timed steps for one attention backend (micro-batch
    `batch_size`, default args.batch; activation checkpointing default args')."""
    config = get_preset(args.preset)
    batch_size = batch_size or args.batch
    every = args.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    runtime = ModelRuntime(attention_backend=backend, activation_checkpointing=every, compile=compile)
    torch.manual_seed(0)
    model = GPT(config, runtime=runtime).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = torch.randint(0, config.vocab_size, (batch_size, args.seq + 1), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        loss = model(batch[:, :-1], labels=batch[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    first = time.perf_counter()
    for _ in range(max(args.warmup, 1)):  # the first step compiles
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    perf = throughput(batch_size * args.seq * args.steps, time.perf_counter() - start,
                      config.flops_per_token(args.seq), 1, peak)
    return {"backend": backend, "compile": compile, "activation_checkpointing": every,
            "micro_batch": batch_size, "warmup_s": start - first, **perf,
            "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                             if device.type == "cuda" else float("nan"))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", default="tinyllama-1.1b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4, help="micro-batch size")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                        help="default auto: what precision: auto picks on the device")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backends", nargs="+", choices=["flash_attn", "sdpa", "math"],
                        help="default: every backend available here")
    parser.add_argument("--activation-checkpointing", type=int, nargs="+", default=[0],
                        help="one or more settings (0 none, 1 every block), each measured")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: by GPU name)")
    parser.add_argument("--compile", action="store_true", help="also with compiled blocks")
    parser.add_argument("--max-batch", type=int, default=0,
                        help="also search the largest micro-batch that fits, doubling up to this")
    parser.add_argument("--json", help="write every measurement to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; use --device cpu (with a small --preset)")
    dtype = resolve_dtype(args.dtype, device)
    backends = args.backends or default_backends(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops_for(name if device.type == "cuda" else None, args.peak_tflops)
    dtype_name = str(dtype).removeprefix("torch.")
    print(f"{args.preset} {dtype_name} seq {args.seq} micro-batch {args.batch} on {name}, "
          f"peak {peak} TFLOP/s")
    header = {"preset": args.preset, "dtype": dtype_name, "seq": args.seq, "device": name,
              "peak_tflops": peak}
    results: list[dict] = []
    full: set[tuple] = set()  # combinations that ran out of memory
    combos = [(backend, compile, every) for backend in backends
              for compile in ((False, True) if args.compile else (False,))
              for every in args.activation_checkpointing]
    sizes = [args.batch]  # then (--max-batch) doubled sizes until one does not fit, per combination
    while sizes[-1] * 2 <= args.max_batch:
        sizes.append(sizes[-1] * 2)
    for size in sizes:
        for combo in (c for c in combos if c not in full):
            results.append(_measure_one(*combo, size, args, device, dtype, peak))
            if results[-1].get("out_of_memory"):
                full.add(combo)
            if args.json:  # after every measurement: a time cap keeps what was measured
                with open(args.json, "w") as f:
                    json.dump({**header, "results": results}, f, indent=1)


def _measure_one(backend: str, compile: bool, every: int, size: int, args, device, dtype, peak) -> dict:
    """One measurement, printed; out of memory is recorded as such."""
    try:
        r = measure(backend, args, device, dtype, peak, compile, size, every)
    except torch.OutOfMemoryError:
        r = {"backend": backend, "compile": compile, "activation_checkpointing": every,
             "micro_batch": size, "out_of_memory": True}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the finished model and optimizer are gone
    label = f"{backend:10s} {'compiled' if compile else 'eager':8s} ckpt {every} micro {size:3d}"
    if r.get("out_of_memory"):
        print(f"  {label}  out of memory", flush=True)
        return r
    mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "  n/a"
    print(f"  {label} {r['tokens_per_s']:10.1f} tokens/s  {r['tflops_per_device']:7.2f} TFLOP/s  "
          f"MFU {mfu}  peak mem {r['peak_mem_gib']:6.2f} GiB  first steps {r['warmup_s']:.1f} s", flush=True)
    return r


if __name__ == "__main__":
    main()
    exit_fast(0)
