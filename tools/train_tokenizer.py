"""Train a Llama-style sentencepiece tokenizer (BPE, byte fallback, unk=0 bos=1 eos=2) on local text.

    python tools/train_tokenizer.py --input 'data/*.jsonl' --output-prefix tok/spm --vocab-size 32000
Inputs: .txt (one sentence/document per line) or .jsonl/.json (field --json-key), plain/.gz/.zst.
jsonl lines are parsed as tools/preprocess_data.py parses them; bad lines are skipped and counted.
Documents longer than sentencepiece's sentence limit are cut into pieces, not dropped.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from megatiny.data.preprocess import expand_inputs, open_binary, parse_json_line
from megatiny.data.tokenizer import load_tokenizer, train_sentencepiece


def is_json_input(path: Path) -> bool:
    """foo.jsonl, foo.json, foo.jsonl.gz, foo.json.zst ... (the suffix before any compression suffix)."""
    suffixes = [s for s in path.suffixes if s not in (".gz", ".zst", ".zstd")]
    return bool(suffixes) and suffixes[-1] in (".json", ".jsonl")


def iter_texts(patterns: list[str], json_key: str, max_documents: int | None,
               bad: list[str] | None = None) -> Iterator[str]:
    """Documents of the inputs; `bad` (if given) collects a `file:line: reason` per skipped jsonl line."""
    count = 0
    for path in expand_inputs(patterns):
        is_json = is_json_input(path)
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                if is_json:
                    values, error = parse_json_line(raw, (json_key,))
                    if error is not None:
                        if bad is not None:
                            bad.append(f"{path}:{lineno}: {error}")
                        continue
                    line = values[0]
                else:
                    line = raw.decode("utf-8", errors="replace")
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
