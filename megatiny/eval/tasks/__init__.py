"""The lm-eval tasks bundled with megatiny (megatiny_local_mc); BUNDLED_TASKS_DIR goes on lm-eval's
task path. Importing this package does not import lm-eval."""
from pathlib import Path

BUNDLED_TASKS_DIR = Path(__file__).resolve().parent
