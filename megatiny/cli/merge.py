"""Merge several indexed datasets (same dtype) into one, in the order given.

Merging the parts written by `preprocess_data.py --num-shards K --shard-index I` in shard order gives
the same .bin/.idx/.json bytes as one run over all inputs. The PREFIX.json sidecars are combined
(same tokenizer required); when some input has none, the output gets none either.

    python tools/merge_datasets.py --input data/a_text_document data/b_text_document --output-prefix data/ab
    python tools/merge_datasets.py --input-dir data/shards --output-prefix data/all
"""
from __future__ import annotations

import argparse
import sys

from megatiny.data.merge import merge, prefixes_in


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="dataset prefixes (without .bin/.idx)")
    src.add_argument("--input-dir", help="merge every PREFIX.idx/.bin pair here (sorted by name)")
    p.add_argument("--output-prefix", required=True)
    args = p.parse_args(argv)
    prefixes = args.input or prefixes_in(args.input_dir)
    if str(args.output_prefix) in map(str, prefixes):
        print(f"error: --output-prefix {args.output_prefix} is also an input", file=sys.stderr)
        return 1
    try:
        out = merge(prefixes, args.output_prefix)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"merged {len(prefixes)} datasets into {args.output_prefix}: {out.num_documents} documents, "
          f"{out.num_tokens} tokens, {out.dtype.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
