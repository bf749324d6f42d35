"""Convert megatiny checkpoints to and from Hugging Face Llama, Qwen2 and Mistral.

    # DeepSpeed checkpoint (root -> its `latest` tag, or --tag / a tag dir) -> HF directory of the
    # model's family (LlamaForCausalLM, Qwen2ForCausalLM or MistralForCausalLM)
    megatiny convert to-hf runs/tiny/checkpoints out/tiny-hf --dtype bf16
    # HF Llama / Qwen2 / Mistral dir (or a DeepSpeed checkpoint) -> megatiny weights dir
    megatiny convert to-megatiny path/to/hf-llama out/llama-megatiny

SRC may be a DeepSpeed checkpoint root or tag dir, a megatiny weights dir or an HF dir of a
supported family (see docs/MODELS.md).
Outputs are written to a temporary directory and renamed into place when complete.
"""
from __future__ import annotations

import argparse
import sys
import time

from megatiny.checkpoint.convert import export_hf, export_megatiny
from megatiny.checkpoint.sources import WEIGHT_CHOICES


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if args.command == "to-hf":
            out = export_hf(args.src, args.out, tag=args.tag, weights=args.weights, dtype=args.dtype,
                            max_shard_size=args.max_shard_size, tokenizer=args.tokenizer,
                            include_tokenizer=not args.no_tokenizer, overwrite=args.overwrite)
        else:
            dtype = None if args.dtype == "keep" else args.dtype
            out = export_megatiny(args.src, args.out, tag=args.tag, weights=args.weights, dtype=dtype,
                                  tokenizer=args.tokenizer, overwrite=args.overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_hf = commands.add_parser("to-hf", help="write a Hugging Face directory of the model's family "
                                                    "(Llama, Qwen2, Mistral)")
    to_mt = commands.add_parser("to-megatiny", help="write a megatiny weights directory")
    for sub in (to_hf, to_mt):
        sub.add_argument("src", help="DeepSpeed checkpoint root or tag dir, megatiny weights dir, or HF dir")
        sub.add_argument("out", help="output directory (must not exist unless --overwrite)")
        sub.add_argument("--tag", help="tag of a DeepSpeed checkpoint root (default: its `latest`)")
        sub.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                         help="DeepSpeed sources: fp32 master weights from the optimizer shards "
                              "(master), 16-bit module weights saved whole by ZeRO-0/1/2 (module), "
                              "or master when present (auto, default)")
        sub.add_argument("--tokenizer", help="tokenizer to use instead of the one recorded in the "
                                             "checkpoint (sentencepiece .model, HF dir, tokenizer.json)")
        sub.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    to_hf.add_argument("--dtype", default="bf16", choices=["bf16", "bfloat16", "fp32", "float32", "fp16"],
                       help="weight dtype of the export (default bf16)")
    to_hf.add_argument("--max-shard-size", default="2GB",
                       help="largest safetensors shard, e.g. 2GB, 500MB (default 2GB)")
    to_hf.add_argument("--no-tokenizer", action="store_true", help="export weights and config only")
    to_mt.add_argument("--dtype", default="keep", choices=["keep", "bf16", "fp32", "fp16"],
                       help="weight dtype (default: keep the source's, fp32 for ZeRO master weights)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
