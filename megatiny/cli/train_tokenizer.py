"""Train a Llama-style sentencepiece tokenizer (BPE, byte fallback, unk=0 bos=1 eos=2) on local text.

    megatiny train-tokenizer --input 'data/*.jsonl' --output-prefix tok/spm --vocab-size 32000
Inputs: .txt (one sentence/document per line) or .jsonl/.json (field --json-key), plain/.gz/.zst.
jsonl lines are parsed as `megatiny preprocess` parses them; bad lines are skipped and counted.
Documents longer than sentencepiece's sentence limit are cut into pieces, not dropped.
"""
from __future__ import annotations

import argparse
import sys

from megatiny.data.sources import iter_texts
from megatiny.data.tokenizer import load_tokenizer, train_sentencepiece


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="text/jsonl files or globs")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram", "char", "word"])
    p.add_argument("--json-key", default="text")
    p.add_argument("--max-documents", type=int, default=None, help="use at most this many documents")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    bad: list[str] = []
    try:
        texts = iter_texts(args.input, args.json_key, args.max_documents, bad)
        model = train_sentencepiece(texts, args.output_prefix, args.vocab_size, model_type=args.model_type,
                                    num_threads=args.threads)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if bad:
        print(f"skipped {len(bad)} bad jsonl line(s), e.g.:", file=sys.stderr)
        for b in bad[:10]:
            print(f"  {b}", file=sys.stderr)
    tok = load_tokenizer(model)
    print(f"wrote {model} (vocab_size={tok.vocab_size}, bos={tok.bos_id}, eos={tok.eos_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
