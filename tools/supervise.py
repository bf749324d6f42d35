"""Run a training launch command under a supervisor that restarts it after crashes and hangs.

`python tools/supervise.py ARGS` is `megatiny supervise ARGS` (megatiny/cli/supervise.py); the
tools/ path is kept for scripts that take a script path.
"""
from megatiny.cli.supervise import main
from megatiny.process_env import exit_fast

if __name__ == "__main__":
    exit_fast(main())
