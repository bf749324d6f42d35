"""`python -m megatiny COMMAND ARGS`: the `megatiny` command (see megatiny.cli)."""
from megatiny.cli import run

if __name__ == "__main__":
    run()
