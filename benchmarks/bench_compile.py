"""Compiled (`runtime.compile: true`, each block torch.compiled) vs eager training steps, one run.

One step = forward + backward + AdamW on one micro-batch (the GPT alone, no DeepSpeed). Prints
the first step's time of each (for the compiled model: tracing + Inductor's code generation, or
its on-disk cache), the steady step time (median of --steps after --warmup), and the two ratios:
compiled / eager steady step time (< 1: compile is faster) and the compiled first step's extra
cost in eager steps.

    python benchmarks/bench_compile.py --preset micro-20m --batch 4 --seq 256 --device cpu --dtype fp32
    python benchmarks/bench_compile.py --preset tinyllama-1.1b --batch 8 --seq 2048     # GPU, bf16
    --cold-cache: Inductor's cache in a new temporary directory (the first-step cost from scratch)
    --json PATH:  also write the figures as JSON
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.precision import resolve_dtype
from megatiny.process_env import exit_fast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(compile: bool, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
               ) -> tuple[float, float]:
    """(first step s, median steady step s) of one model, eager or with compiled blocks."""
    config = get_preset(args.preset)
    runtime = ModelRuntime(attention_backend=args.attention_backend, compile=compile,
                           activation_checkpointing=args.activation_checkpointing)
    torch.manual_seed(0)
    model = GPT(config, runtime=runtime).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device=device,
                          generator=torch.Generator(device).manual_seed(0))

    def step() -> float:
        started = time.perf_counter()
        model(batch[:, :-1], labels=batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - started

    first = step()
    for _ in range(args.warmup):
        step()
    return first, statistics.median(step() for _ in range(args.steps))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", default="micro-20m")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4, help="micro-batch size")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--activation-checkpointing", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cold-cache", action="store_true", help="compile into an empty Inductor cache")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.cold_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_compile_")
    eager_first, eager = step_times(False, args, device, dtype)
    compiled_first, compiled = step_times(True, args, device, dtype)
    result = {"preset": args.preset, "batch": args.batch, "seq": args.seq, "device": str(device),
              "dtype": str(dtype).removeprefix("torch."), "cold_cache": args.cold_cache,
              "eager_first_s": eager_first, "eager_step_s": eager,
              "compiled_first_s": compiled_first, "compiled_step_s": compiled,
              "compiled_over_eager": compiled / eager,
              "first_step_extra_in_eager_steps": (compiled_first - eager_first) / eager}
    print(f"{args.preset} {result['dtype']} batch {args.batch} x seq {args.seq} on {device} "
          f"({'cold' if args.cold_cache else 'warm or existing'} Inductor cache)")
    print(f"  eager    first step {eager_first:8.2f} s  steady {eager:8.4f} s/step")
    print(f"  compiled first step {compiled_first:8.2f} s  steady {compiled:8.4f} s/step")
    print(f"  compiled / eager step time {result['compiled_over_eager']:.2f}x | first-step cost "
          f"{result['first_step_extra_in_eager_steps']:.0f} eager steps")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
    exit_fast(0)
