"""Step speed of `precision: auto` against the same run forced to fp32 (and to bf16), on this machine.

    OMP_NUM_THREADS=1 python benchmarks/bench_precision.py            # the quickstart's model and batch
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_precision.py      # as on a CPU without native bf16

Each precision runs benchmarks/bench_train_gpu.py (the engine of tools/train.py, ZeRO-3,
one rank, random tokens) in its own process and reports tokens/s; the ratios are to fp32. The goal
(issue "Precision that fits the hardware"): auto >= 0.8x fp32 everywhere, and bf16 where the CPU
has native bf16.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from megatiny.precision import detect_hardware, resolve_precision
from megatiny.process_env import exit_fast

BENCH = Path(__file__).resolve().parent / "bench_train_gpu.py"
RUN_TIMEOUT_S = 3600.0   # one precision's training benchmark


def matmul_gflops(dtype: torch.dtype, size: int = 512, repeats: int = 5) -> float:
    """One thread, [size, size] @ [size, size] in `dtype`: GFLOP/s (the bf16-emulation telltale)."""
    torch.set_num_threads(1)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def tokens_per_second(precision: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, str(BENCH), "--preset", args.preset, "--seq", str(args.seq),
           "--micro-batch", str(args.micro_batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--precision", precision]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=RUN_TIMEOUT_S).stdout
    match = re.search(r"tokens/s/device (\d+(?:\.\d+)?)", out)
    if match is None:
        raise RuntimeError(f"no tokens/s in the output of {' '.join(cmd)}:\n{out[-2000:]}")
    return float(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano-2m")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto", "bf16"])
    args = parser.parse_args(argv)
    chosen = resolve_precision("auto", detect_hardware())
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"512x512 matmul, 1 thread: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s "
          f"({bf16 / fp32:.2f}x fp32)")
    print(f"{args.preset} seq {args.seq} micro-batch {args.micro_batch}; auto = {chosen.describe()}")
    speeds = {p: tokens_per_second(p, args) for p in args.precisions}
    baseline = speeds.get("fp32")
    for precision, speed in speeds.items():
        ratio = f"  {speed / baseline:5.2f}x fp32" if baseline else ""
        print(f"  {precision:5s} {speed:9.0f} tokens/s{ratio}")
    return 0


if __name__ == "__main__":
    exit_fast(main())
