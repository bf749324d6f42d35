"""Suite-wide pytest configuration."""
import os

from megatiny.process_env import put_interpreter_bin_first

# Single-threaded math keeps CPU results deterministic and avoids oversubscribing 2-core CI.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every subprocess finds the venv's tools first (deepspeed, ninja): DeepSpeed's JIT op cache is
# rebuilt, for minutes, whenever a process sees a different `ninja` than the one that built it.
put_interpreter_bin_first()
