"""Training-step throughput and peak memory of megatiny's GPT vs transformers' LlamaForCausalLM.

Both models get the same config, the same weights and the same batches; one step is
forward + backward + AdamW. Each measurement runs in a fresh subprocess so that its peak resident
memory (ru_maxrss, which covers everything torch allocates on CPU) is its own; the two models
alternate for --rounds rounds and the best round of each counts. Speed is measured as tokens per
second of the process's own CPU time (single-threaded by default), which stays meaningful on a
shared machine where wall-clock time depends on the neighbours; wall-clock tokens/s is printed too.

    python benchmarks/bench_model_step.py --preset micro-20m --seq 256 --batch 4
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from megatiny.checkpoint.hf import config_to_hf
from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.precision import resolve_dtype
from megatiny.process_env import exit_fast

WORKER_TIMEOUT_S = 3600.0   # one measured model step benchmark in its own process


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _build(kind: str, args: argparse.Namespace) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM  # imported by both kinds: same baseline

    config = get_preset(args.preset)
    torch.manual_seed(0)
    dtype = resolve_dtype(args.dtype, "cpu")
    model = GPT(config, runtime=ModelRuntime(attention_backend=args.backend)).to(dtype)
    if kind == "ours":
        return model
    hf = LlamaForCausalLM(LlamaConfig(**config_to_hf(config, torch.float32), attn_implementation="sdpa"))
    hf = hf.to(dtype)
    hf.load_state_dict(model.state_dict())
    return hf


def worker(kind: str, args: argparse.Namespace) -> dict:
    """Time args.steps training steps after args.warmup; returns tokens/s and memory in MiB."""
    torch.set_num_threads(args.threads)
    model = _build(kind, args).train()
    vocab = model.config.vocab_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (args.batch, args.seq + 1), generator=gen) for _ in range(4)]

    def step(sample: torch.Tensor) -> float:
        inputs = sample[:, :-1]
        if kind == "ours":
            loss = model(inputs, labels=sample[:, 1:])
        else:  # HF shifts internally; with labels=inputs it scores T-1 positions (close enough)
            loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    step(batches[0])  # allocate optimizer states before the memory baseline
    rss_before = _rss_mib()
    for i in range(args.warmup):
        step(batches[i % 4])
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in range(args.steps):
        step(batches[i % 4])
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = args.steps * args.batch * args.seq
    return {"kind": kind, "tokens_per_cpu_s": tokens / elapsed_cpu, "tokens_per_s": tokens / elapsed,
            "peak_rss_mib": peak, "rss_after_setup_mib": rss_before,
            "step_peak_over_setup_mib": peak - rss_before}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", default="micro-20m")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", default="auto", help="megatiny attention_backend")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="fp32",
                        help="weights and compute (auto: what precision: auto picks on this CPU)")
    parser.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    forwarded = list(argv if argv is not None else sys.argv[1:])
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for kind in ("ours", "hf"):
            out = subprocess.run([sys.executable, __file__, "--worker", kind, *forwarded],
                                 check=True, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(f"  {kind:4s} {result['tokens_per_cpu_s']:9.1f} tok/CPU-s {result['tokens_per_s']:9.1f} "
                  f"tok/s  peak RSS "
                  f"{result['peak_rss_mib']:8.1f} MiB  (step peak over setup "
                  f"{result['step_peak_over_setup_mib']:7.1f} MiB)")
            if kind not in best or result["tokens_per_cpu_s"] > best[kind]["tokens_per_cpu_s"]:
                best[kind] = {**result, "peak_rss_mib": min(result["peak_rss_mib"],
                                                            best.get(kind, result)["peak_rss_mib"])}
    ours, hf = best["ours"], best["hf"]
    print(f"{args.preset} {args.dtype} seq {args.seq} batch {args.batch}, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    print(f"throughput ratio ours/HF: {ours['tokens_per_cpu_s'] / hf['tokens_per_cpu_s']:.2f}x "
          f"({ours['tokens_per_cpu_s']:.1f} vs {hf['tokens_per_cpu_s']:.1f} tokens per CPU-second; "
          f"wall {ours['tokens_per_s']:.1f} vs {hf['tokens_per_s']:.1f} tokens/s)")
    print(f"peak RSS ratio ours/HF:   {ours['peak_rss_mib'] / hf['peak_rss_mib']:.2f} "
          f"({ours['peak_rss_mib']:.0f} vs {hf['peak_rss_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
    exit_fast(0)
