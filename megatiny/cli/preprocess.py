"""Tokenize corpora into Megatron-format PREFIX_{key}_document.{bin,idx} (+ a PREFIX.json sidecar).

Inputs: jsonl (plain/.gz/.zst), parquet files, `datasets` save_to_disk folders, globs and folders
(e.g. one language folder of Starcoderdata: --input starcoderdata/python --json-keys content).

    python tools/preprocess_data.py --input 'data/*.jsonl.zst' --output-prefix data/corpus \\
        --tokenizer tokenizer.model --prepend-bos --append-eod --workers 8

Megatron-LM / Megatron-DeepSpeed commands run unchanged: --tokenizer-model is --tokenizer,
--tokenizer-type is checked against the file, --partitions, --dataset-impl mmap, --log-interval,
--keep-sequential-samples, --chunk-size and --lang are accepted (see --help for what each means here).

Several machines: give each `--num-shards K --shard-index I --output-prefix out/part-$I`, then
`tools/merge_datasets.py --input out/part-0_text_document ... --output-prefix out/all_text_document`.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from megatiny.data.preprocess import DEFAULT_MAX_BAD_FRACTION, BadLineError, EmptyOutputError, preprocess
from megatiny.data.sources import SourceError
from megatiny.data.tokenizer import SentencePieceTokenizer, load_tokenizer
from megatiny.data.worker_pool import WorkerError

SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")
TOKENIZER_TYPES = SENTENCEPIECE_TYPES + ("HuggingFaceTokenizer",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help="files, globs or folders: .jsonl(.gz/.zst), .parquet, .arrow, save_to_disk folders")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX_{key}_document.bin/.idx/.json")
    p.add_argument("--tokenizer", "--tokenizer-model", "--tokenizer-model-file", dest="tokenizer",
                   required=True,
                   help="sentencepiece .model, HF tokenizer.json, or local HF tokenizer directory "
                        "(--tokenizer-model: Megatron's name for it)")
    p.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES,
                   help="Megatron's tokenizer class, checked against --tokenizer: the SentencePiece types "
                        "need a .model file, HuggingFaceTokenizer an HF tokenizer; Llama2Tokenizer implies "
                        "--prepend-bos (Megatron's Llama2Tokenizer adds BOS). The end-of-document token "
                        "is always the tokenizer's own EOS")
    p.add_argument("--json-keys", nargs="+", default=["text"],
                   help="fields (jsonl) or columns (parquet/arrow) to tokenize (default: text)")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (output identical for any N)")
    p.add_argument("--prepend-bos", action="store_true", help="start every document with the BOS token")
    p.add_argument("--append-eod", action="store_true", help="end every document with the EOS token")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    p.add_argument("--max-bad-fraction", type=float, default=DEFAULT_MAX_BAD_FRACTION,
                   help="fail (writing nothing) when more than this fraction of records are bad "
                        f"(default {DEFAULT_MAX_BAD_FRACTION})")
    p.add_argument("--num-shards", type=int, default=1,
                   help="split the input files into K contiguous parts (one per machine) ...")
    p.add_argument("--shard-index", type=int, default=0, help="... and tokenize part I (0-based)")
    p.add_argument("--bad-lines-file", help="also write every bad line's file:line: reason to this file")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    megatron = p.add_argument_group("Megatron compatibility (accepted; no effect on the output)")
    megatron.add_argument("--partitions", type=int, default=1,
                          help="Megatron splits the input into N parts processed one after another to bound "
                               "memory; megatiny streams with bounded memory already, so it is ignored")
    megatron.add_argument("--dataset-impl", choices=["mmap"], default="mmap",
                          help="only mmap (MMIDIDX), the format megatiny writes")
    megatron.add_argument("--log-interval", type=int, help="ignored (a progress bar shows the rate)")
    megatron.add_argument("--chunk-size", type=int,
                          help="ignored (records go to workers in chunks of 512)")
    megatron.add_argument("--keep-sequential-samples", action="store_true",
                          help="ignored: input order is always kept")
    megatron.add_argument("--lang", help="ignored (only used by Megatron's --split-sentences)")
    megatron.add_argument("--split-sentences", action="store_true",
                          help="not supported: every document is written as one sequence")
    megatron.add_argument("--vocab-file", help="not supported (GPT-2 BPE files): use an HF tokenizer.json")
    megatron.add_argument("--merge-file", help="not supported (GPT-2 BPE files): use an HF tokenizer.json")
    return p


def check_megatron_arguments(args) -> str | None:
    """Why these Megatron-style arguments cannot run here (None when they can); adjusts implied flags."""
    if args.split_sentences:
        return "--split-sentences is not supported (megatiny writes one sequence per document)"
    if args.vocab_file or args.merge_file:
        return ("--vocab-file/--merge-file (GPT-2 BPE) are not supported; convert the tokenizer to an HF "
                "tokenizer.json and pass it with --tokenizer-model")
    if args.tokenizer_type is None:
        return None
    is_spm = isinstance(load_tokenizer(args.tokenizer), SentencePieceTokenizer)
    if (args.tokenizer_type in SENTENCEPIECE_TYPES) != is_spm:
        return (f"--tokenizer-type {args.tokenizer_type} does not match {args.tokenizer}, which is "
                f"{'a sentencepiece model' if is_spm else 'a Hugging Face tokenizer'}")
    if args.tokenizer_type == "Llama2Tokenizer" and not args.prepend_bos:
        print("note: --tokenizer-type Llama2Tokenizer: every document starts with BOS (as in Megatron)",
              file=sys.stderr)
        args.prepend_bos = True
    return None


class Terminated(BaseException):
    """SIGTERM, raised where the run is so that its cleanup (no partial output) runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        problem = check_megatron_arguments(args)
    except (FileNotFoundError, ValueError) as e:
        problem = str(e)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.partitions > 1:
        print(f"note: --partitions {args.partitions} ignored: input is streamed with bounded memory and the "
              f"output is the same for any partition count", file=sys.stderr)
    if not args.append_eod:
        print("warning: without --append-eod documents are concatenated with no separator", file=sys.stderr)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        stats = preprocess(args.input, args.output_prefix, args.tokenizer, json_keys=tuple(args.json_keys),
                           workers=args.workers, prepend_bos=args.prepend_bos, append_eod=args.append_eod,
                           strict=args.strict, progress=not args.no_progress,
                           max_bad_fraction=args.max_bad_fraction, num_shards=args.num_shards,
                           shard_index=args.shard_index, bad_lines_file=args.bad_lines_file)
    except (BadLineError, EmptyOutputError, SourceError, FileNotFoundError, ValueError, WorkerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated (SIGTERM): nothing written", file=sys.stderr)
        return 143
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if stats.bad_lines:
        reasons = ", ".join(f"{n} {r}" for r, n in stats.bad_reasons.most_common())
        print(f"skipped {stats.bad_lines} bad lines ({reasons}); first ones:", file=sys.stderr)
        for bad in stats.bad_examples:
            print(f"  {bad}", file=sys.stderr)
    for out in stats.outputs:
        print(f"wrote {out}.bin / {out}.idx / {out}.json")
    print(f"done: {stats.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
