"""Step time with Megatron's document options on (masked) vs off (unmasked), same model and batches.

One step = forward + backward + AdamW of megatiny's GPT. "masked" turns on all three options
(`reset_attention_mask`, `reset_position_ids`, `eod_mask_loss`) on batches whose documents have
geometric lengths of mean --doc-mean tokens (EOD = token 2): on CPU attention is SDPA with a
block-diagonal causal bool mask [B, T, T]; on CUDA with flash-attn, its varlen kernel. Time is the
process's CPU time per step (stable on a shared machine; wall time printed too); the two variants
alternate for --rounds rounds and the best of each counts.

    python benchmarks/bench_document_mask.py                      # both shapes below
    python benchmarks/bench_document_mask.py --shape quickstart   # nano-2m, vocab 4096, 8 x 256
    python benchmarks/bench_document_mask.py --shape tinyllama-slice --layers 1   # 1.1B widths, 1 x 2048

`--attention-only` times just the attention op (fwd + bwd) at the shape's sizes, and with
`--flex` also torch's flex_attention with a block mask (compiled; CPU needs a C++ compiler).
"""
from __future__ import annotations

import argparse
import time

import torch

from megatiny.data.document_mask import DocumentMasking, document_inputs
from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.model.attention import causal_attention
from megatiny.precision import resolve_dtype
from megatiny.process_env import exit_fast

EOD = 2
SHAPES = {  # name: (preset, overrides, batch, seq, mean document length)
    "quickstart": ("nano-2m", {"vocab_size": 4096}, 8, 256, 64),
    "tinyllama-slice": ("tinyllama-1.1b", {}, 1, 2048, 512),
}


def packed_batch(vocab: int, batch: int, seq: int, doc_mean: int, seed: int) -> torch.Tensor:
    """Long[batch, seq + 1] random tokens with EODs ending documents of mean length doc_mean."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, vocab, (batch, seq + 1), generator=gen)
    return tokens.masked_fill(torch.rand(tokens.shape, generator=gen) < 1.0 / doc_mean, EOD)


def time_steps(model: GPT, batches, masking, steps: int, warmup: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per step over `steps` steps after `warmup`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    prepared = []
    for sample in batches:
        inputs = sample[:, :-1]
        prepared.append((inputs, sample[:, 1:], document_inputs(inputs, masking)))

    def step(i: int) -> None:
        inputs, labels, doc = prepared[i % len(prepared)]
        loss = model(inputs, labels=labels, loss_mask=doc.loss_mask, position_ids=doc.position_ids,
                     document_ids=doc.document_ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(steps):
        step(i)
    return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def model_steps(args: argparse.Namespace, shape: str) -> None:
    preset, overrides, batch, seq, doc_mean = SHAPES[shape]
    overrides = dict(overrides, max_position_embeddings=max(seq, 256))
    if args.layers:
        overrides["num_layers"] = args.layers
    config = get_preset(preset, **overrides)
    dtype = resolve_dtype(args.dtype, "cpu")
    masking = DocumentMasking(EOD, reset_attention_mask=True, reset_position_ids=True, eod_mask_loss=True)
    batches = [packed_batch(config.vocab_size, batch, seq, doc_mean, s) for s in range(2)]
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for name, option in (("unmasked", None), ("masked", masking)):
            torch.manual_seed(0)
            model = GPT(config, runtime=ModelRuntime(attention_backend=args.backend)).to(dtype).train()
            result = time_steps(model, batches, option, args.steps, args.warmup)
            if name not in best or result[0] < best[name][0]:
                best[name] = result
            del model
    (u_cpu, u_wall), (m_cpu, m_wall) = best["unmasked"], best["masked"]
    print(f"{shape}: {preset} {config.num_layers} layer(s) hidden {config.hidden_size} vocab "
          f"{config.vocab_size}, batch {batch} x seq {seq}, documents of mean {doc_mean} tokens, "
          f"{args.dtype} ({dtype}), {torch.get_num_threads()} thread(s), backend {args.backend}, "
          f"torch {torch.__version__}")
    print(f"  unmasked {u_cpu:8.3f} CPU-s/step ({u_wall:.3f} s wall)")
    print(f"  masked   {m_cpu:8.3f} CPU-s/step ({m_wall:.3f} s wall)")
    print(f"  ratio masked/unmasked: {m_cpu / u_cpu:.3f} (CPU time), {m_wall / u_wall:.3f} (wall)")


def attention_only(args: argparse.Namespace, shape: str) -> None:
    preset, overrides, batch, seq, doc_mean = SHAPES[shape]
    config = get_preset(preset, **overrides)
    dtype = resolve_dtype(args.dtype, "cpu")
    gen = torch.Generator().manual_seed(0)
    h, g, d = config.num_attention_heads, config.num_query_groups, config.head_dim
    q = torch.randn(batch, seq, h, d, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(batch, seq, g, d, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(batch, seq, g, d, generator=gen).to(dtype).requires_grad_()
    document_ids = document_inputs(packed_batch(16, batch, seq, doc_mean, 0)[:, :-1],
                                   DocumentMasking(EOD, reset_attention_mask=True)).document_ids
    variants = {"unmasked sdpa": lambda: causal_attention(q, k, v, "sdpa"),
                "masked sdpa": lambda: causal_attention(q, k, v, "sdpa", document_ids)}
    if args.flex:
        variants["masked flex"] = _flex_variant(q, k, v, document_ids)
    for name, run in variants.items():
        try:
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    cpu = time.process_time()
                run().sum().backward()
        except NotImplementedError as e:  # torch 2.13: flex_attention has no CPU backward
            print(f"  {name:14s} not available: {e}")
            continue
        print(f"  {name:14s} {(time.process_time() - cpu) / args.steps:8.4f} CPU-s (fwd + bwd)")


def _flex_variant(q, k, v, document_ids):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, t = document_ids.shape

    def mask_mod(batch, head, qi, ki):
        return (qi >= ki) & (document_ids[batch, qi] == document_ids[batch, ki])

    block_mask = create_block_mask(mask_mod, b, None, t, t, device="cpu")
    compiled = torch.compile(flex_attention)
    return lambda: compiled(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask,
                            enable_gqa=True).transpose(1, 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--layers", type=int, default=None, help="override num_layers (slice: 1 or 2)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", default="sdpa", help="megatiny attention_backend")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="fp32")
    parser.add_argument("--attention-only", action="store_true")
    parser.add_argument("--flex", action="store_true", help="with --attention-only: also flex_attention")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for shape in (SHAPES if args.shape == "all" else [args.shape]):
        if args.attention_only:
            print(f"{shape}: attention op only, {args.dtype}")
            attention_only(args, shape)
        else:
            if shape == "tinyllama-slice" and args.layers is None:
                args.layers = 1
            model_steps(args, shape)


if __name__ == "__main__":
    main()
    exit_fast(0)
