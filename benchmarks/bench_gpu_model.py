"""GPU training-step throughput and MFU of GPT per attention backend (TinyLlama recipe by default).

One step = forward + backward + AdamW on one micro-batch, weights in --dtype. Reports tokens/s,
achieved TFLOP/s (ModelConfig.flops_per_token: torchtitan/TinyLlama convention), MFU against the
device's dense peak, and peak allocated memory, for each attention backend, with the first
backend as the baseline of the printed ratios.

    python benchmarks/bench_gpu_model.py                      # tinyllama-1.1b, bf16, seq 2048, cuda
    python benchmarks/bench_gpu_model.py --device cpu --preset tiny-test --seq 64 --dtype fp32
"""
from __future__ import annotations

import argparse
import time

import torch

from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.model.attention import FLASH_ATTN_AVAILABLE
from megatiny.precision import resolve_dtype
from megatiny.training.flops import peak_tflops_for, throughput


def default_backends(device: torch.device, dtype: torch.dtype) -> list[str]:
    flash = FLASH_ATTN_AVAILABLE and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    return (["flash_attn"] if flash else []) + ["sdpa", "math"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(backend: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
            peak: float | None) -> dict:
    """Throughput (megatiny.training.flops.throughput: tokens/s, TFLOP/s, MFU when `peak` is known)
    and peak memory of args.steps timed steps for one attention backend."""
    config = get_preset(args.preset)
    runtime = ModelRuntime(attention_backend=backend, activation_checkpointing=args.activation_checkpointing)
    torch.manual_seed(0)
    model = GPT(config, runtime=runtime).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        loss = model(batch[:, :-1], labels=batch[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    perf = throughput(args.batch * args.seq * args.steps, time.perf_counter() - start,
                      config.flops_per_token(args.seq), 1, peak)
    return {"backend": backend, **perf,
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
    parser.add_argument("--activation-checkpointing", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: by GPU name)")
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
          f"activation_checkpointing={args.activation_checkpointing}, peak {peak} TFLOP/s")
    baseline = None
    for backend in backends:
        try:
            r = measure(backend, args, device, dtype, peak)
        except torch.OutOfMemoryError:
            print(f"  {backend:10s} out of memory")
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the finished backend's model and optimizer are gone
        baseline = baseline or r["tokens_per_s"]
        mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "  n/a"
        print(f"  {backend:10s} {r['tokens_per_s']:10.1f} tokens/s  {r['tflops_per_device']:7.2f} TFLOP/s  "
              f"MFU {mfu}  peak mem {r['peak_mem_gib']:6.2f} GiB  "
              f"x{r['tokens_per_s'] / baseline:.2f} vs {backends[0]}")


if __name__ == "__main__":
    main()
