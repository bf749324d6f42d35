"""Run a training launch command under a supervisor that restarts it after crashes and hangs.

`python tools/supervise.py ARGS` is `megatiny supervise ARGS` (megatiny/cli/supervise.py); the
tools/ path is kept for scripts that take a script path.
"""
import sys

from megatiny.cli.supervise import main

if __name__ == "__main__":
    sys.exit(main())
