"""The `megatiny` command: one subcommand per tool.

    megatiny preprocess --input 'raw/*.jsonl.zst' --output-prefix data/web --tokenizer tok.model ...
    megatiny train --config examples/tiny_cpu.yaml
    deepspeed --num_gpus 8 --module megatiny train --config examples/tinyllama_1.1b.yaml
    megatiny COMMAND --help

Each subcommand is `megatiny.cli.<module>.main(argv)`; `tools/<name>.py` calls the same function,
so `python tools/preprocess_data.py ...` and `megatiny preprocess ...` are one command.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

import megatiny
from megatiny.process_env import exit_fast


@dataclass(frozen=True)
class Command:
    module: str    # megatiny.cli.<module> defines main(argv) -> exit status
    tool: str      # the tools/ script that runs the same command
    summary: str


COMMANDS: dict[str, Command] = {
    "preprocess": Command("preprocess", "preprocess_data.py",
                          "tokenize jsonl, parquet or arrow into Megatron indexed datasets"),
    "train-tokenizer": Command("train_tokenizer", "train_tokenizer.py",
                               "train a Llama-style sentencepiece tokenizer on local text"),
    "train": Command("train", "train.py", "pretrain a model (plain python, deepspeed or mpirun)"),
    "convert": Command("convert", "convert_checkpoint.py",
                       "convert checkpoints to and from Hugging Face Llama"),
    "evaluate": Command("evaluate", "evaluate.py", "lm-eval task suites or perplexity of a checkpoint"),
    "generate": Command("generate", "generate.py", "generate text from a trained model"),
    "report": Command("report", "report_run.py", "loss-curve PNG and unigram baseline of a finished run"),
    "inspect": Command("inspect", "inspect_dataset.py", "summarize an indexed dataset, decode documents"),
    "merge": Command("merge", "merge_datasets.py", "merge indexed datasets into one"),
    "checkpoint": Command("checkpoint", "verify_checkpoint.py",
                          "verify a checkpoint's files against its manifests"),
    "supervise": Command("supervise", "supervise.py",
                         "run a launch command, restart it on crashes and hangs (resumes exactly)"),
}


def main(argv: list[str] | None = None) -> int:
    """Run `megatiny COMMAND ARGS`; returns the command's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    launcher_args, argv = split_launcher_args(argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"megatiny {megatiny.__version__}")
        return 0
    if argv[0] not in COMMANDS:
        parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
    name, args = argv[0], argv[1:]
    # Imported on demand: `megatiny inspect` should not wait for deepspeed or lm-eval to load.
    command = importlib.import_module(f"megatiny.cli.{COMMANDS[name].module}")
    sys.argv[0] = f"megatiny {name}"  # the subcommand's usage line reads `megatiny NAME ...`
    return command.main([*launcher_args, *args])


def run() -> None:
    """The `megatiny` console script: `main()`, then `exit_fast` with its status (the command's
    work is done; the interpreter's teardown of torch and DeepSpeed would only add seconds)."""
    exit_fast(main())


def split_launcher_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(`--local_rank` arguments, the rest) of `argv`.

    `deepspeed --module megatiny train ...` runs `python -m megatiny --local_rank=N train ...`:
    the launcher puts its argument before the subcommand; it is handed on to the subcommand.
    """
    launcher: list[str] = []
    rest = list(argv)
    while rest and rest[0].startswith("--local_rank"):
        launcher.append(rest.pop(0))
        if launcher[-1] == "--local_rank" and rest:
            launcher.append(rest.pop(0))
    return launcher, rest


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items())
    tools = "\n".join(f"  tools/{command.tool:<22} = megatiny {name}" for name, command in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="megatiny", usage="megatiny COMMAND [ARGS ...]   (megatiny COMMAND --help for its options)",
        description=f"megatiny {megatiny.__version__}: pretraining of small Llama-family models.\n\n"
                    f"commands:\n{listing}",
        epilog=f"The same commands as scripts:\n{tools}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser
