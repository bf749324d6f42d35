"""`python -m megatiny COMMAND ARGS`: the `megatiny` command (see megatiny.cli)."""
import sys

from megatiny.cli import main

if __name__ == "__main__":
    sys.exit(main())
