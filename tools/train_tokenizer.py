"""Train a Llama-style sentencepiece tokenizer (BPE, byte fallback, unk=0 bos=1 eos=2) on local text.

    python tools/train_tokenizer.py --input 'data/*.jsonl' --output-prefix tok/spm --vocab-size 32000
Inputs: .txt (one sentence/document per line) or .jsonl (field --json-key), plain/.gz/.zst.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from megatiny.data.preprocess import expand_inputs, open_binary
from megatiny.data.tokenizer import load_tokenizer, train_sentencepiece


def iter_texts(patterns: list[str], json_key: str, max_documents: int | None) -> Iterator[str]:
    count = 0
    for path in expand_inputs(patterns):
        is_json = ".jsonl" in path.name or ".json" in path.name
        with open_binary(path) as f:
            for raw in f:
                line = raw.decode("utf-8", errors="replace")
                if is_json:
                    try:
                        value = json.loads(line).get(json_key)
                    except (json.JSONDecodeError, AttributeError):
                        continue
                    if not isinstance(value, str):
                        continue
                    line = value
                if line.strip():
                    yield line
                    count += 1
                    if max_documents is not None and count >= max_documents:
                        return


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
    try:
        texts = iter_texts(args.input, args.json_key, args.max_documents)
        model = train_sentencepiece(texts, args.output_prefix, args.vocab_size, model_type=args.model_type,
                                    num_threads=args.threads)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tok = load_tokenizer(model)
    print(f"wrote {model} (vocab_size={tok.vocab_size}, bos={tok.bos_id}, eos={tok.eos_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
