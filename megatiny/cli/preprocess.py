"""Tokenize jsonl corpora (plain/.gz/.zst) into Megatron-format PREFIX_{key}_document.{bin,idx}.

    python tools/preprocess_data.py --input 'data/*.jsonl.zst' --output-prefix data/corpus \
        --tokenizer tokenizer.model --prepend-bos --append-eod --workers 8
"""
from __future__ import annotations

import argparse
import sys

from megatiny.data.preprocess import BadLineError, preprocess


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="jsonl files or globs (.jsonl, .gz, .zst)")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX_{key}_document.bin/.idx")
    p.add_argument("--tokenizer", required=True,
                   help="sentencepiece .model, HF tokenizer.json, or local HF tokenizer directory")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="JSON fields to tokenize (default: text)")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (output identical for any N)")
    p.add_argument("--prepend-bos", action="store_true", help="start every document with the BOS token")
    p.add_argument("--append-eod", action="store_true", help="end every document with the EOS token")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    p.add_argument("--bad-lines-file", help="also write every bad line's file:line: reason to this file")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = p.parse_args(argv)
    if not args.append_eod:
        print("warning: without --append-eod documents are concatenated with no separator", file=sys.stderr)
    try:
        stats = preprocess(args.input, args.output_prefix, args.tokenizer, json_keys=tuple(args.json_keys),
                           workers=args.workers, prepend_bos=args.prepend_bos, append_eod=args.append_eod,
                           strict=args.strict, progress=not args.no_progress,
                           bad_lines_file=args.bad_lines_file)
    except (BadLineError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if stats.bad_lines:
        reasons = ", ".join(f"{n} {r}" for r, n in stats.bad_reasons.most_common())
        print(f"skipped {stats.bad_lines} bad lines ({reasons}); first ones:", file=sys.stderr)
        for bad in stats.bad_examples:
            print(f"  {bad}", file=sys.stderr)
    for out in stats.outputs:
        print(f"wrote {out}.bin / {out}.idx")
    print(f"done: {stats.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
