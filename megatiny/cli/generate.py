"""Generate text from a trained model.

    # a Hugging Face export, through transformers (what downstream users will run)
    megatiny generate --model runs/quickstart/hf --prompt "The Python tutorial"
    # any megatiny checkpoint (DeepSpeed root/tag, weights dir or HF dir), megatiny's KV-cache generator
    megatiny generate --model runs/quickstart/checkpoints --backend megatiny --prompt "def "

Greedy by default; --temperature > 0 samples, optionally with --top-k / --top-p.
"""
from __future__ import annotations

import argparse
import sys

from megatiny.eval.generation import generate_hf, generate_megatiny
from megatiny.precision import resolve_dtype


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--model", required=True,
                        help="HF dir, or any megatiny checkpoint with --backend megatiny")
    parser.add_argument("--backend", choices=("hf", "megatiny"), default="hf")
    parser.add_argument("--tokenizer", help="tokenizer path (megatiny backend; default: the checkpoint's)")
    parser.add_argument("--prompt", action="append", required=True, help="repeatable")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto",
                        help="float32 | bfloat16 | float16 | auto (as precision: auto picks; default)")
    args = parser.parse_args(argv)
    dtype = resolve_dtype(args.dtype)
    run = generate_hf if args.backend == "hf" else generate_megatiny
    extra = () if args.backend == "hf" else (args.tokenizer,)
    try:
        outputs = run(args.model, *extra, args.prompt, args.max_new_tokens, args.temperature,
                      args.top_k, args.top_p, args.seed, dtype)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for prompt, text in zip(args.prompt, outputs):
        print(f"--- prompt: {prompt!r}\n{prompt}{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
