"""Print what an indexed dataset holds, and decode documents with a tokenizer.

    megatiny inspect data/corpus_text_document
    megatiny inspect data/corpus_text_document --tokenizer tok.model --document 0 5
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from megatiny.data.indexed_dataset import IndexedDataset
from megatiny.data.summary import max_token_id, summarize
from megatiny.data.tokenizer import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", help="dataset prefix (without .bin/.idx)")
    p.add_argument("--tokenizer", help="decode with this tokenizer (.model / tokenizer.json / HF dir)")
    p.add_argument("--document", type=int, nargs="*", default=[], help="document numbers to show")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--scan", action="store_true",
                   help="read every token: report the largest id, check it fits the tokenizer's vocabulary")
    args = p.parse_args(argv)
    try:
        ds = IndexedDataset(args.prefix)
        tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    info = summarize(ds)
    if args.scan:
        info["max_token_id"] = max_token_id(ds)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>16}: {v}")
    if args.scan and tok is not None and info["max_token_id"] is not None \
            and info["max_token_id"] >= tok.vocab_size:
        print(f"error: token id {info['max_token_id']} >= the tokenizer's vocab_size {tok.vocab_size}: this "
              f"dataset was made with a different tokenizer", file=sys.stderr)
        return 1
    for doc in args.document:
        if not 0 <= doc < ds.num_documents:
            print(f"error: document {doc} out of range (0..{ds.num_documents - 1})", file=sys.stderr)
            return 1
        ids = np.asarray(ds.get_document(doc)).tolist()
        print(f"--- document {doc}: {len(ids)} tokens")
        print(tok.decode(ids) if tok else ids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
