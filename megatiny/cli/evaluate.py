"""Evaluate a megatiny checkpoint: lm-eval task suites, or perplexity on held-out indexed data.

Benchmarks (lm-evaluation-harness; results.json + results.md in --output-dir):
    megatiny evaluate --checkpoint runs/x/checkpoints --suite tinyllama-commonsense
    megatiny evaluate --checkpoint runs/x/checkpoints --tasks megatiny_local_mc
    megatiny evaluate --checkpoint runs/x/hf --backend hf --suite tinyllama-commonsense
    megatiny evaluate --checkpoint W --tasks my_task --include-path my_tasks/

Add --compile to torch.compile each transformer block (megatiny checkpoints; Inductor's kernels
are cached as in training, see docs/PERFORMANCE.md).

Perplexity (one epoch of the chosen split, cut as training cuts it; a blend is scored one dataset
at a time, with a token-weighted total):
    megatiny evaluate --perplexity --checkpoint runs/x/checkpoints \\
        --data-path data/corpus_text_document --seq-length 2048 --split 969,30,1 --split-name valid

--checkpoint accepts a DeepSpeed checkpoint root (its `latest` tag), a tag directory, a megatiny
weights directory or a Hugging Face Llama directory. Suites: tinyllama-commonsense (TinyLlama
Table 2, zero-shot), tinyllama-problem-solving (MMLU/BBH/DROP/HumanEval), local (offline).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatiny.eval.perplexity import run_perplexity
from megatiny.eval.suites import SUITES
from megatiny.fileio import atomic_write_text
from megatiny.model import ModelRuntime
from megatiny.parsing import bool_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint root, tag dir, weights dir or HF dir")
    parser.add_argument("--tokenizer", help="tokenizer path (default: the one named by the checkpoint)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--output-dir", help="write results.json and results.md here")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each transformer block (megatiny models; as runtime.compile)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="inductor | aot_eager (as runtime.compile_backend)")

    bench = parser.add_argument_group("lm-eval tasks")
    chosen = bench.add_mutually_exclusive_group()
    chosen.add_argument("--suite", choices=sorted(SUITES), help="a named task suite")
    chosen.add_argument("--tasks", help="comma-separated lm-eval task names")
    bench.add_argument("--include-path", action="append", default=[],
                       help="directory of extra task YAMLs (repeatable)")
    bench.add_argument("--num-fewshot", type=int, help="override the shots of every task")
    bench.add_argument("--limit", type=float, help="only the first N documents per task (quick checks)")
    bench.add_argument("--backend", choices=("megatiny", "hf"), default="megatiny",
                       help="megatiny: our adapter on any checkpoint; hf: lm-eval's hf model on an HF export")
    bench.add_argument("--add-bos-token", type=bool_argument,
                       help="BOS before every context (default: if the tokenizer has one)")
    bench.add_argument("--log-samples", action="store_true", help="also write samples_TASK.jsonl")
    bench.add_argument("--confirm-run-unsafe-code", action="store_true",
                       help="allow tasks that execute model-written code (HumanEval)")

    ppl = parser.add_argument_group("perplexity")
    ppl.add_argument("--perplexity", action="store_true", help="evaluate loss/perplexity on indexed data")
    ppl.add_argument("--data-path", help="indexed dataset prefix or blend '0.7 A 0.3 B'")
    ppl.add_argument("--seq-length", type=int, help="tokens per sample (at most the model's context)")
    ppl.add_argument("--split", default="969,30,1", help="train,valid,test document split of the data")
    ppl.add_argument("--split-name", default="valid", choices=("train", "valid", "test", "all"))
    ppl.add_argument("--num-samples", type=int, help="cap per dataset (default: one epoch of its split)")
    ppl.add_argument("--cache-dir", help="where dataset index caches go (default: beside the data)")
    return parser


def model_runtime(args: argparse.Namespace) -> ModelRuntime:
    """--compile / --compile-backend as the model's ModelRuntime; ValueError naming the flag."""
    try:
        return ModelRuntime(compile=args.compile, compile_backend=args.compile_backend)
    except ValueError as e:
        raise ValueError(f"--compile-backend: {e}") from None


def run_benchmarks(args: argparse.Namespace) -> int:
    # lm-eval is an optional extra (megatiny[eval]); perplexity runs without it.
    from megatiny.eval.harness import LmEvalConfig, run_lm_eval

    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    config = LmEvalConfig(
        checkpoint=args.checkpoint, backend=args.backend, tokenizer=args.tokenizer, suite=args.suite,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else [],
        include_paths=args.include_path, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, add_bos_token=args.add_bos_token, limit=limit,
        output_dir=args.output_dir, log_samples=args.log_samples,
        confirm_run_unsafe_code=args.confirm_run_unsafe_code, seed=args.seed, runtime=model_runtime(args))
    report = run_lm_eval(config)
    print(report.table)
    for kind, path in report.paths.items():
        print(f"wrote {kind}: {path}")
    return 0


def run_perplexity_cli(args: argparse.Namespace) -> int:
    if not args.data_path or not args.seq_length:
        raise ValueError("--perplexity needs --data-path PREFIX and --seq-length N")
    result = run_perplexity(args.checkpoint, args.data_path, args.seq_length, args.split_name, args.split,
                            args.num_samples, args.batch_size, args.device, args.dtype, args.seed,
                            args.cache_dir, model_runtime(args))
    for prefix, part in result.datasets.items():
        print(f"{prefix}: loss {part.loss:.4f} nats/token | perplexity {part.perplexity:.3f} | "
              f"tokens {part.tokens} | samples {part.samples}")
    print(f"{'total (token-weighted): ' if result.datasets else ''}loss {result.loss:.4f} nats/token | "
          f"perplexity {result.perplexity:.3f} | tokens {result.tokens} | samples {result.samples}")
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        payload = result.to_dict() | {"checkpoint": args.checkpoint, "data_path": args.data_path,
                                      "seq_length": args.seq_length, "split": args.split,
                                      "split_name": args.split_name}
        path = atomic_write_text(Path(args.output_dir) / "perplexity.json", json.dumps(payload, indent=2))
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.perplexity and not (args.suite or args.tasks):
        print("error: give --suite NAME, --tasks a,b,c or --perplexity", file=sys.stderr)
        return 2
    try:
        return run_perplexity_cli(args) if args.perplexity else run_benchmarks(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
