"""DeepSpeed engine overhead per training step vs. the bare PyTorch model step (CPU, one process).

    python benchmarks/bench_engine_overhead.py [--preset nano-2m --seq 128 --micro-batch 8 --steps 20]

Both sides run the same model, batch and AdamW (no weight decay on norms, clipping 1.0):
  bare: the model in --precision's dtype (no fp32 master copy),
        loss.backward(), clip_grad_norm_, optimizer.step()
  engine: megatiny's engine (`build_engine`, the path tools/train.py uses) with each DeepSpeed config
          given.
Prints seconds per step and the ratio engine / bare.
"""
from __future__ import annotations

import argparse
import time

import torch

from megatiny.model import GPT
from megatiny.parallel import process_group
from megatiny.precision import PRECISIONS
from megatiny.process_env import exit_fast
from megatiny.training.config import load_config, read_ds_file, run_precision
from megatiny.training.engine import build_engine, param_groups


def _timed(step_fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step_fn()
    started = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano-2m")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ds-configs", nargs="+", default=["ds_configs/zero1.json",
                                                             "ds_configs/zero3.json"])
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="of the bare step and the engines alike (default auto)")
    args = parser.parse_args(argv)
    mbs = args.micro_batch
    run = load_config(None, [f"model.preset={args.preset}", f"batch.seq_length={args.seq}",
                             f"batch.micro_batch_size={mbs}", f"batch.global_batch_size={mbs}",
                             "optimizer.cpu_adam=false", f"runtime.precision={args.precision}"])
    model_config = run.model_config()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model_config.vocab_size, (mbs, args.seq + 1), generator=generator)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]

    precision = run_precision(run, torch.device("cpu"))
    torch.manual_seed(run.seed)
    model = GPT(model_config).to(precision.dtype)
    opt = run.optimizer
    optimizer = torch.optim.AdamW(param_groups(model, opt.weight_decay), lr=opt.lr,
                                  betas=(opt.beta1, opt.beta2), eps=opt.eps)

    def bare_step() -> None:
        loss = model(inputs, labels=labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.optimizer.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    bare = _timed(bare_step, args.steps, args.warmup)
    print(f"{args.preset} seq {args.seq} micro-batch {mbs}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps")
    print(f"bare PyTorch {precision.name} step: {1000 * bare:8.1f} ms ({precision.describe()})")
    dist_info = process_group.init_distributed(run.distributed.backend, run.distributed.timeout_s,
                                                run.distributed.master_port)
    try:
        for path in args.ds_configs:
            plan = run.plan(run.parallel.layout(dist_info.world_size), read_ds_file(path), source=path)
            engine = build_engine(run, plan, dist_info.device)

            def engine_step(engine=engine) -> None:
                engine.micro_step(engine.loss(inputs, labels), opt.lr)

            seconds = _timed(engine_step, args.steps, args.warmup)
            print(f"engine {path:32s}: {1000 * seconds:8.1f} ms  ratio engine/bare {seconds / bare:.2f}")
    finally:
        process_group.shutdown()
    return 0


if __name__ == "__main__":
    exit_fast(main())
