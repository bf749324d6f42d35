"""`python -m megatiny.eval ARGS`: lm-evaluation-harness's own CLI, with the `megatiny` model known.

lm-eval's CLI only knows the models of its own package; this wrapper imports our adapter (which
registers `megatiny`), puts the bundled task directory (megatiny_local_mc) on the task path when
no --include_path is given, and hands the unchanged arguments to lm-eval:

    python -m megatiny.eval --model megatiny --model_args checkpoint=runs/x/checkpoints,batch_size=16 \\
        --tasks hellaswag,arc_easy --output_path runs/x/lm_eval
"""
from __future__ import annotations

import sys

from lm_eval.__main__ import cli_evaluate

import megatiny.eval.lm_eval_adapter  # noqa: F401  (registers the `megatiny` model)
from megatiny.eval.tasks import BUNDLED_TASKS_DIR


def lm_eval_argv(argv: list[str]) -> list[str]:
    """`argv` with --include_path BUNDLED added for `run` (explicit or implied) commands."""
    argv = list(argv)
    commands = ("run", "ls", "validate")
    is_run = not argv or argv[0] == "run" or argv[0] not in commands
    has_include = any(a == "--include_path" or a.startswith("--include_path=") for a in argv)
    if is_run and argv and not has_include and not any(a in ("-h", "--help") for a in argv):
        argv += ["--include_path", str(BUNDLED_TASKS_DIR)]
    return argv


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sys.argv = ["megatiny-lm-eval", *lm_eval_argv(argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
