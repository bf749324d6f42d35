"""The 10 largest kernels of a training step (forward + backward + AdamW of the GPT alone).

Profiles --steps steps after --warmup with `torch.profiler`; prints PyTorch's table sorted by each
op's own device time (CUDA kernels; on CPU the ops' own CPU time) and writes the top rows as JSON.

    python benchmarks/gpu/profile_step.py --preset tinyllama-1.1b --seq 2048 --batch 8 --json top.json
    python benchmarks/gpu/profile_step.py --device cpu --preset tiny-test --seq 32 --batch 2 --dtype fp32
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.precision import resolve_dtype
from megatiny.process_env import exit_fast

TOP = 10


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", default="tinyllama-1.1b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="write the top rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    config = get_preset(args.preset)
    torch.manual_seed(0)
    model = GPT(config, runtime=ModelRuntime(attention_backend=args.attention_backend, compile=args.compile))
    model = model.to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device=device)

    def step() -> None:
        model(batch[:, :-1], labels=batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:TOP]
    print(prof.key_averages().table(sort_by=key, row_limit=TOP))
    rows = [{"name": e.key, "self_time_ms_per_step": getattr(e, key) / 1e3 / args.steps,
             "calls_per_step": e.count / args.steps} for e in averages]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "device": str(device), "sorted_by": key, "top": rows}, f,
                      indent=1)
    return rows


if __name__ == "__main__":
    main()
    exit_fast(0)
