"""Training throughput of one device: tokens/s, TFLOP/s, MFU and peak memory.

GPU (the TinyLlama figure, one device, ZeRO-3, precision auto = bf16 there):
    python benchmarks/bench_train_gpu.py --preset tinyllama-1.1b --seq 2048 --micro-batch 8
CPU smoke run (so the script is exercised without a GPU):
    python benchmarks/bench_train_gpu.py --preset tiny-test --seq 64 --micro-batch 4 --steps 4

--compile: each block torch.compiled (runtime.compile: true); --json PATH: also write the figures
and every step's loss (warmup steps included), which benchmarks/gpu/run_all.sh reads.

Runs the same engine (`build_engine`) as tools/train.py on random tokens (data loading excluded). MFU uses
the peak bf16 TFLOP/s table in megatiny.training.flops (`--peak-tflops` overrides; on CPU no MFU
unless given).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from megatiny.parallel import process_group
from megatiny.precision import PRECISIONS
from megatiny.process_env import exit_fast
from megatiny.training.config import load_config, read_ds_file
from megatiny.training.engine import build_engine
from megatiny.training.flops import peak_tflops_for, throughput
from megatiny.training.logging import memory_gb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tinyllama-1.1b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--activation-checkpointing", type=int, default=0)
    parser.add_argument("--ds-config", default="ds_configs/zero3.json")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="runtime.precision (default auto: what training would pick here)")
    parser.add_argument("--compile", action="store_true", help="runtime.compile: true")
    parser.add_argument("--json", help="also write the figures and the losses of every step here")
    args = parser.parse_args(argv)
    mbs, acc = args.micro_batch, args.accumulation
    run = load_config(None, [f"model.preset={args.preset}", f"batch.seq_length={args.seq}",
                             f"batch.micro_batch_size={mbs}", f"batch.global_batch_size={mbs * acc}",
                             f"runtime.activation_checkpointing={args.activation_checkpointing}",
                             f"distributed.deepspeed_config={args.ds_config}",
                             f"runtime.precision={args.precision}",
                             f"runtime.compile={str(args.compile).lower()}"])
    model_config = run.model_config()
    dist_info = process_group.init_distributed(run.distributed.backend, run.distributed.timeout_s,
                                                run.distributed.master_port)
    try:
        plan = run.plan(run.parallel.layout(dist_info.world_size), read_ds_file(args.ds_config),
                        source=args.ds_config)
        engine = build_engine(run, plan, dist_info.device)
        precision = engine.precision
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, model_config.vocab_size, (mbs, args.seq + 1), generator=generator)
        inputs, labels = tokens[:, :-1], tokens[:, 1:]

        def step() -> float:
            for _ in range(acc):
                loss = engine.loss(inputs, labels)
                engine.micro_step(loss, run.optimizer.lr)
            return loss.item()  # synchronises the device

        first = time.perf_counter()
        losses = [step() for _ in range(args.warmup)]
        started = time.perf_counter()
        for _ in range(args.steps):
            losses.append(step())
        seconds = time.perf_counter() - started
        loss = losses[-1]
        device = process_group.device_name(dist_info.device)
        peak = peak_tflops_for(device, args.peak_tflops)
        perf = throughput(args.steps * acc * mbs * args.seq * dist_info.world_size, seconds,
                          model_config.flops_per_token(args.seq), dist_info.world_size, peak)
        mfu = f"{100 * perf['mfu']:.1f}%" if "mfu" in perf else "n/a (unknown peak)"
        print(f"{args.preset} seq {args.seq} micro-batch {mbs} x {acc} on {device} ({args.ds_config}, "
              f"precision {precision.describe()}, "
              f"activation checkpointing {args.activation_checkpointing}), {args.steps} steps, "
              f"last loss {loss:.3f}")
        print(f"tokens/s/device {perf['tokens_per_s_per_device']:.0f} | TFLOP/s/device "
              f"{perf['tflops_per_device']:.2f} | MFU {mfu} | "
              f"peak memory {memory_gb(dist_info.device):.2f} GiB")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"preset": args.preset, "seq": args.seq, "micro_batch": mbs,
                           "ds_config": args.ds_config, "compile": args.compile, "precision": precision.name,
                           "device": device, "warmup_s": started - first, "losses": losses,
                           "peak_mem_gib": memory_gb(dist_info.device), **perf}, f, indent=1)
    finally:
        process_group.shutdown()
    return 0


if __name__ == "__main__":
    exit_fast(main())
